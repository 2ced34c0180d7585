"""``ledger.progress``: drawn on a terminal, silent on a pipe (logs and tests read the same lines)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

SCRIPT = """
import time
from ledger.progress import rounds_bar, spinner
with spinner("converting model.gguf"):
    time.sleep(0.6)
with rounds_bar("audit") as progress:
    for n in range(3):
        progress(n + 1, 3, f"round {n + 1}")
print("done")
"""


def _run(on_tty: bool) -> str:
    if not on_tty:
        r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout + r.stderr
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # a terminal has a size
    p = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=child, stdout=child, stderr=child,
                         env={**os.environ, "TERM": "xterm", "COLUMNS": "100"})
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(timeout=60) == 0
    os.close(main)
    return out.decode(errors="replace")


def test_progress_is_drawn_on_a_terminal():
    out = _run(True)
    assert "converting model.gguf" in out and "audit" in out and "round 3" in out and "done" in out


def test_progress_is_off_on_a_pipe():
    assert _run(False) == "done\n"
