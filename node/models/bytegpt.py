"""A byte-level GPT, in the manner of nanoGPT, small enough to train on a laptop CPU.

Vocabulary = the 256 byte values, so no tokenizer is needed and nothing is downloaded.
Every op here is deterministic on CPU for a fixed thread count (plain matmuls, a
manual masked softmax attention, layer norm, GELU), which is what lets two parties
recompute each other's training bit for bit.

Deliberate departures from nanoGPT:
- no dropout at all: training must be a pure function of (parameters, data, seed);
- the output head is tied to the token embedding by *reusing the tensor in forward*,
  not by aliasing a second Module parameter, so the state_dict holds it exactly once;
- initialisation comes from ``init_params(cfg, seed)``, a numpy generator walked in
  sorted parameter-name order, so it does not depend on module construction order or
  on torch's global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from node.models.base import LanguageModel


@dataclass
class GPTConfig:
    vocab_size: int = 256   # bytes
    block_size: int = 128   # context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    bias: bool = True       # biases in Linear and LayerNorm layers

    @classmethod
    def from_spec(cls, spec) -> "GPTConfig":
        """From a ``ledger.protocol.jobconfig.ModelSpec`` (or anything with the same attributes)."""
        return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        # Written out rather than F.scaled_dot_product_attention: its CPU kernels are
        # chosen at run time (flash / math) and may change between releases; a masked
        # softmax is the same handful of deterministic ops everywhere. At T=128 it
        # costs little.
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size), persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, seed: int | None = 0):
        """Build the model; ``seed`` initialises it via ``init_params`` (None: leave
        torch's default init, e.g. when parameters are loaded right after)."""
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)   # also the output head (tied)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        if seed is not None:
            from node.models.params import load_into
            load_into(self, init_params(cfg, seed))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """idx: (B, T) int64 bytes. Returns (logits (B, T, vocab), mean cross-entropy or None)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # tied head: the same tensor, stored once
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Extend idx (B, T) by max_new_tokens bytes. Sampling draws only from
        ``generator``, so a seeded generator gives the same text every time;
        temperature <= 0 means greedy (argmax). Batch-1 sampling is a chain of tiny
        ops: run it with torch.set_num_threads(1), more threads only add waits."""
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:                       # None or 0: sample among all
                    v, _ = torch.topk(logits, min(int(top_k), logits.size(-1)))
                    logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


def param_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, without allocating (meta device)."""
    with torch.device("meta"):
        m = GPT(cfg, seed=None)
    return {n: tuple(p.shape) for n, p in m.named_parameters()}


def init_params(cfg: GPTConfig, seed: int) -> dict[str, np.ndarray]:
    """The genesis parameters for ``seed``, as float32 numpy arrays, names sorted.

    nanoGPT's scheme: weights N(0, 0.02), residual projections (``*.c_proj.weight``)
    scaled by 1/sqrt(2 * n_layer) so the residual stream does not grow with depth,
    biases zero, layer norms weight 1 / bias 0. Drawn from numpy's PCG64 in float64,
    one tensor at a time in sorted-name order, then cast: the result depends on the
    seed and the config only.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, np.ndarray] = {}
    for name, shape in sorted(param_shapes(cfg).items()):
        if ".ln_" in name or name.startswith("ln_f."):
            fill = 1.0 if name.endswith(".weight") else 0.0
            arr = np.full(shape, fill, dtype=np.float32)
        elif name.endswith(".bias"):
            arr = np.zeros(shape, dtype=np.float32)
        else:
            std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
            arr = (rng.standard_normal(shape) * std).astype(np.float32)
        out[name] = np.ascontiguousarray(arr)
    return out


class ByteGPTModel(LanguageModel):
    """The byte GPT behind the ``LanguageModel`` interface: tokens are bytes."""

    def __init__(self, spec):
        super().__init__(spec)
        self.config = GPTConfig.from_spec(spec)

    @property
    def describe(self) -> str:
        c = self.config
        return f"byte-level GPT, {c.n_layer} layers x {c.n_embd} wide, context {c.block_size} bytes"

    def encode(self, text: bytes) -> np.ndarray:
        return np.frombuffer(bytes(text), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")

    def genesis(self, seed: int) -> dict[str, np.ndarray]:
        return init_params(self.config, seed)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return param_shapes(self.config)

    def _new_module(self) -> torch.nn.Module:
        return GPT(self.config, seed=None)

    def logits(self, module, x):
        return module(x)[0]
