"""ledger.tables: the one text-table layout (tabulate underneath)."""

from __future__ import annotations

from ledger.tables import looks_numeric, numeric_columns, text_table


def test_columns_align_and_numbers_sit_right():
    lines = text_table(["rule", "loss", "ratio"], [["fedavg", "4.12", "0.81x"], ["trimmed_mean", "12.5", "n/a"]])
    header, rule, first, second = lines
    assert rule.split()[0] == "-" * len("trimmed_mean")  # a column is as wide as its widest cell
    # left column starts at 0; numeric columns end at the same place in every line
    assert first.startswith("fedavg ") and second.startswith("trimmed_mean ")
    assert {len(l) for l in (header, first, second)} == {len(rule)}
    assert first.endswith("0.81x") and second.endswith("  n/a")
    assert first.index("4.12") + 4 == second.index("12.5") + 4 == header.index("loss") + 4


def test_short_rows_none_and_chosen_alignment():
    lines = text_table(["a", "b", "c"], [["x", None], ["longer", "2", "3"]], right={0})
    assert lines[2].rstrip() == "     x"  # right-aligned on request, empty cells padded, no trailing blanks
    assert all(l == l.rstrip() for l in lines)
    assert lines[3].split() == ["longer", "2", "3"]


def test_what_counts_as_numeric():
    assert all(looks_numeric(c) for c in (3, 2.5, "12", "0.81x", "5%", "<= 3", "n/a", "-"))
    assert not any(looks_numeric(c) for c in (True, "fedavg", "0xabc..", ""))
    assert numeric_columns([["a", "1", ""], ["b", "", ""]], 3) == {1}
