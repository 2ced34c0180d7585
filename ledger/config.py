"""Settings: flags, then environment variables, then a TOML file, then defaults.

One ``Settings`` object is built per CLI invocation (``load_settings``) and passed
down; nothing else reads ``os.environ`` for configuration. Secrets (private keys,
passwords) are *not* settings: they are read from the environment only at the
moment they are needed (see ``ledger.ethereum.keys``) so they never sit in a repr or a log.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ledger.errors import ConfigError

DEFAULT_TOML = "ledger.toml"


def _env(name: str, lo: float | None = None, hi: float | None = None) -> dict:
    """A setting's env var and, for a number, its range [lo, hi] (checked when loaded)."""
    return {"env": name, "range": (lo, hi)}


@dataclass
class Settings:
    """Everything a command needs to find the chain, the contract and the storage."""

    data_dir: Path = field(default=Path(".ledger"), metadata=_env("LEDGER_DATA_DIR"))
    # JSON-RPC endpoint; None = the local chain started by `ledger chain up` in data_dir.
    rpc_url: str | None = field(default=None, metadata=_env("LEDGER_RPC_URL"))
    # Port for `ledger chain up` (0 = any free port).
    chain_port: int = field(default=8545, metadata=_env("LEDGER_CHAIN_PORT", 0, 65535))
    # Seconds between anvil state dumps: at most this much history is lost to a kill -9.
    state_interval: int = field(default=2, metadata=_env("LEDGER_STATE_INTERVAL", 1, 86400))
    # Seconds between the empty blocks that keep the local chain's clock moving.
    block_time: int = field(default=1, metadata=_env("LEDGER_BLOCK_TIME", 1, 3600))
    # Expected chain id; None = whatever the deployment record says.
    chain_id: int | None = field(default=None, metadata=_env("LEDGER_CHAIN_ID", 1, 2**64 - 1))
    # Contract address; None = the deployment record for the connected chain.
    contract: str | None = field(default=None, metadata=_env("LEDGER_CONTRACT"))
    # "embedded" (default) or "ipfs".
    storage: str = field(default="embedded", metadata=_env("LEDGER_STORAGE"))
    # Kubo-compatible RPC API (multiaddr or http URL); None = the local node of `ledger ipfs up`.
    ipfs_api: str | None = field(default=None, metadata=_env("LEDGER_IPFS_API"))
    ipfs_port: int = field(default=5001, metadata=_env("LEDGER_IPFS_PORT", 0, 65535))
    # Seconds to wait for an IPFS read before calling the CID missing.
    ipfs_timeout: float = field(default=30.0, metadata=_env("LEDGER_IPFS_TIMEOUT", 0.1, 3600))
    # Account to act as: an address or a keystore name; None = the key in LEDGER_PRIVATE_KEY.
    account: str | None = field(default=None, metadata=_env("LEDGER_ACCOUNT"))
    keystore_dir: Path | None = field(default=None, metadata=_env("LEDGER_KEYSTORE"))
    # Embedded store directory; None = <data_dir>/store. Point an auditor at a shared one.
    store_path: Path | None = field(default=None, metadata=_env("LEDGER_STORE_DIR"))

    @property
    def keystore(self) -> Path:
        return self.keystore_dir or self.data_dir / "keystore"

    @property
    def chain_dir(self) -> Path:
        return self.data_dir / "chain"

    @property
    def ipfs_dir(self) -> Path:
        return self.data_dir / "ipfs"

    @property
    def store_dir(self) -> Path:
        return self.store_path or self.data_dir / "store"

    @property
    def deployments_dir(self) -> Path:
        return self.data_dir / "deployments"

    def replace(self, **changes: Any) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new._sources = {k: v for k, v in getattr(self, "_sources", {}).items() if k not in changes}
        return new

    def source_of(self, name: str) -> str:
        """Where a setting's value came from, as a user would fix it: ``--contract``,
        ``LEDGER_CONTRACT`` or ``contract in ledger.toml`` (both flag and env var when unknown)."""
        known = getattr(self, "_sources", {}).get(name)
        if known:
            return known
        f = next(f for f in fields(Settings) if f.name == name)
        return f"--{name.replace('_', '-')} / {f.metadata['env']}"


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    if value is None:
        return None
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if "Path" in kind:
            if not str(value):
                raise ValueError("an empty path")
            return Path(os.path.expanduser(str(value)))
        if kind.startswith("int"):
            v = int(value)
        elif kind.startswith("float"):
            v = float(value)
            if not math.isfinite(v):
                raise ValueError("not finite")
        else:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {f.name} must be {kind}, got {_shown(value)}") from None
    lo, hi = f.metadata.get("range", (None, None))
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{source}: {f.name} must be in {lo}..{hi}, got {_shown(value)}")
    return v


def _shown(value: Any) -> str:
    r = ascii(value)
    return r if len(r) <= 60 else r[:60] + "..."


ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")


def _check_dir(path: Path, source: str) -> None:
    """A folder the CLI keeps state in must be (or be creatable as) a writable folder:
    one ConfigError naming the setting, instead of a NotADirectoryError or a
    PermissionError from whichever command first writes under it."""
    p = Path(os.path.abspath(path))
    cur = p
    while not os.path.lexists(cur) and cur != cur.parent:
        cur = cur.parent
    fix = f"point {source} at a folder you can write to"
    if not cur.is_dir():
        if cur == p:
            raise ConfigError(f"{source} {path}: is a file, not a folder; {fix}")
        raise ConfigError(f"{source} {path}: {cur} is a file, not a folder; {fix}")
    if not os.access(cur, os.W_OK | os.X_OK):
        if cur == p:
            raise ConfigError(f"{source} {path}: the folder is not writable by this user; {fix}")
        raise ConfigError(f"{source} {path}: cannot be created, {cur} is not writable by this user; {fix}")


# The TOML types each kind of setting takes: a TOML value is typed, so `rpc_url = 8545`
# is a mistake to name, not a string to guess from.
_TOML_TYPES = {"str": (str,), "Path": (str,), "int": (int,), "float": (int, float)}


def _read_toml(p: Path) -> dict[str, Any]:
    """The settings table of the TOML file ``p``, each key checked; ConfigError naming the file otherwise."""
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file (a directory?); point --config or LEDGER_CONFIG at a TOML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    toml = toml.get("ledger", toml)
    if not isinstance(toml, dict):
        raise ConfigError(f"config file {p}: [ledger] must be a table")
    by_name = {f.name: f for f in fields(Settings)}
    unknown = sorted(k for k in toml if k not in by_name)
    if unknown:
        raise ConfigError(f"config file {p}: unknown keys {unknown}; known: {sorted(by_name)}")
    for k, v in toml.items():
        kind = by_name[k].type if isinstance(by_name[k].type, str) else by_name[k].type.__name__
        base = kind.split("|")[0].strip()
        allowed = _TOML_TYPES.get(base, (str,))
        if isinstance(v, bool) or not isinstance(v, allowed):
            want = {"str": "a string", "Path": "a path string", "int": "an integer", "float": "a number"}.get(base, "a string")
            raise ConfigError(f"config file {p}: {k} must be {want}, got {v!r} ({type(v).__name__}); "
                              f"e.g. {k} = {_example(base)}")
    return toml


def _example(base: str) -> str:
    return {"int": "8545", "float": "30.0", "Path": '".ledger"'}.get(base, '"..."')


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    check_dirs: bool = False,
) -> Settings:
    """Build settings with precedence flags > env > TOML file > defaults.

    ``flags`` maps field names to values; ``None`` values mean "not given".
    The TOML file is ``config_file``, else ``$LEDGER_CONFIG``, else ``./ledger.toml``
    if it exists. Its keys are the field names (``rpc_url = "http://..."``), at top
    level or under a ``[ledger]`` table. Numbers are checked against their ranges, and the
    contract (when set) must be an address. ``check_dirs`` (the CLI): the data dir, store
    and keystore folders must be, or be creatable as, writable folders.
    """
    env = os.environ if env is None else env
    path = config_file or env.get("LEDGER_CONFIG")
    toml: dict[str, Any] = {}
    if path or Path(DEFAULT_TOML).exists():
        p = Path(path or DEFAULT_TOML)
        toml = _read_toml(p)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in fields(Settings):
        if flags and flags.get(f.name) is not None:
            sources[f.name] = f"--{f.name.replace('_', '-')}"
            values[f.name] = _coerce(f, flags[f.name], sources[f.name])
        elif env.get(f.metadata["env"]) not in (None, ""):
            sources[f.name] = f.metadata["env"]
            values[f.name] = _coerce(f, env[f.metadata["env"]], sources[f.name])
        elif f.name in toml:
            sources[f.name] = f"{f.name} in config file {path or DEFAULT_TOML}"
            values[f.name] = _coerce(f, toml[f.name], f"config file {path or DEFAULT_TOML}")
    s = Settings(**values)
    s._sources = sources
    if s.storage not in ("embedded", "ipfs"):
        raise ConfigError(f"{s.source_of('storage')}: storage must be 'embedded' or 'ipfs', got {s.storage!r}")
    if s.contract is not None and not ADDRESS_RE.fullmatch(s.contract.strip()):
        raise ConfigError(f"{s.source_of('contract')}: {_shown(s.contract)} is not an address "
                          f"(0x and 40 hex digits: the TrainingLedger address `ledger deploy` printed)")
    if check_dirs:
        for name in ("data_dir", "store_path", "keystore_dir"):
            if getattr(s, name) is not None:
                _check_dir(getattr(s, name), s.source_of(name))
    return s
