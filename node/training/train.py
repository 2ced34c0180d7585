"""Deterministic local training and evaluation: the one training loop every party runs.

A worker's contribution must be a function of (job config, parent parameters, shard,
seed) that a verifier can re-run. Hence:
- the seed comes from ``derive_seed(job_seed, job_id, round, worker)``, a sha256 of a
  canonical string, never from a clock; each step's windows come from a generator
  seeded with (seed, step), so any stretch of steps can be re-run on its own;
- deterministic algorithms on, no dropout, a fresh AdamW every round;
- ``train_steps`` runs from any ``TrainState`` (parameters + AdamW moments + step):
  workers run whole rounds and snapshot the state every ``segment_steps`` steps (the
  transcript, ``node.training.transcript``), verifiers re-run drawn segments from a snapshot.
On one machine, thread count and torch build the same inputs give bit-identical
results; across CPUs, kernel paths (``ATEN_CPU_CAPABILITY``), thread counts and GPUs
they drift apart chaotically, which is why verifiers replay short segments and
compare under a relative tolerance rather than re-running whole rounds.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ledger.errors import LedgerError
from ledger.protocol.jobconfig import num_samples

from node.training.data import as_tensor, windows
from node.training.dp import DPStep, private_grads
from node.models.base import LanguageModel
from node.models.params import to_numpy
from node.training.transcript import TrainState, compact, inner_boundaries

SEED_DOMAIN = "training-ledger/seed/1"


def derive_seed(job_seed: int, job_id: int, round: int, worker_address: str) -> int:
    """A 63-bit seed from sha256("training-ledger/seed/1|job_seed|job_id|round|address").
    The address is lower-cased, so checksummed and plain spellings agree; 63 bits fit
    every seed API (torch, numpy) without sign trouble."""
    text = f"{SEED_DOMAIN}|{int(job_seed)}|{int(job_id)}|{int(round)}|{worker_address.strip().lower()}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    metrics: dict = field(default_factory=dict)  # loss_start, loss_end, steps, samples, seconds, threads, torch_version
    snapshots: list[TrainState] = field(default_factory=list)  # the state at every inner segment boundary


@contextmanager
def torch_settings(threads: int | None, deterministic: bool = True):
    """Set the thread count and deterministic mode for a block, then put them back
    (they are process-wide; a caller running tests or several jobs should not inherit them)."""
    prev_threads = torch.get_num_threads()
    prev_mode = torch.get_deterministic_debug_mode()
    if threads:
        torch.set_num_threads(int(threads))
    # The debug-mode setter is use_deterministic_algorithms without its import of the
    # compiler (torch._inductor, ~1.8 s of CPU in every process; nothing here compiles).
    torch.set_deterministic_debug_mode("error" if deterministic else "default")
    try:
        yield
    finally:
        torch.set_deterministic_debug_mode(prev_mode)
        torch.set_num_threads(prev_threads)


def resolve_device(device: str | None) -> torch.device:
    """``cpu`` or ``cuda[:N]``; a GPU that is not there is a one-line error, not a crash later."""
    name = (device or "cpu").strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LedgerError(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} here; "
                              f"train with --device cpu")
        # cuBLAS is deterministic only with a fixed workspace; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return torch.device(name)
    raise LedgerError(f"--device {device!r}: use cpu or cuda")


def as_model(model) -> LanguageModel:
    """A ``LanguageModel``, or the byte GPT a ``ModelSpec`` describes (benches and tests
    pass specs; a Hugging Face model comes built, with its files from storage)."""
    if isinstance(model, LanguageModel):
        return model
    from node.models import language_model

    return language_model(model)


def lr_at(step: int, steps: int, base: float) -> float:
    """Learning rate for ``step`` of ``steps``: a short linear warm-up (every round
    starts a fresh Adam, whose first updates are sign-like and large), then constant.
    Measured on the default job (bench/quality.py): constant beat a per-round cosine
    decay for both FedAvg (2.41 vs 2.48 val loss after 3 rounds) and centralised
    training (1.86 vs 1.93 after 600 steps); lr 5e-3 and 1e-2 were worse than 3e-3."""
    warmup = max(1, min(10, steps // 10))
    return base * (step + 1) / warmup if step < warmup else base


def make_optimizer(named: list[tuple[str, torch.nn.Parameter]], train_spec) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (``LanguageModel.trainable``, sorted)."""
    # Weight decay only on matrices (embeddings and Linear weights), not on biases and
    # layer norms, as in nanoGPT. foreach/fused pinned off: one code path everywhere.
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train_spec.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train_spec.learning_rate, betas=(0.9, 0.99), eps=1e-8,
                             foreach=False, fused=False)


def step_seed(seed: int, step: int) -> int:
    """The data seed of one step: each step's windows are drawn from their own generator,
    so a verifier replaying steps 30-39 needs no pass over steps 0-29."""
    text = f"{SEED_DOMAIN}|step|{int(seed)}|{int(step)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & ((1 << 63) - 1)


def step_offsets(seed: int, step: int, n_tokens: int, block_size: int, batch_size: int) -> torch.Tensor:
    """The window offsets (in tokens) of training step ``step``: a function of (seed,
    step, the data's length in tokens)."""
    hi = n_tokens - block_size  # offsets 0 .. len-block_size-1 keep y inside the data
    if hi < 1:
        raise ValueError(f"data of {n_tokens} tokens is too short for windows of {block_size + 1}")
    return torch.randint(hi, (batch_size,), generator=torch.Generator().manual_seed(step_seed(seed, step)))


class _Run:
    """A model and its AdamW, placed at a ``TrainState``; ``state()`` reads it back.
    Restoring a state and going on is bit-identical to never having stopped (same
    machine): parameters and moments are copied exactly and the step count is AdamW's
    own float step tensor."""

    def __init__(self, lm: LanguageModel, train_spec, start: TrainState, device: torch.device):
        self.model = lm.module(start.params, device)
        self.named = lm.trainable(self.model)
        self.opt = make_optimizer(self.named, train_spec)
        if start.exp_avg is not None:
            for name, p in self.named:
                self.opt.state[p] = {
                    "step": torch.tensor(float(start.step), dtype=torch.float32),
                    "exp_avg": torch.from_numpy(np.array(start.exp_avg[name], dtype=np.float32)).to(device),
                    "exp_avg_sq": torch.from_numpy(np.array(start.exp_avg_sq[name], dtype=np.float32)).to(device),
                }
        elif start.step != 0:
            raise ValueError(f"a state at step {start.step} needs its optimizer moments")

    def restore(self, state: TrainState) -> None:
        """Continue from ``state`` (same step): its parameters and moments replace the live ones."""
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(torch.from_numpy(np.array(state.params[name], dtype=np.float32)))
                st = self.opt.state[p]
                st["exp_avg"].copy_(torch.from_numpy(np.array(state.exp_avg[name], dtype=np.float32)))
                st["exp_avg_sq"].copy_(torch.from_numpy(np.array(state.exp_avg_sq[name], dtype=np.float32)))

    def state(self, step: int) -> TrainState:
        params = to_numpy(dict(self.named))
        m, v = {}, {}
        for name, p in self.named:
            st = self.opt.state.get(p) or {}
            m[name] = _np(st.get("exp_avg"), p)
            v[name] = _np(st.get("exp_avg_sq"), p)
        return TrainState(step, params, m, v)


def _np(t, like) -> np.ndarray:
    if t is None:                    # a parameter with no gradient yet: its moments are zero
        return np.zeros(tuple(like.shape), dtype=np.float32)
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


def train_steps(lm: LanguageModel, train_spec, start: TrainState, shard: bytes, seed: int, end: int, *,
                snapshot_at: tuple[int, ...] = (), origin: dict[str, np.ndarray] | None = None,
                threads: int | None = None, device: str | None = None,
                progress: Callable[[int, int, float], None] | None = None,
                dp: DPStep | None = None, parallel=None) -> tuple[TrainState, list[TrainState], dict]:
    """Steps ``start.step`` .. ``end - 1`` of a round of ``train_spec.steps`` from ``start``:
    the one training loop, for whole rounds (workers) and drawn segments (verifiers).
    Returns (end state, the states at the steps in ``snapshot_at``, metrics).

    At each step in ``snapshot_at`` the state is made compact against ``origin`` (the
    round's parent; ``node.training.transcript.compact``) and training continues from
    the compact state: a snapshot is then exactly where the next segment started.
    ``parallel``: one process of a data-parallel worker (``node.training.distributed``):
    it trains on its part of each step's windows and averages the gradients with the others."""
    total = int(train_spec.steps)
    if not 0 <= start.step < end <= total:
        raise ValueError(f"steps {start.step}..{end} are outside a round of {total} steps")
    dev = resolve_device(device)
    snaps: list[TrainState] = []
    with torch_settings(threads or train_spec.threads):
        torch.manual_seed(seed)  # nothing should draw from it; pinned anyway
        lm = as_model(lm)
        run = _Run(lm, train_spec, start, dev)
        block = lm.block_size
        data = as_tensor(shard, lm.token_bytes)
        loss_start = loss_end = float("nan")
        t0 = time.perf_counter()
        for step in range(start.step, end):
            for g in run.opt.param_groups:
                g["lr"] = lr_at(step, total, train_spec.learning_rate)
            x, y = windows(data, step_offsets(seed, step, len(data), block, train_spec.batch_size), block)
            if parallel is not None:
                x, y = parallel.part(x), parallel.part(y)
            run.opt.zero_grad(set_to_none=True)
            if dp is not None:
                if parallel is not None:
                    raise ValueError("DP-SGD trains on one process: a DP job's worker runs without --nproc")
                lv = private_grads(lm, run.model, run.named, x.to(dev), y.to(dev), dp, step)
            else:
                loss = lm.loss(run.model, x.to(dev), y.to(dev))
                loss.backward()
                if parallel is not None:
                    loss = parallel.average([p for _, p in run.named], loss)
                if train_spec.grad_clip and train_spec.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for _, p in run.named], train_spec.grad_clip)
                lv = loss.item()
            run.opt.step()
            if step == start.step:
                loss_start = lv
            loss_end = lv
            if step + 1 in snapshot_at and step + 1 < end:
                snap = compact(run.state(step + 1), origin if origin is not None else start.params)
                run.restore(snap)
                snaps.append(snap)
            if progress is not None:
                progress(step + 1, total, lv)
        metrics = {"loss_start": loss_start, "loss_end": loss_end, "steps": end - start.step,
                   "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                   "device": str(dev), "torch_version": torch.__version__}
        return run.state(end), snaps, metrics


def train_local(lm: LanguageModel, train_spec, params: dict[str, np.ndarray], shard: bytes, seed: int,
                progress: Callable[[int, int, float], None] | None = None, *, segment_steps: int | None = None,
                threads: int | None = None, device: str | None = None, dp: DPStep | None = None) -> TrainResult:
    """A worker's round: ``train_spec.steps`` AdamW steps on windows of ``shard`` from
    ``params`` with a fresh optimizer, snapshotting the whole state every
    ``segment_steps`` steps (the transcript; None = no snapshots). ``progress(step,
    total, loss)`` is called after every step. loss_start / loss_end are the training
    losses of the first and the last batch. ``dp``: a DP-SGD job's step (``train_steps``)."""
    steps = int(train_spec.steps)
    if steps < 1:
        raise ValueError(f"train steps must be >= 1, got {steps}")
    at = tuple(inner_boundaries(steps, segment_steps)) if segment_steps else ()
    end, snaps, m = train_steps(lm, train_spec, TrainState.fresh(params), shard, seed, steps,
                                snapshot_at=at, threads=threads, device=device, progress=progress, dp=dp)
    m["steps"], m["samples"] = steps, num_samples(train_spec)
    return TrainResult(params=end.params, metrics=m, snapshots=snaps)


def eval_offsets(n_tokens: int, block_size: int, count: int, seed: int) -> torch.Tensor:
    """The fixed window offsets ``evaluate`` uses: a function of (length, block, count, seed)."""
    hi = n_tokens - block_size
    if hi < 1:
        raise ValueError(f"data of {n_tokens} tokens is too short for windows of {block_size + 1}")
    return torch.randint(hi, (count,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate(lm: LanguageModel, params: dict[str, np.ndarray], data: bytes, batches: int, batch_size: int,
             seed: int = 0, threads: int | None = None) -> float:
    """Mean cross-entropy (nats per token) of ``params`` on ``batches`` x ``batch_size``
    windows of the token stream ``data`` whose offsets depend only on the seed: every
    caller scores every model on the same text."""
    lm = as_model(lm)
    with torch_settings(threads):
        model = lm.module(params)
        d = as_tensor(data, lm.token_bytes)
        offsets = eval_offsets(len(d), lm.block_size, batches * batch_size, seed)
        total = 0.0
        for b in range(batches):
            x, y = windows(d, offsets[b * batch_size:(b + 1) * batch_size], lm.block_size)
            total += float(lm.loss(model, x, y))
    return total / batches
