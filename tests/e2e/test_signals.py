"""Stopping: every long-running command stops what it started on SIGINT, SIGTERM and
SIGHUP, says so in one line, and leaves no process running (checked by pid); two demos
never share a data dir; a demo waits out `ledger chain down` as its parties do.

- `ledger demo` sent each signal once its parties run: exit 128 + the signal, one
  `stopped by SIG...` line naming what it stopped, and every process it started (anvil,
  the chain keeper, the workers, the aggregator) gone;
- a second `ledger demo` on the same data dir is refused in one line naming the first
  one's pid, and stops nothing of the first one's;
- `ledger chain down` and `chain up` during a demo: the demo rides the outage out and
  ends AUDIT OK (leaving the chain someone else restarted running), its logs under the
  deployment's folder;
- the chain keeper stopped on its own keeps the last dump and says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.services import anvil
from ledger.config import load_settings
from ledger.services.procs import pid_alive
from support import wait_for

DEMO = ("demo", "--workers", "2", "--aggregators", "1", "--quorum", "1", "--steps", "20", "--replay-segments", "0",
        "--tokens", "10")


def _env(data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATA_DIR=str(data), LEDGER_CHAIN_PORT="0", PYTHONUNBUFFERED="1")
    return env


def _demo(data: Path, *args: str) -> subprocess.Popen:
    out = open(data.parent / f"{data.name}-demo.out", "ab")
    err = open(data.parent / f"{data.name}-demo.err", "ab")
    p = subprocess.Popen([sys.executable, "-m", "ledger_cli", *DEMO, *args], stdout=out, stderr=err,
                         stdin=subprocess.DEVNULL, env=_env(data))
    p.out, p.err, p.env = Path(out.name), Path(err.name), _env(data)
    p.log = p.out    # for wait_for's report
    return p


def _cli(data: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], capture_output=True, text=True,
                          env=_env(data), timeout=timeout, stdin=subprocess.DEVNULL)


def _children(pid: int) -> dict[int, str]:
    """Processes whose parent is ``pid``: {pid: command line}."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return out


def _started(demo: subprocess.Popen) -> dict[int, str]:
    """Once the demo's parties run: every process it started."""
    wait_for(lambda: "started 2 workers and 1 aggregators" in demo.out.read_text(), 300, "the demo's parties",
             [demo])
    kids = wait_for(lambda: (k := _children(demo.pid)) and sum("worker run" in c or "aggregator run" in c
                                                               for c in k.values()) == 3 and k, 30, "the parties")
    assert any("anvil" in c for c in kids.values()) and any("chainkeeper" in c for c in kids.values()), kids
    # ... and are at work (past their start-up)
    data = Path(_env_of(demo)["LEDGER_DATA_DIR"])
    wait_for(lambda: len(logs := list((data / "demo").rglob("demo-*.log"))) == 3
             and all(" on job 1" in f.read_text() for f in logs), 120, "the parties to start", [demo])
    return kids


def _env_of(p: subprocess.Popen) -> dict:
    return p.env


def _all_gone(pids) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if pid_alive(p)]
    assert not left, f"still running: {left}"


def _stopped_line(demo: subprocess.Popen, sig: signal.Signals) -> str:
    err = [line for line in demo.err.read_text().splitlines() if line.strip()]
    assert err and err[-1].startswith(f"stopped by {sig.name}: "), err[-5:]
    assert "Traceback" not in demo.err.read_text()
    return err[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_demo_stops_everything_it_started_on_a_signal(tmp_path, sig):
    data = tmp_path / "data"
    demo = _demo(data, "--rounds", "2")
    try:
        kids = _started(demo)
        if sig == signal.SIGTERM:
            # a second demo on the same data dir is refused in one line, and stops nothing
            second = _cli(data, *DEMO, "--rounds", "1", timeout=120)
            err = [line for line in second.stderr.splitlines() if line.strip()]
            assert second.returncode == 2 and len(err) == 1 and f"pid {demo.pid}" in err[0], second.stderr
            assert all(pid_alive(p) for p in kids), "the second demo stopped the first one's processes"
        demo.send_signal(sig)
        assert demo.wait(timeout=90) == 128 + sig
        line = _stopped_line(demo, sig)
        assert "2 worker(s) and 1 aggregator(s)" in line and "the chain (pid" in line, line
        _all_gone(kids)
        logs = list((data / "demo").rglob("demo-worker-0.log"))
        assert len(logs) == 1 and "stopped by SIGTERM" in logs[0].read_text()   # the demo stops its parties so
    finally:
        if demo.poll() is None:
            demo.kill()
        anvil.chain_down(load_settings({"data_dir": data}, env={}, config_file=None))


def test_a_demo_rides_out_chain_down_and_up(tmp_path):
    data = tmp_path / "data"
    settings = load_settings({"data_dir": data}, env={}, config_file=None)
    demo = _demo(data, "--rounds", "1")
    try:
        _started(demo)
        port = anvil.service(settings).running().port
        assert _cli(data, "chain", "down").returncode == 0
        wait_for(lambda: "chain unreachable at" in demo.out.read_text(), 60, "the demo to notice", [demo])
        time.sleep(3)
        assert _cli(data, "chain", "up", "--port", str(port)).returncode == 0
        restarted = anvil.service(settings).running().pid
        assert demo.wait(timeout=600) == 0, demo.out.read_text()[-3000:] + demo.err.read_text()[-3000:]
        out = demo.out.read_text()
        assert "chain back after" in out and "AUDIT OK final model" in out, out[-3000:]
        # the chain it did not start is left running; the logs are under the deployment's folder
        assert pid_alive(restarted) and f"chain pid {restarted} left running" in out, out[-2000:]
        (log,) = (data / "demo").rglob("demo-worker-0.log")
        assert log.parent.name == "job-1" and log.parent.parent.name.startswith("0x")
        assert log.parent.parent.parent.name.startswith("chain-")
    finally:
        if demo.poll() is None:
            demo.kill()
        anvil.chain_down(settings)


def test_the_chain_keeper_stops_on_its_own_signal(tmp_path):
    settings = load_settings({"data_dir": tmp_path / "data", "chain_port": 0}, env={}, config_file=None)
    up = anvil.chain_up(settings)
    try:
        d = settings.chain_dir.resolve()
        keeper = int((d / anvil.KEEPER_PID).read_text())
        # at work: it has copied a dump (so it is past its start-up)
        wait_for(lambda: (d / anvil.GOOD_FILE).exists(), 60, "the keeper's first copy")
        assert pid_alive(keeper)
        os.kill(keeper, signal.SIGTERM)
        wait_for(lambda: not pid_alive(keeper), 20, "the keeper to stop")
        assert "chain keeper stopped by SIGTERM" in (d / "keeper.log").read_text()
        assert pid_alive(up.info.pid)       # the keeper started nothing: anvil is `chain down`'s to stop
    finally:
        anvil.chain_down(settings)
