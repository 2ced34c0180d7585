"""A worker that is a cluster: one round trained by N data-parallel processes.

``ledger worker run --nproc N`` trains its round with ``torch.distributed`` over N
processes on this machine (gloo; the same code path takes NCCL on GPUs): every step's
windows, drawn exactly as a single process draws them (``train.step_offsets``), are cut
into N equal parts, each process takes the loss and gradients of its part, and the
gradients are averaged (all-reduce, then / N) before clipping and the AdamW step. The
mean of N equal parts' mean losses is the whole batch's mean loss, so each step is
the single-process step up to the order of floating-point sums: the transcript is the
same kind, and a verifier replays a drawn segment in one process within the job's
replay tolerance (``bench/replay_drift.py --nproc`` measures how close).

The processes see nothing of the chain or storage: the parent writes the round's
inputs (parent tensors, shard, committed model files) to a private temporary folder,
process 0 writes the end state and snapshots back as safetensors (never pickle), and
the worker publishes them as it would its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ledger.store import checkpoint
from ledger.digest import from_hex, sha256_bytes
from ledger.errors import LedgerError
from ledger.protocol.jobconfig import JobConfig, num_samples

from node.training.transcript import TrainState, inner_boundaries


class _Part:
    """One process's share of each step (``train.train_steps(parallel=...)``)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def part(self, t):
        n = t.shape[0] // self.world
        return t[self.rank * n:(self.rank + 1) * n]

    def average(self, params, loss):
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world)
        mean = loss.detach().clone()
        dist.all_reduce(mean, op=dist.ReduceOp.SUM)
        return mean / self.world


def check_nproc(config: JobConfig, nproc: int) -> None:
    if nproc < 1:
        raise LedgerError(f"--nproc must be >= 1, got {nproc}")
    if int(config.train.batch_size) % nproc:
        raise LedgerError(f"--nproc {nproc}: the job's batch of {config.train.batch_size} windows does not split into "
                          f"{nproc} equal parts; use a divisor of {config.train.batch_size}")


def train_local(config: JobConfig, params: dict[str, np.ndarray], shard: bytes, seed: int, nproc: int, *,
                segment_steps: int | None, threads: int | None = None, artifacts: dict[str, bytes] | None = None,
                start_at: TrainState | None = None, end: int | None = None):
    """``train.train_local`` over ``nproc`` processes (the round's ``TrainResult``), or with
    ``start_at``/``end`` a stretch of it (``train.train_steps``: (end state, snapshots,
    metrics)). ``artifacts``: the committed model files by sha256 (``0x`` hex)."""
    import torch.multiprocessing as mp

    from node.training.train import TrainResult

    check_nproc(config, nproc)
    with tempfile.TemporaryDirectory(prefix="ledger-dp-") as tmp:
        d = Path(tmp)
        start = start_at or TrainState.fresh(params)
        (d / "start.safetensors").write_bytes(_encode_states([start]))
        (d / "shard.bin").write_bytes(bytes(shard))
        for sha, blob in (artifacts or {}).items():
            (d / sha).write_bytes(blob)
        steps = int(config.train.steps) if end is None else int(end)
        at = tuple(inner_boundaries(int(config.train.steps), segment_steps)) if segment_steps else ()
        try:
            mp.start_processes(_child, args=(str(d), nproc, config.to_bytes(), int(seed), steps, at, threads),
                               nprocs=nproc, join=True, start_method="spawn")
        except Exception as e:  # noqa: BLE001 - a child's failure, as one line
            last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise LedgerError(f"data-parallel training over {nproc} processes failed: {last}") from None
        states, meta = _decode_states((d / "out.safetensors").read_bytes())
    metrics = json.loads(meta["metrics"])
    final, snaps = states[-1], states[:-1]
    if end is not None:
        return final, snaps, metrics
    metrics["steps"], metrics["samples"] = int(config.train.steps), num_samples(config.train)
    return TrainResult(params=final.params, metrics=metrics, snapshots=snaps)


def _child(rank: int, tmp: str, world: int, config_bytes: bytes, seed: int, end: int, at: tuple, threads):
    import torch.distributed as dist

    from node.models import language_model
    from node.training.train import train_steps

    d = Path(tmp)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{d / 'rendezvous'}", rank=rank, world_size=world)
    try:
        config = JobConfig.from_bytes(config_bytes)

        def fetch(art, what: str) -> bytes:
            blob = (d / art.sha256).read_bytes()
            if sha256_bytes(blob) != from_hex(art.sha256):
                raise LedgerError(f"the model's {what} changed on disk")
            return blob

        lm = language_model(config.model, fetch)
        (start,), _ = _decode_states((d / "start.safetensors").read_bytes())
        shard = (d / "shard.bin").read_bytes()
        final, snaps, metrics = train_steps(lm, config.train, start, shard, seed, end, snapshot_at=at,
                                            origin=None, threads=threads, parallel=_Part(rank, world))
        if rank == 0:
            metrics = {**metrics, "processes": world}
            (d / "out.safetensors").write_bytes(_encode_states([*snaps, final], {"metrics": json.dumps(metrics)}))
    finally:
        dist.destroy_process_group()


_GROUPS = ("params", "exp_avg", "exp_avg_sq", "delta")


def _encode_states(states: list[TrainState], meta: dict | None = None) -> bytes:
    tensors, steps = {}, []
    for i, s in enumerate(states):
        steps.append(s.step)
        for g in _GROUPS:
            for name, v in (getattr(s, g) or {}).items():
                tensors[f"{i}/{g}/{name}"] = np.ascontiguousarray(v)
    return checkpoint.encode(tensors, {**(meta or {}), "steps": json.dumps(steps),
                                       "groups": json.dumps([[g for g in _GROUPS if getattr(s, g) is not None]
                                                             for s in states])})


def _decode_states(data: bytes) -> tuple[list[TrainState], dict]:
    tensors, meta = checkpoint.decode(data)
    steps, groups = json.loads(meta["steps"]), json.loads(meta["groups"])
    states = []
    for i, (step, present) in enumerate(zip(steps, groups)):
        parts = {g: ({} if g in present else None) for g in _GROUPS}
        prefix = f"{i}/"
        for key, v in tensors.items():
            if key.startswith(prefix):
                g, name = key[len(prefix):].split("/", 1)
                parts[g][name] = v
        states.append(TrainState(int(step), parts["params"], parts["exp_avg"], parts["exp_avg_sq"], parts["delta"]))
    return states, meta


def model_files(ctx) -> dict[str, bytes]:
    """The committed model files a process needs (a Hugging Face model's tokenizer, a LoRA
    base), by sha256, from the job's storage (checked against the config)."""
    out = {}
    for art in (ctx.config.model.tokenizer, ctx.config.model.base):
        if art is not None:
            out[art.sha256] = ctx.store.get(art.cid, from_hex(art.sha256), max_size=int(art.num_bytes))
    return out


__all__ = ["train_local", "check_nproc", "model_files"]
