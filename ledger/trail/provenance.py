"""Signed provenance of an exported model: an in-toto Statement in a DSSE envelope,
signed by an Ethereum account, and its verification (offline, then against the chain).

Formats come from maintained libraries, not from this file: the Statement (v1,
``_type`` https://in-toto.io/Statement/v1) and its subjects are built and validated
by ``in_toto_attestation`` (the in-toto Attestation Framework's Python bindings);
the envelope, its Pre-Authentication Encoding and its signature list are
``securesystemslib.dsse.Envelope``. This module adds one ``securesystemslib``
signer/key pair for the accounts this ledger already has (secp256k1, EIP-191).

What is signed, exactly::

    payload  = the statement as canonical JSON (sorted keys, no spaces, ASCII)
    PAE      = b"DSSEv1 " + len(payloadType) + b" " + payloadType + b" " + len(payload) + b" " + payload
               (DSSE v1; payloadType "application/vnd.in-toto+json"; lengths in ASCII decimal)
    digest   = keccak256(b"\\x19Ethereum Signed Message:\\n" + len(PAE) + PAE)   (EIP-191 version 0x45,
               what `personal_sign` / eth_account's ``sign_message(encode_defunct(primitive=PAE))`` sign)
    sig      = the 65-byte secp256k1 signature r || s || v of that digest, base64 in the envelope
    keyid    = the signer's checksummed address: the signature must recover to it

So a wallet that can ``personal_sign`` the PAE bytes can make (and anyone can check)
the same signature; no key ever leaves the keystore account, and nothing here
prints or stores one.

The predicate (type ``PREDICATE_TYPE``) names the ledger (chain id, contract), the
job (id, config and genesis digests and CIDs, parties, quorum), every round (status,
parent, the merged or kept digest, the accepted contributors: worker, digest, CID,
samples), the final model, how the files were made from it (``export``) and the
audit's verdict. ``chain_record`` computes the chain-derived part from the chain
alone; the exporter takes it from the audited history and the verifier recomputes it,
so any difference is named field by field. Where the verifier's store serves the
chain's final checkpoint, the exported file that holds it (the model, or a LoRA job's
adapter: ``export.checkpointFile``) is compared with it tensor by tensor, and a LoRA
job's merged ``model.safetensors`` with the committed base and that adapter merged
again by the verifier (``verify_merged``, through a ``merge`` the caller gives: the
CLI's uses ``node``), so a signer cannot pass off other weights under a true record.

A private job's export is sealed at rest like every other artifact of the job: each
file ``NAME`` is written as ``NAME.sealed``, ``ledger.privacy.sealing.encrypt_artifact`` under
the job key. The statement's subjects stay the plaintext files and digests (what a
member holds once it decrypts, and what the checks below compare); the predicate's
``export.sealed`` adds the key id and each sealed file's sha256, so anyone can check
that the ciphertext is what was signed, and only a reader of the job (a member, a
named or granted auditor) can check and use what it holds (``open_sealed``).

Numbers: a Struct (protobuf) holds numbers as doubles; the statement's integers stay
below 2**53 (rounds, sizes, sample counts, the chain id) and the job id, a uint256,
is a decimal string.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import is_address, to_checksum_address
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.signer import KEY_FOR_TYPE_AND_SCHEME, Key, Signature, Signer

from ledger import safejson
from ledger.digest import to_hex
from ledger.errors import LedgerError
from ledger.protocol.jobconfig import canonical_json

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:training-ledger:model-export:v1"
ENVELOPE_NAME = "provenance.intoto.jsonl"  # one DSSE envelope per line (here: one line)
KEY_TYPE = "ethereum-secp256k1"
SCHEME = "eip191-personal-sign"
# Sections of the predicate that the chain alone determines (``chain_record``).
CHAIN_SECTIONS = ("ledger", "job", "rounds", "finalModel")
HASH_CHUNK = 1 << 20
MAX_ENVELOPE_BYTES = safejson.MAX_BYTES  # the statement lists every round: far below this
SEALED_SUFFIX = ".sealed"   # a private job's export file NAME is stored as NAME.sealed


class ExportError(LedgerError):
    """An export that cannot be made or read (a usage or environment error)."""

    exit_code = 2


# ---------------------------------------------------------------------------- keys


class EthereumKey(Key):
    """The public side of an Ethereum account, for ``securesystemslib``: ``keyid`` is the
    checksummed address, and a signature verifies when its EIP-191 recovery is that address."""

    def __init__(self, address: str, keyid: str | None = None, unrecognized_fields: dict | None = None):
        addr = to_checksum_address(address)
        super().__init__(keyid or addr, KEY_TYPE, SCHEME, {"address": addr}, unrecognized_fields)

    @classmethod
    def from_dict(cls, keyid: str, key_dict: dict[str, Any]) -> "EthereumKey":
        keytype, scheme, keyval = cls._from_dict(dict(key_dict))
        if (keytype, scheme) != (KEY_TYPE, SCHEME):
            raise ValueError(f"not an {KEY_TYPE}/{SCHEME} key: {keytype}/{scheme}")
        return cls(keyval["address"], keyid)

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict()

    @property
    def address(self) -> str:
        return self.keyval["address"]

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        got = recover(signature.signature, data)
        if got != self.address:
            raise UnverifiedSignatureError(f"the signature recovers to {got or 'no address'}, not {self.address}")


KEY_FOR_TYPE_AND_SCHEME[(KEY_TYPE, SCHEME)] = EthereumKey


def recover(sig_hex: str, data: bytes) -> str | None:
    """The address whose EIP-191 ``personal_sign`` of ``data`` is ``sig_hex``; None if it is no signature."""
    try:
        return Account.recover_message(encode_defunct(primitive=bytes(data)), signature=bytes.fromhex(sig_hex))
    except Exception:
        return None


class EthereumSigner(Signer):
    """Signs with an eth_account ``LocalAccount`` (a keystore account or LEDGER_PRIVATE_KEY):
    EIP-191 ``personal_sign`` of the bytes DSSE hands it (the PAE). Holds the account
    object only for the signing; shows and serialises nothing of the key."""

    def __init__(self, account):
        self._account = account
        self._key = EthereumKey(account.address)

    @property
    def public_key(self) -> EthereumKey:
        return self._key

    def sign(self, payload: bytes) -> Signature:
        sig = self._account.sign_message(encode_defunct(primitive=bytes(payload))).signature
        return Signature(self._key.keyid, bytes(sig).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri, public_key, secrets_handler=None):
        raise ValueError("an Ethereum signer is made from a keystore account, not from a key URI")

    def __repr__(self) -> str:
        return f"EthereumSigner({self._key.address})"

    def __getstate__(self):
        raise TypeError("a signer holds a key and cannot be pickled")


# ---------------------------------------------------------------------------- the statement


def _plain(v: Any) -> Any:
    """JSON values as a Struct gives them back, made plain: integral floats become ints."""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def build_statement(subjects: dict[str, str], predicate: dict) -> bytes:
    """The statement's canonical JSON bytes: ``subjects`` maps each file name to its
    sha256 (hex); built and validated by ``in_toto_attestation``."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    rds = [ResourceDescriptor(name=n, digest={"sha256": h}).pb for n, h in sorted(subjects.items())]
    st = Statement(rds, PREDICATE_TYPE, predicate)
    st.validate()
    doc = _plain(json_format.MessageToDict(st.pb, preserving_proto_field_name=False))
    if doc.get("predicate") != _plain(json.loads(json.dumps(predicate))):
        raise ValueError("the predicate does not survive the statement's encoding (an integer over 2**53?)")
    return canonical_json(doc)


def parse_statement(payload: bytes) -> dict:
    """The statement in ``payload``, checked by ``in_toto_attestation`` (its fields, its
    subjects' digests) and of this project's predicate type. ValueError saying what is wrong."""
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    doc = safejson.loads(payload, what="the payload", max_bytes=MAX_ENVELOPE_BYTES)
    if not isinstance(doc, dict):
        raise ValueError("the payload is not a JSON object")
    pb = statement_pb2.Statement()
    try:
        json_format.ParseDict(doc, pb)
        Statement.copy_from_pb(pb).validate()
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise ValueError(f"the payload is not an in-toto Statement v1 ({str(e).splitlines()[0]})") from None
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise ValueError(f"the statement's predicateType is {doc.get('predicateType')!r}, not {PREDICATE_TYPE}")
    if not isinstance(doc.get("predicate"), dict):
        raise ValueError("the statement has no predicate object")
    return doc


def sign_envelope(payload: bytes, signer: Signer) -> dict:
    """A DSSE envelope of ``payload`` signed by ``signer`` (see the module docstring)."""
    env = Envelope(payload, PAYLOAD_TYPE, {})
    env.sign(signer)
    return env.to_dict()


def envelope_line(envelope: dict) -> bytes:
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode() + b"\n"


# ---------------------------------------------------------------------------- the chain's record


def _accepted(rh) -> list:
    """The submissions the finalized outcome accepted (verdict 0), in submission order."""
    quorum = rh.quorum_proposals()
    if rh.info.status != "finalized" or not quorum:
        return []
    verdicts = quorum[0].verdicts
    return [s for i, s in enumerate(rh.submissions) if i < len(verdicts) and verdicts[i] == 0]


def chain_record(ledger, history) -> dict:
    """The predicate's chain-derived sections (``CHAIN_SECTIONS``) from a job's history
    (``ledger.trail.history.load_history``): what the verifier recomputes and compares."""
    j = history.job
    rounds = []
    for rh in history.rounds:
        i = rh.info
        rounds.append({
            "round": rh.round,
            "status": i.status,
            "parent": to_hex(i.parent),
            "mergedDigest": to_hex(i.merged_digest) if i.is_done else "",
            "mergedCid": i.merged_cid if i.is_done else "",
            "skipReason": i.skip_reason,
            "submissions": len(rh.submissions),
            "contributors": [{"worker": s.worker, "digest": to_hex(s.digest), "cid": s.cid,
                              "numSamples": int(s.num_samples)} for s in _accepted(rh)],
        })
    return {
        "ledger": {"chainId": int(ledger.chain_id), "contract": ledger.address},
        "job": {
            "id": str(j.job_id), "creator": j.owner,
            "configDigest": to_hex(j.config_digest), "configCid": j.config_cid,
            "genesisDigest": to_hex(j.genesis_digest), "genesisCid": j.genesis_cid,
            "workers": list(j.workers), "aggregators": list(j.aggregators), "quorum": int(j.quorum),
            "numRounds": int(j.num_rounds), "minSubmissions": int(j.min_submissions), "completed": bool(j.completed),
        },
        "rounds": rounds,
        "finalModel": {"digest": to_hex(j.current_parent) if j.completed else "",
                       "cid": j.current_parent_cid if j.completed else "",
                       "size": int(j.current_parent_size) if j.completed else 0},
    }


def differences(stated: Any, expected: Any, where: str) -> list[str]:
    """One line per field where the statement differs from the chain."""
    if isinstance(expected, dict) and isinstance(stated, dict):
        out = []
        for k in expected:
            out += differences(stated.get(k, "<missing>"), expected[k], f"{where}.{k}")
        for k in stated:
            if k not in expected:
                out.append(f"{where}.{k}: the statement adds {json.dumps(stated[k])[:80]}, which the chain does not record")
        return out
    if where == "rounds" and isinstance(expected, list) and isinstance(stated, list):
        out = []
        if len(stated) != len(expected):
            out.append(f"rounds: the statement lists {len(stated)}, the chain has {len(expected)}")
        for s, e in zip(stated, expected):
            out += differences(s, e, f"round {e['round']}")
        return out
    if where.endswith(".contributors") and stated != expected:
        show = lambda cs: ", ".join(f"{c.get('worker')} {str(c.get('digest'))[:12]}" if isinstance(c, dict) else str(c)
                                    for c in cs) or "none"  # noqa: E731
        return [f"{where}: the statement names [{show(stated) if isinstance(stated, list) else stated}], "
                f"the chain accepted [{show(expected)}]"]
    if stated != expected:
        return [f"{where}: the statement says {json.dumps(stated)[:100]}, the chain has {json.dumps(expected)[:100]}"]
    return []


# ---------------------------------------------------------------------------- verification


# ---------------------------------------------------------------------------- what an export holds

# Every file any export holds; a kind holds a subset (``export_files``). Nothing else
# (no modeling code, no pickle) may sit in an export folder or its statement.
EXPORT_FILES = ("adapter.safetensors", "config.json", "model.safetensors", "tokenizer.json")
HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
BYTE_GPT_CONFIG = {
    "model_type": "training-ledger-byte-gpt", "format": "training-ledger/byte-gpt/1",
    "tokens": "bytes: token id = byte value (vocab_size 256), no tokenizer",
    "architecture": "pre-norm GPT (node.models.bytegpt.GPT): learned positions, LayerNorm, GELU MLP x4, "
                    "causal softmax attention, output head = wte.weight (tied, stored once)",
}
MAX_CONFIG_BYTES = 1 << 20


def export_files(model) -> set[str]:
    """The files an export of a job whose ``ModelSpec`` is ``model`` holds, besides the statement."""
    if model.kind == "byte-gpt":
        return {"config.json", "model.safetensors"}
    return {"config.json", "model.safetensors", "tokenizer.json"} | ({"adapter.safetensors"} if model.lora else set())


def export_config(model) -> dict:
    """The ``config.json`` an export of ``model`` holds: the byte GPT's sizes, or the
    job's committed transformers config plus only ``architectures`` and ``dtype``."""
    if model.kind == "byte-gpt":
        return {**BYTE_GPT_CONFIG, **{k: getattr(model, k) for k in
                                      ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")}}
    cfg = safejson.loads(model.hf_config, what="the model config", max_bytes=MAX_CONFIG_BYTES)
    return {**cfg, "architectures": [HF_ARCHITECTURES[cfg["model_type"]]], "dtype": "float32"}


def _check_files_of(check: "ExportCheck", model) -> None:
    """The statement's files are exactly those an export of this job holds, and its
    config.json is exactly the job's committed config (plus what export adds)."""
    bad = check.failures
    want = export_files(model)
    for name in sorted(set(check.files) - want):
        if name in EXPORT_FILES:
            bad.append(f"{name}: an export of this job ({model.kind}{', LoRA' if model.lora else ''}) holds no such file")
    for name in sorted(want - set(check.files)):
        bad.append(f"{name}: not in the statement, though an export of this job holds it")
    got = _export_config(check, bad)
    if got is None:
        return
    expected = export_config(model)
    if not isinstance(got, dict):
        bad.append("config.json: not a JSON object")
        return
    differ = sorted(k for k in set(got) | set(expected) if got.get(k, _ABSENT) != expected.get(k, _ABSENT))
    if differ:
        bad.append(f"config.json: differs from the job's committed model config in {', '.join(differ[:5])}"
                   + (f" (+{len(differ) - 5} more)" if len(differ) > 5 else ""))


_ABSENT = object()


@dataclass
class ExportCheck:
    """What ``verify_offline`` / ``verify_on_chain`` found: one line per failure."""

    folder: Path
    failures: list[str] = field(default_factory=list)
    signer: str | None = None
    statement: dict | None = None
    files: dict[str, str] = field(default_factory=dict)   # subject name -> sha256 hex
    chain_checked: bool = False
    weights: str = ""   # what the weights check found: "equal", or why it was not made
    unsound: set[str] = field(default_factory=set)   # subject files missing or not matching their digest
    sealed: dict[str, str] = field(default_factory=dict)  # NAME.sealed -> its sha256 hex (a private job's export)
    unread: set[str] = field(default_factory=set)    # subjects sealed under a key not given (yet)
    key: bytes | None = field(default=None, repr=False)  # the job key that opens them

    def read(self, name: str, max_bytes: int) -> bytes:
        """A subject file's plaintext: the file itself, or ``NAME.sealed`` decrypted with ``key``."""
        f = self.folder / name
        if f.is_file() or name + SEALED_SUFFIX not in self.sealed:
            return safejson.read_bytes(f, what=name, max_bytes=max_bytes)
        if self.key is None:
            raise ExportError(f"{name} is sealed under the job key, which was not given")
        from ledger.privacy.sealing import decrypt_artifact
        from ledger.store.sealed import OVERHEAD

        return decrypt_artifact(self.key, safejson.read_bytes(self.folder / (name + SEALED_SUFFIX),
                                                              what=name + SEALED_SUFFIX, max_bytes=max_bytes + OVERHEAD))


    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def predicate(self) -> dict:
        return (self.statement or {}).get("predicate") or {}

    @property
    def job_id(self) -> int | None:
        try:
            return int(self.predicate["job"]["id"])
        except (KeyError, TypeError, ValueError):
            return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _safe_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and name != ENVELOPE_NAME)


def verify_offline(folder: Path, signer: str | None = None) -> ExportCheck:
    """Check an export folder with nothing but its files: the envelope's one signature
    recovers to its keyid (and to ``signer``, when given), its payload is an in-toto
    statement of this project's predicate type, every subject file exists and hashes to
    its digest, and no file is there that the statement does not list.
    ExportError (exit 2) when ``folder`` is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder (give the OUT folder `ledger export` wrote)")
    check = ExportCheck(folder)
    bad = check.failures
    path = folder / ENVELOPE_NAME
    if not path.is_file():
        bad.append(f"{ENVELOPE_NAME}: missing: {folder} holds no signed provenance statement")
        return check
    try:
        lines = [ln for ln in safejson.read_bytes(path, what="it", max_bytes=MAX_ENVELOPE_BYTES).splitlines()
                 if ln.strip()]
        if len(lines) != 1:
            raise ValueError(f"{len(lines)} envelopes, expected 1")
        env = Envelope.from_dict(safejson.loads(lines[0], what="its line", max_bytes=MAX_ENVELOPE_BYTES))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        bad.append(f"{ENVELOPE_NAME}: not a DSSE envelope ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        return check
    if env.payload_type != PAYLOAD_TYPE:
        bad.append(f"{ENVELOPE_NAME}: payloadType is {env.payload_type!r}, not {PAYLOAD_TYPE}")
    sigs = list(env.signatures.values())
    if len(sigs) != 1:
        bad.append(f"{ENVELOPE_NAME}: {len(sigs)} signatures, expected exactly 1")
    elif not is_address(sigs[0].keyid):
        bad.append(f"{ENVELOPE_NAME}: keyid {sigs[0].keyid!r} is not an Ethereum address")
    else:
        key = EthereumKey(sigs[0].keyid)
        try:
            env.verify([key], 1)
            check.signer = key.address
        except (VerificationError, UnverifiedSignatureError, ValueError):
            got = recover(sigs[0].signature, env.pae())
            bad.append(f"{ENVELOPE_NAME}: bad signature: it does not recover to its keyid {key.address}"
                       + (f" (it recovers to {got}: the statement was changed after signing, or signed by another key)"
                          if got else " (not a secp256k1 signature)"))
        if signer and check.signer and check.signer != to_checksum_address(signer):
            bad.append(f"{ENVELOPE_NAME}: signed by {check.signer}, not by the required signer "
                       f"{to_checksum_address(signer)}")
    try:
        check.statement = parse_statement(env.payload)
    except ValueError as e:
        bad.append(f"{ENVELOPE_NAME}: {e}")
        return check
    sealed = (check.predicate.get("export") or {}).get("sealed") or {}
    if sealed:
        files = sealed.get("files") if isinstance(sealed, dict) else None
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            bad.append("export.sealed: not a map of sealed files to their sha256")
        else:
            check.sealed = dict(files)
    for n, s in enumerate(check.statement["subject"]):
        name, digest = s.get("name"), (s.get("digest") or {}).get("sha256", "")
        if not _safe_name(name):
            bad.append(f"subject {n}: {name!r} is not a plain file name in the folder")
            continue
        if name in check.files:
            bad.append(f"{name}: listed twice in the statement")
            continue
        check.files[name] = digest
        f = folder / name
        if not f.is_file() and name + SEALED_SUFFIX in check.sealed:
            _check_sealed(check, name)
            continue
        if not f.is_file():
            check.unsound.add(name)
            bad.append(f"{name}: missing (the statement lists it with sha256 {digest})")
            continue
        got = sha256_file(f)
        if got != digest:
            check.unsound.add(name)
            bad.append(f"{name}: sha256 is {got}, the signed statement says {digest}: the file was changed")
    for extra in sorted(p.name for p in folder.iterdir()):
        if extra != ENVELOPE_NAME and extra not in check.files and extra not in check.sealed:
            bad.append(f"{extra}: in the folder but not in the signed statement")
    for name in sorted(set(check.files) - set(EXPORT_FILES)):
        bad.append(f"{name}: not a file any export holds (an export is {', '.join(EXPORT_FILES)}: no code, no pickle)")
    for name in sorted(set(check.sealed) - {n + SEALED_SUFFIX for n in check.files}):
        bad.append(f"export.sealed: {name} is not a sealed subject of the statement")
    _no_code(check)
    return check


def _check_sealed(check: ExportCheck, name: str) -> None:
    """A subject stored as ``NAME.sealed``: the ciphertext is the one the statement signs
    (anyone can check that); with the key, it decrypts to the subject's digest."""
    f, want = check.folder / (name + SEALED_SUFFIX), check.sealed[name + SEALED_SUFFIX]
    got = sha256_file(f) if f.is_file() else None
    if got != want:
        check.unsound.add(name)
        check.failures.append(f"{f.name}: " + (f"missing (the statement lists it with sha256 {want})" if got is None
                                               else f"sha256 is {got}, the signed statement says {want}: the file "
                                                    f"was changed"))
        return
    if check.key is None:
        check.unread.add(name)
        return
    from ledger.privacy.sealing import SealError

    try:
        plain = check.read(name, f.stat().st_size)     # no larger than its ciphertext
    except (SealError, OSError, ValueError) as e:
        check.unsound.add(name)
        check.failures.append(f"{f.name}: does not open with the job key ({str(e).splitlines()[0]})")
        return
    check.unread.discard(name)
    got = hashlib.sha256(plain).hexdigest()
    if got != check.files[name]:
        check.unsound.add(name)
        check.failures.append(f"{f.name}: decrypts to sha256 {got}, the signed statement says {check.files[name]}")


def open_sealed(check: ExportCheck, key: bytes) -> ExportCheck:
    """With the job key (a reader's): decrypt the sealed subjects ``verify_offline`` could
    not read and check each against the statement's digest."""
    check.key, unread = bytes(key), sorted(check.unread)
    for name in unread:
        _check_sealed(check, name)
    if "config.json" in unread:
        _no_code(check)
    return check


def write_unsealed(check: ExportCheck, dest: Path) -> int:
    """A checked sealed export's plaintext files with its statement, written to ``dest``
    (new, or an empty folder) through a sibling renamed into place: a plain export
    folder that ``verify_offline`` checks on its own. Returns the number of files."""
    import os
    import shutil

    dest = Path(dest)
    if not check.ok or check.unread or check.key is None:
        raise ExportError("only an export that was checked with its job key is unsealed")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} already exists and is not an empty folder: unseal into a new folder")
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in sorted(check.files):
            data = check.read(name, _size_of(check, name))
            if hashlib.sha256(data).hexdigest() != check.files[name]:
                raise ExportError(f"{name} changed while it was being unsealed")
            (tmp / name).write_bytes(data)
        shutil.copyfile(check.folder / ENVELOPE_NAME, tmp / ENVELOPE_NAME)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(check.files)


def _size_of(check: ExportCheck, name: str) -> int:
    f = check.folder / name
    return (f if f.is_file() else check.folder / (name + SEALED_SUFFIX)).stat().st_size


def _export_config(check: ExportCheck, failures: list[str]):
    """The export's ``config.json`` read through ``safejson``; None where the statement lists
    none, where it is already unsound or unread, or where it does not parse (then one line
    in ``failures``)."""
    if "config.json" not in check.files or "config.json" in check.unsound | check.unread:
        return None
    try:
        return safejson.loads(check.read("config.json", MAX_CONFIG_BYTES), what="config.json",
                              max_bytes=MAX_CONFIG_BYTES)
    except (OSError, ValueError, LedgerError) as e:
        failures.append(f"config.json: {str(e).splitlines()[0]}")
        return None


def _no_code(check: ExportCheck) -> None:
    cfg = _export_config(check, check.failures)
    if isinstance(cfg, dict) and "auto_map" in cfg:
        check.failures.append("config.json: names code to run (auto_map); an export never does")


def verify_on_chain(check: ExportCheck, ledger, job: int | None = None, store=None, merge=None) -> ExportCheck:
    """Check the statement against the chain: it names this chain and contract, its job
    (``job`` when given) exists and is completed, and its ledger, job, rounds and final
    model sections equal what the chain records (``chain_record``); the audit verdict it
    carries is OK. With a ``store`` that serves the chain's final checkpoint, the file the
    statement names as holding it (``export.checkpointFile``) must hold exactly its
    tensors; for a LoRA job, ``model.safetensors`` must then hold the committed base with
    that adapter merged, as ``merge(ledger, store, job_id, adapter)`` recomputes it (the
    caller's: merging needs torch and peft, which this module never imports; without
    one, ``check.weights`` says the merged model was not compared). Appends one line per
    difference to ``check.failures``."""
    from ledger.errors import ContractReverted, StorageError
    from ledger.trail.history import load_history

    bad, p = check.failures, check.predicate
    check.chain_checked = True
    stated = p.get("ledger") or {}
    here = {"chainId": int(ledger.chain_id), "contract": ledger.address}
    if stated != here:
        bad.append(f"the statement is for contract {stated.get('contract')} on chain {stated.get('chainId')}; "
                   f"this ledger is {here['contract']} on chain {here['chainId']}")
        return check
    jid = check.job_id
    if jid is None:
        bad.append("the statement names no job id")
        return check
    if job is not None and jid != int(job):
        bad.append(f"the statement is for job {jid}, not job {job}")
    try:
        history = load_history(ledger, jid)
    except ContractReverted as e:
        if e.name == "UnknownJob":
            bad.append(f"job {jid} does not exist on {ledger.address}")
            return check
        raise
    expected = chain_record(ledger, history)
    if not expected["job"]["completed"]:
        bad.append(f"job {jid} is not completed on chain: no final model to export")
    for section in CHAIN_SECTIONS:
        bad += differences(p.get(section, "<missing>"), expected[section], section)
    audit = p.get("audit") or {}
    if audit.get("status") != "OK":
        bad.append(f"audit: the statement's audit verdict is {audit.get('status')!r}, not OK")
    model = None
    if store is not None:
        from ledger.protocol.jobconfig import JobConfig

        info = ledger.job(jid)
        try:
            raw = store.get(info.config_cid, info.config_digest, max_size=int(info.config_size))
            config = JobConfig.from_bytes(raw)
            model = config.model
        except (StorageError, LedgerError, ValueError) as e:
            bad.append(f"the job's config cannot be read to check config.json and the files: {str(e).splitlines()[0]}")
        else:
            _check_files_of(check, model)
    if check.unread:
        check.weights = (f"not compared: {', '.join(sorted(check.unread))} sealed under the key of job {jid}, "
                         f"which was not given (its members and granted auditors read them)")
        return check
    if store is not None and model is not None and config.access.private:
        if check.key is None:
            check.weights = "not compared: the job is private and its key was not given"
            return check
        from ledger.store.sealed import SealedStore

        store = SealedStore(store, check.key)
    if store is not None and expected["job"]["completed"]:
        merged = None
        if model is not None and model.lora:
            merged = (lambda adapter: merge(ledger, store, jid, adapter)) if merge is not None else _no_merge
        verify_weights(check, store, expected["finalModel"], merged=merged)
    return check


def _no_merge(adapter):
    raise ExportError("recomputing a LoRA merge needs the training stack (torch, peft), not given here")


MERGE_RTOL, MERGE_ATOL = 1e-6, 1e-7   # float32 rounding of base + B @ A across CPUs, far below any other weights


def verify_weights(check: ExportCheck, store, final: dict, merged=None) -> ExportCheck:
    """The exported file that holds the final checkpoint (the model itself, or a LoRA
    job's adapter) against the checkpoint the chain names, fetched from ``store`` and
    checked against its on-chain digest: same names, same float32 values, bit for bit.
    When the store does not serve it, ``check.weights`` says so and nothing fails: the
    files are then bound to the chain by the exporter's signature alone. For a LoRA job
    ``merged(adapter)`` gives the merged model that ``model.safetensors`` must hold
    (``verify_merged``)."""
    from ledger.store import checkpoint
    from ledger.digest import from_hex
    from ledger.errors import StorageError

    name = ((check.predicate.get("export") or {}).get("checkpointFile")) or ""
    if name not in check.files:
        check.failures.append(f"export.checkpointFile: {name or 'missing'} is not one of the statement's files")
        return check
    if name in check.unsound:
        return check  # already reported: missing, or not the file that was signed
    try:
        if not store.reachable(final["cid"]):     # held here, or (IPFS) by a peer of this node
            check.weights = "not compared: this store does not hold the final checkpoint, nor do its peers"
            return check
        data = store.get(final["cid"], from_hex(final["digest"]), max_size=int(final["size"]))
        want, _ = checkpoint.decode(data, cid=final["cid"], max_size=int(final["size"]))
    except (StorageError, LedgerError, ValueError) as e:
        check.weights = f"not compared: the final checkpoint is not available ({str(e).splitlines()[0]})"
        return check
    got = _read_f32(check, name, 2 * int(final["size"]) + checkpoint.MAX_HEADER)
    if got is None:
        return check
    if not _same_names(check, name, got, want, "the final checkpoint's"):
        return check
    differ = [k for k in sorted(want) if got[k].shape != want[k].shape or got[k].tobytes() != want[k].tobytes()]
    if differ:
        check.failures.append(f"{name}: {len(differ)} tensor(s) differ from the chain's final checkpoint "
                              f"{final['digest']}, first {differ[0]}")
        return check
    check.weights = f"{name} holds exactly the final checkpoint {final['digest']}"
    if merged is not None:
        verify_merged(check, merged, want)
    return check


def _same_names(check: ExportCheck, name: str, got: dict, want: dict, whose: str) -> bool:
    if sorted(got) == sorted(want):
        return True
    extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    check.failures.append(f"{name}: its tensor names are not {whose} (extra {extra[:3]}, missing {missing[:3]})")
    return False


def verify_merged(check: ExportCheck, merged, adapter: dict) -> ExportCheck:
    """A LoRA job's ``model.safetensors`` against ``merged(adapter)``: the committed base
    with the chain's final adapter merged, recomputed here. Same names and shapes; the
    values equal, or within float32 rounding (``MERGE_RTOL``/``MERGE_ATOL``: another CPU
    may round ``base + B @ A`` differently in the last bits), which ``check.weights`` then
    states with the largest difference. When the merge cannot be recomputed (no base in
    the store, no torch) ``check.weights`` says so and nothing fails."""
    import numpy as np

    from ledger.store import checkpoint

    name = "model.safetensors"
    if name not in check.files or name in check.unsound:
        return check   # already reported by the file checks
    try:
        want = merged(adapter)
    except (LedgerError, ValueError, OSError) as e:
        check.weights += f"; {name} not compared: the LoRA merge cannot be recomputed here ({str(e).splitlines()[0]})"
        return check
    got = _read_f32(check, name, sum(int(v.nbytes) for v in want.values()) + checkpoint.MAX_HEADER)
    if got is None:
        return check
    if not _same_names(check, name, got, want, "the committed base's with the adapter merged"):
        return check
    differ, inexact, worst = [], False, 0.0
    for k in sorted(want):
        g, w = got[k], np.asarray(want[k], dtype=np.float32)
        if g.shape != w.shape or not np.allclose(g, w, rtol=MERGE_RTOL, atol=MERGE_ATOL, equal_nan=False):
            differ.append(k)
        elif g.tobytes() != w.tobytes():
            inexact, worst = True, max(worst, float(np.max(np.abs(g.astype(np.float64) - w))))
    if differ:
        check.failures.append(f"{name}: {len(differ)} tensor(s) are not the committed base with the final adapter "
                              f"merged (recomputed here), first {differ[0]}")
        return check
    check.weights += (f"; {name} holds the committed base with it merged ("
                      + ("recomputed, bit for bit)" if not inexact else
                         f"recomputed, equal within float32 rounding: largest difference {worst:.1e})"))
    return check


def _read_f32(check: ExportCheck, name: str, max_bytes: int) -> dict | None:
    """The float32 tensors of the export's file ``name``, its size bounded before reading;
    None (with one failure line) when it is no such file."""
    from ledger.store import checkpoint

    try:
        data = check.read(name, max_bytes)
        return checkpoint.read_weights(data, what=name, dtypes={"F32": 4})
    except (OSError, ValueError, LedgerError) as e:
        check.failures.append(f"{name}: not a readable safetensors file ({str(e).splitlines()[0]})")
        return None
