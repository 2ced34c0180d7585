"""`ledger demo --ipfs` end to end (a small job), with a relative data directory as a new
user has: it ends with AUDIT OK, its blocks are in the folder `ledger ipfs status` names,
and it leaves nothing running, also when it fails after starting the IPFS node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ledger.services import anvil, ipfs_node
from ledger.config import load_settings
from ledger.services.procs import pid_alive

REL = "rel-data"


def _run(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATA_DIR=REL, LEDGER_CHAIN_PORT="0", LEDGER_IPFS_PORT="0", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def _nothing_running(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / REL}, env={}, config_file=None)
    for svc in (anvil.service(settings), ipfs_node.service(settings)):
        rec = svc.recorded()
        assert svc.running() is None, f"{svc.name} still running"
        assert rec is None or not pid_alive(rec.pid)


def test_demo_ipfs_audits_ok_and_stops_everything(tmp_path):
    r = _run(tmp_path, "demo", "--ipfs", "--workers", "2", "--aggregators", "2", "--quorum", "2", "--rounds", "1",
             "--steps", "3", "--replay-segments", "0", "--tokens", "20")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "audit        OK" in r.stdout and "AUDIT OK final model" in r.stdout, out[-4000:]
    _nothing_running(tmp_path)
    # The blocks are in <data dir>/ipfs/repo, not resolved a second time from the node's working dir.
    repo = (tmp_path / REL / "ipfs" / "repo").resolve()
    assert any((repo / "blocks").rglob("*.data")), sorted(p.name for p in repo.rglob("*"))[:20]
    assert not (tmp_path / REL / "ipfs" / REL).exists()
    st = _run(tmp_path, "ipfs", "status", timeout=60)
    assert st.returncode == 2 and f"repo       {repo}" in st.stdout, st.stdout
    # The same data dir given as an absolute path is the same repo: the genesis is there.
    m = re.search(r"genesis (Qm\w+)  sha256 (0x[0-9a-f]{64})", r.stdout)
    assert m, r.stdout[:2000]
    absolute = tmp_path / REL
    try:
        assert _run(tmp_path, "--data-dir", str(absolute), "ipfs", "up", timeout=60).returncode == 0
        v = _run(tmp_path, "--data-dir", str(absolute), "--storage", "ipfs", "store", "verify", m.group(1),
                 "--digest", m.group(2), timeout=60)
        assert v.returncode == 0 and v.stdout.startswith("ok: "), v.stdout + v.stderr
    finally:
        _run(tmp_path, "--data-dir", str(absolute), "ipfs", "down", timeout=60)
    _nothing_running(tmp_path)


def test_demo_failing_after_ipfs_up_leaves_nothing_running(tmp_path):
    # A --model folder that holds no model is found out when the job is made: after the
    # chain and the IPFS node were started (a bad quorum is refused before anything starts).
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    r = _run(tmp_path, "demo", "--ipfs", "--workers", "1", "--aggregators", "1", "--quorum", "1", "--rounds", "1",
             "--model", str(empty), timeout=300)
    assert r.returncode != 0
    assert "ipfs    /ip4/127.0.0.1/tcp/" in r.stdout, r.stdout
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert err and err[-1].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-3000:]
    _nothing_running(tmp_path)
