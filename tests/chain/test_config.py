"""Settings precedence (flags > env > TOML > defaults) and configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ledger.config import Settings, load_settings
from ledger.errors import ConfigError

from conftest import cli_env


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # ./ledger.toml is read when it exists: run every test in an empty directory.
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults():
    s = load_settings({}, env={}, config_file=None)
    assert s == Settings()
    assert s.data_dir == Path(".ledger")
    assert s.rpc_url is None and s.contract is None and s.account is None and s.chain_id is None
    assert s.chain_port == 8545 and s.state_interval == 2 and s.storage == "embedded"
    assert s.keystore == Path(".ledger/keystore")
    assert s.deployments_dir == Path(".ledger/deployments")
    assert s.chain_dir == Path(".ledger/chain")


TOML_ADDR = "0x" + "70" * 20


def test_precedence_flags_env_toml_defaults(tmp_path):
    cfg = write(
        tmp_path / "c.toml",
        f'rpc_url = "http://toml:1"\ncontract = "{TOML_ADDR}"\nchain_port = 1111\nstate_interval = 7\n',
    )
    env = {"LEDGER_RPC_URL": "http://env:2", "LEDGER_CHAIN_PORT": "2222"}
    flags = {"rpc_url": "http://flag:3", "contract": None}
    s = load_settings(flags, env=env, config_file=cfg)
    assert s.rpc_url == "http://flag:3"  # flag beats env and TOML
    assert s.chain_port == 2222  # env beats TOML
    assert s.contract == TOML_ADDR  # TOML beats default; a None flag is "not given"
    assert s.source_of("contract") == f"contract in config file {cfg}" and s.source_of("rpc_url") == "--rpc-url"
    assert s.state_interval == 7
    assert s.storage == "embedded"  # default
    # without the flag, env wins; without env, TOML wins
    assert load_settings({}, env=env, config_file=cfg).rpc_url == "http://env:2"
    assert load_settings({}, env={}, config_file=cfg).rpc_url == "http://toml:1"


def test_empty_env_var_is_unset(tmp_path):
    cfg = write(tmp_path / "c.toml", 'rpc_url = "http://toml:1"\n')
    assert load_settings({}, env={"LEDGER_RPC_URL": ""}, config_file=cfg).rpc_url == "http://toml:1"


def test_types_are_coerced(tmp_path):
    s = load_settings({"data_dir": str(tmp_path / "d")}, env={"LEDGER_CHAIN_ID": "31337", "LEDGER_IPFS_TIMEOUT": "2.5"})
    assert s.data_dir == tmp_path / "d" and isinstance(s.data_dir, Path)
    assert s.chain_id == 31337 and s.ipfs_timeout == 2.5
    assert load_settings({}, env={"LEDGER_KEYSTORE": "/k"}).keystore == Path("/k")


def test_ledger_table_and_env_selected_file(tmp_path):
    cfg = write(tmp_path / "other.toml", '[ledger]\nstorage = "ipfs"\nipfs_api = "/ip4/127.0.0.1/tcp/5001/http"\n')
    s = load_settings({}, env={"LEDGER_CONFIG": str(cfg)})
    assert s.storage == "ipfs" and s.ipfs_api == "/ip4/127.0.0.1/tcp/5001/http"


def test_default_toml_in_cwd(tmp_path):
    write(tmp_path / "ledger.toml", 'account = "w0"\n')
    assert load_settings({}, env={}).account == "w0"
    # an explicit file wins over ./ledger.toml
    other = write(tmp_path / "x.toml", 'account = "a0"\n')
    assert load_settings({}, env={}, config_file=other).account == "a0"


def test_bad_toml(tmp_path):
    cfg = write(tmp_path / "bad.toml", "rpc_url = http://no-quotes\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, env={}, config_file=cfg)


def test_unknown_key(tmp_path):
    cfg = write(tmp_path / "c.toml", 'rpc_urll = "http://typo"\n')
    with pytest.raises(ConfigError, match="unknown keys.*rpc_urll"):
        load_settings({}, env={}, config_file=cfg)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, env={}, config_file="nope.toml")


def test_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="LEDGER_CHAIN_PORT"):
        load_settings({}, env={"LEDGER_CHAIN_PORT": "eighty"})
    with pytest.raises(ConfigError, match="storage"):
        load_settings({}, env={"LEDGER_STORAGE": "s3"})
    cfg = write(tmp_path / "c.toml", 'chain_id = "mainnet"\n')
    with pytest.raises(ConfigError, match="chain_id"):
        load_settings({}, env={}, config_file=cfg)


def _run(args, env):
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "toml, expect",
    [("rpc_url = http://x\n", "not valid TOML"), ('bogus = 1\n', "unknown keys")],
)
def test_cli_reports_config_errors_in_one_line(tmp_path, settings, toml, expect):
    cfg = write(tmp_path / "c.toml", toml)
    r = _run(["--config", str(cfg), "chain", "status"], cli_env(settings))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr


def test_cli_flag_beats_env(tmp_path, settings):
    # --rpc-url (flag) beats LEDGER_RPC_URL (env): status reports the flag's endpoint.
    env = cli_env(settings, LEDGER_RPC_URL="http://127.0.0.1:9/env")
    r = _run(["--rpc-url", "http://127.0.0.1:9/flag", "chain", "status"], env)
    assert "http://127.0.0.1:9/flag" in r.stdout and "/env" not in r.stdout
    assert r.returncode == 2 and "error: --rpc-url http://127.0.0.1:9/flag does not answer" in r.stderr
