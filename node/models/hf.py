"""Hugging Face causal language models (GPT-2, Llama-style) behind ``LanguageModel``.

The job config commits to the model's transformers config (canonical JSON) and its
``tokenizer.json``; the weights are the genesis checkpoint (full fine-tuning) or the
frozen base committed beside the config (LoRA, ``node.models.lora``). Every party
builds the module from the config with ``AutoModelForCausalLM.from_config`` (never
remote code, never a download) and loads tensors it fetched and checked itself.

A config is hostile input like any fetched file: ``check_config`` checks every field
transformers acts on (``ledger.protocol.hfconfig``: the two model types this project tests,
every size, activations, rope settings, head divisibility) and counts the parameters
on the meta device (no memory) before anything real is allocated.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch

from ledger.protocol import hfconfig
from ledger import safejson
from ledger.errors import LedgerError
from ledger.protocol.jobconfig import canonical_json

from node.models.base import LanguageModel

# Config keys that say where a file came from or how a library saved it, not what the
# model computes: left out of the committed config so the same model commits the same way.
VOLATILE_KEYS = ("transformers_version", "_name_or_path", "_model_name_or_path", "quantization_config",
                 "architectures", "dtype", "torch_dtype", "_commit_hash", "auto_map", "_attn_implementation",
                 "_attn_implementation_autoset", "use_cache")
MAX_PARAMS = 4_000_000_000
DEFAULT_LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def quiet_transformers() -> None:
    """transformers and its hub client talk on stderr (config notes, progress bars) and
    would reach for the network: keep them quiet and offline, in this process and its children."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", module="peft")


def check_config(d) -> dict:
    """A transformers config dict checked and trimmed to what the model computes: every
    field transformers acts on sound (``ledger.protocol.hfconfig.check``), at most ``MAX_PARAMS``
    parameters (counted on the meta device). Raises LedgerError saying which field is wrong."""
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k not in VOLATILE_KEYS}
    hfconfig.check(d)
    cfg = _config_object(d)
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in _from_config(cfg).parameters())
    except Exception as e:  # noqa: BLE001 - transformers' own errors, after hfconfig found none
        raise LedgerError(f"the model config cannot be built: {_first_line(e)}") from None
    if n > MAX_PARAMS:
        raise LedgerError(f"the model config describes {n:,} parameters, over this ledger's limit of {MAX_PARAMS:,}")
    return d


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _config_object(d: dict):
    quiet_transformers()
    from transformers import AutoConfig

    d = dict(d)
    try:
        return AutoConfig.for_model(d.pop("model_type"), **d)
    except Exception as e:  # noqa: BLE001 - transformers raises its own validation types
        raise LedgerError(f"the model config cannot be built: {_first_line(e)}") from None


def _from_config(cfg):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(cfg, trust_remote_code=False, dtype=torch.float32,
                                            attn_implementation="sdpa")


def context_limit(d: dict) -> int:
    """The longest sequence the model's position encoding takes."""
    return int(d.get("n_positions") or d.get("max_position_embeddings") or 1024)


def count(n: int) -> str:
    """A parameter count for people: 134.5M, 0.46M, 12,544."""
    return f"{n / 1e6:.1f}M" if n >= 10**7 else f"{n / 1e6:.2f}M" if n >= 10**5 else f"{n:,}"


def to_numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    from node.models.params import to_numpy

    return to_numpy(module)


class HFModel(LanguageModel):
    """A GPT-2 or Llama-style model, fully fine-tuned: its parameters are the state dict."""

    def __init__(self, spec, tokenizer_json: bytes):
        super().__init__(spec)
        from ledger.protocol.tokens import load_tokenizer

        self.hf = check_config(safejson.loads(spec.hf_config, what="the model config"))
        self.tokenizer = load_tokenizer(tokenizer_json)
        vocab = int(self.hf.get("vocab_size", 0))
        if int(spec.vocab_size) != vocab:
            raise LedgerError(f"the job's vocab_size {spec.vocab_size} is not the model config's {vocab}")
        if not 1 <= self.block_size <= context_limit(self.hf):
            raise LedgerError(f"the training context of {self.block_size} tokens is outside 1..{context_limit(self.hf)} "
                              f"(the model's position limit)")
        if self.tokenizer.get_vocab_size(with_added_tokens=True) > vocab:
            raise LedgerError(f"the tokenizer has {self.tokenizer.get_vocab_size(with_added_tokens=True)} tokens, "
                              f"more than the model's vocabulary of {vocab}")

    @property
    def describe(self) -> str:
        n = sum(int(np.prod(s)) for s in self.param_shapes().values())
        src = f" ({self.spec.source})" if self.spec.source else ""
        return f"{self.hf['model_type']} model{src}, {count(n)} parameters, context {self.block_size} tokens"

    def encode(self, text: bytes) -> np.ndarray:
        from ledger.protocol.tokens import encode_text

        return encode_text(self.tokenizer, text)

    def decode(self, ids) -> str:
        # special tokens (an end-of-turn marker, say) are control, not text
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _new_module(self) -> torch.nn.Module:
        m = _from_config(_config_object(self.hf))
        m.config.use_cache = False
        return m

    def genesis(self, seed: int) -> dict[str, np.ndarray]:
        """A fresh initialisation of the config under ``seed`` (``--init random``); a
        pretrained job's genesis is the imported weights instead."""
        torch.manual_seed(int(seed))
        return to_numpy_state(self._new_module())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            m = _from_config(_config_object(self.hf))
        return {n: tuple(p.shape) for n, p in sorted(m.named_parameters())}

    def logits(self, module, x):
        return module(input_ids=x, use_cache=False).logits

    @property
    def generation_context(self) -> int:
        return min(context_limit(self.hf), 2048)

    @torch.no_grad()
    def generate(self, module, ids, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        """Sampling with the model's key/value cache (transformers' ``generate``), seeded
        by ``generator``'s initial seed: the same seed gives the same text."""
        ids = list(ids)[-self.generation_context:] or [int(self.hf.get("bos_token_id") or 0)]
        x = torch.tensor([ids], dtype=torch.long)
        kw = dict(max_new_tokens=int(max_new_tokens), use_cache=True, pad_token_id=self.hf.get("eos_token_id"),
                  attention_mask=torch.ones_like(x))
        if temperature <= 0:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=float(temperature), top_k=int(top_k) if top_k else 0, top_p=1.0)
        torch.manual_seed(generator.initial_seed() if generator is not None else 0)
        module.config.use_cache = True
        try:
            out = module.generate(input_ids=x, **kw)
        finally:
            module.config.use_cache = False
        return out[0].tolist()
