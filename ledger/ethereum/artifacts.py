"""Compiled contract artifacts committed under ``contracts/build/``: no compiler needed.

An artifact is the JSON written by ``ledger compile`` (see ``ledger.ethereum.compile``)::

    {"contractName", "sourceName", "abi", "bytecode", "deployedBytecode",
     "compiler": {"version", "settings"}, "sources": {path: sha256 hex}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ledger.errors import LedgerError
from ledger.services.procs import PROJECT_ROOT

CONTRACTS_DIR = PROJECT_ROOT / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"
DEFAULT_CONTRACT = "TrainingLedger"


def artifact_path(name: str = DEFAULT_CONTRACT, build_dir: Path | None = None) -> Path:
    return Path(build_dir or BUILD_DIR) / f"{name}.json"


def load_artifact(name: str = DEFAULT_CONTRACT, build_dir: Path | None = None) -> dict:
    """The committed artifact of contract ``name`` as a dict (abi, bytecode, ...)."""
    path = artifact_path(name, build_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LedgerError(f"no compiled artifact {path}; run `ledger compile`") from None
    except (OSError, ValueError) as e:
        raise LedgerError(f"compiled artifact {path} is unreadable ({type(e).__name__}: {e}); run `ledger compile`") from None
    for key in ("abi", "bytecode", "deployedBytecode"):
        if key not in data:
            raise LedgerError(f"compiled artifact {path} has no {key!r}; run `ledger compile`")
    return data


def artifact_sha256(name: str = DEFAULT_CONTRACT, build_dir: Path | None = None) -> str:
    """sha256 of the artifact file's exact bytes, ``0x`` + 64 hex (recorded by deployments)."""
    path = artifact_path(name, build_dir)
    try:
        return "0x" + hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise LedgerError(f"no compiled artifact {path}; run `ledger compile`") from None


def dumps_artifact(artifact: dict) -> str:
    """The canonical text of an artifact file: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def link(code_hex: str, refs: dict, addresses: dict[str, str]) -> str:
    """``code_hex`` with each linked library's placeholder (solc's ``linkReferences``:
    {source: {library: [{start, length}]}}) replaced by the library's address in
    ``addresses`` (by library name); LedgerError for a library without one."""
    h = code_hex[2:] if code_hex.startswith("0x") else code_hex
    for libs in (refs or {}).values():
        for name, entries in libs.items():
            if name not in addresses:
                raise LedgerError(f"the bytecode links library {name}, but no address was given for it")
            addr = str(addresses[name]).lower().removeprefix("0x")
            if len(addr) != 40:
                raise LedgerError(f"library {name}: {addresses[name]!r} is not an address")
            for e in entries:
                s = 2 * int(e["start"])
                h = h[:s] + addr + h[s + 40:]
    return "0x" + h


def linked_libraries(refs: dict) -> list[str]:
    """The names of the libraries a bytecode links, in a stable order."""
    return sorted({name for libs in (refs or {}).values() for name in libs})
