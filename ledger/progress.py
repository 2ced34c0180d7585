"""Progress for long CLI steps, shown only on a terminal.

``rounds_bar`` is a tqdm bar fed by the ``progress(done, total, label)`` callbacks of
the audit and the export; ``spinner`` a rich status line for a step with no count (a
model's first conversion). Both draw on stderr and only when it is a terminal: logs,
pipes and tests read the same lines as before.
"""

from __future__ import annotations

import contextlib
import sys


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def rounds_bar(desc: str, enabled: bool = True):
    """Yields ``progress(done, total, label)`` drawing a bar of rounds on a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, unit="round", disable=not enabled or None, file=sys.stderr, leave=False)

    def progress(done, total, label):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(label)
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


@contextlib.contextmanager
def spinner(text: str, enabled: bool = True):
    """A spinner with the elapsed time on a terminal's stderr while the block runs;
    nothing otherwise. Bound to the stderr of its start, so a block that redirects
    ``sys.stderr`` (a chatty library) does not swallow it."""
    if not (enabled and on_terminal()):
        yield
        return
    from rich.console import Console

    with Console(file=sys.stderr).status(text):
        yield
