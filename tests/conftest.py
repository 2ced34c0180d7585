"""Shared fixtures: a real anvil per test on a free loopback port, stopped by PID.

Every test gets its own data directory (chain state, store, keystore,
deployments), so tests never see each other's state.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ledger.services import anvil
from ledger.config import Settings, load_settings

# anvil's well-known development accounts (mnemonic "test test ... junk"): public test keys,
# funded with 10,000 ETH on every fresh anvil. Never use them outside a local chain.
DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings isolated in tmp_path, the chain on any free port, env ignored."""
    return load_settings({"data_dir": tmp_path / "ledger-data", "chain_port": 0}, env={}, config_file=None)


@pytest.fixture
def chain_service(settings: Settings):
    """A real anvil for this test; stopped by PID afterwards, even on failure."""
    up = anvil.chain_up(settings)
    try:
        yield up.info
    finally:
        anvil.chain_down(settings)


@pytest.fixture
def rpc_url(chain_service) -> str:
    return chain_service.url


def cli_env(settings: Settings, **extra: str) -> dict:
    """Environment for running `ledger` in a subprocess against this test's data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_DATA_DIR"] = str(settings.data_dir)
    env["LEDGER_CHAIN_PORT"] = "0"
    env.update(extra)
    return env


def require_tool(name: str) -> str:
    """Path of an external oracle the suite needs; `make test` installs it as root."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it when run as root)")
    return path


@pytest.fixture
def deployed(settings: Settings, chain_service):
    """A deployed TrainingLedger, the embedded store, and DEV0 as the job owner.
    Every process spawned through it is killed at the end of the test."""
    from support import deployed_env

    with deployed_env(settings) as env:
        yield env


# The slowest test files (seconds of one pytest worker, measured in `make test` runs),
# collected first: `make test` hands whole files to two workers in collection order, and
# a heavy file that starts last leaves one worker idle while the other finishes it.
SLOWEST_FIRST = (
    "test_aggregator.py",       # ~260 s
    "test_hf_models.py",        # ~200 s
    "test_rewards.py",          # ~180 s
    "test_relay.py",            # ~140 s
    "test_signals.py",          # ~115 s
    "test_transcripts.py",      # ~110 s
    "test_worker.py",           # ~100 s
    "test_watch.py",            # ~100 s
    "test_segment_replay.py",   # ~90 s
    "test_own_data.py",         # ~90 s
    "test_chain_outage.py",     # ~85 s
    "test_party_state.py",      # ~80 s
    "test_hardhat.py",          # ~80 s
    "test_compile.py",          # ~70 s
    "test_economics.py",        # ~50 s
    "test_audit.py",            # ~70 s
    "test_netns.py",            # ~65 s
    "test_train.py",            # ~60 s
    "test_audit_artifacts.py",  # ~60 s
    "test_demo.py",             # ~60 s
    "test_draw.py",             # ~55 s
    "test_availability.py",     # ~50 s
    "test_export.py",           # ~50 s
    "test_round_cmds.py",       # ~45 s
    "test_storage_outage.py",   # ~45 s
    "test_chain_clock.py",      # ~40 s
)


def pytest_collection_modifyitems(session, config, items):
    here = Path(__file__).parent
    stale = [name for name in SLOWEST_FIRST if not any(here.glob(f"*/{name}"))]
    assert not stale, f"SLOWEST_FIRST names files that are not in tests/: {stale}"
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.fixture(scope="module")
def module_rpc(tmp_path_factory) -> str:
    """One anvil for the whole module (tests that each deploy their own contract on it), stopped by PID."""
    settings = load_settings({"data_dir": tmp_path_factory.mktemp("module-chain") / "ledger-data", "chain_port": 0},
                             env={}, config_file=None)
    up = anvil.chain_up(settings)
    try:
        yield up.info.url
    finally:
        anvil.chain_down(settings)


@pytest.fixture(scope="module")
def module_contract(module_rpc):
    """The contract and its libraries deployed once on the module's anvil (``support.contract.ContractEnv``)."""
    from support.contract import ContractEnv

    return ContractEnv(module_rpc)


@pytest.fixture
def contract_env(module_contract):
    """The module's contract as freshly deployed: the chain is snapshotted before the test
    and reverted after it (``evm_snapshot`` / ``evm_revert``), so every test starts from
    the same state as if it had deployed its own, without paying for the deploy."""
    w3 = module_contract.w3
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield module_contract
    finally:
        assert w3.provider.make_request("evm_revert", [snapshot]).get("result") is True, "evm_revert refused"
        module_contract.reconnect()


@pytest.fixture
def chain_cli_env(settings):
    """Environment for `ledger` subprocesses on this test's data dir, the chain's state dumped
    every ``support.cli.STATE_INTERVAL`` seconds; whatever chain they start is stopped afterwards."""
    from support.cli import STATE_INTERVAL

    e = cli_env(settings, LEDGER_STATE_INTERVAL=str(STATE_INTERVAL))
    try:
        yield e
    finally:
        anvil.chain_down(settings)
