"""The DiLoCo outer optimizer: one step per round, bit-exact on any machine.

A round's merge rule (``node.verification.merge``) turns the accepted contributions
into an update of the parent; the negated update is the round's pseudo-gradient ``g``
(DiLoCo: parent minus the workers' models). The outer step, per floating tensor, all
in float64 with element-wise operations only (each correctly rounded, so the same bits
on every CPU, SIMD path and numpy build; merge.py's rules):

  sgd       m' = mu * m + g;  new = parent - lr * m'          (mu = 0: plain SGD, m' = g)
  nesterov  m' = mu * m + g;  new = parent - lr * (g + mu * m')

The momentum buffer ``m'`` is cast to float32 and committed *inside* the merged
checkpoint, as tensors named ``outer/momentum/<name>``: the merged digest on chain
covers it, every aggregator and the audit recompute it from the parent's (zero at the
genesis), and a fresh auditor reads it from storage. With momentum 0 (SparseLoCo's outer
step, ``sgd`` lr 1: error feedback is its momentum) no step reads the buffer, so none is
committed and the merged checkpoint is the model's size. Workers train from the model's
tensors only (``model_tensors``; ``JobContext.load_checkpoint`` strips the rest).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PREFIX = "outer/"
MOMENTUM = PREFIX + "momentum/"


def model_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint's model parameters: everything but the outer optimizer's state."""
    return {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}


def momentum_of(tensors: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The committed momentum buffer of a checkpoint, float64, zero where it has none (the
    genesis, a job's first merge). Its names and shapes must be the model's floating tensors."""
    out = {}
    for name, p in params.items():
        if not np.issubdtype(np.asarray(p).dtype, np.floating):
            continue
        m = tensors.get(MOMENTUM + name)
        if m is None:
            out[name] = np.zeros(np.shape(p), dtype=np.float64)
        elif np.shape(m) != np.shape(p) or np.asarray(m).dtype != np.float32:
            raise ValueError(f"outer momentum {name!r} is {np.asarray(m).dtype}{list(np.shape(m))}, "
                             f"expected float32{list(np.shape(p))}")
        else:
            out[name] = np.asarray(m, dtype=np.float64)
    extra = sorted(k for k in tensors if k.startswith(PREFIX) and k[len(MOMENTUM):] not in out)
    if extra:
        raise ValueError(f"unexpected outer-state tensor(s) {extra[:3]}")
    return out


def step(parent: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray], momentum: Mapping[str, np.ndarray],
         spec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the merged tensors with their committed momentum, in parent dtypes and float32; the
    new momentum alone) after one outer step of ``spec`` (``ledger.protocol.jobconfig.OuterSpec``)
    from ``parent`` with the merge rule's ``update`` (float64, floating tensors only)."""
    if spec.rule not in ("sgd", "nesterov"):
        raise ValueError(f"no outer step for rule {spec.rule!r}")
    lr, mu = float(spec.lr), float(spec.momentum)
    out: dict[str, np.ndarray] = {}
    new_m: dict[str, np.ndarray] = {}
    for name in sorted(parent):
        p = np.asarray(parent[name])
        if name not in update:                       # a non-floating tensor: kept
            out[name] = np.ascontiguousarray(p.copy())
            continue
        g = np.negative(np.asarray(update[name], dtype=np.float64))
        m = np.add(np.multiply(np.asarray(momentum[name], dtype=np.float64), mu), g)
        m = np.asarray(m.astype(np.float32), dtype=np.float64)   # what is committed is what steps
        direction = np.add(g, np.multiply(m, mu)) if spec.rule == "nesterov" else m
        merged = np.subtract(p.astype(np.float64), np.multiply(direction, lr))
        out[name] = np.ascontiguousarray(merged.astype(p.dtype))
        new_m[name] = np.ascontiguousarray(m.astype(np.float32))
    if mu != 0:
        for name, m in new_m.items():
            out[MOMENTUM + name] = m
    return out, new_m
