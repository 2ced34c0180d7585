"""Accounts: encrypted keystore files, the private key from the environment, local funding.

A keystore entry is a standard Ethereum keystore (v3) JSON file, written by
``eth_account.Account.encrypt`` (scrypt by default, pbkdf2 on request), named
``<name>.json`` in ``settings.keystore`` with mode 0600. It never holds the key in
plaintext, and nothing here ever prints, logs or puts in an error message a private
key or a password.

``load_account(settings)`` picks the account to act as:

- ``settings.account`` (``--account`` / ``LEDGER_ACCOUNT``) names a keystore entry by
  name or by address; its password comes from ``LEDGER_KEY_PASSWORD``, else the file
  named by ``LEDGER_KEY_PASSWORD_FILE``, else an interactive prompt (only on a tty).
  An address with no keystore entry is accepted when ``LEDGER_PRIVATE_KEY`` is the
  key of that very address.
- with no account configured, the key in ``LEDGER_PRIVATE_KEY``.

Secrets are read from the environment at the moment they are needed, never stored
in ``Settings``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.config import Settings
from ledger import safejson
from ledger.errors import AccountError, ConfigError
from ledger.ethereum.chain import dev_node_kind

MAX_KEYSTORE_BYTES = 1 << 20   # a keystore file is about 500 bytes

ENV_PRIVATE_KEY = "LEDGER_PRIVATE_KEY"
ENV_PASSWORD = "LEDGER_KEY_PASSWORD"
ENV_PASSWORD_FILE = "LEDGER_KEY_PASSWORD_FILE"

KDFS = ("scrypt", "pbkdf2")

# Chain ids on which `anvil_setBalance` funding is allowed without force (anvil / hardhat).
LOCAL_CHAIN_IDS = frozenset({31337})

# anvil's development account 0 (mnemonic "test test ... junk"): a public test key,
# funded on every fresh anvil. Only ever used on a local chain (chain id 31337).
ANVIL_DEV_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDR_RE = re.compile(r"^(0x)?[0-9a-fA-F]{40}$")


class NoAccountConfigured(AccountError):
    """Neither an account (--account / LEDGER_ACCOUNT) nor LEDGER_PRIVATE_KEY is set."""


@dataclass(frozen=True)
class KeystoreEntry:
    name: str
    address: str  # checksummed
    path: Path
    public_key: str | None = None   # 0x + 128 hex, kept in clear beside the encrypted key (public by nature)


# ---------------------------------------------------------------------------- keystore


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address if address.startswith("0x") else "0x" + address)


def is_address(value: str) -> bool:
    return bool(_ADDR_RE.match(value or ""))


def list_accounts(settings: Settings) -> list[KeystoreEntry]:
    """Keystore entries, sorted by name. Unreadable files are skipped (see ``keystore_problems``)."""
    return _scan(settings)[0]


def keystore_problems(settings: Settings) -> list[str]:
    """One line per keystore file that could not be read."""
    return _scan(settings)[1]


def _scan(settings: Settings) -> tuple[list[KeystoreEntry], list[str]]:
    d = settings.keystore
    entries: list[KeystoreEntry] = []
    problems: list[str] = []
    if not d.is_dir():
        return entries, problems
    for path in sorted(d.glob("*.json")):
        try:
            data = safejson.read(path, max_bytes=MAX_KEYSTORE_BYTES)
            address = _checksum(str(data["address"]))
            if "crypto" not in data and "Crypto" not in data:
                raise ValueError("no crypto section")
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(f"{path}: not a keystore file")
            continue
        entries.append(KeystoreEntry(path.stem, address, path, _public_key(data, address)))
    return entries, problems


def _public_key(data: dict, address: str) -> str | None:
    """The entry's public key, if it records one that is its address's (else none)."""
    from ledger.privacy.sealing import SealError, address_of, parse_public_key, public_key_hex

    try:
        pub = parse_public_key(str(data.get("publicKey") or ""))
    except SealError:
        return None
    return public_key_hex(pub) if address_of(pub) == address else None


def find_account(settings: Settings, name_or_address: str) -> KeystoreEntry | None:
    entries = list_accounts(settings)
    if is_address(name_or_address):
        want = _checksum(name_or_address)
        for e in entries:
            if e.address == want:
                return e
        return None
    for e in entries:
        if e.name == name_or_address:
            return e
    return None


def new_account(
    settings: Settings,
    password: str,
    name: str | None = None,
    kdf: str = "scrypt",
    private_key: str | bytes | None = None,
) -> KeystoreEntry:
    """Create (or import ``private_key`` into) an encrypted keystore entry. Never overwrites."""
    if kdf not in KDFS:
        raise ConfigError(f"kdf must be one of {', '.join(KDFS)}, got {kdf!r}")
    if not password:
        raise AccountError("refusing an empty keystore password")
    if private_key is None:
        acct = Account.create()
    else:
        acct = _account_from_key(private_key, "the key to import")
    if name is None:
        name = "acct-" + acct.address[2:10].lower()
    if not _NAME_RE.match(name) or is_address(name):
        raise AccountError(
            f"bad account name {name!r}: use letters, digits, '.', '_' or '-' (up to 64), not an address"
        )
    existing = find_account(settings, acct.address)
    if existing is not None:
        raise AccountError(f"address {acct.address} is already in the keystore as {existing.name!r}")
    d = settings.keystore
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = d / f"{name}.json"
    if final.exists():
        raise AccountError(f"a keystore account named {name!r} already exists ({final}); choose another --name")
    from ledger.privacy.sealing import public_key_hex, public_key_of

    keystore = Account.encrypt(acct.key, password, kdf=kdf)
    # the public key beside it, so others can seal to this account without its password
    keystore["publicKey"] = public_key_hex(public_key_of(acct))
    _write_private_no_clobber(final, json.dumps(keystore, indent=2).encode())
    return KeystoreEntry(name, acct.address, final, keystore["publicKey"])


def _write_private_no_clobber(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` with mode 0600, atomically, failing if it exists."""
    tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, final)  # atomic, and refuses to replace an existing file
        except FileExistsError:
            raise AccountError(f"{final} already exists; choose another --name") from None
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------- passwords


def read_password(
    what: str,
    env: Mapping[str, str] | None = None,
    password_file: str | Path | None = None,
    confirm: bool = False,
) -> str:
    """The keystore password: ``password_file``, LEDGER_KEY_PASSWORD, LEDGER_KEY_PASSWORD_FILE, a tty prompt."""
    env = os.environ if env is None else env
    if password_file is not None:
        return _password_from_file(Path(password_file), "--password-file")
    if env.get(ENV_PASSWORD):
        return env[ENV_PASSWORD]
    if env.get(ENV_PASSWORD_FILE):
        return _password_from_file(Path(env[ENV_PASSWORD_FILE]), ENV_PASSWORD_FILE)
    if not sys.stdin.isatty():
        raise AccountError(
            f"{what} needs a keystore password and there is no terminal to ask on: "
            f"set {ENV_PASSWORD} or {ENV_PASSWORD_FILE}"
        )
    try:
        pw = getpass.getpass(f"password for {what}: ")
        if confirm and getpass.getpass("repeat the password: ") != pw:
            raise AccountError("the two passwords differ")
    except EOFError:
        raise AccountError(f"no password given for {what}") from None
    return pw


def _password_from_file(path: Path, source: str) -> str:
    try:
        with open(path, "rb") as f:        # a bounded read: /dev/zero is not a password file
            raw = f.read(1 << 16)
    except OSError as e:
        raise AccountError(f"{source}: cannot read password file {path} ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AccountError(f"{source}: password file {path} is not UTF-8 text") from None
    pw = text.rstrip("\r\n")
    if not pw:
        raise AccountError(f"{source}: password file {path} is empty")
    return pw


# ---------------------------------------------------------------------------- loading

# Decrypting a keystore costs about half a second (scrypt); a process that opens the
# same account many times pays it once. Keyed by file, its mtime and a keyed hash of
# the password, so a wrong password is never answered from the cache.
_CACHE: dict[tuple, LocalAccount] = {}
_CACHE_SALT = secrets.token_bytes(16)


def _account_from_key(key: str | bytes, source: str) -> LocalAccount:
    """A LocalAccount from a hex key; the error names ``source``, never the key."""
    try:
        if isinstance(key, str):
            k = key.strip()
            if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", k):
                raise ValueError
            return Account.from_key(k)
        return Account.from_key(bytes(key))
    except Exception:  # noqa: BLE001 - the underlying message may quote the key
        pass
    raise AccountError(f"{source} is not a valid private key (expected 32 bytes as 64 hex digits, optionally 0x-prefixed)")


def decrypt_entry(entry: KeystoreEntry, password: str) -> LocalAccount:
    try:
        st = entry.path.stat()
        key = (str(entry.path.resolve()), st.st_mtime_ns, hashlib.sha256(_CACHE_SALT + password.encode()).digest())
    except OSError:
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    try:
        data = safejson.read(entry.path, max_bytes=MAX_KEYSTORE_BYTES)
    except (OSError, ValueError):
        raise AccountError(f"keystore file {entry.path} is unreadable") from None
    try:
        raw = Account.decrypt(data, password)
    except Exception as e:  # noqa: BLE001 - eth-keyfile raises ValueError subclasses
        if "mac" in str(e).lower():
            raise AccountError(f"wrong password for keystore account {entry.name!r} ({entry.address})") from None
        raise AccountError(f"keystore file {entry.path} could not be decrypted (corrupt or unsupported)") from None
    acct = Account.from_key(raw)
    if acct.address != entry.address:
        raise AccountError(f"keystore file {entry.path} decrypts to a different address than it names")
    if key is not None:
        _CACHE[key] = acct
    return acct


def load_account(
    settings: Settings,
    name_or_address: str | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalAccount:
    """The account to sign with (see the module docstring). Raises AccountError."""
    env = os.environ if env is None else env
    wanted = name_or_address or settings.account
    env_key = env.get(ENV_PRIVATE_KEY) or None
    if not wanted:
        if env_key is None:
            raise NoAccountConfigured(
                "no account configured: pass --account NAME (see `ledger account list`, "
                f"or create one with `ledger account new`) or set {ENV_PRIVATE_KEY}"
            )
        return _account_from_key(env_key, ENV_PRIVATE_KEY)
    entry = find_account(settings, wanted)
    if entry is None:
        if is_address(wanted) and env_key is not None:
            acct = _account_from_key(env_key, ENV_PRIVATE_KEY)
            if acct.address == _checksum(wanted):
                return acct
            raise AccountError(
                f"account {wanted} is not in the keystore ({settings.keystore}) and "
                f"{ENV_PRIVATE_KEY} is the key of another address"
            )
        known = ", ".join(e.name for e in list_accounts(settings)) or "none"
        raise AccountError(
            f"no keystore account {wanted!r} in {settings.keystore} (known: {known}); "
            f"create it with `ledger account new --name {wanted if not is_address(wanted) else 'NAME'}`"
        )
    password = read_password(f"keystore account {entry.name!r} ({entry.address})", env=env)
    return decrypt_entry(entry, password)


def anvil_dev_account() -> LocalAccount:
    """anvil's dev account 0 (public test key): only for local chains."""
    return Account.from_key(ANVIL_DEV_KEY_0)


# ---------------------------------------------------------------------------- funding


# Each local dev node's own balance setter. Which one a node has is asked once with
# web3_clientVersion ("anvil/v1.7.1", "HardhatNetwork/2.29.1/..."); an unknown client
# is tried with each in turn, since forks (ganache, tenderly, ...) copy one or the other.
SET_BALANCE = {"anvil": "anvil_setBalance", "hardhat": "hardhat_setBalance"}


def _rpc_error(resp) -> str | None:
    if isinstance(resp, dict) and resp.get("error"):
        err = resp["error"]
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    return None


def fund_local(chain, address: str, wei: int, force: bool = False) -> int:
    """Add ``wei`` to ``address`` on a local dev node (anvil's ``anvil_setBalance`` or
    Hardhat's ``hardhat_setBalance``); returns the new balance.

    ``chain`` is a ``ledger.ethereum.chain.Chain`` (or anything with ``.w3``, or a Web3).
    Refuses chain ids other than 31337 unless ``force``.
    """
    from ledger.errors import ChainUnreachable

    w3 = getattr(chain, "w3", chain)
    if not is_address(address):
        raise AccountError(f"not an address: {address!r}")
    if wei < 0:
        raise ConfigError("cannot fund a negative amount")
    addr = _checksum(address)
    refused: list[str] = []
    try:
        chain_id = getattr(chain, "chain_id", None) or w3.eth.chain_id
        if chain_id not in LOCAL_CHAIN_IDS and not force:
            raise ConfigError(
                f"refusing to fund on chain id {chain_id}: setting a balance is for local dev "
                "chains (31337); fund the account from a wallet instead"
            )
        balance = w3.eth.get_balance(addr)
        new = balance + int(wei)
        kind = dev_node_kind(w3)
        methods = [SET_BALANCE[kind]] if kind else list(SET_BALANCE.values())
        for method in methods:
            msg = _rpc_error(w3.provider.make_request(method, [addr, hex(new)]))
            if msg is None:
                return new
            refused.append(f"{method}: {msg}")
    except (ConfigError, AccountError):
        raise
    except Exception as e:  # noqa: BLE001 - connection errors of several kinds
        raise ChainUnreachable(f"could not fund {addr}: {type(e).__name__}: {e}") from None
    raise ConfigError(
        f"the chain refused to set a balance ({'; '.join(refused)}); it is not an anvil or Hardhat "
        "node: fund the account with a transfer from a funded account instead"
    )


def transfer(chain, account: LocalAccount, to: str, wei: int, timeout: float = 120.0) -> dict:
    """Send ``wei`` from ``account`` (signed here, never by the node) to ``to``; the receipt.

    For funding parties from a key the user lends (``ledger demo`` on a chain it did not
    start). ``chain`` is a ``ledger.ethereum.chain.Chain``; errors come back as LedgerErrors naming
    the sender's address, never its key."""
    from ledger.errors import InsufficientFunds, TransactionFailed

    w3 = chain.w3
    if not is_address(to):
        raise AccountError(f"not an address: {to!r}")
    try:
        tx = {"to": _checksum(to), "value": int(wei), "gas": 21_000, "chainId": int(chain.chain_id),
              "nonce": w3.eth.get_transaction_count(account.address, "pending")}
        base = w3.eth.get_block("latest").get("baseFeePerGas")
        if base is None:
            tx["gasPrice"] = w3.eth.gas_price
        else:
            tip = w3.eth.max_priority_fee
            tx.update(maxPriorityFeePerGas=tip, maxFeePerGas=2 * int(base) + int(tip))
        receipt = w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), timeout=timeout)
    except Exception as e:  # noqa: BLE001 - the node's message names no key
        msg = str(e)
        if "insufficient funds" in msg.lower():
            raise InsufficientFunds(f"{account.address} cannot pay {wei} wei to {to}; fund it first") from None
        raise TransactionFailed(f"transfer from {account.address} to {to} failed: {type(e).__name__}: {msg[:200]}") from None
    if receipt["status"] != 1:
        raise TransactionFailed(f"transfer from {account.address} to {to} was mined with status 0")
    return receipt
