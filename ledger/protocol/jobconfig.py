"""The job config: everything that defines a training job, hashed onto the chain.

Plain dataclasses serialised as canonical JSON (sorted keys, no spaces); the sha256
of those bytes is the job's ``configDigest`` on chain, and the bytes themselves are
stored by CID. No torch here: the audit and the history read it too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import asdict, field, fields
from typing import Annotated, Any

import pydantic
import pydantic.dataclasses
from pydantic import ConfigDict, Field

from ledger.protocol import hfconfig
from ledger import safejson
from ledger.digest import sha256_bytes

FORMAT = "training-ledger/job/1"
MERGE_RULES = ("fedavg", "median", "trimmed_mean", "krum")
PUBLISH_MODES = ("drawn", "all")


MODEL_KINDS = ("byte-gpt", "hf")
HF_MODEL_TYPES = hfconfig.MODEL_TYPES
DTYPES = ("float32", "bfloat16")
SPLITS = ("iid", "speaker", "private")

# The range of every number in a job config, checked by pydantic whenever a spec is
# built or a field assigned (``validate_assignment``), so an out-of-range value never
# reaches a worker, the chain or storage; a config parsed from storage gets the same
# checks. The CLI's flags take their ranges from here (``limits``).
MAX_UINT32 = 2**32 - 1
MAX_SEED = 2**63 - 1          # every seed API (torch, numpy) takes 63 bits without sign trouble
MAX_WORKERS = 128             # the contract's limit (ledger.contract.MAX_WORKERS; tests/chain/test_contract.py checks both)


def _int(lo: int, hi: int):
    return Annotated[int, Field(ge=lo, le=hi)]


def _num(lo: float, hi: float, *, lo_open: bool = False):
    bound = {"gt": lo} if lo_open else {"ge": lo}
    return Annotated[float, Field(le=hi, allow_inf_nan=False, **bound)]


class ConfigValueError(ValueError):
    """A job-config value out of its range (or of the wrong kind), in one line naming the field."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        sep = " " if problem.startswith("must ") else ": "
        super().__init__(f"job config field {field}{sep}{problem}" if field else f"job config: {problem}")


def _problem(e: pydantic.ValidationError, name: str) -> ConfigValueError:
    """pydantic's (multi-line) error as one line: the first problem, its field and the value given."""
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or name
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    if " should " in msg:                  # "Input should be greater than 0" -> "must be greater than 0"
        msg = "must " + msg.split(" should ", 1)[1]
    if "input" in err and where and err.get("type") != "value_error":
        msg = f"{msg}, got {json.dumps(err['input'], default=repr)[:40]}"
    return ConfigValueError(where, msg)


def _spec(cls):
    """A pydantic dataclass (a std dataclass too: ``fields``, ``asdict``, ``replace`` work)
    whose construction and assignments raise one-line ``ConfigValueError``s."""
    cls = pydantic.dataclasses.dataclass(cls, config=ConfigDict(validate_assignment=True))
    init, setattr_ = cls.__init__, cls.__setattr__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except pydantic.ValidationError as e:
            raise _problem(e, "") from None

    def __setattr__(self, name, value):
        try:
            setattr_(self, name, value)
        except pydantic.ValidationError as e:
            raise _problem(e, name) from None

    cls.__init__, cls.__setattr__ = __init__, __setattr__
    return cls


def limits(cls, name: str) -> tuple[type, float | None, float | None, bool]:
    """(int or float, lo, hi, lo_open) of a spec's numeric field, for the CLI's argparse types."""
    lo = hi = None
    lo_open = False
    info = cls.__pydantic_fields__[name]
    for m in info.metadata:
        if getattr(m, "ge", None) is not None:
            lo = m.ge
        if getattr(m, "gt", None) is not None:
            lo, lo_open = m.gt, True
        if getattr(m, "le", None) is not None:
            hi = m.le
    return info.annotation, lo, hi, lo_open


@_spec
class Artifact:
    """Bytes the config commits to and where storage keeps them (a tokenizer, base weights)."""

    sha256: str       # 0x-hex of the exact bytes
    cid: str
    num_bytes: _int(0, 2**63 - 1)


@_spec
class ModelSpec:
    """What the job trains (``node.models`` builds it; see there for each kind).

    - ``byte-gpt``: the project's own byte-level GPT (``node.models.bytegpt.GPTConfig``
      gives the meaning of vocab_size .. bias); no tokenizer, nothing to fetch.
    - ``hf``: a Hugging Face causal LM (``model_type`` gpt2 or llama) built by
      transformers from ``hf_config`` (canonical JSON of its config), its tokenizer
      (``tokenizer.json``, stored and committed here) and, when ``lora_rank`` > 0, the
      frozen base weights (float32 safetensors, stored and committed here): the
      contributions are then LoRA adapters on ``lora_targets``. ``block_size`` is the
      training context in tokens; n_layer, n_head and n_embd repeat the config's, for people.

    ``dtype``: the precision of the forward and backward passes (bfloat16 autocast);
    weights, optimizer state and checkpoints stay float32 either way.
    """

    kind: str = "byte-gpt"
    vocab_size: _int(1, 1 << 22) = 256
    # 0 only while a job is being made: "the model's own limit" (node.roles.owner.attach_model)
    block_size: _int(0, 1 << 17) = 128
    # 0: a Hugging Face config that does not say (for a Hugging Face model they repeat its config, for people)
    n_layer: _int(0, 1024) = 4
    n_head: _int(0, 1024) = 4
    n_embd: _int(0, 1 << 16) = 128
    bias: bool = True
    source: str = ""                  # where the weights came from ("smollm2", a directory's name)
    hf_config: str = ""
    tokenizer: Artifact | None = None
    base: Artifact | None = None
    lora_rank: _int(0, 256) = 0
    lora_alpha: _num(0, 4096) = 0.0
    lora_targets: list[str] = field(default_factory=list)
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.kind == "byte-gpt" and (self.lora_rank or self.hf_config or self.tokenizer or self.base):
            raise ValueError("a byte-gpt model has no Hugging Face config, tokenizer, base weights or LoRA")
        if self.kind == "hf" and (not self.hf_config or self.tokenizer is None):
            raise ValueError("a Hugging Face model needs its config and its tokenizer")
        if self.kind == "hf" and bool(self.lora_rank) != (self.base is not None):
            raise ValueError("a LoRA job commits to its base weights, and only a LoRA job has base weights")

    @property
    def lora(self) -> bool:
        return int(self.lora_rank) > 0

    @property
    def token_bytes(self) -> int:
        """Bytes per token in a data stream (``ledger.protocol.datacommit`` commits to such streams):
        1 for the byte GPT (the stream is the text), 2 up to 65,536 tokens, else 4."""
        if self.kind == "byte-gpt":
            return 1
        return 2 if int(self.vocab_size) <= 1 << 16 else 4


    def check(self) -> None:
        """What a finished spec must also satisfy (its fields are assigned one at a time while a job is made)."""
        if self.block_size < 1:
            raise ConfigValueError("model.block_size", f"must be >= 1, got {self.block_size}")
        if self.kind == "byte-gpt":
            for name in ("n_layer", "n_head", "n_embd"):
                if getattr(self, name) < 1:
                    raise ConfigValueError(f"model.{name}", f"must be >= 1 for the byte GPT, got {getattr(self, name)}")
            if self.n_embd % self.n_head:
                raise ConfigValueError("model.n_embd", f"must be a multiple of n_head ({self.n_head}), got {self.n_embd}")
        if self.kind == "hf":   # the fields transformers acts on, before any party builds from them
            try:
                hfconfig.check(safejson.loads(self.hf_config, what="the model config", max_bytes=1 << 20))
            except hfconfig.HFConfigError as e:
                raise ConfigValueError(f"model.hf_config.{e.field}", e.problem) from None
            except safejson.UnsafeJSON as e:
                raise ConfigValueError("model.hf_config", str(e)) from None


@_spec
class TrainSpec:
    steps: _int(1, 1_000_000) = 50            # local optimiser steps per round
    batch_size: _int(1, 1 << 16) = 32
    learning_rate: _num(0, 10, lo_open=True) = 3e-3
    weight_decay: _num(0, 10) = 0.0
    grad_clip: _num(0, 1e6) = 1.0              # 0 = no clipping
    threads: _int(1, 1024) = 1                 # torch threads; recorded in every checkpoint


@_spec
class Policy:
    """How aggregators judge and merge contributions."""

    merge_rule: str = "fedavg"
    trim_ratio: _num(0, 0.5) = 0.25         # trimmed_mean: fraction cut at each end
    krum_f: _int(0, MAX_WORKERS - 1) = 1    # krum: number of Byzantine workers tolerated
    krum_m: _int(0, MAX_WORKERS) = 0        # krum: how many to keep (0 = n - f)
    # L2 norm of (checkpoint - parent) over all tensors: an absolute cap, and a bound
    # relative to the round (ratio x the median norm of the contributions that pass the
    # cheap checks, when there are >= 3), which follows the model size and the steps.
    max_update_norm: _num(0, 1e12, lo_open=True) = 100.0
    max_update_norm_ratio: _num(0, 1e6) = 3.0     # 0 = no relative bound
    max_val_loss_increase: _num(0, 1e6) = 0.25  # accepted if val_loss <= parent_val_loss + this
    val_batches: _int(1, 10_000) = 8
    val_batch_size: _int(1, 1 << 16) = 32
    # Segment replay (node.training.transcript): a worker snapshots its whole training state every
    # segment_steps steps; each aggregator re-runs replay_segments drawn segments of every
    # contribution (0 = none) and accepts when the replay lands within replay_tolerance
    # of the published end, relative to the segment's own movement. Calibrated by
    # bench/replay_drift.py: honest replays on other kernel paths and thread counts land
    # within 2e-4 over 10 steps (8e-5 over 5), cheats at 0.45 and beyond. 5 steps, not
    # 10: one replayed segment of each contribution then costs an aggregator 0.1 of the
    # round's training instead of 0.2 (bench/verification.py), for 9 snapshots (27
    # checkpoints' worth of storage) instead of 4 (12).
    segment_steps: _int(1, 1_000_000) = 5
    replay_segments: _int(0, 1_000_000) = 1
    replay_tolerance: _num(0, 10, lo_open=True) = 1e-2
    max_checkpoint_bytes: _int(1, 1 << 40) = 256 * 1024 * 1024
    # Which transcript snapshots a worker stores: "drawn" (default) only those the drawn
    # segments start and end at, after the round closes and the draw is known (at most
    # 2 snapshots of 1.5 checkpoints' worth each per drawn segment: 3 checkpoints' worth
    # under the default policy); "all" every snapshot with the checkpoint, so any later
    # auditor can replay any segment (`ledger audit --replay all`), at 1.5 checkpoints'
    # worth per snapshot.
    publish_snapshots: str = "drawn"
    # Seconds after a round closes that aggregators wait for the workers to reveal what
    # the draw asks for (drawn snapshots; private data: the windows of drawn segments,
    # node.training.privdata) before judging; what is still missing then is
    # TRANSCRIPT_UNREVEALED / WINDOWS_UNREVEALED. Must sit well inside the proposal
    # window (checked at job creation; 0 there means a minute, at most half the window).
    reveal_window: _int(0, MAX_UINT32 // 2) = 0
    # Verification committees (ledger.protocol.committee): each contribution is judged in depth
    # (validation, replay) by committee_size aggregators drawn after the round closes,
    # whose committee_quorum identical votes (0 = a majority of the committee) decide it;
    # every aggregator still runs the cheap checks on all and merges. Votes count until
    # vote_window seconds after judging can start. 0 = every aggregator judges everything.
    committee_size: _int(0, 128) = 0
    committee_quorum: _int(0, 128) = 0
    vote_window: _int(0, MAX_UINT32 // 2) = 60

    def __post_init__(self):
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"merge_rule must be one of {MERGE_RULES}, got {self.merge_rule!r}")
        if int(self.committee_quorum) > int(self.committee_size):
            raise ValueError(f"committee_quorum ({self.committee_quorum}) exceeds committee_size ({self.committee_size})")
        if self.publish_snapshots not in PUBLISH_MODES:
            raise ValueError(f"publish_snapshots must be one of {PUBLISH_MODES}, got {self.publish_snapshots!r}")

    @property
    def reveals(self) -> bool:
        """True when workers reveal drawn snapshots after the round closes."""
        return self.publish_snapshots == "drawn" and int(self.replay_segments) > 0


DP_ACCOUNTANTS = ("rdp", "prv")


@_spec
class DPSpec:
    """Differential privacy: DP-SGD (``node.training.dp``): every window's gradient clipped
    to ``max_grad_norm`` (L2 over all trainable tensors), Gaussian noise of standard
    deviation ``noise_multiplier x max_grad_norm`` added to the clipped sum, each step's
    noise drawn from a seed the worker commits to before the draw.

    The owner gives (epsilon, delta, max_grad_norm); at job creation Opacus's accountant
    (``accountant``) turns them into ``noise_multiplier`` for ``rounds x train.steps``
    steps at ``sample_rate`` (batch size / windows of the smallest worker's data), and
    all of it is committed here: verifiers replay with this noise, never a worker's own."""

    epsilon: _num(0, 1e6, lo_open=True) = 8.0
    delta: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 1e-5
    max_grad_norm: _num(0, 1e6, lo_open=True) = 1.0
    noise_multiplier: _num(0, 1e6) = 0.0        # 0 only before job creation computes it
    sample_rate: _num(0, 1, lo_open=True) = 1.0
    rounds: _int(1, MAX_UINT32) = 1             # the rounds the accountant was told of
    accountant: str = "rdp"

    def __post_init__(self):
        if self.accountant not in DP_ACCOUNTANTS:
            raise ValueError(f"dp accountant must be one of {DP_ACCOUNTANTS}, got {self.accountant!r}")


@_spec
class ShardSpec:
    index: _int(-1, MAX_WORKERS - 1)      # -1: the validation split
    sha256: str       # 0x-hex of the shard's bytes
    num_bytes: _int(0, 2**63 - 1)


@_spec
class DataRoot:
    """A worker's commitment to its private data (``ledger.protocol.datacommit``)."""

    root: str         # 0x-hex of commitment_of(merkle root, length)
    num_bytes: _int(1, 2**63 - 1)


@_spec
class DataSpec:
    corpus: str = "tinyshakespeare.txt"
    corpus_sha256: str = "0x86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    split: str = "iid"                # "iid" or "speaker" ("private": each worker's own committed text)
    val_fraction: _num(0, 1, lo_open=True) = 0.1
    shards: list[ShardSpec] = field(default_factory=list)
    validation: ShardSpec | None = None
    # Bring-your-own-data jobs: one commitment per worker (worker order) instead of
    # corpus shards, and the owner's validation text stored at validation_cid. Both
    # are left out of the canonical bytes when empty, so corpus jobs hash as before.
    roots: list[DataRoot] = field(default_factory=list)
    validation_cid: str = ""

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"data split must be one of {SPLITS}, got {self.split!r}")

    @property
    def private(self) -> bool:
        return bool(self.roots)


@_spec
class PartyKey:
    """A party's secp256k1 public key, self-certifying: its keccak256 gives the address."""

    address: str      # checksummed
    public_key: str   # 0x + 128 hex digits (uncompressed, no 04 prefix)


@_spec
class WrappedKey:
    """The job key of a private job, ECIES-wrapped to one member or named auditor."""

    address: str
    wrapped: str      # 0x-hex


@_spec
class AccessSpec:
    """Who may read what (``ledger.privacy.sealing``). ``keys``: the public keys the job seals to
    (every aggregator and named auditor where anything is sealed; workers too in a private
    job). ``auditors``: named auditors, given the drawn windows and seeds as the verifiers
    are. ``private``: every artifact of the job is stored encrypted under the job key,
    wrapped in ``job_key`` to each member and auditor (later readers: ``ledger job grant``)."""

    keys: list[PartyKey] = field(default_factory=list)
    auditors: list[str] = field(default_factory=list)
    private: bool = False
    key_id: str = ""
    job_key: list[WrappedKey] = field(default_factory=list)

    def check(self) -> None:
        """Every key proves its address; every auditor has a key; a private job has a key
        for someone (the config comes from storage: whoever made the job chose its bytes)."""
        from ledger.privacy.sealing import SealError, address_of, parse_public_key

        seen = set()
        for i, k in enumerate(self.keys):
            try:
                pub = parse_public_key(k.public_key, f"access.keys[{i}].public_key")
            except SealError as e:
                raise ConfigValueError(f"access.keys[{i}]", str(e)) from None
            if address_of(pub).lower() != k.address.lower():
                raise ConfigValueError(f"access.keys[{i}]", f"public key is not the key of {k.address}")
            if k.address.lower() in seen:
                raise ConfigValueError(f"access.keys[{i}]", f"{k.address} is listed twice")
            seen.add(k.address.lower())
        for i, a in enumerate(self.auditors):
            if a.lower() not in seen:
                raise ConfigValueError(f"access.auditors[{i}]", f"auditor {a} has no public key in access.keys")
        if self.private and not self.job_key:
            raise ConfigValueError("access.job_key", "a private job wraps its key to at least one member")

    def public_key(self, address: str) -> bytes | None:
        from ledger.privacy.sealing import parse_public_key

        for k in self.keys:
            if k.address.lower() == address.lower():
                return parse_public_key(k.public_key)
        return None

    def wrapped_for(self, address: str) -> bytes | None:
        for w in self.job_key:
            if w.address.lower() == address.lower():
                return bytes.fromhex(w.wrapped.removeprefix("0x"))
        return None

    @property
    def empty(self) -> bool:
        return not (self.keys or self.auditors or self.private or self.job_key)


# --- DiLoCo outer optimizer and SparseLoCo compression (node.verification.outer, node.training.compress)
OUTER_RULES = ("none", "sgd", "nesterov")


@_spec
class OuterSpec:
    """The outer optimizer of each round's merge (DiLoCo): the merge rule's update of the
    accepted contributions is the negated pseudo-gradient, and the merged model is the
    parent after one outer step of ``rule`` with learning rate ``lr`` and ``momentum``
    (its buffer committed in the merged checkpoint). ``none``: the merged model is the
    rule's average itself (plain weight averaging). DiLoCo's published values: nesterov,
    0.7, 0.9."""

    rule: str = "none"
    lr: _num(0, 10, lo_open=True) = 0.7
    momentum: _num(0, 0.999) = 0.9

    def __post_init__(self):
        if self.rule not in OUTER_RULES:
            raise ValueError(f"outer rule must be one of {OUTER_RULES}, got {self.rule!r}")


@_spec
class CompressSpec:
    """Compressed contributions (SparseLoCo): a worker submits its pseudo-gradient plus its
    decayed error feedback as the ``topk`` largest-magnitude fraction of each ``chunk`` of
    values, quantized to ``bits`` bits; what was left out is its next error feedback.
    ``topk`` 0: contributions are whole checkpoints."""

    topk: _num(0, 1) = 0.0
    bits: _int(1, 8) = 2
    chunk: _int(2, 1 << 20) = 4096
    ef_decay: _num(0, 1) = 0.95

    @property
    def on(self) -> bool:
        return float(self.topk) > 0


def parse_compress(text: str) -> CompressSpec:
    """``topk=F,bits=B[,chunk=N][,decay=D]`` (``--compress``) as a ``CompressSpec``; ``none`` or
    ``off``: no compression. A ConfigValueError (one line) names what is wrong."""
    text = text.strip()
    if text.lower() in ("none", "off", ""):
        return CompressSpec()
    names = {"topk": "topk", "bits": "bits", "chunk": "chunk", "decay": "ef_decay"}
    values: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key.strip() not in names:
            raise ConfigValueError("compress", f"expected topk=F,bits=B[,chunk=N][,decay=D], got {part.strip()!r}")
        field_ = names[key.strip()]
        try:
            values[field_] = int(value) if field_ in ("bits", "chunk") else float(value)
        except ValueError:
            raise ConfigValueError(f"compress.{field_}", f"must be a number, got {value!r}") from None
    if "topk" not in values:
        raise ConfigValueError("compress", "needs topk=F (the fraction of each chunk sent, e.g. 0.02)")
    try:
        spec = CompressSpec(**values)
    except ConfigValueError as e:
        raise ConfigValueError(f"compress.{e.field}" if e.field else "compress", e.problem) from None
    if not spec.on:
        raise ConfigValueError("compress.topk", "must be > 0 (use --compress none for whole checkpoints)")
    return spec


OPTIONAL_DATA_KEYS = ("roots", "validation_cid")
# Left out of the canonical bytes when committees are off, so jobs without them hash as before.
OPTIONAL_POLICY_KEYS = ("committee_size", "committee_quorum", "vote_window")
# Left out of the canonical bytes when empty or at their default, so byte-GPT jobs hash as before.
OPTIONAL_MODEL_KEYS = {"kind": "byte-gpt", "source": "", "hf_config": "", "tokenizer": None, "base": None,
                       "lora_rank": 0, "lora_alpha": 0.0, "lora_targets": [], "dtype": "float32"}


@_spec
class JobConfig:
    name: Annotated[str, Field(min_length=1, max_length=200)] = "tiny-shakespeare"
    seed: _int(0, MAX_SEED) = 1337
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    policy: Policy = field(default_factory=Policy)
    data: DataSpec = field(default_factory=DataSpec)
    access: AccessSpec = field(default_factory=AccessSpec)
    cid_version: _int(0, 1) = 0
    format: str = FORMAT
    # DP-SGD (None: none); left out of the canonical bytes when None, so other jobs hash as before.
    dp: DPSpec | None = None
    # Left out of the canonical bytes when off ("none", topk 0), so jobs without them hash as before.
    outer: OuterSpec = field(default_factory=OuterSpec)
    compress: CompressSpec = field(default_factory=CompressSpec)

    def check(self) -> None:
        """What a whole config must satisfy beyond each field's range (ConfigValueError
        otherwise); run on every config written (``to_bytes``) and read (``from_bytes``)."""
        self.model.check()
        self.access.check()

    def to_bytes(self) -> bytes:
        self.check()
        d = asdict(self)
        for k in OPTIONAL_DATA_KEYS:
            if not d["data"][k]:
                del d["data"][k]
        for k, default in OPTIONAL_MODEL_KEYS.items():
            if d["model"][k] == default:
                del d["model"][k]
        if self.access.empty:     # left out when unused, so jobs without it hash as before
            del d["access"]
        if not d["policy"]["committee_size"]:
            for k in OPTIONAL_POLICY_KEYS:
                del d["policy"][k]
        if d["dp"] is None:
            del d["dp"]
        if self.outer.rule == "none":
            del d["outer"]
        if not self.compress.on:
            del d["compress"]
        return canonical_json(d)

    @property
    def digest(self) -> bytes:
        return sha256_bytes(self.to_bytes())

    @property
    def discloses(self) -> bool:
        """Whether workers reveal anything after the draw, and so have a disclosure phase on
        chain: private data (drawn windows), or drawn snapshots of a transcript that has any
        (more steps than one segment), or a DP job's drawn noise seeds."""
        return (self.data.private or (self.policy.reveals and int(self.train.steps) > int(self.policy.segment_steps))
                or self.dp_replays)

    @property
    def dp_replays(self) -> bool:
        """A DP job whose verifiers replay drawn segments: the worker hands them those
        segments' noise seeds after the draw, so the job has a disclosure phase."""
        return self.dp is not None and int(self.policy.replay_segments) > 0

    @property
    def seals(self) -> bool:
        """Whether workers seal what they reveal to their verifiers (``ledger.privacy.sealing``): the
        drawn windows of their own text, a DP job's drawn noise seeds. Drawn snapshots are
        model states, not text, and stay public unless the whole job is private."""
        return self.data.private or self.dp_replays

    @classmethod
    def from_bytes(cls, raw: bytes) -> "JobConfig":
        """Parse a stored config; a field of the wrong JSON type is a ValueError naming it
        (the config comes from storage: whoever created the job chose its bytes)."""
        d = safejson.loads(raw, what="job config")
        if not isinstance(d, dict):
            raise ValueError(f"job config must be a JSON object, got {_json_type(d)}")
        if d.get("format") != FORMAT:
            raise ValueError(f"job config format {d.get('format')!r} is not {FORMAT!r}")
        config = _build(cls, d, "")
        config.check()
        return config


def num_samples(train: TrainSpec) -> int:
    """The sample count a worker declares on chain (its FedAvg weight): windows seen in one round."""
    return int(train.steps) * int(train.batch_size)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _json_type(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def _check(value: Any, hint: Any, where: str) -> Any:
    """``value`` (parsed JSON) as the type ``hint`` of a dataclass field, or ValueError naming ``where``.
    Driven by the field annotations, so a field added to a spec is checked without listing it here."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"job config field {where} must be an array, got {_json_type(value)}")
        return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    ok = {
        bool: lambda v: type(v) is bool,
        int: lambda v: type(v) is int,
        float: lambda v: type(v) in (int, float),
        str: lambda v: type(v) is str,
    }.get(hint)
    if ok is None:  # pragma: no cover - a field type this checker does not know yet
        raise TypeError(f"job config field {where}: unsupported annotation {hint!r}")
    if not ok(value):
        want = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[hint]
        raise ValueError(f"job config field {where} must be {want}, got {_json_type(value)} {json.dumps(value)[:40]}")
    return value


def _build(cls, d: Any, where: str):
    """A dataclass from a JSON object: known keys type-checked, missing ones default, unknown ignored."""
    if not isinstance(d, dict):
        raise ValueError(f"job config field {where or 'top level'} must be an object, got {_json_type(d)}")
    hints = typing.get_type_hints(cls)
    values = {f.name: _check(d[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
              for f in fields(cls) if f.name in d}
    try:
        return cls(**values)
    except ConfigValueError as e:   # a value out of range: named from the top of the config
        raise ConfigValueError(".".join(p for p in (where, e.field) if p), e.problem) from None
