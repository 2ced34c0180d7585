"""What a Hugging Face model config may say, checked without torch or transformers.

A job commits to a transformers config (``ModelSpec.hf_config``), and every party builds
its model from it: a stored config is hostile input. transformers turns a bad value into
a ``KeyError`` (an activation name it does not know: ``"os.system"``), a ``TypeError``
(a string rope ``factor``) or its own validation errors (a hidden size 3 heads do not
divide), deep inside model construction. ``check`` refuses each such value first, in
one line naming the field: when the owner imports a directory, and when any party reads
a job config (``JobConfig.from_bytes`` runs it through ``ModelSpec.check``).

Fields transformers does not act on for these two model types pass unchecked (their
values are JSON whose size and depth ``ledger.safejson`` already bounded).
"""

from __future__ import annotations

import math
from typing import Any

from ledger.errors import LedgerError

MODEL_TYPES = ("gpt2", "llama")
# Bounds every size must stay within before anything is built from it.
LIMITS = {"vocab_size": 1 << 18, "hidden_size": 16384, "n_embd": 16384, "num_hidden_layers": 128, "n_layer": 128,
          "num_attention_heads": 256, "n_head": 256, "num_key_value_heads": 256, "intermediate_size": 65536,
          "n_inner": 65536, "max_position_embeddings": 1 << 17, "n_positions": 1 << 17, "n_ctx": 1 << 17,
          "head_dim": 1024, "pretraining_tp": 64}
NULLABLE_SIZES = ("n_inner", "head_dim", "num_key_value_heads")
# transformers' ACT2FN names these models are tested with; anything else is refused.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "quick_gelu", "relu",
               "silu", "swish", "tanh", "sigmoid")
ACTIVATION_KEYS = ("activation_function", "hidden_act")
# (lo, hi, lo_open) for every number transformers reads
NUMBERS = {
    "layer_norm_epsilon": (0, 1, True), "rms_norm_eps": (0, 1, True), "initializer_range": (0, 10, False),
    "attn_pdrop": (0, 1, False), "embd_pdrop": (0, 1, False), "resid_pdrop": (0, 1, False),
    "attention_dropout": (0, 1, False), "summary_first_dropout": (0, 1, False),
    "rope_theta": (0, 1e12, True), "partial_rotary_factor": (0, 1, True),
}
BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
         "reorder_and_upcast_attn", "use_cache")
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
ROPE_KEYS = ("rope_parameters", "rope_scaling")
# rope_type -> the numeric keys it needs (transformers' rope init functions read them)
ROPE_TYPES = {"default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
ROPE_NUMBERS = {"factor": (1e-3, 1024), "rope_theta": (1e-9, 1e12), "low_freq_factor": (1e-9, 1e6),
                "high_freq_factor": (1e-9, 1e6), "original_max_position_embeddings": (1, 1 << 20),
                "beta_fast": (1e-9, 1e6), "beta_slow": (1e-9, 1e6), "mscale": (1e-9, 1e6),
                "mscale_all_dim": (0, 1e6), "attention_factor": (1e-9, 1e6), "partial_rotary_factor": (1e-9, 1)}
# transformers' defaults where a config leaves a field out
DEFAULTS = {"gpt2": {"n_embd": 768, "n_head": 12}, "llama": {"hidden_size": 4096, "num_attention_heads": 32}}


class HFConfigError(LedgerError, ValueError):
    """A model config value transformers would choke on, in one line naming the field."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"model config field {field} {problem}")


def _show(v: Any) -> str:
    import json

    return json.dumps(v, default=repr)[:40]


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _in(field: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if not _number(v) or v > hi or v < lo or (lo_open and v == lo):
        raise HFConfigError(field, f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {_show(v)}")


def _rope(field: str, r: Any) -> None:
    if r is None:
        return
    if not isinstance(r, dict):
        raise HFConfigError(field, f"must be an object or null, got {_show(r)}")
    kind = r.get("rope_type", r.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise HFConfigError(f"{field}.rope_type", f"must be one of {', '.join(ROPE_TYPES)}, got {_show(kind)}")
    for need in ROPE_TYPES[kind]:
        if need not in r:
            raise HFConfigError(f"{field}.{need}", f"is required by rope_type {kind}")
    for k, v in r.items():
        if k in ("rope_type", "type"):
            continue
        if k not in ROPE_NUMBERS:
            raise HFConfigError(f"{field}.{k}", "is not a rope setting this ledger knows")
        _in(f"{field}.{k}", v, *ROPE_NUMBERS[k])


def check(d: Any) -> None:
    """Raise ``HFConfigError`` naming the first field of the config dict ``d`` that
    transformers would act on with a bad value; return when every one is sound."""
    if not isinstance(d, dict):
        raise HFConfigError("(top level)", "must be a JSON object")
    mt = d.get("model_type")
    if mt not in MODEL_TYPES:
        raise HFConfigError("model_type", f"must be one of {', '.join(MODEL_TYPES)} (GPT2LMHeadModel, "
                                          f"LlamaForCausalLM), got {_show(mt)}")
    for key, limit in LIMITS.items():
        v = d.get(key)
        if v is None and (key not in d or key in NULLABLE_SIZES):
            continue
        if type(v) is not int or not 0 < v <= limit:
            raise HFConfigError(key, f"must be an integer in 1..{limit}, got {_show(v)}")
    for key in ACTIVATION_KEYS:
        if key in d and d[key] not in ACTIVATIONS:
            raise HFConfigError(key, f"must be one of {', '.join(ACTIVATIONS)}, got {_show(d[key])}")
    for key, bounds in NUMBERS.items():
        if key in d:
            _in(key, d[key], *bounds)
    for key in BOOLS:
        if key in d and type(d[key]) is not bool:
            raise HFConfigError(key, f"must be true or false, got {_show(d[key])}")
    if d.get("add_cross_attention", False) is not False:
        raise HFConfigError("add_cross_attention", "must be false (a causal LM has no encoder)")
    vocab = d.get("vocab_size", 50257 if mt == "gpt2" else 32000)
    for key in TOKEN_IDS:
        v = d.get(key)
        ids = v if isinstance(v, list) and key == "eos_token_id" else [v]
        if v is not None and not all(type(i) is int and 0 <= i < vocab for i in ids):
            raise HFConfigError(key, f"must be null or a token id in 0..{vocab - 1}, got {_show(v)}")
    for key in ROPE_KEYS:
        _rope(key, d.get(key))
    size = {**DEFAULTS[mt], **{k: v for k, v in d.items() if k in LIMITS and v is not None}}
    if mt == "gpt2" and size["n_embd"] % size["n_head"]:
        raise HFConfigError("n_embd", f"must be a multiple of n_head ({size['n_head']}), got {size['n_embd']}")
    if mt == "llama":
        heads = size["num_attention_heads"]
        if "head_dim" not in size and size["hidden_size"] % heads:
            raise HFConfigError("hidden_size", f"must be a multiple of num_attention_heads ({heads}), "
                                               f"got {size['hidden_size']}")
        kv = size.get("num_key_value_heads", heads)
        if heads % kv:
            raise HFConfigError("num_attention_heads", f"must be a multiple of num_key_value_heads ({kv}), got {heads}")
