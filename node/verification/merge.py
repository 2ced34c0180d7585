"""Merge rules: fedavg, median, trimmed_mean, krum — bit-exact on any machine.

Several independent aggregators must produce the *same merged bytes*, so every
number here is computed in a way whose result does not depend on the CPU, the
BLAS, the numpy build or the thread count:

- contributions are processed in a fixed order: sorted by worker address
  (lowercase hex), the order the DESIGN's determinism rules prescribe;
- each rule works on *updates* (contribution - parent) in float64, and the merged
  tensor is ``parent64 + rule(updates)`` cast back to the parent's dtype;
- only element-wise numpy operations are used (``+ - * /``, ``astype``, ``sort``):
  IEEE 754 makes each of them correctly rounded, whatever SIMD path numpy takes.
  Sums over contributions are explicit Python loops, one contribution at a time,
  never ``np.sum``/``np.mean``/``@`` (whose internal blocking is an implementation
  detail). Scalars that need a reduction over a whole model (norms, Krum's
  distances) are exactly rounded sums (``exact_sum_of_squares``: the value
  ``math.fsum`` gives), and so order-free;
- ``-0.0`` updates are canonicalised to ``+0.0`` before sorting, so a sort never
  has two "equal" values with different bits to order.

Non-floating tensors (int buffers, if a model ever has them) are not averaged:
the merged checkpoint keeps the parent's value.

Contributions are ``(worker, num_samples, params)`` triples (any 3-sequence);
``params`` has exactly the parent's tensor names, shapes and dtypes (the
verification pipeline rejects anything else before it gets here; ``merge``
re-checks and raises ``ValueError``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from ledger.protocol.jobconfig import MERGE_RULES, Policy

Params = Mapping[str, np.ndarray]
ContributionT = tuple[str, int, Params]

# Elements per exact-sum chunk: a chunk's bincount sums of 27-bit mantissa halves
# stay below 2**20 * 2**27 = 2**47, exactly representable in float64.
_EXACT_CHUNK = 1 << 20


@dataclass
class MergeResult:
    """The merged tensors (parent's dtypes), the workers whose updates went into
    them (in worker order; for krum the selected ones), and rule-specific details
    (JSON-friendly: numbers, strings, lists, dicts)."""

    params: dict[str, np.ndarray]
    selected: list[str]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def tensor_digest(params: Params) -> bytes:
    """sha256 over the tensors alone (no metadata): sorted names, each with its
    dtype, shape and little-endian C-order bytes, every field length-prefixed.

    Two checkpoints with the same tensors have the same tensor digest even if
    their metadata (worker, notes) and so their file bytes differ: the
    verification pipeline uses it to spot copied submissions.
    """
    h = hashlib.sha256(b"training-ledger/tensors/1\n")
    for name in sorted(params):
        arr = np.asarray(params[name])
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        for part in (name.encode("utf-8"), arr.dtype.str.encode("ascii"),
                     ",".join(str(int(d)) for d in arr.shape).encode("ascii")):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        h.update(arr.nbytes.to_bytes(8, "big"))
        h.update(arr.tobytes(order="C"))
    return h.digest()


def is_float(arr: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(arr).dtype, np.floating)


def exact_sum_of_squares(arrays: Iterable[np.ndarray], chunk: int = _EXACT_CHUNK) -> float:
    """sum of x**2 over every element of every array, each square computed in
    float64 and the sum exactly rounded (the value ``math.fsum`` gives): independent
    of order, chunking and machine.

    Vectorised and exact: each square is split into its binary exponent and its
    53-bit integer mantissa, the mantissas are summed per exponent as integers (in
    27-bit halves, so the float64 ``bincount`` sums of a chunk stay below 2**53 and
    are exact), and the per-exponent totals are combined as Python integers and
    rounded once. About 10x faster than feeding every square to ``math.fsum``, which
    matters for Krum's n**2 distances."""
    if not 0 < chunk <= _EXACT_CHUNK:
        raise ValueError(f"chunk must be in 1..{_EXACT_CHUNK}")
    totals: dict[int, int] = {}   # binary exponent e -> exact sum of mantissas M (value M * 2**(e - 53))
    for a in arrays:
        flat = np.asarray(a, dtype=np.float64).reshape(-1)
        for start in range(0, flat.size, chunk):
            with np.errstate(over="ignore"):   # an overflowing square is inf, handled below
                sq = np.square(flat[start:start + chunk])
            if not np.isfinite(sq).all():
                return math.nan if np.isnan(sq).any() else math.inf   # squares are >= 0: inf + x = inf
            _add_mantissas(totals, sq)
    return _round_exact(totals)


class ExactSquares:
    """``exact_sum_of_squares`` fed a piece at a time (blocks of a model read from disk):
    the same exactly rounded value whatever the pieces."""

    def __init__(self):
        self.totals: dict[int, int] = {}
        self.special: float | None = None          # inf or nan, once seen

    def add(self, values: np.ndarray) -> None:
        if self.special is not None and math.isnan(self.special):
            return
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        for start in range(0, flat.size, _EXACT_CHUNK):
            with np.errstate(over="ignore"):
                sq = np.square(flat[start:start + _EXACT_CHUNK])
            if not np.isfinite(sq).all():
                self.special = math.nan if np.isnan(sq).any() else math.inf
                return
            _add_mantissas(self.totals, sq)

    def value(self) -> float:
        return self.special if self.special is not None else _round_exact(self.totals)


def _add_mantissas(totals: dict[int, int], values: np.ndarray) -> None:
    m, e = np.frexp(values)                                   # values = m * 2**e, 0.5 <= m < 1 (or 0)
    mant = (m * float(1 << 53)).astype(np.int64)              # exact: m has at most 53 significant bits
    lo_e = int(e.min()) if e.size else 0
    idx = (e - lo_e).astype(np.intp)
    hi = np.bincount(idx, weights=(mant >> 27).astype(np.float64))          # < 2**26 each: sums exact
    lo = np.bincount(idx, weights=(mant & ((1 << 27) - 1)).astype(np.float64))  # < 2**27 each
    for j in np.flatnonzero(hi + lo):
        totals[lo_e + int(j)] = totals.get(lo_e + int(j), 0) + (int(hi[j]) << 27) + int(lo[j])


def _round_exact(totals: dict[int, int]) -> float:
    """The float nearest to sum(M * 2**(e - 53)), ties to even (int / int and int -> float
    are correctly rounded in CPython)."""
    if not totals:
        return 0.0
    base = min(totals)
    total = sum(v << (e - base) for e, v in totals.items())
    shift = base - 53
    return float(total << shift) if shift >= 0 else total / (1 << -shift)


def update_norm(params: Params, parent: Params) -> float:
    """L2 norm of (params - parent) over all floating tensors, float64, exactly
    rounded sum then a correctly rounded sqrt: bit-identical everywhere."""
    return math.sqrt(exact_sum_of_squares(
        _delta64(params[name], parent[name]) for name in sorted(parent) if is_float(parent[name])))


def _delta64(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = np.subtract(np.asarray(x, dtype=np.float64), np.asarray(p, dtype=np.float64))
    np.add(d, 0.0, out=d)          # -0.0 -> +0.0 (round-to-nearest: -0 + +0 = +0)
    return d


def _key(worker: str) -> str:
    return str(worker).lower()


def structure_mismatch(parent: Params, params: Params) -> str | None:
    """Why ``params`` cannot stand in for ``parent`` (names, shapes, dtypes), or None."""
    missing, extra = sorted(set(parent) - set(params)), sorted(set(params) - set(parent))
    if missing or extra:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(extra)}"] if extra else [])
        return "tensor names differ from the parent: " + ", ".join(parts)
    for name in sorted(parent):
        p, x = np.asarray(parent[name]), np.asarray(params[name])
        if x.dtype != p.dtype or x.shape != p.shape:
            return f"tensor {name!r} is {x.dtype}{list(x.shape)}, the parent's is {p.dtype}{list(p.shape)}"
    return None


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _check_structure(worker: str, params: Params, parent: Params) -> None:
    problem = structure_mismatch(parent, params)
    if problem:
        raise ValueError(f"contribution of {worker}: {problem}")
    for name in sorted(parent):
        if is_float(params[name]) and not np.isfinite(params[name]).all():
            raise ValueError(f"contribution of {worker}: tensor {name!r} has NaN or Inf values")


def _sorted_contributions(contributions: Iterable[Sequence], parent: Params) -> list[ContributionT]:
    items = [(str(w), int(n), p) for w, n, p in contributions]
    items.sort(key=lambda c: _key(c[0]))
    _check_unique([c[0] for c in items])
    for w, n, p in items:
        if n < 0:
            raise ValueError(f"contribution of {w}: negative num_samples {n}")
        _check_structure(w, p, parent)
    return items


def _check_unique(workers: list[str]) -> None:
    for a, b in zip(workers, workers[1:]):
        if _key(a) == _key(b):
            raise ValueError(f"two contributions from worker {a}")


def _finish(parent: Params, update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """parent64 + update, cast back to the parent's dtype; non-float tensors: the parent's."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(parent):
        p = np.asarray(parent[name])
        if is_float(p):
            merged = np.add(p.astype(np.float64), update[name])
            out[name] = np.ascontiguousarray(merged.astype(p.dtype))
        else:
            out[name] = np.ascontiguousarray(p.copy())
    return out


def _copy_parent(parent: Params) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(np.asarray(parent[name]).copy()) for name in sorted(parent)}


def _float_names(parent: Params) -> list[str]:
    return [name for name in sorted(parent) if is_float(parent[name])]


# Coordinates per block, across all contributions, of the rules that need every
# contribution at once (median, trimmed mean, Krum's distances): a block of n
# contributions in float64 stays under this many bytes, so their memory does not grow
# with n (contributions may be ``spill.SpilledParams``, read a block at a time).
BLOCK_BYTES = 64 << 20


def _blocks(size: int, n: int):
    step = max(4096, BLOCK_BYTES // (8 * max(1, n)))
    for a in range(0, size, step):
        yield a, min(size, a + step)


# --------------------------------------------------------------------------- rules


def fedavg(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None, *,
           presorted: bool | None = None) -> MergeResult:
    return _result(parent, *_fedavg(parent, contributions, policy, presorted=presorted))


def _result(parent: Params, update, selected: list[str], info: dict) -> MergeResult:
    """A rule's float64 update (None: no contributions) applied to the parent."""
    return MergeResult(_copy_parent(parent) if update is None else _finish(parent, update), selected, info)


def _fedavg(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None, *,
            presorted: bool | None = None):
    """Sample-weighted mean of the updates: parent + sum_i(n_i * d_i) / sum_i(n_i).

    Streaming: ``contributions`` may be any iterator (e.g. one that fetches and
    decodes each checkpoint lazily); memory is O(model), not O(workers x model).
    An iterator must yield in increasing worker order (checked: ``ValueError``
    otherwise) since it cannot be sorted without holding everything; a list or
    tuple is sorted here. If every ``num_samples`` is 0 the updates get equal
    weights (recorded in ``info``).
    """
    if presorted is None:
        presorted = not isinstance(contributions, (list, tuple))
    checked = not presorted
    if checked:
        contributions = _sorted_contributions(contributions, parent)
    names = _float_names(parent)
    parent64 = {name: np.asarray(parent[name], dtype=np.float64) for name in names}
    weighted = {name: np.zeros(np.shape(parent[name]), dtype=np.float64) for name in names}
    # the unweighted sum is needed only if every weight is 0: kept until a weight is not
    plain: dict | None = {name: np.zeros(np.shape(parent[name]), dtype=np.float64) for name in names}
    workers: list[str] = []
    total = 0
    prev: str | None = None
    for worker, num_samples, params in contributions:
        worker, num_samples = str(worker), int(num_samples)
        if prev is not None and not _key(worker) > prev:
            raise ValueError(f"fedavg: contributions must come in increasing worker order "
                             f"({worker} after {prev})")
        prev = _key(worker)
        if not checked:
            if num_samples < 0:
                raise ValueError(f"contribution of {worker}: negative num_samples {num_samples}")
            _check_structure(worker, params, parent)
        w = float(num_samples)
        if w != num_samples:
            raise ValueError(f"contribution of {worker}: num_samples {num_samples} is not exact in float64")
        if w != 0:
            plain = None
        for name in names:
            d = np.subtract(np.asarray(params[name], dtype=np.float64), parent64[name])
            if plain is not None:
                np.add(plain[name], d, out=plain[name])
            np.multiply(d, w, out=d)
            np.add(weighted[name], d, out=weighted[name])
        workers.append(worker)
        total += num_samples
    if not workers:
        return None, [], {"rule": "fedavg", "empty": True}
    equal = total == 0
    acc, denom = (plain, float(len(workers))) if equal else (weighted, float(total))
    if not equal and float(total) != total:
        raise ValueError(f"fedavg: total num_samples {total} is not exact in float64")
    update = {name: np.divide(acc[name], denom) for name in names}
    info = {"rule": "fedavg", "total_samples": total, "weights": "equal" if equal else "samples"}
    return update, workers, info


def median(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None) -> MergeResult:
    """Coordinate-wise median of the updates (sort-based; for an even count the
    mean of the two middle values, ``(a + b) * 0.5``). Unweighted."""
    return _result(parent, *_median(parent, contributions, policy))


def _median(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None):
    items = _sorted_contributions(contributions, parent)
    if not items:
        return None, [], {"rule": "median", "empty": True}
    n = len(items)

    def rule(s: np.ndarray) -> np.ndarray:
        return s[n // 2] if n % 2 else np.multiply(np.add(s[n // 2 - 1], s[n // 2]), 0.5)

    update = _coordinatewise(parent, items, rule)
    return update, [w for w, _, _ in items], {"rule": "median", "n": n}


def trimmed_mean(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None) -> MergeResult:
    """Coordinate-wise trimmed mean: per coordinate, sort the n updates, drop
    k = floor(trim_ratio * n) at each end (trim_ratio read as the decimal it is
    written as, so 0.29 * 100 gives 29), average the rest in sorted order.
    k is capped at (n - 1) // 2 so at least one value remains. Unweighted."""
    return _result(parent, *_trimmed_mean(parent, contributions, policy))


def _trimmed_mean(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None):
    policy = policy or Policy()
    items = _sorted_contributions(contributions, parent)
    if not items:
        return None, [], {"rule": "trimmed_mean", "empty": True}
    n = len(items)
    ratio = Fraction(repr(float(policy.trim_ratio)))
    if ratio < 0:
        raise ValueError(f"trim_ratio must be >= 0, got {policy.trim_ratio}")
    k = min(math.floor(ratio * n), (n - 1) // 2)
    kept = n - 2 * k

    def rule(s: np.ndarray) -> np.ndarray:
        acc = s[k].copy()
        for i in range(k + 1, n - k):
            np.add(acc, s[i], out=acc)
        return np.divide(acc, float(kept))

    update = _coordinatewise(parent, items, rule)
    info = {"rule": "trimmed_mean", "n": n, "trimmed_each_end": k, "kept": kept}
    return update, [w for w, _, _ in items], info


def _coordinatewise(parent: Params, items: list[ContributionT], rule) -> dict[str, np.ndarray]:
    """``rule(sorted updates)`` per coordinate, one block of coordinates at a time: the
    (n, block) stack of every contribution's update, sorted along the contributions."""

    update = {}
    for name in _float_names(parent):
        p = np.asarray(parent[name])
        out = np.empty(p.size, dtype=np.float64)
        flat_parent = p.reshape(-1)
        for a, b in _blocks(p.size, len(items)):
            out[a:b] = rule(_sorted_stack(name, a, b, items, flat_parent[a:b]))
        update[name] = out.reshape(p.shape)
    return update


def _sorted_stack(name: str, a: int, b: int, items: list[ContributionT], parent_block: np.ndarray) -> np.ndarray:
    from node.verification.spill import block_of

    p64 = np.asarray(parent_block, dtype=np.float64)
    stack = np.empty((len(items), b - a), dtype=np.float64)
    for i, (_, _, params) in enumerate(items):
        np.subtract(np.asarray(block_of(params, name, a, b), dtype=np.float64), p64, out=stack[i])
        np.add(stack[i], 0.0, out=stack[i])      # canonical +0.0
    stack.sort(axis=0)                            # no NaN, no -0.0: value order is total
    return stack


def krum_scores(parent: Params, items: list[ContributionT], f: int) -> tuple[list[float], int, list[list[float]]]:
    """Multi-Krum scores for sorted ``items``: score_i = sum of the squared L2
    distances from i to its ``n - f - 2`` nearest other contributions (at least
    1, at most n - 1; 0 when n == 1). Distances are between the contributions'
    float tensors (the same as between their updates), each an exactly rounded
    ``fsum`` of float64 squared differences. Returns (scores, neighbours, distances)."""
    from node.verification.spill import block_of

    n = len(items)
    names = _float_names(parent)
    acc = {(i, j): ExactSquares() for i in range(n) for j in range(i + 1, n)}
    for name in names:
        for a, b in _blocks(int(np.asarray(parent[name]).size), n):
            blk = [np.asarray(block_of(params, name, a, b), dtype=np.float64) for _, _, params in items]
            for (i, j), e in acc.items():
                e.add(np.subtract(blk[i], blk[j]))
    dist = [[0.0] * n for _ in range(n)]
    for (i, j), e in acc.items():
        dist[i][j] = dist[j][i] = e.value()
    nb = min(max(1, n - f - 2), n - 1)
    scores = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)
        scores.append(math.fsum(others[:nb]))
    return scores, nb, dist


def krum(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None) -> MergeResult:
    """Multi-Krum: score every contribution (see ``krum_scores``), keep the m best
    (policy.krum_m, 0 meaning n - f; clamped to [1, n]; ties broken by worker
    address), and FedAvg the kept ones (sample-weighted)."""
    return _result(parent, *_krum(parent, contributions, policy))


def _krum(parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None):
    policy = policy or Policy()
    items = _sorted_contributions(contributions, parent)
    if not items:
        return None, [], {"rule": "krum", "empty": True}
    n, f = len(items), int(policy.krum_f)
    if f < 0:
        raise ValueError(f"krum_f must be >= 0, got {f}")
    m = int(policy.krum_m) or (n - f)
    m = min(max(m, 1), n)
    scores, nb, _ = krum_scores(parent, items, f)
    ranking = sorted(range(n), key=lambda i: (scores[i], _key(items[i][0])))
    keep = sorted(ranking[:m])
    chosen = [items[i] for i in keep]
    update, _, inner_info = _fedavg(parent, chosen, policy, presorted=True)
    info = {
        "rule": "krum", "n": n, "f": f, "m": m, "neighbours": nb,
        "degenerate": n - f - 2 < 1,
        "scores": {items[i][0]: scores[i] for i in range(n)},
        "ranking": [items[i][0] for i in ranking],
        "total_samples": inner_info.get("total_samples"),
        "weights": inner_info.get("weights"),
    }
    return update, [w for w, _, _ in chosen], info


RULES = {"fedavg": fedavg, "median": median, "trimmed_mean": trimmed_mean, "krum": krum}
UPDATES = {"fedavg": _fedavg, "median": _median, "trimmed_mean": _trimmed_mean, "krum": _krum}
assert set(RULES) == set(MERGE_RULES) == set(UPDATES)


def rule_update(rule_name: str, parent: Params, contributions: Iterable[Sequence], policy: Policy | None = None):
    """(the rule's float64 update of the floating tensors, or None without contributions;
    the selected workers; info): what ``merge`` adds to the parent, for an outer optimizer
    (``node.verification.outer``) to step with instead."""
    try:
        rule = UPDATES[rule_name]
    except KeyError:
        raise ValueError(f"unknown merge rule {rule_name!r}; expected one of {MERGE_RULES}") from None
    return rule(parent, contributions, policy)


def merge(rule_name: str, parent: Params, contributions: Iterable[Sequence],
          policy: Policy | None = None) -> MergeResult:
    """Merge ``contributions`` ((worker, num_samples, params) triples) into
    ``parent`` with the named rule (one of ledger.protocol.jobconfig.MERGE_RULES).

    A list/tuple may come in any order (sorted by lowercase worker address here);
    for ``fedavg`` a non-list iterable is streamed and must already be in
    increasing worker order. With no contributions the result is a copy of the
    parent (selected = []).
    """
    try:
        rule = RULES[rule_name]
    except KeyError:
        raise ValueError(f"unknown merge rule {rule_name!r}; expected one of {MERGE_RULES}") from None
    return rule(parent, contributions, policy)


__all__ = [
    "MergeResult", "merge", "fedavg", "median", "trimmed_mean", "krum", "krum_scores",
    "tensor_digest", "update_norm", "exact_sum_of_squares", "RULES", "rule_update",
]
