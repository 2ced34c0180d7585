"""Deployment records, ``deploy``, ``verify_deployment`` and ``open_ledger``.

A deployment record says where TrainingLedger lives on one chain: a JSON file
``<data_dir>/deployments/<chain_id>.json`` (written atomically), with the chain id,
address, transaction, block, deployer, time, the sha256 of the artifact that was
deployed and the addresses of the external libraries linked into it (``libraries``:
JobLib, SettlementLib, deployed first). ``deploy`` never silently replaces a record;
``verify_deployment`` checks that the code at the recorded address is the committed
artifact's runtime code, and that each library it links is its artifact's code;
``open_ledger(settings)`` is the single way every role opens the contract.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from ledger import atomic
from ledger.config import Settings
from ledger.errors import (
    ChainUnreachable,
    LedgerError,
    NoDeployment,
    NotOurContract,
    WrongChain,
)

# Chain ids where, with no account configured, `deploy` may use anvil's dev account 0.
LOCAL_DEV_CHAIN_IDS = frozenset({31337})


class DeploymentExists(LedgerError):
    """A deployment record for this chain exists; `deploy` refuses to replace it without --force."""


@dataclass(frozen=True)
class DeploymentRecord:
    chain_id: int
    address: str
    tx_hash: str
    block: int
    artifact_sha256: str
    deployer: str
    deployed_at: float  # unix time
    libraries: dict = field(default_factory=dict)  # library name -> address (linked into the contract)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "DeploymentRecord":
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - {"libraries"}  # records from before the libraries have none
        if missing:
            raise ValueError(f"missing {sorted(missing)}")
        return cls(**{k: data[k] for k in names if k in data})


# ---------------------------------------------------------------------------- records


def record_path(settings: Settings, chain_id: int) -> Path:
    return settings.deployments_dir / f"{int(chain_id)}.json"


def save_record(settings: Settings, record: DeploymentRecord) -> Path:
    path = record_path(settings, record.chain_id)
    atomic.write_bytes(path, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode())
    return path


def load_record(settings: Settings, chain_id: int) -> DeploymentRecord:
    """The deployment record for ``chain_id``; NoDeployment if there is none."""
    path = record_path(settings, chain_id)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoDeployment(
            f"no TrainingLedger deployment recorded for chain {chain_id} (no {path}); "
            "run `ledger deploy`, or set --contract / LEDGER_CONTRACT to an existing deployment"
        ) from None
    except (OSError, ValueError) as e:
        raise NoDeployment(f"deployment record {path} is unreadable ({type(e).__name__}); "
                           "fix or remove it and run `ledger deploy`") from None
    try:
        return DeploymentRecord.from_json(data)
    except (ValueError, TypeError) as e:
        raise NoDeployment(f"deployment record {path} is malformed ({e}); fix or remove it and run `ledger deploy`") from None


# ---------------------------------------------------------------------------- rpc url


def resolve_rpc_url(settings: Settings) -> str:
    """settings.rpc_url, else the running local chain of `ledger chain up`, else ChainUnreachable."""
    if settings.rpc_url:
        return settings.rpc_url
    from ledger.services import anvil

    url = anvil.local_rpc_url(settings)
    if url:
        return url
    recorded = anvil.service(settings).recorded()
    if recorded is not None:
        raise ChainUnreachable(
            f"the local chain in {settings.chain_dir} (pid {recorded.pid}) is not running "
            "(killed?); run `ledger chain up` to restart it from its saved state, or set LEDGER_RPC_URL"
        )
    raise ChainUnreachable(
        f"no chain to talk to: no local chain is running in {settings.data_dir}; "
        "run `ledger chain up`, or set LEDGER_RPC_URL (--rpc-url) to an EVM JSON-RPC endpoint"
    )


def connect(settings: Settings, account=None):
    """A Chain for the configured endpoint, checking settings.chain_id."""
    from ledger.ethereum.chain import Chain

    url = resolve_rpc_url(settings)
    chain = Chain.connect(url, account=account, expected_chain_id=settings.chain_id)
    _check_chain_id(chain, settings.chain_id, url)
    return chain


def _check_chain_id(chain, expected: int | None, url: str) -> None:
    if expected is not None and int(chain.chain_id) != int(expected):
        raise WrongChain(
            f"the chain at {url} has chain id {chain.chain_id}, but chain id {expected} is configured "
            "(LEDGER_CHAIN_ID / chain_id); point LEDGER_RPC_URL at the right chain or fix the setting"
        )


# ---------------------------------------------------------------------------- code checks


def _hex_to_bytes(h) -> bytes:
    if isinstance(h, (bytes, bytearray)):
        return bytes(h)
    h = str(h or "")
    h = h[2:] if h.startswith("0x") else h
    return bytes.fromhex(h)


def _artifact_runtime(artifact: dict) -> tuple[bytes, list[tuple[int, int]]]:
    """(runtime bytecode, immutable (start, length) byte ranges) of an artifact."""
    code = artifact.get("deployedBytecode")
    refs = artifact.get("immutableReferences") or {}
    if isinstance(code, dict):  # solc's evm.deployedBytecode object
        refs = refs or code.get("immutableReferences") or {}
        code = code.get("object")
    if not code:
        raise LedgerError("the TrainingLedger artifact has no deployedBytecode; run `ledger compile`")
    ranges = [(int(e["start"]), int(e["length"])) for entries in refs.values() for e in entries]
    links = artifact.get("deployedLinkReferences") or {}
    if links:  # a linked library's address is the deployment's, not the build's: masked like an immutable
        from ledger.ethereum.artifacts import link, linked_libraries

        code = link(str(code), links, {name: "0x" + "00" * 20 for name in linked_libraries(links)})
        ranges += [(int(e["start"]), int(e["length"])) for libs in links.values() for es in libs.values() for e in es]
    if str(code).lower().removeprefix("0x").startswith("73" + "00" * 20):
        ranges.append((1, 20))  # a library's call guard: PUSH20 of its own address, written when it is deployed
    return _hex_to_bytes(code), ranges


def _mask(code: bytes, ranges: list[tuple[int, int]]) -> bytes:
    b = bytearray(code)
    for start, length in ranges:
        b[start:start + length] = b"\0" * min(length, max(0, len(b) - start))
    return bytes(b)


def _strip_metadata(code: bytes) -> bytes:
    """Runtime code without solc's trailing CBOR metadata (its length is the last 2 bytes)."""
    if len(code) < 2:
        return code
    n = int.from_bytes(code[-2:], "big")
    if 0 < n <= len(code) - 2 and code[-2 - n] in range(0xa0, 0xc0):  # a CBOR map
        return code[: -2 - n]
    return code


def code_matches(onchain: bytes, artifact) -> str:
    """'exact', 'metadata' (same code, different compiler metadata) or '' (not ours)."""
    expected, ranges = _artifact_runtime(artifact)
    if len(onchain) != len(expected):
        if _strip_metadata(_mask(onchain, ranges)) == _strip_metadata(_mask(expected, ranges)):
            return "metadata"
        return ""
    a, b = _mask(onchain, ranges), _mask(expected, ranges)
    if a == b:
        return "exact"
    if _strip_metadata(a) == _strip_metadata(b):
        return "metadata"
    return ""


def check_code(chain, address: str, what: str, record: DeploymentRecord | None = None) -> str:
    """Raise NotOurContract unless the code at ``address`` is TrainingLedger's; returns code_matches().

    ``what`` names where the address came from (``--contract``, ``LEDGER_CONTRACT``, a
    deployment record), so the message says what to fix. With the ``record`` of the
    deployment, a mismatch caused by a recompiled artifact says so.
    """
    fix = "fix the deployment record or set --contract / LEDGER_CONTRACT" if record is not None else f"fix {what}"
    from ledger.ethereum.artifacts import artifact_sha256, load_artifact

    code = _code_at(chain, address, what)
    if not code:
        raise NotOurContract(
            f"{what}: there is no contract code at {address} on chain {chain.chain_id} "
            "(an account, not a contract, or the chain was reset); "
            f"run `ledger deploy` (--force to replace a record) or {fix}"
        )
    how = code_matches(code, load_artifact())
    if not how and record is not None and record.artifact_sha256 != artifact_sha256():
        raise NotOurContract(
            f"{what}: the code at {address} on chain {chain.chain_id} was deployed from another build of the "
            f"contract (artifact sha256 {record.artifact_sha256[:18]}…, now {artifact_sha256()[:18]}…); "
            "run `ledger deploy --force` to deploy the current one"
        )
    if not how:
        raise NotOurContract(
            f"{what}: the code at {address} on chain {chain.chain_id} is not the TrainingLedger "
            f"artifact (another contract?); run `ledger deploy` (--force to replace a record) or {fix}"
        )
    for name, lib_address in linked_addresses(code, load_artifact()).items():
        if record is not None and record.libraries and str(record.libraries.get(name, "")).lower() != lib_address.lower():
            raise NotOurContract(
                f"{what}: the contract at {address} links {name} at {lib_address}, but the record says "
                f"{record.libraries.get(name)}; run `ledger deploy --force` or {fix}"
            )
        lib_code = _code_at(chain, lib_address, f"library {name}")
        lib_how = code_matches(lib_code, load_artifact(name)) if lib_code else ""
        if not lib_how:
            raise NotOurContract(
                f"{what}: the contract at {address} links library {name} at {lib_address}, whose code on chain "
                f"{chain.chain_id} is not the {name} artifact; run `ledger deploy --force` or {fix}"
            )
        if lib_how == "metadata":
            how = "metadata"
    return how


def linked_addresses(code: bytes, artifact: dict) -> dict[str, str]:
    """Library name -> the address the runtime ``code`` (deployed from ``artifact``) links."""
    out = {}
    for libs in (artifact.get("deployedLinkReferences") or {}).values():
        for name, entries in libs.items():
            start = int(entries[0]["start"])
            out[name] = _checksum("0x" + code[start:start + 20].hex(), f"library {name}")
    return out


def deploy_contracts(chain, context: str = "deploy") -> tuple[dict, dict[str, str]]:
    """Deploy every library TrainingLedger links (``ledger.ethereum.compile.LIBRARIES``), then
    TrainingLedger linked to them, from the committed artifacts, with ``chain``'s account.
    Returns (TrainingLedger's deployment receipt, library name -> address)."""
    from ledger.ethereum.artifacts import link, linked_libraries, load_artifact

    art = load_artifact()
    libraries: dict[str, str] = {}
    for name in linked_libraries(art.get("linkReferences")):
        lib = load_artifact(name)
        rc = chain.transact(chain.w3.eth.contract(abi=lib["abi"], bytecode=lib["bytecode"]).constructor(),
                            context=f"{context} {name}")
        libraries[name] = _checksum(rc["contractAddress"])
    bytecode = link(art["bytecode"], art.get("linkReferences") or {}, libraries)
    receipt = chain.transact(chain.w3.eth.contract(abi=art["abi"], bytecode=bytecode).constructor(),
                             context=f"{context} TrainingLedger")
    return receipt, libraries


def _code_at(chain, address: str, what: str = "the contract address") -> bytes:
    try:
        return bytes(chain.w3.eth.get_code(_checksum(address, what)))
    except LedgerError:
        raise
    except Exception as e:  # noqa: BLE001 - connection errors of several kinds
        raise ChainUnreachable(
            f"could not read the code at {address} from chain {chain.chain_id} ({type(e).__name__}); "
            "is the chain up? `ledger chain status`"
        ) from None


def _checksum(address: str, what: str = "--contract / LEDGER_CONTRACT or the deployment record") -> str:
    from eth_utils import is_address, to_checksum_address

    if not is_address(address):
        raise NotOurContract(f"{what}: {address!r} is not an address (0x and 40 hex digits)")
    return to_checksum_address(address)


def verify_deployment(chain, record: DeploymentRecord) -> list[str]:
    """Check the record against the chain and the artifact; returns warnings, raises on failure."""
    from ledger.ethereum.artifacts import artifact_sha256

    if int(chain.chain_id) != int(record.chain_id):
        raise WrongChain(f"the deployment record is for chain {record.chain_id}, but the endpoint is chain {chain.chain_id}")
    warnings: list[str] = []
    how = check_code(chain, record.address, "verify-deployment", record)
    if how == "metadata":
        warnings.append(
            "the deployed code equals the artifact's except for the compiler metadata "
            "(sources or compiler settings changed since the deployment?)"
        )
    current = artifact_sha256()
    if record.artifact_sha256 != current:
        warnings.append(
            f"the deployment was made from artifact sha256 {record.artifact_sha256[:18]}…, "
            f"the committed artifact is now {current[:18]}… (recompiled since?)"
        )
    return warnings


# ---------------------------------------------------------------------------- deploy


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def deploy(
    settings: Settings,
    account=None,
    force: bool = False,
    notify: Callable[[str], None] = _stderr,
) -> DeploymentRecord:
    """Deploy TrainingLedger from the committed artifact and record it.

    ``account`` is a LocalAccount; ``None`` means ``keys.load_account(settings)``, and on a
    local dev chain (31337) with no account configured, anvil's dev account 0 (said via
    ``notify``). Refuses to replace an existing record unless ``force``.
    """
    from ledger.ethereum import keys
    from ledger.ethereum.artifacts import artifact_sha256

    chain = connect(settings)
    path = record_path(settings, chain.chain_id)
    replacing = path.exists()
    if replacing:
        try:
            old = load_record(settings, chain.chain_id)
        except NoDeployment:
            old = None
        if old is not None:
            alive = bool(_code_at(chain, old.address))
            if not force:
                if alive:
                    raise DeploymentExists(
                        f"TrainingLedger is already deployed on chain {chain.chain_id} at {old.address} "
                        f"(record {path}, its code is still there); use it, or run `ledger deploy --force` "
                        "to deploy a new one and replace the record"
                    )
                raise DeploymentExists(
                    f"a deployment record for chain {chain.chain_id} exists ({old.address}, {path}) but there is "
                    "no code at that address any more (chain reset?); run `ledger deploy --force` to deploy "
                    "again and replace the record"
                )
            if alive:
                notify(f"note: replacing the record of the deployment at {old.address}, whose code is still on chain")
        elif not force:
            raise DeploymentExists(f"{path} exists but is unreadable; fix or remove it, or use `ledger deploy --force`")

    if account is None:
        try:
            account = keys.load_account(settings)
        except keys.NoAccountConfigured:
            if int(chain.chain_id) not in LOCAL_DEV_CHAIN_IDS:
                raise
            account = keys.anvil_dev_account()
            notify(
                f"note: no account configured (--account / LEDGER_ACCOUNT / LEDGER_PRIVATE_KEY); "
                f"deploying from anvil's dev account 0 {account.address} on local chain {chain.chain_id}"
            )
    chain = chain.with_account(account)

    receipt, libraries = deploy_contracts(chain)
    tx_hash = receipt["transactionHash"]
    record = DeploymentRecord(
        chain_id=int(chain.chain_id),
        address=_checksum(receipt["contractAddress"]),
        tx_hash=tx_hash.to_0x_hex() if hasattr(tx_hash, "to_0x_hex") else str(tx_hash),
        block=int(receipt["blockNumber"]),
        artifact_sha256=artifact_sha256(),
        deployer=account.address,
        deployed_at=time.time(),
        libraries=libraries,
    )
    check_code(chain, record.address, "deploy")
    if replacing and path.exists():  # only now that the new contract is there
        backup = path.with_name(f"{path.stem}.replaced-{int(time.time())}.json")
        os.replace(path, backup)
        notify(f"note: the previous record was kept as {backup}")
    save_record(settings, record)
    return record


# ---------------------------------------------------------------------------- open_ledger

# (rpc url, chain id, address, genesis hash) whose code was checked in this process.
_CHECKED: set[tuple[str, int, str, bytes]] = set()


def open_ledger(settings: Settings, account=None):
    """The TrainingLedger every role acts on: connect (settings.rpc_url or the local chain),
    check the chain id (settings.chain_id), find the contract (settings.contract, else the
    deployment record for the connected chain) and check its code against the artifact
    (once per process). ``account`` (a LocalAccount) signs transactions; None = read-only.
    """
    from ledger.ethereum.contract import TrainingLedger

    chain = connect(settings, account=account)
    record = None
    if settings.contract:
        what = settings.source_of("contract")
        address = _checksum(settings.contract, what)
    else:
        record = load_record(settings, chain.chain_id)
        address = record.address
        what = f"deployment record {record_path(settings, chain.chain_id)}"
    # The genesis hash tells apart two chains that reused one URL (a restarted test chain).
    key = (chain.rpc_url, int(chain.chain_id), address, chain.block_hash(0))
    if key not in _CHECKED:
        check_code(chain, address, what, record)
        _CHECKED.add(key)
    return TrainingLedger(chain, address)
