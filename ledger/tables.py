"""Plain-text tables: the one way the project lays out columns for a terminal.

Every table (the audit summary, every bench) goes through ``text_table``, which hands
the layout to ``tabulate`` (pinned). Cells arrive as text, already formatted by the
caller, so tabulate never re-reads "0.81x" or a hex digest as a number; which columns
are right-aligned is the caller's choice, or ``numeric_columns`` guesses it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from tabulate import tabulate

__all__ = ["text_table", "numeric_columns", "looks_numeric"]


def looks_numeric(cell) -> bool:
    """Numbers, and text that reads as one (``12.5``, ``0.81x``, ``5%``, ``<= 3``, ``n/a``, ``-``)."""
    if isinstance(cell, bool):
        return False
    if isinstance(cell, (int, float)):
        return True
    t = str(cell).strip().removeprefix("<=").strip().rstrip("x%")
    if t in ("n/a", "-"):
        return True
    try:
        float(t)
        return True
    except ValueError:
        return False


def numeric_columns(rows: Sequence[Sequence], width: int) -> set[int]:
    """Columns whose non-empty cells all look numeric (and that have at least one)."""
    out = set()
    for i in range(width):
        cells = [r[i] for r in rows if i < len(r) and r[i] not in ("", None)]
        if cells and all(looks_numeric(c) for c in cells):
            out.add(i)
    return out


def text_table(headers: Sequence[str], rows: Iterable[Sequence], right: set[int] | None = None) -> list[str]:
    """The lines of an aligned table: header, a dashed rule per column, one line per row.

    ``right``: indexes of right-aligned columns (default: the numeric-looking ones).
    Short rows are padded with empty cells; trailing blanks are stripped from each line.
    """
    headers = [str(h) for h in headers]
    body = [["" if c is None else str(c) for c in r] + [""] * (len(headers) - len(r)) for r in rows]
    if right is None:
        right = numeric_columns(body, len(headers))
    align = ["right" if i in right else "left" for i in range(len(headers))]
    text = tabulate(body, headers, tablefmt="simple", colalign=align, disable_numparse=True,
                    preserve_whitespace=True)
    return [line.rstrip() for line in text.splitlines()]
