"""The verification pipeline: one implementation for the aggregators and the audit.

Every contribution of a round goes through the same checks, cheap to expensive;
the first failing check decides its verdict (``ledger.verdicts.Verdict``):

  size cap (declared size, before fetching)            FORMAT
  fetch                                                 UNAVAILABLE
  sha256(bytes) == on-chain digest, len == on-chain size INTEGRITY
  strict safetensors decode (never unpickle)            FORMAT
  meta parent / job / round / worker                    LINEAGE
  tensor names, shapes, dtypes == the parent's          STRUCTURE
  all floating values finite                            NON_FINITE
  tensors identical to the parent or to an earlier
    submission of the round (submission order)          DUPLICATE
  L2(checkpoint - parent) <= policy.max_update_norm     UPDATE_NORM      (stage "norm")
  val loss <= parent val loss + max_val_loss_increase   VALIDATION_LOSS  (stage "validation")
  replay from parent + shard + seed, for a
    deterministic sample, max |diff| <= tolerance       REPLAY           (stage "replay")

Given the same inputs (the round's submissions in chain order, the fetched
bytes, the parent, the job config, the seed bytes) two aggregators compute the
same verdicts: nothing here depends on time, randomness, dict order or the
machine — except the two torch stages (validation loss, replay), whose numbers
may differ in their last bits across CPUs; the policy's margins absorb that.
Storage availability (UNAVAILABLE) is by nature a local observation.

The caller supplies the fetch function (``store_fetcher(store, ...)`` builds one
from a ``ledger.store`` Store) and the round's context; ``verify_round`` returns
one ``Report`` per contribution, in submission order. Accepted reports carry the
decoded tensors so the merge does not decode twice: ``accepted(reports)`` gives
the (worker, num_samples, params) triples ``node.merge.merge`` takes.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ledger.digest import sha256_bytes, to_hex
from ledger.errors import (
    CheckpointFormatError,
    IntegrityError,
    NotFoundError,
    StorageError,
    StorageUnreachable,
)
from ledger.jobconfig import JobConfig, Policy
from ledger.verdicts import Verdict

from .merge import is_float, tensor_digest, update_norm

REPLAY_DOMAIN = b"training-ledger/replay/1"
VALIDATION_DOMAIN = b"training-ledger/validation/1"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Contribution:
    """One on-chain submission (an ``UpdateSubmitted`` event) of the round.

    ``index`` is its position in submission (event) order, 0-based; ``digest``
    the 32-byte sha256 of the checkpoint bytes; ``size`` their length.
    """

    index: int
    worker: str
    digest: bytes
    cid: str
    size: int
    num_samples: int


STAGES = frozenset({"norm", "validation", "replay"})
"""The stages a caller may switch off (``RoundContext.stages``): the update-norm
bound, the validation loss and the replay. Every aggregator of a job must run the
same stages, or their verdicts may differ; turning some off is for benchmarks,
quick audits and debugging."""
CHEAP_STAGES = frozenset({"norm"})
REPLAY_MODES = ("policy", "none", "all")


@dataclass
class RoundContext:
    """Everything the checks compare a contribution with.

    - ``config``: the job config (its ``policy`` holds the bounds).
    - ``parent_digest`` / ``parent_params``: the round's parent, decoded (numpy).
    - ``validation``: the job's held-out split, as ``node.train.evaluate`` takes it.
    - ``parent_val_loss``: the parent's validation loss; ``None`` = computed once,
      on first need (``parent_loss()``), and cached here.
    - ``shard_of(worker) -> shard``: the worker's training shard (for replay);
      called with the lowercase address.
    - ``replay_seed``: bytes no worker knows before the round closes (the hash of
      the block that closed it); seeds the replay sample and the validation batches.
    - ``replay_mode``: "policy" (a deterministic ``policy.replay_fraction`` sample,
      what aggregators run), "none", or "all" (audit).
    - ``stages``: the subset of ``STAGES`` that runs; ``None`` = all.
    - ``evaluate`` / ``train_local`` / ``derive_seed``: default to
      ``node.train``'s; injectable for tests and benchmarks.
    """

    config: JobConfig
    job_id: int
    round: int
    parent_digest: bytes
    parent_params: dict[str, np.ndarray]
    validation: Any = None
    parent_val_loss: float | None = None
    shard_of: Callable[[str], Any] | None = None
    replay_seed: bytes = b""
    replay_mode: str = "policy"
    stages: Iterable[str] | None = None
    evaluate: Callable[..., float] | None = None
    train_local: Callable[..., Any] | None = None
    derive_seed: Callable[..., int] | None = None

    def __post_init__(self):
        self.stages = STAGES if self.stages is None else frozenset(self.stages)
        unknown = set(self.stages) - STAGES
        if unknown:
            raise ValueError(f"unknown verification stage(s) {sorted(unknown)}; known: {sorted(STAGES)}")
        if self.replay_mode not in REPLAY_MODES:
            raise ValueError(f"replay_mode must be one of {REPLAY_MODES}, got {self.replay_mode!r}")
        self.parent_digest = bytes(self.parent_digest)
        self.replay_seed = bytes(self.replay_seed)

    def runs(self, stage: str) -> bool:
        return stage in self.stages

    def replays(self, worker: str) -> bool:
        """Whether this worker's contribution is re-trained (if it gets that far)."""
        if not self.runs("replay") or self.replay_mode == "none":
            return False
        if self.replay_mode == "all":
            return True
        return replay_selected(self.replay_seed, self.job_id, self.round, worker, self.policy.replay_fraction)

    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def validation_seed(self) -> int:
        return validation_seed(self.replay_seed, self.job_id, self.round)

    def parent_loss(self) -> float:
        """The parent's validation loss, computed once per round."""
        if self.parent_val_loss is None:
            self.parent_val_loss = self.val_loss(self.parent_params)
        return self.parent_val_loss

    def val_loss(self, params: Mapping[str, np.ndarray]) -> float:
        if self.validation is None:
            raise ValueError("RoundContext.validation is needed for the validation stage")
        p = self.policy
        args = (self.config.model, params, self.validation, p.val_batches, p.val_batch_size, self.validation_seed)
        if self.evaluate is not None:
            return float(self.evaluate(*args))
        # the job's thread count, as in training: a different count may change the low bits
        return float(_node_train().evaluate(*args, threads=self.config.train.threads))


@dataclass
class Report:
    """The outcome for one contribution.

    ``metrics`` holds what was measured before the verdict was reached (only
    JSON-friendly values): ``size``, ``update_norm``, ``val_loss``,
    ``parent_val_loss``, ``val_loss_increase``, ``replay_selected``,
    ``replay_diff``, ``duplicate_of`` (-1 = the parent)...
    ``params`` / ``meta`` are the decoded checkpoint, kept (with ``keep_params``)
    whenever its tensors are mergeable — accepted, or rejected at DUPLICATE or a
    later stage — so an auditor can recompute a quorum's merge it disagrees
    with; merge only the accepted ones (``accepted(reports)``).
    ``tensor_digest`` is set whenever the tensors were decoded and well formed.
    """

    contribution: Contribution
    verdict: Verdict
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] | None = None
    meta: dict[str, str] | None = None
    tensor_digest: bytes | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict == Verdict.ACCEPTED

    @property
    def index(self) -> int:
        return self.contribution.index

    @property
    def worker(self) -> str:
        return self.contribution.worker

    def summary(self) -> dict[str, Any]:
        """JSON-friendly view (no tensors), for logs, history and audit reports."""
        c = self.contribution
        return {
            "index": c.index, "worker": c.worker, "digest": to_hex(c.digest), "cid": c.cid,
            "size": c.size, "num_samples": c.num_samples,
            "verdict": int(self.verdict), "label": self.verdict.label, "reason": self.reason,
            "metrics": dict(self.metrics),
            "tensor_digest": to_hex(self.tensor_digest) if self.tensor_digest else None,
        }


class _Reject(Exception):
    def __init__(self, verdict: Verdict, reason: str):
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


# --------------------------------------------------------------------------- seeds


def _u256(n: int) -> bytes:
    return int(n).to_bytes(32, "big")


def _address_bytes(worker: str) -> bytes:
    w = worker.lower()
    w = w[2:] if w.startswith("0x") else w
    try:
        raw = bytes.fromhex(w)
    except ValueError:
        raw = b""
    return raw if len(raw) == 20 else worker.lower().encode()


def replay_draw(replay_seed: bytes, job_id: int, round: int, worker: str) -> Fraction:
    """The contribution's replay lottery number in [0, 1): the first 8 bytes of
    sha256(domain || seed || job (32 bytes) || round (32 bytes) || worker (20 bytes))."""
    h = hashlib.sha256(REPLAY_DOMAIN + bytes(replay_seed) + _u256(job_id) + _u256(round)
                       + _address_bytes(worker)).digest()
    return Fraction(int.from_bytes(h[:8], "big"), 1 << 64)


def replay_selected(replay_seed: bytes, job_id: int, round: int, worker: str, fraction: float) -> bool:
    """Whether this contribution is re-trained: its draw < fraction (exact
    rational comparison: 0 selects none, 1 selects all)."""
    return replay_draw(replay_seed, job_id, round, worker) < Fraction(float(fraction))


def validation_seed(replay_seed: bytes, job_id: int, round: int) -> int:
    """Seed of the round's validation batches (63 bits), fixed by the round's seed
    bytes so workers cannot know the batches before the round closes."""
    h = hashlib.sha256(VALIDATION_DOMAIN + bytes(replay_seed) + _u256(job_id) + _u256(round)).digest()
    return int.from_bytes(h[:8], "big") >> 1


# --------------------------------------------------------------------------- pipeline


def verify_round(ctx: RoundContext, contributions: Iterable[Contribution],
                 fetch: Callable[[Contribution], bytes], *, keep_params: bool = True,
                 progress: Callable[[Report], None] | None = None, prefetch: int = 4) -> list[Report]:
    """Verify the round's contributions in submission order (sorted by ``index``);
    one ``Report`` each, in that order. ``fetch(c)`` returns the checkpoint bytes
    or raises a storage error (``NotFoundError``/``StorageUnreachable`` ->
    UNAVAILABLE, ``IntegrityError`` -> INTEGRITY).

    Two passes, cheap before expensive: every contribution first goes through the
    checks that need no model evaluation (up to its update norm); then the update
    norms of the survivors give the round's relative bound, and only contributions
    within it are evaluated on the validation split and (if drawn) replayed.

    Up to ``prefetch`` fetches (each one verified against its digest by the store) run
    in background threads ahead of the checks, so storage latency and hashing overlap
    the decoding and norm computations; 0 fetches one at a time. Verdicts do not
    depend on it: each contribution is still judged alone, in order."""
    ordered = sorted(contributions, key=lambda c: c.index)
    if len({c.index for c in ordered}) != len(ordered):
        raise ValueError("contribution indexes must be unique (submission order)")
    seen: dict[bytes, int] = {tensor_digest(ctx.parent_params): -1}
    cap = int(ctx.policy.max_checkpoint_bytes)
    with _Prefetcher([c for c in ordered if c.size <= cap], fetch, prefetch) as fetched:  # no oversized downloads
        staged = [_verify_cheap(ctx, c, fetched, seen) for c in ordered]
    bound = (relative_norm_bound(ctx.policy, [r.metrics["update_norm"] for r, _ in staged if r.accepted])
             if ctx.runs("norm") else None)
    reports = []
    for report, decoded in staged:
        if report.accepted:
            try:
                _expensive_checks(ctx, report.contribution, report, decoded["params"], bound)
                report.reason = _accepted_reason(report.metrics)
            except _Reject as r:
                report.verdict, report.reason = r.verdict, r.reason
        if keep_params and "params" in decoded:
            report.params, report.meta = decoded["params"], decoded["meta"]
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports


class _Prefetcher:
    """``fetch`` for contributions in index order, up to ``ahead`` of them fetched
    ahead in threads (hashlib and socket reads release the GIL). A fetch's exception
    is raised where the contribution asks for its bytes, exactly as without it."""

    def __init__(self, ordered: list[Contribution], fetch: Callable[[Contribution], bytes], ahead: int):
        self._fetch = fetch
        self._ahead = max(0, int(ahead))
        self._todo = deque(ordered)
        self._pending: deque[tuple[int, Future]] = deque()
        self._pool = ThreadPoolExecutor(self._ahead, thread_name_prefix="ledger-fetch") if self._ahead else None

    def __enter__(self) -> "_Prefetcher":
        self._fill()
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            for _, fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)
        self._pending.clear()

    def _fill(self) -> None:
        while self._pool is not None and self._todo and len(self._pending) < self._ahead:
            c = self._todo.popleft()
            self._pending.append((c.index, self._pool.submit(self._fetch, c)))

    def __call__(self, c: Contribution) -> bytes:
        if self._pending and self._pending[0][0] == c.index:
            fut = self._pending.popleft()[1]
            self._fill()
            return fut.result()
        # not handed in for prefetching (or asked out of order): fetch it here
        self._todo = deque(t for t in self._todo if t.index != c.index)
        return self._fetch(c)


def relative_norm_bound(policy: Policy, norms: list[float]) -> float | None:
    """``max_update_norm_ratio`` x the median update norm of the round's contributions
    that passed the cheap checks, when there are at least three of them (fewer say
    nothing about what an honest update looks like). Exact: a sort and one division."""
    ratio = float(getattr(policy, "max_update_norm_ratio", 0.0) or 0.0)
    if ratio <= 0 or len(norms) < 3:
        return None
    xs = sorted(norms)
    n = len(xs)
    median = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) * 0.5
    return ratio * median


def _verify_cheap(ctx: RoundContext, c: Contribution, fetch, seen: dict[bytes, int]) -> tuple[Report, dict]:
    metrics: dict[str, Any] = {"size": int(c.size)}
    report = Report(c, Verdict.ACCEPTED, "accepted", metrics)
    decoded: dict = {}
    try:
        _checks(ctx, c, fetch, seen, report, decoded)
    except _Reject as r:
        report.verdict, report.reason = r.verdict, r.reason
    return report, decoded


def _checks(ctx: RoundContext, c: Contribution, fetch, seen: dict[bytes, int], report: Report,
            decoded: dict) -> None:
    policy = ctx.policy
    metrics = report.metrics
    cap = int(policy.max_checkpoint_bytes)

    # -- size cap, from the on-chain size: no download of oversized objects
    if c.size > cap:
        raise _Reject(Verdict.FORMAT, f"declared size {c.size} bytes exceeds the cap of {cap} bytes")

    # -- UNAVAILABLE / INTEGRITY
    try:
        data = fetch(c)
    except IntegrityError as e:
        raise _Reject(Verdict.INTEGRITY, f"content does not match the on-chain digest: {e}") from None
    except (NotFoundError, StorageUnreachable) as e:
        raise _Reject(Verdict.UNAVAILABLE, f"could not fetch {c.cid}: {e}") from None
    except CheckpointFormatError as e:
        raise _Reject(Verdict.FORMAT, f"not a valid checkpoint: {e}") from None
    except (StorageError, OSError, TimeoutError) as e:
        raise _Reject(Verdict.UNAVAILABLE, f"could not fetch {c.cid}: {e}") from None
    data = bytes(data)
    actual = sha256_bytes(data)
    if actual != bytes(c.digest):
        raise _Reject(Verdict.INTEGRITY, f"content of {c.cid} hashes to {to_hex(actual)}, "
                                         f"the chain says {to_hex(c.digest)}")
    if len(data) != c.size:
        raise _Reject(Verdict.INTEGRITY, f"content of {c.cid} is {len(data)} bytes, the chain says {c.size}")

    # -- DUPLICATE (byte-for-byte): a copy of an earlier submission's file. Checked before
    # its metadata, which names the original worker, so the copy is called what it is.
    file_key = b"file:" + bytes(c.digest)
    if file_key in seen:
        metrics["duplicate_of"] = seen[file_key]
        raise _Reject(Verdict.DUPLICATE, f"byte-for-byte copy of submission #{seen[file_key]}")
    seen[file_key] = c.index

    # -- FORMAT
    if len(data) > cap:
        raise _Reject(Verdict.FORMAT, f"{len(data)} bytes exceeds the cap of {cap} bytes")
    tensors, meta = _decode(data, c.cid, cap)

    # -- LINEAGE
    _check_lineage(ctx, c, meta)

    # -- SAMPLE_COUNT: the FedAvg weight a worker declares must be what the job's training uses
    expected_samples = int(ctx.config.train.steps) * int(ctx.config.train.batch_size)
    if int(c.num_samples) != expected_samples:
        raise _Reject(Verdict.SAMPLE_COUNT, f"declares {c.num_samples} samples; the job's training uses "
                                            f"{ctx.config.train.steps} steps x {ctx.config.train.batch_size} = {expected_samples}")

    # -- STRUCTURE
    _check_structure(ctx.parent_params, tensors)

    # -- NON_FINITE
    for name in sorted(tensors):
        t = tensors[name]
        if is_float(t) and not np.isfinite(t).all():
            bad = int(t.size - np.count_nonzero(np.isfinite(t)))
            raise _Reject(Verdict.NON_FINITE, f"tensor {name!r} has {bad} NaN/Inf value(s)")

    # mergeable from here on: kept for the caller even if a later check rejects it
    decoded.update(params=tensors, meta=meta)

    # -- DUPLICATE
    tdigest = tensor_digest(tensors)
    report.tensor_digest = tdigest
    first = seen.get(tdigest)
    if first is not None:
        metrics["duplicate_of"] = first
        what = "the round's parent (no update)" if first < 0 else f"submission #{first}"
        raise _Reject(Verdict.DUPLICATE, f"tensors identical to {what}")
    seen[tdigest] = c.index

    # -- UPDATE_NORM (only when the stage runs: a full pass over every tensor, which
    # is most of what "verification off" would otherwise still cost per contribution)
    if not ctx.runs("norm"):
        return
    norm = update_norm(tensors, ctx.parent_params)
    metrics["update_norm"] = norm
    if not norm <= policy.max_update_norm:
        raise _Reject(Verdict.UPDATE_NORM, f"update norm {norm:.6g} exceeds the bound {policy.max_update_norm:g}")



def _expensive_checks(ctx: RoundContext, c: Contribution, report: Report, tensors, bound: float | None) -> None:
    policy = ctx.policy
    metrics = report.metrics
    # -- UPDATE_NORM, relative to the round
    if bound is not None and ctx.runs("norm"):
        metrics["update_norm_bound"] = bound
        if not metrics["update_norm"] <= bound:
            raise _Reject(Verdict.UPDATE_NORM, f"update norm {metrics['update_norm']:.6g} exceeds "
                                               f"{policy.max_update_norm_ratio:g}x the round's median ({bound:.6g})")

    # -- VALIDATION_LOSS
    if ctx.runs("validation"):
        parent_loss = ctx.parent_loss()
        loss = ctx.val_loss(tensors)
        metrics.update(val_loss=loss, parent_val_loss=parent_loss, val_loss_increase=loss - parent_loss)
        limit = parent_loss + policy.max_val_loss_increase
        if not (math.isfinite(loss) and loss <= limit):
            raise _Reject(Verdict.VALIDATION_LOSS,
                          f"validation loss {loss:.6g} > parent's {parent_loss:.6g} + "
                          f"{policy.max_val_loss_increase:g}")

    # -- REPLAY
    if ctx.runs("replay") and ctx.replay_mode != "none":
        chosen = ctx.replays(c.worker)
        metrics["replay_selected"] = chosen
        if chosen:
            diff = replay_diff(ctx, c.worker, tensors)
            metrics["replay_diff"] = diff
            if not diff <= policy.replay_tolerance:
                raise _Reject(Verdict.REPLAY, f"replayed training differs by up to {diff:.6g} "
                                              f"(tolerance {policy.replay_tolerance:g})")


def _decode(data: bytes, cid: str, cap: int):
    from ledger import checkpoint    # being written alongside; imported at first use

    try:
        tensors, meta = checkpoint.decode(data, cid=cid, max_size=cap)
    except CheckpointFormatError as e:
        raise _Reject(Verdict.FORMAT, f"not a valid checkpoint: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile bytes: any decoder failure is a format failure
        raise _Reject(Verdict.FORMAT, f"not a valid checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(meta, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _Reject(Verdict.FORMAT, "checkpoint metadata is not a string-to-string map")
    if not isinstance(tensors, Mapping) or not all(isinstance(t, np.ndarray) for t in tensors.values()):
        raise _Reject(Verdict.FORMAT, "checkpoint tensors did not decode to arrays")
    return dict(tensors), dict(meta)


def _check_lineage(ctx: RoundContext, c: Contribution, meta: Mapping[str, str]) -> None:
    expected = {
        "parent": to_hex(ctx.parent_digest),
        "job": str(int(ctx.job_id)),
        "round": str(int(ctx.round)),
        "worker": c.worker.lower(),
    }
    for key in ("parent", "job", "round", "worker"):
        if key not in meta:
            raise _Reject(Verdict.LINEAGE, f"checkpoint metadata has no {key!r}")
        got = meta[key].lower() if key in ("parent", "worker") else meta[key]
        if got != expected[key]:
            raise _Reject(Verdict.LINEAGE, f"checkpoint declares {key} {meta[key]!r}, expected {expected[key]!r}")


def _check_structure(parent: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray]) -> None:
    missing = sorted(set(parent) - set(tensors))
    extra = sorted(set(tensors) - set(parent))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        raise _Reject(Verdict.STRUCTURE, "tensor names differ from the parent: " + ", ".join(parts))
    for name in sorted(parent):
        p, t = parent[name], tensors[name]
        if t.dtype != p.dtype or t.shape != p.shape:
            raise _Reject(Verdict.STRUCTURE, f"tensor {name!r} is {t.dtype}{list(t.shape)}, "
                                             f"the parent's is {p.dtype}{list(p.shape)}")


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _accepted_reason(metrics: Mapping[str, Any]) -> str:
    parts = [f"update norm {metrics['update_norm']:.4g}"] if "update_norm" in metrics else []
    if "val_loss" in metrics:
        parts.append(f"val loss {metrics['val_loss']:.4f} (parent {metrics['parent_val_loss']:.4f})")
    if metrics.get("replay_selected"):
        parts.append(f"replay diff {metrics['replay_diff']:.3g}")
    return "accepted: " + ", ".join(parts) if parts else "accepted"


# --------------------------------------------------------------------------- replay


def replay_diff(ctx: RoundContext, worker: str, tensors: Mapping[str, np.ndarray]) -> float:
    """Re-run the worker's local training from the parent on its shard with its
    derived seed; return max |replayed - submitted| over all floating parameters
    (inf if the replay does not produce the same tensors or produces non-finite ones)."""
    if ctx.shard_of is None:
        raise ValueError("RoundContext.shard_of is needed for the replay stage")
    train = _node_train() if ctx.train_local is None or ctx.derive_seed is None else None
    train_local = ctx.train_local or train.train_local
    derive_seed = ctx.derive_seed or train.derive_seed
    shard = ctx.shard_of(worker.lower())
    seed = derive_seed(ctx.config.seed, ctx.job_id, ctx.round, worker.lower())
    start = {k: np.array(v, copy=True) for k, v in ctx.parent_params.items()}
    result = train_local(ctx.config.model, ctx.config.train, start, shard, seed)
    replayed = getattr(result, "params", result)
    diff = 0.0
    if set(replayed) != set(tensors):
        return math.inf
    for name in sorted(tensors):
        r = _to_numpy(replayed[name])
        t = tensors[name]
        if r.shape != t.shape:
            return math.inf
        if not is_float(t):
            if not np.array_equal(r, t):
                return math.inf
            continue
        d = np.abs(np.subtract(r.astype(np.float64), t.astype(np.float64)))
        if d.size:
            m = float(d.max())           # max is exact: no rounding, no order effects
            if not math.isfinite(m):
                return math.inf
            diff = max(diff, m)
    return diff


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):              # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _node_train():
    from node import train

    return train


# --------------------------------------------------------------------------- helpers for callers


def accepted(reports: Iterable[Report]) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(worker, num_samples, params) of the accepted reports, sorted by lowercase
    worker address: the input of ``node.merge.merge``. Needs ``keep_params``."""
    out = []
    for r in reports:
        if r.accepted:
            if r.params is None:
                raise ValueError(f"report #{r.index} was verified without keep_params")
            out.append((r.worker.lower(), r.contribution.num_samples, r.params))
    out.sort(key=lambda t: t[0])
    return out


def verdict_bytes(reports: Iterable[Report]) -> list[int]:
    """One verdict code per contribution, in submission order (the proposal's ``verdicts``)."""
    return [int(r.verdict) for r in sorted(reports, key=lambda r: r.index)]


def store_fetcher(store, max_size: int | None = None) -> Callable[[Contribution], bytes]:
    """A fetch function over a ``ledger.store`` Store: ``store.get(cid, digest, max_size)``."""

    def fetch(c: Contribution) -> bytes:
        return store.get(c.cid, c.digest, max_size)

    return fetch


def with_stages(ctx: RoundContext, stages: Iterable[str] | None) -> RoundContext:
    """A copy of ``ctx`` running only ``stages`` (e.g. CHEAP_STAGES for a benchmark)."""
    return replace(ctx, stages=stages)


__all__ = [
    "Contribution", "STAGES", "CHEAP_STAGES", "REPLAY_MODES", "RoundContext", "Report",
    "verify_round", "replay_selected", "replay_draw", "validation_seed", "replay_diff",
    "accepted", "verdict_bytes", "store_fetcher", "with_stages",
]
