"""Keystore accounts: encrypted at rest, names and addresses only on screen, keys never in errors."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from conftest import DEV_KEYS, cli_env
from ledger.ethereum import keys
from ledger.errors import AccountError, ConfigError

PASSWORD = "correct horse battery staple"
DEV0 = Account.from_key(DEV_KEYS[0]).address


def ledger(args, env, stdin=subprocess.DEVNULL, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ledger_cli", *args], env=env, capture_output=True, text=True, stdin=stdin, timeout=timeout
    )


def no_secret(text: str, *secrets: str) -> None:
    low = text.lower()
    for s in secrets:
        s = s.lower()
        assert s not in low, "a secret leaked"
        if s.startswith("0x"):
            assert s[2:] not in low, "a secret leaked"


def assert_one_line_error(r, *secrets: str) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    no_secret(r.stdout + r.stderr, *secrets)
    return lines[0]


@pytest.fixture
def entry(settings):
    return keys.new_account(settings, PASSWORD, name="w0", kdf="pbkdf2")


# ---------------------------------------------------------------------------- keystore files


def test_new_account_is_encrypted_0600(settings, entry):
    assert entry.name == "w0" and entry.path == settings.keystore / "w0.json"
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.keystore.stat().st_mode) & 0o077 == 0
    data = json.loads(entry.path.read_text())
    assert data["version"] == 3 and "crypto" in data
    key = Account.decrypt(data, PASSWORD)
    assert Account.from_key(key).address == entry.address
    no_secret(entry.path.read_text(), "0x" + key.hex(), PASSWORD)
    assert [(e.name, e.address) for e in keys.list_accounts(settings)] == [("w0", entry.address)]
    # no stray temp files
    assert sorted(p.name for p in settings.keystore.iterdir()) == ["w0.json"]


def test_scrypt_default(settings):
    e = keys.new_account(settings, PASSWORD, name="s")
    assert json.loads(e.path.read_text())["crypto"]["kdf"] == "scrypt"


def test_names_and_duplicates(settings, entry):
    with pytest.raises(AccountError, match="already exists"):
        keys.new_account(settings, PASSWORD, name="w0", kdf="pbkdf2")
    with pytest.raises(AccountError, match="bad account name"):
        keys.new_account(settings, PASSWORD, name="../evil", kdf="pbkdf2")
    with pytest.raises(AccountError, match="bad account name"):
        keys.new_account(settings, PASSWORD, name=DEV0, kdf="pbkdf2")
    with pytest.raises(AccountError, match="empty"):
        keys.new_account(settings, "", name="x", kdf="pbkdf2")
    keys.new_account(settings, PASSWORD, name="dev", kdf="pbkdf2", private_key=DEV_KEYS[0])
    with pytest.raises(AccountError, match="already in the keystore"):
        keys.new_account(settings, PASSWORD, name="dev2", kdf="pbkdf2", private_key=DEV_KEYS[0])
    default = keys.new_account(settings, PASSWORD, kdf="pbkdf2")
    assert default.name == "acct-" + default.address[2:10].lower()


# ---------------------------------------------------------------------------- load_account


def test_load_by_name_and_address(settings, entry, tmp_path):
    env = {keys.ENV_PASSWORD: PASSWORD}
    a = keys.load_account(settings.replace(account="w0"), env=env)
    assert a.address == entry.address
    assert keys.load_account(settings, entry.address.lower(), env=env).address == entry.address
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    assert keys.load_account(settings, "w0", env={keys.ENV_PASSWORD_FILE: str(pw)}).address == entry.address


def test_wrong_password(settings, entry):
    keys.load_account(settings, "w0", env={keys.ENV_PASSWORD: PASSWORD})  # fills the cache
    with pytest.raises(AccountError, match="wrong password") as ei:
        keys.load_account(settings, "w0", env={keys.ENV_PASSWORD: "not it"})
    assert "not it" not in str(ei.value) and PASSWORD not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_missing_account(settings, entry):
    with pytest.raises(AccountError, match=r"no keystore account 'a9'.*known: w0.*ledger account new"):
        keys.load_account(settings, "a9", env={keys.ENV_PASSWORD: PASSWORD})


def test_env_private_key(settings):
    a = keys.load_account(settings, env={keys.ENV_PRIVATE_KEY: DEV_KEYS[1]})
    assert a.address == Account.from_key(DEV_KEYS[1]).address
    # an address with no keystore entry is fine when the env key is that address's key
    assert keys.load_account(settings, a.address, env={keys.ENV_PRIVATE_KEY: DEV_KEYS[1]}).address == a.address
    with pytest.raises(AccountError, match="key of another address"):
        keys.load_account(settings, DEV0, env={keys.ENV_PRIVATE_KEY: DEV_KEYS[1]})


def test_nothing_configured(settings):
    with pytest.raises(keys.NoAccountConfigured, match="LEDGER_PRIVATE_KEY"):
        keys.load_account(settings, env={})


@pytest.mark.parametrize(
    "bad",
    [
        DEV_KEYS[2][:-1],  # one digit short
        DEV_KEYS[2][:-1] + "g",  # not hex
        DEV_KEYS[2] + "00",  # too long
        "0x" + "0" * 64,  # zero is not a valid secp256k1 key
        "hunter2",
    ],
)
def test_malformed_private_key_never_shown(settings, bad):
    with pytest.raises(AccountError, match="LEDGER_PRIVATE_KEY is not a valid private key") as ei:
        keys.load_account(settings, env={keys.ENV_PRIVATE_KEY: bad})
    no_secret(str(ei.value), bad)
    assert ei.value.__cause__ is None and ei.value.__context__ is None


def test_no_tty_no_password(settings, entry, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(AccountError, match="no terminal.*LEDGER_KEY_PASSWORD"):
        keys.load_account(settings, "w0", env={})


def test_password_file_problems(settings, entry, tmp_path):
    with pytest.raises(AccountError, match="cannot read password file"):
        keys.load_account(settings, "w0", env={keys.ENV_PASSWORD_FILE: str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AccountError, match="is empty"):
        keys.load_account(settings, "w0", env={keys.ENV_PASSWORD_FILE: str(tmp_path / "empty")})


# ---------------------------------------------------------------------------- CLI


def test_cli_new_and_list_show_no_secret(settings, tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text(PASSWORD + "\n")
    env = cli_env(settings)
    r = ledger(["account", "new", "--name", "w0", "--password-file", str(pw), "--kdf", "pbkdf2"], env)
    assert r.returncode == 0, r.stderr
    name, address = r.stdout.split()
    assert name == "w0" and Web3.is_checksum_address(address)
    key = Account.decrypt(json.loads((settings.keystore / "w0.json").read_text()), PASSWORD)
    no_secret(r.stdout + r.stderr, "0x" + key.hex(), PASSWORD)

    r = ledger(["account", "new", "--name", "dev", "--import-env-key", "--kdf", "pbkdf2"],
               cli_env(settings, LEDGER_PRIVATE_KEY=DEV_KEYS[0], LEDGER_KEY_PASSWORD=PASSWORD))
    assert r.returncode == 0 and r.stdout.split() == ["dev", DEV0], r.stderr
    no_secret(r.stdout + r.stderr, DEV_KEYS[0], PASSWORD)

    r = ledger(["account", "list"], env)
    assert r.returncode == 0
    assert [l.split() for l in r.stdout.splitlines()] == [["dev", DEV0], ["w0", address]]
    no_secret(r.stdout + r.stderr, "0x" + key.hex(), DEV_KEYS[0])
    for p in settings.keystore.iterdir():
        no_secret(p.read_text(), "0x" + key.hex(), DEV_KEYS[0], PASSWORD)


def test_cli_new_without_password_source_is_one_line(settings):
    r = ledger(["account", "new", "--name", "x"], cli_env(settings))
    assert "LEDGER_KEY_PASSWORD" in assert_one_line_error(r)
    assert not (settings.keystore / "x.json").exists()


@pytest.mark.parametrize("bad", [DEV_KEYS[3][:-1], DEV_KEYS[3][:-1] + "z"])
def test_cli_malformed_env_key_is_one_line_without_the_key(settings, bad):
    # LEDGER_DEBUG unset: no traceback, and the key is nowhere in the output
    r = ledger(["account", "new", "--import-env-key", "--name", "x"],
               cli_env(settings, LEDGER_PRIVATE_KEY=bad, LEDGER_KEY_PASSWORD=PASSWORD))
    assert "not a valid private key" in assert_one_line_error(r, bad, PASSWORD)


def test_cli_wrong_password_and_missing_account(settings, rpc_url, entry):
    # `ledger deploy` is the first thing that signs; the account is loaded before anything is sent.
    env = cli_env(settings, LEDGER_ACCOUNT="w0", LEDGER_KEY_PASSWORD="wrong-password-123")
    line = assert_one_line_error(ledger(["deploy"], env), "wrong-password-123", PASSWORD)
    assert "wrong password" in line
    env = cli_env(settings, LEDGER_ACCOUNT="nobody", LEDGER_KEY_PASSWORD=PASSWORD)
    line = assert_one_line_error(ledger(["deploy"], env), PASSWORD)
    assert "no keystore account 'nobody'" in line
    env = cli_env(settings, LEDGER_PRIVATE_KEY=DEV_KEYS[4][:-2])
    line = assert_one_line_error(ledger(["deploy"], env), DEV_KEYS[4][:-2])
    assert "LEDGER_PRIVATE_KEY is not a valid private key" in line
    assert not settings.deployments_dir.exists()


# ---------------------------------------------------------------------------- funding


def test_fund_local(settings, rpc_url):
    w3 = Web3(HTTPProvider(rpc_url))
    fresh = Account.create().address
    assert w3.eth.get_balance(fresh) == 0
    assert keys.fund_local(w3, fresh, 5 * 10**18) == 5 * 10**18
    assert keys.fund_local(w3, fresh, 10**18) == 6 * 10**18  # adds, does not set
    assert w3.eth.get_balance(fresh) == 6 * 10**18

    class Remote:  # a chain that says it is not local
        chain_id = 11155111

        def __init__(self, w3):
            self.w3 = w3

    with pytest.raises(ConfigError, match="refusing to fund on chain id 11155111"):
        keys.fund_local(Remote(w3), fresh, 1)
    assert keys.fund_local(Remote(w3), fresh, 1, force=True) == 6 * 10**18 + 1
    with pytest.raises(AccountError, match="not an address"):
        keys.fund_local(w3, "0x1234", 1)


def test_cli_chain_fund(settings, rpc_url, entry):
    w3 = Web3(HTTPProvider(rpc_url))
    r = ledger(["chain", "fund", "w0", "--eth", "3"], cli_env(settings))
    assert r.returncode == 0, r.stderr
    assert w3.eth.get_balance(entry.address) == 3 * 10**18
    fresh = Account.create().address
    r = ledger(["chain", "fund", fresh, "--eth", "0.5"], cli_env(settings))
    assert r.returncode == 0, r.stderr
    assert w3.eth.get_balance(fresh) == 5 * 10**17
