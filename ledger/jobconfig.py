"""The job config: everything that defines a training job, hashed onto the chain.

Plain dataclasses serialised as canonical JSON (sorted keys, no spaces); the sha256
of those bytes is the job's ``configDigest`` on chain, and the bytes themselves are
stored by CID. No torch here: the audit and the history read it too.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .digest import sha256_bytes

FORMAT = "training-ledger/job/1"
MERGE_RULES = ("fedavg", "median", "trimmed_mean", "krum")


MODEL_KINDS = ("byte-gpt", "hf")
HF_MODEL_TYPES = ("gpt2", "llama")
DTYPES = ("float32", "bfloat16")


@dataclass
class Artifact:
    """Bytes the config commits to and where storage keeps them (a tokenizer, base weights)."""

    sha256: str       # 0x-hex of the exact bytes
    cid: str
    num_bytes: int


@dataclass
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
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True
    source: str = ""                  # where the weights came from ("smollm2", a directory's name)
    hf_config: str = ""
    tokenizer: Artifact | None = None
    base: Artifact | None = None
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: list[str] = field(default_factory=list)
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model dtype must be one of {DTYPES}, got {self.dtype!r}")
        if int(self.lora_rank) < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
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
        """Bytes per token in a data stream (``ledger.datacommit`` commits to such streams):
        1 for the byte GPT (the stream is the text), 2 up to 65,536 tokens, else 4."""
        if self.kind == "byte-gpt":
            return 1
        return 2 if int(self.vocab_size) <= 1 << 16 else 4


@dataclass
class TrainSpec:
    steps: int = 50            # local optimiser steps per round
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    threads: int = 1           # torch threads; recorded in every checkpoint


@dataclass
class Policy:
    """How aggregators judge and merge contributions."""

    merge_rule: str = "fedavg"
    trim_ratio: float = 0.25         # trimmed_mean: fraction cut at each end
    krum_f: int = 1                  # krum: number of Byzantine workers tolerated
    krum_m: int = 0                  # krum: how many to keep (0 = n - f)
    # L2 norm of (checkpoint - parent) over all tensors: an absolute cap, and a bound
    # relative to the round (ratio x the median norm of the contributions that pass the
    # cheap checks, when there are >= 3), which follows the model size and the steps.
    max_update_norm: float = 100.0
    max_update_norm_ratio: float = 3.0
    max_val_loss_increase: float = 0.25  # accepted if val_loss <= parent_val_loss + this
    val_batches: int = 8
    val_batch_size: int = 32
    # Segment replay (node.training.transcript): a worker snapshots its whole training state every
    # segment_steps steps; each aggregator re-runs replay_segments drawn segments of every
    # contribution (0 = none) and accepts when the replay lands within replay_tolerance
    # of the published end, relative to the segment's own movement. Calibrated by
    # bench/replay_drift.py: honest replays on other kernel paths and thread counts land
    # within 2e-4 over 10 steps (8e-5 over 5), cheats at 0.45 and beyond. 5 steps, not
    # 10: one replayed segment of each contribution then costs an aggregator 0.1 of the
    # round's training instead of 0.2 (bench/verification.py), for 9 snapshots (27
    # checkpoints' worth of storage) instead of 4 (12).
    segment_steps: int = 5
    replay_segments: int = 1
    replay_tolerance: float = 1e-2
    max_checkpoint_bytes: int = 256 * 1024 * 1024
    # Private-data jobs: seconds after a round closes that aggregators wait for the
    # workers to reveal the windows of their drawn segments (node.training.privdata) before
    # judging; a window still missing then is WINDOWS_UNREVEALED. Must sit well inside
    # the proposal window (checked at job creation).
    reveal_window: int = 60

    def __post_init__(self):
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"merge_rule must be one of {MERGE_RULES}, got {self.merge_rule!r}")
        if int(self.segment_steps) < 1 or int(self.replay_segments) < 0:
            raise ValueError(f"segment_steps must be >= 1 and replay_segments >= 0, got "
                             f"{self.segment_steps} and {self.replay_segments}")
        if not float(self.replay_tolerance) > 0:
            raise ValueError(f"replay_tolerance must be > 0, got {self.replay_tolerance}")


@dataclass
class ShardSpec:
    index: int
    sha256: str       # 0x-hex of the shard's bytes
    num_bytes: int


@dataclass
class DataRoot:
    """A worker's commitment to its private data (``ledger.datacommit``)."""

    root: str         # 0x-hex of commitment_of(merkle root, length)
    num_bytes: int


@dataclass
class DataSpec:
    corpus: str = "tinyshakespeare.txt"
    corpus_sha256: str = "0x86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    split: str = "iid"                # "iid" or "speaker"
    val_fraction: float = 0.1
    shards: list[ShardSpec] = field(default_factory=list)
    validation: ShardSpec | None = None
    # Bring-your-own-data jobs: one commitment per worker (worker order) instead of
    # corpus shards, and the owner's validation text stored at validation_cid. Both
    # are left out of the canonical bytes when empty, so corpus jobs hash as before.
    roots: list[DataRoot] = field(default_factory=list)
    validation_cid: str = ""

    @property
    def private(self) -> bool:
        return bool(self.roots)


OPTIONAL_DATA_KEYS = ("roots", "validation_cid")
# Left out of the canonical bytes when empty or at their default, so byte-GPT jobs hash as before.
OPTIONAL_MODEL_KEYS = {"kind": "byte-gpt", "source": "", "hf_config": "", "tokenizer": None, "base": None,
                       "lora_rank": 0, "lora_alpha": 0.0, "lora_targets": [], "dtype": "float32"}


@dataclass
class JobConfig:
    name: str = "tiny-shakespeare"
    seed: int = 1337
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    policy: Policy = field(default_factory=Policy)
    data: DataSpec = field(default_factory=DataSpec)
    cid_version: int = 0
    format: str = FORMAT

    def to_bytes(self) -> bytes:
        d = asdict(self)
        for k in OPTIONAL_DATA_KEYS:
            if not d["data"][k]:
                del d["data"][k]
        for k, default in OPTIONAL_MODEL_KEYS.items():
            if d["model"][k] == default:
                del d["model"][k]
        return canonical_json(d)

    @property
    def digest(self) -> bytes:
        return sha256_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> "JobConfig":
        """Parse a stored config; a field of the wrong JSON type is a ValueError naming it
        (the config comes from storage: whoever created the job chose its bytes)."""
        try:
            d = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"job config is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"job config must be a JSON object, got {_json_type(d)}")
        if d.get("format") != FORMAT:
            raise ValueError(f"job config format {d.get('format')!r} is not {FORMAT!r}")
        return _build(cls, d, "")


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
    return cls(**values)
