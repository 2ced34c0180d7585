"""Compile the Solidity contracts into the committed artifacts (``ledger compile``).

The compiler is solc 0.8.28: a native ``solc`` of that version on PATH (or
``$LEDGER_SOLC``) when there is one, else the npm ``solc`` package (the official
compiler built to WebAssembly) through ``tools/solc-npm``, which gives
``solcx.compile_standard`` the command line of a native solc. Both produce the same
bytes for the same standard-JSON input, so ``ledger compile --check`` is
deterministic: it recompiles and compares the ABI, the creation and runtime code
(the CBOR metadata trailer separately from the code, so a difference says which),
and the sources' sha256 with the committed artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ledger.ethereum.artifacts import DEFAULT_CONTRACT, artifact_path, dumps_artifact
from ledger.errors import ConfigError, LedgerError
from ledger.services.procs import PROJECT_ROOT

SOLC_VERSION = "0.8.28"
NPM_WRAPPER = PROJECT_ROOT / "tools" / "solc-npm"
# Every contract deployed: TrainingLedger and the external libraries linked into it
# (deployed first; ``ledger.ethereum.deploy`` links their addresses in).
LIBRARIES = ["JobLib", "SettlementLib", "CommitteeLib"]
CONTRACTS = [DEFAULT_CONTRACT, *LIBRARIES]
CONTRACTS_SUBDIR = "contracts"
BUILD_SUBDIR = "contracts/build"

# Compiler settings recorded in the artifact (and mirrored in hardhat-config/hardhat.config.js).
# viaIR was measured on anvil 1.7.1 (bench/gas.py): it lowers every operation, the hot
# path too (submitUpdate 39,787 vs 39,871 gas with the legacy pipeline; a finalizing
# propose about 1,700 less; deployment 350,000 less), at about 5 s a compile instead of 2.5.
SETTINGS: dict = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "viaIR": True,
    "metadata": {"bytecodeHash": "ipfs"},
}
OUTPUTS = ["abi", "evm.bytecode.object", "evm.bytecode.linkReferences", "evm.deployedBytecode.object",
           "evm.deployedBytecode.immutableReferences", "evm.deployedBytecode.linkReferences"]


class CompileError(LedgerError):
    """The Solidity compiler failed or is unavailable."""


class ArtifactMismatch(LedgerError):
    """``ledger compile --check``: the committed artifact is not what the sources compile to."""

    exit_code = 1      # a finding (FAILED), like the check's own exit


@dataclass(frozen=True)
class Solc:
    binary: Path
    version: str
    kind: str  # "native" or "npm"

    def describe(self) -> str:
        return f"solc {self.version} ({self.kind}: {self.binary})"


def _solc_version(binary: str | Path) -> str | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+\.\d+\.\d+)(\+commit\.[0-9a-f]+)?", out)
    return m.group(0) if m else None


def find_solc() -> Solc:
    """$LEDGER_SOLC, else a native solc 0.8.28 on PATH, else the npm solc via tools/solc-npm."""
    override = os.environ.get("LEDGER_SOLC")
    if override:
        version = _solc_version(override)
        if version is None:
            raise ConfigError(f"LEDGER_SOLC={override} does not run as `solc --version`")
        if not version.startswith(SOLC_VERSION):
            raise ConfigError(f"LEDGER_SOLC={override} is solc {version}; the contracts are pinned to {SOLC_VERSION}")
        return Solc(Path(override), version, "native")
    native = shutil.which("solc")
    if native:
        version = _solc_version(native)
        if version and version.split("+")[0] == SOLC_VERSION:
            return Solc(Path(native), version, "native")
    npm_solcjs = PROJECT_ROOT / "hardhat-config/node_modules/solc/solc.js"
    if not npm_solcjs.exists() and not os.environ.get("LEDGER_SOLCJS"):
        raise CompileError(
            f"no solc {SOLC_VERSION}: none on PATH and the npm compiler is not installed "
            f"({npm_solcjs}); run `make install-npm` (npm ci in hardhat-config/) or set LEDGER_SOLC"
        )
    version = _solc_version(NPM_WRAPPER)
    if version is None:
        raise CompileError(f"{NPM_WRAPPER} does not run (is node installed?); run `{NPM_WRAPPER} --version` to see why")
    return Solc(NPM_WRAPPER, version, "npm")


def source_files(root: Path = PROJECT_ROOT) -> dict[str, Path]:
    """Solidity sources under ``root/contracts`` (its subfolders too, but not the forge
    tests in ``contracts/test``), keyed by their path relative to ``root``."""
    d = Path(root) / CONTRACTS_SUBDIR
    files = sorted(p for p in d.rglob("*.sol") if p.is_file() and "test" not in p.relative_to(d).parts[:-1])
    if not files:
        raise CompileError(f"no Solidity sources in {d}")
    return {p.relative_to(root).as_posix(): p for p in files}


def sources_sha256(root: Path = PROJECT_ROOT) -> dict[str, str]:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in source_files(root).items()}


def standard_input(root: Path = PROJECT_ROOT) -> dict:
    return {
        "language": "Solidity",
        "sources": {k: {"content": p.read_text()} for k, p in source_files(root).items()},
        "settings": {**SETTINGS, "outputSelection": {"*": {"*": OUTPUTS}}},
    }


def compile_contracts(root: Path = PROJECT_ROOT, solc: Solc | None = None, names: list[str] | None = None) -> dict[str, dict]:
    """Compile ``root/contracts/*.sol``; returns {contract name: artifact dict}."""
    import solcx
    from solcx.exceptions import SolcError

    solc = solc or find_solc()
    root = Path(root)
    data = standard_input(root)
    try:
        out = solcx.compile_standard(data, base_path=str(root), solc_binary=str(solc.binary))
    except SolcError as e:
        raise CompileError(f"{solc.describe()} failed:\n{e.message if hasattr(e, 'message') else e}") from None
    except (OSError, ValueError) as e:
        raise CompileError(f"{solc.describe()} could not run: {e}") from None
    hashes = sources_sha256(root)
    artifacts: dict[str, dict] = {}
    for source, contracts in out.get("contracts", {}).items():
        for name, c in contracts.items():
            if names is not None and name not in names:
                continue
            artifacts[name] = {
                "contractName": name,
                "sourceName": source,
                "abi": c["abi"],
                "bytecode": "0x" + c["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
                "immutableReferences": c["evm"]["deployedBytecode"].get("immutableReferences") or {},
                "linkReferences": c["evm"]["bytecode"].get("linkReferences") or {},
                "deployedLinkReferences": c["evm"]["deployedBytecode"].get("linkReferences") or {},
                "compiler": {"version": solc.version.split(".Emscripten")[0], "settings": SETTINGS},
                "sources": hashes,
            }
    wanted = names if names is not None else CONTRACTS
    missing = [n for n in wanted if n not in artifacts]
    if missing:
        raise CompileError(f"the compiler output has no contract {missing}; are the sources in {root / CONTRACTS_SUBDIR}?")
    return artifacts


def build(root: Path = PROJECT_ROOT, build_dir: Path | None = None, solc: Solc | None = None) -> list[Path]:
    """Compile and write ``contracts/build/<Name>.json`` for each contract in CONTRACTS."""
    root = Path(root)
    build_dir = Path(build_dir) if build_dir else root / BUILD_SUBDIR
    build_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, art in compile_contracts(root, solc, CONTRACTS).items():
        path = artifact_path(name, build_dir)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(dumps_artifact(art))
        os.replace(tmp, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------- --check


def split_metadata(code_hex: str) -> tuple[str, str]:
    """(code, CBOR metadata trailer) of solc bytecode given as hex; the trailer's length is in its last 2 bytes."""
    h = code_hex[2:] if code_hex.startswith("0x") else code_hex
    h = h.lower()
    if len(h) < 4:
        return h, ""
    n = int(h[-4:], 16)
    start = len(h) - 4 - 2 * n
    if n > 0 and start >= 0 and h[start:start + 2] in {f"{b:02x}" for b in range(0xA0, 0xC0)}:
        return h[:start], h[start:]
    return h, ""


def compare_artifacts(committed: dict, fresh: dict) -> list[str]:
    """Human-readable differences between a committed artifact and a fresh compile ([] = same)."""
    diffs = []
    if committed.get("sources") != fresh.get("sources"):
        old, new = committed.get("sources") or {}, fresh.get("sources") or {}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        diffs.append(f"source sha256 differs for {', '.join(changed)} (sources edited since the last `ledger compile`)")
    if committed.get("abi") != fresh.get("abi"):
        diffs.append("ABI differs")
    for key in ("bytecode", "deployedBytecode"):
        old_code, old_meta = split_metadata(committed.get(key) or "")
        new_code, new_meta = split_metadata(fresh.get(key) or "")
        if old_code != new_code:
            diffs.append(f"{key} differs (code, not just metadata)")
        elif old_meta != new_meta:
            diffs.append(f"{key} metadata trailer differs (same code; compiler build, settings or source text changed)")
    if (committed.get("compiler") or {}).get("settings") != (fresh.get("compiler") or {}).get("settings"):
        diffs.append("compiler settings differ")
    return diffs


def check(root: Path = PROJECT_ROOT, build_dir: Path | None = None, solc: Solc | None = None) -> list[str]:
    """Recompile and compare with the committed artifacts; returns the differences ([] = up to date)."""
    root = Path(root)
    build_dir = Path(build_dir) if build_dir else root / BUILD_SUBDIR
    problems: list[str] = []
    committed: dict[str, dict] = {}
    for name in CONTRACTS:  # read the committed artifacts first: a missing one needs no compiler
        path = artifact_path(name, build_dir)
        try:
            committed[name] = json.loads(path.read_text())
        except FileNotFoundError:
            problems.append(f"{path}: missing")
        except (OSError, ValueError) as e:
            problems.append(f"{path}: unreadable ({e})")
    if committed:
        fresh = compile_contracts(root, solc, list(committed))
        for name, art in committed.items():
            path = artifact_path(name, build_dir)
            diffs = compare_artifacts(art, fresh[name])
            if not diffs and path.read_text() != dumps_artifact(fresh[name]):
                # the same contract, but not the very file `ledger compile` writes
                diffs = ["the file is not byte for byte what `ledger compile` writes (formatting or extra fields)"]
            problems += [f"{path}: {d}" for d in diffs]
    return problems
