"""Crash points for tests of crash safety.

``LEDGER_CRASH_AT=<point>`` makes the process kill itself with SIGKILL when it
reaches that point — the same as a power cut or ``kill -9`` at exactly that moment,
with no cleanup. Points are named in the role code (e.g. ``worker:after-publish``).
Unset in normal use; nothing else changes behaviour.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("LEDGER_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
