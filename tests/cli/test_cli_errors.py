"""Failures a user can act on: one `error: ...` line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from conftest import DEV_KEYS, cli_env
from support.cli import closed_port, ledger, one_line_error
from support.contract import OTHER_INITCODE, deploy_raw

DEV1 = Account.from_key(DEV_KEYS[1]).address


@pytest.fixture
def deployed(settings, rpc_url):
    r = ledger(["deploy"], cli_env(settings))
    assert r.returncode == 0, r.stderr
    return json.loads((settings.deployments_dir / "31337.json").read_text())


@pytest.mark.parametrize("cmd", [["deploy"], ["verify-deployment"], ["chain", "fund", DEV1]])
def test_rpc_unreachable(settings, cmd):
    env = cli_env(settings, LEDGER_RPC_URL=f"http://127.0.0.1:{closed_port()}")
    line = one_line_error(ledger(cmd, env))
    assert "127.0.0.1" in line


@pytest.mark.parametrize("cmd", [["deploy"], ["verify-deployment"]])
def test_no_chain_running(settings, cmd):
    line = one_line_error(ledger(cmd, cli_env(settings)))
    assert "ledger chain up" in line and "LEDGER_RPC_URL" in line


def test_wrong_chain_id(settings, rpc_url, deployed):
    for cmd in (["deploy", "--force"], ["verify-deployment"]):
        line = one_line_error(ledger(cmd, cli_env(settings, LEDGER_CHAIN_ID="1")))
        assert "chain id 31337" in line and "1" in line


def test_no_deployment_record(settings, rpc_url):
    line = one_line_error(ledger(["verify-deployment"], cli_env(settings)))
    assert "no TrainingLedger deployment recorded for chain 31337" in line and "ledger deploy" in line


def test_code_not_ours(settings, rpc_url, deployed):
    other = deploy_raw(rpc_url, OTHER_INITCODE)
    # LEDGER_CONTRACT pointing at another contract, and at an account with no code
    line = one_line_error(ledger(["verify-deployment"], cli_env(settings, LEDGER_CONTRACT=other)))
    assert "not the TrainingLedger" in line and other in line
    line = one_line_error(ledger(["verify-deployment"], cli_env(settings, LEDGER_CONTRACT=DEV1)))
    assert "no contract code" in line
    line = one_line_error(ledger(["verify-deployment"], cli_env(settings, LEDGER_CONTRACT="0x1234")))
    assert "not an address" in line
    # a record that was edited to point at another contract
    path = settings.deployments_dir / "31337.json"
    path.write_text(json.dumps({**deployed, "address": other}))
    line = one_line_error(ledger(["verify-deployment"], cli_env(settings)))
    assert "not the TrainingLedger" in line


def test_record_exists(settings, rpc_url, deployed):
    line = one_line_error(ledger(["deploy"], cli_env(settings)))
    assert "already deployed" in line and "--force" in line


def test_insufficient_funds(settings, rpc_url):
    key = Account.create().key.to_0x_hex()
    line = one_line_error(ledger(["deploy"], cli_env(settings, LEDGER_PRIVATE_KEY=key)))
    assert "insufficient funds" in line.lower() or "fund" in line.lower()
    assert key[2:] not in line
    assert not settings.deployments_dir.exists()


def test_fund_refused_on_unknown_name(settings, rpc_url):
    line = one_line_error(ledger(["chain", "fund", "nobody"], cli_env(settings)))
    assert "neither an address nor a keystore account" in line
