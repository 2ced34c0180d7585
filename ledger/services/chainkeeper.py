"""Keeps the last complete state dump of the local chain.

anvil rewrites its ``--state`` file in place every ``--state-interval`` seconds
(truncate, then write), so a kill during a dump leaves a prefix of JSON and the
previous dump is already gone. This small process, started by ``chain up`` beside
anvil, copies each complete dump to ``state.good.json`` (temp file + fsync +
rename), so ``chain up`` after such a kill restores a state at most one interval
older than the lost one. It exits when anvil does.

    python -m ledger.services.chainkeeper --pid PID --state STATE --good GOOD [--period S]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from ledger import atomic
from ledger.services.procs import Stopped, on_stop_signals, pid_alive


def complete_json(data: bytes) -> bool:
    """Whether ``data`` is a whole JSON document (a dump cut short never parses)."""
    try:
        json.loads(data)
        return True
    except (ValueError, RecursionError):
        return False


def keep_once(state: Path, good: Path, last: tuple | None) -> tuple | None:
    """Copy ``state`` to ``good`` if it changed since ``last`` and is complete; returns what was copied."""
    try:
        before = os.stat(state)
        sig = (before.st_mtime_ns, before.st_size)
        if sig == last or before.st_size == 0:
            return last
        data = state.read_bytes()
        after = os.stat(state)
    except FileNotFoundError:
        return last
    # Rewritten while we read, or cut short: try again at the next period.
    if (after.st_mtime_ns, after.st_size) != sig or len(data) != sig[1] or not complete_json(data):
        return last
    atomic.write_bytes(good, data)
    return sig


def keep(pid: int, state: Path, good: Path, period: float) -> None:
    last = None
    while pid_alive(pid):
        last = keep_once(state, good, last)
        time.sleep(period)
    keep_once(state, good, last)  # the dump anvil writes when stopped with SIGTERM


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ledger.services.chainkeeper", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--good", type=Path, required=True)
    ap.add_argument("--period", type=float, default=0.25)
    a = ap.parse_args(argv)
    restore = on_stop_signals()
    try:
        keep(a.pid, a.state, a.good, a.period)
    except Stopped as e:
        # stopped on its own (SIGINT, SIGTERM, SIGHUP): keep what anvil last wrote, say so
        keep_once(a.state, a.good, None)
        print(f"chain keeper stopped by {e.signame}; the last complete dump is in {a.good}", flush=True)
        return 128 + e.signum
    finally:
        restore()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
