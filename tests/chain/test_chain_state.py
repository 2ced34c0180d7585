"""Secrets and state of the local servers: anvil, its state keeper and the IPFS node
get only the environment they need, and a kill during a state dump loses at most the
state interval (the keeper's last complete dump is restored)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from conftest import cli_env
from ledger.services import anvil, ipfs_node
from ledger.services.procs import pid_alive
from support.cli import STATE_INTERVAL, anvil_pids_for, create_job, job_events, ledger, ok, pid_of, url_of

SECRETS = {"LEDGER_PRIVATE_KEY": "0x" + "ab" * 32, "LEDGER_KEY_PASSWORD": "hunter2-secret",
           "LEDGER_KEY_PASSWORD_FILE": "/tmp/pw-secret", "LEDGER_SOMETHING_ELSE": "other-secret"}


def environ_of(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def _assert_clean(pid: int, what: str) -> None:
    env = environ_of(pid)
    leaked = sorted(k for k in env if k.startswith("LEDGER_")) + sorted(
        k for k, v in env.items() if any(s in v for s in SECRETS.values()))
    assert not leaked, f"{what} (pid {pid}) inherited {leaked}"
    assert "PATH" in env  # it still gets what it needs


def _keeper_pid(settings) -> int:
    return int((settings.chain_dir / anvil.KEEPER_PID).read_text())


def test_servers_get_no_ledger_secrets(settings, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    up = anvil.chain_up(settings)
    try:
        _assert_clean(up.info.pid, "anvil")
        _assert_clean(_keeper_pid(settings), "the chain state keeper")
        node = ipfs_node.ipfs_up(settings.replace(ipfs_port=0))
        try:
            _assert_clean(node.info.pid, "the IPFS node")
        finally:
            ipfs_node.ipfs_down(settings)
    finally:
        anvil.chain_down(settings)
    assert not pid_alive(_keeper_pid(settings)), "the keeper outlived anvil"


@pytest.fixture
def env(settings):
    e = cli_env(settings, LEDGER_STATE_INTERVAL=str(STATE_INTERVAL))
    try:
        yield e
    finally:
        anvil.chain_down(settings)


def test_kill_during_a_dump_loses_at_most_the_interval(settings, env):
    ok(ledger(["chain", "up"], env))
    ok(ledger(["deploy"], env))
    record = json.loads((settings.deployments_dir / "31337.json").read_text())
    tx = create_job(url_of(settings), record["address"])
    time.sleep(STATE_INTERVAL * 2 + 1.5)  # more than one dump after the last transaction
    os.kill(pid_of(settings), signal.SIGKILL)
    deadline = time.time() + 10
    while anvil_pids_for(settings) and time.time() < deadline:
        time.sleep(0.1)
    # killed in the middle of rewriting its state: a prefix of the JSON is all that is left
    state = settings.chain_dir / anvil.STATE_FILE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    r = ok(ledger(["chain", "up"], env))
    assert "restored the last complete dump" in r.stderr, r.stderr
    ok(ledger(["verify-deployment"], env))
    assert [e["transactionHash"].to_0x_hex() for e in job_events(url_of(settings), record["address"])] == [tx]
