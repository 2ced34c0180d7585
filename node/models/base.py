"""What a model is to the ledger: one small interface every kind implements.

Roles, verification, merge, audit and reports never ask which kind of model a job
trains. They hold a ``LanguageModel`` and exchange ``dict[str, np.ndarray]`` state
dicts of its *trainable* parameters (float32, sorted names): the genesis, every
contribution, every snapshot of a transcript and every merge. For a LoRA job those
are the adapter's tensors; the frozen base is part of the model, committed once in
the job config.

A kind implements:
- tokens: ``encode(text) -> ids`` and ``decode(ids) -> str`` (``token_bytes`` per id
  in a data stream, ``ledger.protocol.tokens``);
- parameters: ``genesis(seed)`` (the round-1 parent), ``module(params, device)`` (a
  torch module holding them, ready to train or evaluate) and ``trainable(module)``
  (its trainable parameters under the state dict's names, sorted);
- one forward: ``loss(module, x, y)``, the mean next-token cross-entropy in nats;
- ``generate(module, ids, ...)``: sampled continuation ids.
Training (``node.training.train``) is written once against this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn import functional as F

from ledger.protocol.jobconfig import ModelSpec

from node.models.params import load_into


class LanguageModel(ABC):
    """A job's model (``spec``): tokens, trainable parameters, loss, generation."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._modules: dict[str, torch.nn.Module] = {}

    # --- sizes --------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return int(self.spec.block_size)

    @property
    def vocab_size(self) -> int:
        return int(self.spec.vocab_size)

    @property
    def token_bytes(self) -> int:
        return self.spec.token_bytes

    @property
    def describe(self) -> str:
        return self.spec.kind

    # --- tokens -------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: bytes) -> np.ndarray:
        """Token ids of ``text`` (int64), no special tokens."""

    @abstractmethod
    def decode(self, ids) -> str:
        """Text of token ids (invalid UTF-8 replaced)."""

    def stream(self, text: bytes) -> bytes:
        """``text`` as the token stream this job trains on and commits to (``ledger.protocol.tokens``)."""
        from ledger.protocol import tokens

        if self.token_bytes == 1:
            return bytes(text)
        return tokens.to_stream(self.encode(text), self.token_bytes)

    # --- parameters -----------------------------------------------------------------------
    @abstractmethod
    def genesis(self, seed: int) -> dict[str, np.ndarray]:
        """The trainable parameters a job starts from (the round-1 parent)."""

    @abstractmethod
    def _new_module(self) -> torch.nn.Module:
        """A fresh module of this model (its trainable parameters to be loaded)."""

    def _built(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """This process's module on ``device``, built once: only the trainable
        parameters require gradients."""
        key = str(torch.device(device))
        m = self._modules.get(key)
        if m is None:
            m = self._new_module().to(device)
            for p in m.parameters():
                p.requires_grad_(False)
            for _, p in self.trainable(m):
                p.requires_grad_(True)
            self._modules[key] = m
        return m

    def module(self, params: dict[str, np.ndarray], device: torch.device | str = "cpu") -> torch.nn.Module:
        """A module with ``params`` loaded into its trainable parameters, in eval mode
        (no dropout: training must be a pure function of parameters, data and seed).
        The module is built once and reused: loading every trainable tensor resets all
        that training changed, and a frozen base is never written."""
        m = self._built(device)
        m.zero_grad(set_to_none=True)
        load_into(m, params, named=self.trainable(m))
        return m.eval()

    def trainable(self, module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of what training changes, sorted by name: the state dict's names."""
        return sorted(module.named_parameters())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.genesis(0).items()}

    # --- forward ---------------------------------------------------------------------------
    @abstractmethod
    def logits(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(B, T, vocab) next-token logits for ids x (B, T)."""

    def autocast(self, device: torch.device):
        """The precision context of forward passes: bfloat16 autocast when the job says so."""
        if self.spec.dtype == "bfloat16":
            return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        return nullcontext()

    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast(x.device):
            logits = self.logits(module, x)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def generate(self, module: torch.nn.Module, ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
        """``ids`` extended by ``max_new_tokens`` sampled tokens (greedy when temperature
        <= 0). Sampling draws only from ``generator``: a seeded one gives the same text."""
        idx = torch.tensor([list(ids)], dtype=torch.long)
        for _ in range(int(max_new_tokens)):
            logits = self.logits(module, idx[:, -self.block_size:])[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(int(top_k), logits.size(-1)))
                    logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx[0].tolist()
