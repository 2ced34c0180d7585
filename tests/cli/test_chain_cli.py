"""`ledger chain up|down|status`, deploy and verify-deployment through the CLI, persistence, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from conftest import DEV_KEYS, cli_env
from ledger.services import anvil
from ledger.ethereum.artifacts import load_artifact
from ledger_cli import main
from support.cli import STATE_INTERVAL, anvil_pids_for, create_job, job_events, ledger, ok, pid_of, url_of

@pytest.fixture
def env(settings):
    """CLI environment for this test's data dir; whatever chain the CLI starts is stopped afterwards."""
    e = cli_env(settings, LEDGER_STATE_INTERVAL=str(STATE_INTERVAL))
    try:
        yield e
    finally:
        anvil.chain_down(settings)


# ---------------------------------------------------------------------------- up / down / status


def test_up_is_idempotent_and_single_instance(settings, env):
    r = ok(ledger(["chain", "up"], env))
    assert "chain up: http://127.0.0.1:" in r.stdout and "state file:" in r.stdout
    pid, url = pid_of(settings), url_of(settings)
    assert f"pid {pid}" in r.stdout and url in r.stdout
    r = ok(ledger(["chain", "up"], env))
    assert "already running" in r.stdout and f"pid {pid}" in r.stdout
    assert anvil_pids_for(settings) == [pid]
    # two `chain up` at once on a running chain, and on a stopped one: still one anvil
    ok(ledger(["chain", "down"], env))
    assert anvil_pids_for(settings) == []
    procs = [subprocess.Popen([sys.executable, "-m", "ledger_cli", "chain", "up"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("chain up:" in o for o, _ in outs) == 1
    assert sum("already running" in o for o, _ in outs) == 2
    assert anvil_pids_for(settings) == [pid_of(settings)]


def test_status_and_down(settings, env):
    r = ledger(["chain", "status"], env)
    assert r.returncode == 2 and "not running" in r.stdout and "Traceback" not in r.stderr   # exit 2: no chain
    ok(ledger(["chain", "up"], env))
    r = ok(ledger(["chain", "status"], env))
    assert "running at http://127.0.0.1:" in r.stdout and "chain id 31337" in r.stdout and "block 0" in r.stdout
    time.sleep(STATE_INTERVAL + 1.5)
    r = ok(ledger(["chain", "status"], env))
    assert "saved" in r.stdout and "ago" in r.stdout
    r = ok(ledger(["chain", "down"], env))
    assert "stopped anvil" in r.stdout
    r = ok(ledger(["chain", "down"], env))
    assert "not running" in r.stdout
    assert ledger(["chain", "status"], env).returncode == 2


def test_up_funds_accounts(settings, env):
    fresh = [Account.create().address for _ in range(2)]
    r = ok(ledger(["chain", "up", "--fund", *fresh, "--fund-eth", "7"], env))
    w3 = Web3(HTTPProvider(url_of(settings)))
    for a in fresh:
        assert w3.eth.get_balance(a) == 7 * 10**18
        assert f"funded {a}" in r.stdout


# ---------------------------------------------------------------------------- persistence


def test_restart_keeps_deployment_and_history(settings, env):
    ok(ledger(["chain", "up"], env))
    r = ok(ledger(["deploy"], env))
    assert "dev account 0" in r.stderr  # the fallback deployer is announced
    record = json.loads((settings.deployments_dir / "31337.json").read_text())
    tx = create_job(url_of(settings), record["address"])
    ok(ledger(["chain", "down"], env))
    ok(ledger(["chain", "up"], env))
    r = ok(ledger(["verify-deployment"], env))
    assert record["address"] in r.stdout
    url = url_of(settings)
    w3 = Web3(HTTPProvider(url))
    assert w3.eth.get_transaction_receipt(record["tx_hash"])["contractAddress"] == record["address"]
    assert w3.eth.get_transaction_receipt(tx)["status"] == 1
    events = job_events(url, record["address"])
    assert len(events) == 1 and events[0]["transactionHash"].to_0x_hex() == tx


def test_kill_9_loses_at_most_the_state_interval(settings, env):
    ok(ledger(["chain", "up"], env))
    ok(ledger(["deploy"], env))
    record = json.loads((settings.deployments_dir / "31337.json").read_text())
    tx = create_job(url_of(settings), record["address"])
    time.sleep(STATE_INTERVAL * 2 + 1.5)  # more than one state dump after the last transaction
    pid = pid_of(settings)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while anvil_pids_for(settings) and time.time() < deadline:
        time.sleep(0.1)
    r = ledger(["chain", "status"], env)
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    assert "not running" in r.stdout and "killed" in r.stdout and str(pid) in r.stdout
    # commands that need the chain say what to do instead of crashing
    r = ledger(["verify-deployment"], env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "ledger chain up" in r.stderr
    assert "Traceback" not in r.stderr
    ok(ledger(["chain", "up"], env))
    ok(ledger(["verify-deployment"], env))
    events = job_events(url_of(settings), record["address"])
    assert [e["transactionHash"].to_0x_hex() for e in events] == [tx]
    ok(ledger(["chain", "status"], env))


def test_unreadable_state_falls_back_to_backup(settings, env):
    ok(ledger(["chain", "up"], env))
    ok(ledger(["deploy"], env))
    record = json.loads((settings.deployments_dir / "31337.json").read_text())
    ok(ledger(["chain", "down"], env))
    ok(ledger(["chain", "up"], env))  # copies the good state aside
    ok(ledger(["chain", "down"], env))
    (settings.chain_dir / anvil.STATE_FILE).write_text('{"block": {"trunc')  # killed mid-dump
    r = ok(ledger(["chain", "up"], env))
    assert "restored the last complete dump" in r.stderr
    r = ok(ledger(["verify-deployment"], env))
    assert record["address"] in r.stdout


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "cmd",
    [
        ["chain"], ["chain", "up"], ["chain", "down"], ["chain", "status"], ["chain", "fund"],
        ["deploy"], ["verify-deployment"], ["account"], ["account", "new"], ["account", "list"], ["account", "fund"],
    ],
)
def test_help_teaches_with_an_example(cmd, capsys):
    assert main([*cmd, "--help"]) == 0        # main returns argparse's exit code, --help's 0 included
    out = capsys.readouterr().out
    assert "example" in out
    assert "ledger " + " ".join(cmd) in out.split("example", 1)[1] or cmd[0] in out.split("example", 1)[1]
