"""LoRA: a frozen, committed base model and small trainable adapters (through ``peft``).

The base weights are fetched once, checked against the digest the job config commits
to, and never change; a contribution, its transcript and every merge carry only the
adapter tensors (``lora_A``/``lora_B`` of each targeted projection), named as in the
base model with peft's wrapper prefix and adapter name taken out, e.g.
``model.layers.0.self_attn.q_proj.lora_A.weight``. Merge rules apply to those tensors
exactly as to a full model's (FedAvg averages A and B separately, as federated LoRA
usually does). The genesis adapter is drawn from the job seed: A uniform in
±1/sqrt(fan_in) (peft's default scale), B zero, so round 1 starts at the base model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ledger.errors import LedgerError

from node.models.hf import DEFAULT_LORA_TARGETS, HFModel, count, quiet_transformers
from node.models.params import load_into

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


def canonical_name(peft_name: str) -> str:
    name = peft_name[len(PEFT_PREFIX):] if peft_name.startswith(PEFT_PREFIX) else peft_name
    return name.replace(f".{ADAPTER}.", ".")


class LoraModel(HFModel):
    """An ``HFModel`` whose base weights are frozen; its trainable state is the adapter."""

    def __init__(self, spec, tokenizer_json: bytes, base: dict[str, np.ndarray]):
        super().__init__(spec, tokenizer_json)
        self.base = base
        targets = list(spec.lora_targets) or DEFAULT_LORA_TARGETS[self.hf["model_type"]]
        self.targets = targets
        if not spec.lora_alpha > 0:
            raise LedgerError(f"lora_alpha must be > 0, got {spec.lora_alpha}")

    @property
    def describe(self) -> str:
        n = sum(int(np.prod(v.shape)) for v in self.base.values())
        a = sum(int(np.prod(s)) for s in self.param_shapes().values())
        src = f" ({self.spec.source})" if self.spec.source else ""
        return (f"{self.hf['model_type']} model{src}, {count(n)} frozen parameters + LoRA rank "
                f"{self.spec.lora_rank} on {','.join(self.targets)} ({count(a)} trainable), "
                f"context {self.block_size} tokens")

    def _new_module(self) -> torch.nn.Module:
        quiet_transformers()
        from peft import LoraConfig, get_peft_model

        m = super()._new_module()
        load_into(m, self.base)
        try:
            cfg = LoraConfig(r=int(self.spec.lora_rank), lora_alpha=float(self.spec.lora_alpha),
                             target_modules=list(self.targets), lora_dropout=0.0, bias="none",
                             fan_in_fan_out=self.hf["model_type"] == "gpt2")
            return get_peft_model(m, cfg)
        except ValueError as e:
            raise LedgerError(f"LoRA on {self.targets}: {str(e).splitlines()[0]}") from None

    def trainable(self, module) -> list[tuple[str, torch.nn.Parameter]]:
        return sorted((canonical_name(n), p) for n, p in module.named_parameters() if ".lora_" in n)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        if not hasattr(self, "_shape_cache"):
            m = self._modules.get("cpu") or self._built("cpu")
            self._shape_cache = {n: tuple(p.shape) for n, p in self.trainable(m)}
        return self._shape_cache

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes())

    def genesis(self, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.Generator(np.random.PCG64(int(seed)))
        out = {}
        for name, shape in sorted(self._shapes().items()):
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(shape[1])
                out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
            else:
                out[name] = np.zeros(shape, dtype=np.float32)
        return out
