"""The verification pipeline: one implementation for the aggregators and the audit.

Every contribution of a round goes through the same checks, cheap to expensive;
the first failing check decides its verdict (``ledger.protocol.verdicts.Verdict``):

  declared size <= policy.max_checkpoint_bytes (before fetching)  FORMAT
  fetch                                                           UNAVAILABLE
  sha256(bytes) == on-chain digest, len == on-chain size          INTEGRITY
  strict safetensors decode (never unpickle)                      FORMAT
  meta parent / job / round / worker                              LINEAGE
  declared sample count == steps x batch size                     SAMPLE_COUNT
  compressed jobs: the end of training and the error feedback     TRANSCRIPT_UNAVAILABLE / TRANSCRIPT
    fetched; their compression is the payload, and leaves the
    committed next error feedback (node.training.compress)        COMPRESSION
  tensor names, shapes, dtypes == the parent's                    STRUCTURE
  all floating values finite                                      NON_FINITE
  tensors identical to the parent (no update)                     DUPLICATE
  L2(checkpoint - parent) <= policy.max_update_norm               UPDATE_NORM      (stage "norm")
    -- second pass, for the contributions still standing --
  update norm <= max_update_norm_ratio x the round's median       UPDATE_NORM      (stage "norm")
  val loss <= parent val loss + max_val_loss_increase             VALIDATION_LOSS  (stage "validation")
  transcript manifest well formed, on the job's schedule          TRANSCRIPT       (stage "replay")
  each drawn segment's snapshots fetched                          TRANSCRIPT_UNAVAILABLE
    ... and matching their committed digests and this
    contribution (job, round, worker, parent, step, tensors)      TRANSCRIPT
  private data: each drawn segment's window bundle fetched        WINDOWS_UNREVEALED
    (sealed to the drawn verifiers: the disclosed envelope opens
    with this verifier's key and holds the bundle                  SEALED;
    a verifier that may not read it does not rerun the segment)
    ... matching its committed digest, revealing exactly the
    segment's chunks, each proven against the worker's root       WINDOWS_PROOF
  DP: each drawn segment's noise seeds handed to this verifier
    (``unsealed``) and matching the manifest's commitment          DP_SEEDS
    (a verifier holding no key to them: the segment is not rerun)
  each drawn segment replayed from its start lands within
    replay_tolerance of its published end (DP: with the job's
    clipping and the worker's committed noise)                     REPLAY
    -- last --
  tensors identical to an earlier *accepted* contribution         DUPLICATE

Copies are judged last and only against contributions that passed everything, so
a copier who front-runs the original can never get the original rejected: a byte
copy names the original worker (LINEAGE), a relabelled copy cannot replay its
transcript with the copier's own seed and shard (REPLAY).

Given the same inputs (the round's submissions in chain order, the fetched bytes,
the parent, the job config, the seed bytes) two aggregators compute the same
verdicts: nothing here depends on time, randomness, dict order or the machine —
except the two torch stages (validation loss, replay), whose numbers differ in
their last bits across CPUs, kernel paths, thread counts and GPUs; the policy's
margins absorb that (bench/replay_drift.py measures the replay's). Storage
availability (UNAVAILABLE, TRANSCRIPT_UNAVAILABLE) is by nature a local observation,
made only when the verifier's storage answers: its own outage (``StorageUnreachable``)
is raised out of ``verify_round``, never turned into a verdict.

The caller supplies the fetch functions and the round's context; ``verify_round``
returns one ``Report`` per contribution, in submission order. Reports of mergeable
contributions carry the decoded tensors so the merge does not decode twice:
``accepted(reports)`` gives the (worker, num_samples, params) triples
``node.verification.merge.merge`` takes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ledger.store import checkpoint
from ledger.ethereum.contract import Submission
from ledger.digest import sha256_bytes, to_hex
from ledger.errors import (
    CheckpointFormatError,
    IntegrityError,
    NotFoundError,
    StorageError,
    StorageUnreachable,
)
from ledger.protocol.jobconfig import JobConfig, Policy, num_samples
from ledger.protocol.verdicts import Verdict

from node.training import transcript as tx
from node.verification.merge import is_float, structure_mismatch, tensor_digest, update_norm
from node.verification.spill import SpillDir, SpilledParams

VALIDATION_DOMAIN = b"training-ledger/validation/1"
# Fetched checkpoint bytes waiting ahead of the checks, at most (one at least).
PREFETCH_BYTES = 64 << 20


# --------------------------------------------------------------------------- data


STAGES = frozenset({"norm", "validation", "replay"})
"""The stages a caller may switch off (``RoundContext.stages``): the update-norm
bound, the validation loss and the replay. Every aggregator of a job must run the
same stages, or their verdicts may differ; turning some off is for benchmarks,
quick audits and debugging."""
CHEAP_STAGES = frozenset({"norm"})
REPLAY_MODES = ("policy", "none", "all")


@dataclass(frozen=True)
class Unsealed:
    """A worker's sealed reveal as one verifier sees it (``node.verification.rounds.unsealer``).
    ``status``: "open" (``items`` holds what it sealed: ``windows-<segment>`` bundles, and
    whatever else its verifiers need), "no-key" / "not-a-reader" (this verifier may not read
    it: what rests on it is not rerun, neither passed nor failed), "unrevealed" (no sealed
    reveal disclosed), "unavailable" (storage lacks it), "broken" (named to this verifier,
    and it does not open: the worker's fault, ``Verdict.SEALED``)."""

    items: Mapping[str, bytes] | None
    status: str
    reason: str

    def item(self, name: str, what: str, *, missing: Verdict = Verdict.SEALED,
             unrevealed: Verdict = Verdict.WINDOWS_UNREVEALED) -> bytes:
        """The item, or the verdict (or not-rerun) its absence is: ``unrevealed`` when the
        worker disclosed no sealed reveal, ``missing`` when its reveal lacks the item."""
        if self.status in ("no-key", "not-a-reader"):
            raise NotRerun(f"{what}sealed to its verifiers: {self.reason}")
        if self.status == "unrevealed":
            raise _Reject(unrevealed, f"{what}not revealed: {self.reason}")
        if self.status == "unavailable":
            raise _Reject(Verdict.TRANSCRIPT_UNAVAILABLE, f"{what}{self.reason}")
        if self.status != "open":
            raise _Reject(Verdict.SEALED, f"{what}{self.reason}")
        if name not in self.items:
            raise _Reject(missing, f"{what}the sealed reveal holds no {name!r} (it holds "
                                   f"{', '.join(sorted(self.items)) or 'nothing'})")
        return self.items[name]


class NotRerun(Exception):
    """A check this verifier cannot make (it holds no key to what it needs): neither a pass
    nor a failure. The report records the reason; the audit says it in its own word."""


@dataclass
class RoundContext:
    """Everything the checks compare a contribution with.

    - ``config``: the job config (its ``policy`` holds the bounds).
    - ``parent_digest`` / ``parent_params``: the round's parent, decoded (numpy).
    - ``validation``: the job's held-out split, as ``node.training.train.evaluate`` takes it.
    - ``parent_val_loss``: the parent's validation loss; ``None`` = computed once,
      on first need (``parent_loss()``), and cached here.
    - ``shard_of(worker) -> shard``: the worker's training data (for replay);
      called with the lowercase address.
    - ``fetch_object(cid, digest) -> bytes``: a transcript snapshot from storage,
      checked against its committed digest (raises the store's errors).
    - ``replay_seed``: bytes no worker knows before the round closes (the hash of
      the block holding its last submission); seeds the segment lottery and the
      validation batches.
    - ``replay_mode``: "policy" (``policy.replay_segments`` drawn segments of every
      contribution: what aggregators run), "none", or "all" (every segment: audit).
    - ``replay_threads`` / ``replay_device``: where this verifier replays (its own
      choice: honest segments replay within the tolerance on any kernel path).
    - ``data_root_of(worker) -> (root, length)``: set for private-data jobs: replays
      then run on the windows the worker revealed (``node.training.privdata``), never on
      ``shard_of``; "all" mode replays the drawn segments only (nothing else is revealed).
    - ``stages``: the subset of ``STAGES`` that runs; ``None`` = all.
    - ``evaluate``: defaults to ``node.training.train.evaluate``; injectable for benchmarks.
    - ``model``: the job's ``node.models.LanguageModel`` (built from ``config.model``
      when not given; a Hugging Face model must be given, its files come from storage).
    - ``spill_root``: where mergeable contributions wait on disk (default: the
      system's temporary folder; ``node.verification.spill``).
    - ``disclosed``: for a job with a disclosure phase, the lower-case addresses of the
      workers whose ``Disclosed`` event is on chain (the contract refuses a late one): a
      drawn artifact of any other worker is unrevealed without a fetch, so every
      verifier judges "revealed in time" alike. None: no disclosure phase.
    - ``decided``: submission index -> (verdict, credit) its verification committee
      decided on chain (``ledger.protocol.committee``): after the cheap checks this verifier takes
      that verdict and credit instead of judging in depth.
    - ``in_depth``: the submission indexes judged in depth (validation, replay) when not
      decided; the others pass on their cheap checks alone (a committee member's vote
      covers only its own). None: all.
    - ``copy_check``: whether a contribution equal to an earlier accepted one is a
      DUPLICATE (off for a committee vote: it is judged on the decided round).
    - ``unsealed(worker) -> Unsealed``: set where workers seal what they reveal
      (``JobConfig.seals``): drawn windows come from there, not from storage in clear.
    """

    config: JobConfig
    job_id: int
    round: int
    parent_digest: bytes
    parent_params: dict[str, np.ndarray]
    validation: Any = None
    parent_val_loss: float | None = None
    shard_of: Callable[[str], Any] | None = None
    fetch_object: Callable[[str, bytes], bytes] | None = None
    replay_seed: bytes = b""
    replay_mode: str = "policy"
    replay_threads: int | None = None
    replay_device: str | None = None
    stages: Iterable[str] | None = None
    evaluate: Callable[..., float] | None = None
    data_root_of: Callable[[str], tuple[bytes, int]] | None = None
    model: Any = None
    spill_root: str | None = None
    disclosed: frozenset[str] | None = None
    decided: Mapping[int, tuple[int, int]] | None = None
    in_depth: frozenset[int] | None = None
    copy_check: bool = True
    unsealed: Callable[[str], Unsealed] | None = None
    # compressed contributions (config.compress): each worker's committed error feedback,
    # from the parent merge's registry (node.training.compress)
    error_feedback: Mapping[str, Any] | None = None

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

    def replaying(self) -> bool:
        return self.runs("replay") and self.replay_mode != "none" and (
            self.replay_mode == "all" or int(self.policy.replay_segments) > 0)

    def segments_to_replay(self, worker: str, n_segments: int) -> list[int]:
        """The segments of this worker's transcript that are replayed: every one in
        "all" mode, else the policy's count drawn by ``node.training.transcript.draw_segments``;
        for private data and DP always the drawn ones (no other segment's windows or seeds are revealed)."""
        if not self.replaying():
            return []
        count = int(self.policy.replay_segments)
        # (a DP job's undrawn segments have no seeds handed to anyone: drawn ones only)
        if self.replay_mode == "all" and self.data_root_of is None and not self.policy.reveals and self.config.dp is None:
            count = n_segments
        return tx.draw_segments(self.replay_seed, self.job_id, self.round, worker, n_segments, count)

    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def lm(self):
        if self.model is None:
            from node.models import language_model

            self.model = language_model(self.config.model)
        return self.model

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
        args = (self.lm, params, self.validation, p.val_batches, p.val_batch_size, self.validation_seed)
        if self.evaluate is not None:
            return float(self.evaluate(*args))
        # the job's thread count, as in training: a different count may change the low bits
        return float(_node_train().evaluate(*args, threads=self.config.train.threads))


@dataclass
class Report:
    """The outcome for one contribution.

    ``metrics`` holds what was measured before the verdict was reached (only
    JSON-friendly values): ``size``, ``update_norm``, ``update_norm_bound``,
    ``val_loss``, ``parent_val_loss``, ``val_loss_increase``, ``replay_segments``
    (the segment indexes replayed), ``replay_distance`` (the worst of them),
    ``duplicate_of`` (-1 = the parent).
    ``timings`` holds the process CPU seconds each stage took (for benchmarks; not
    part of the verdict or the summary).
    ``params`` / ``meta`` are the decoded checkpoint, kept (with ``keep_params``)
    whenever its tensors are mergeable — accepted, or rejected at DUPLICATE or a
    later stage — so an auditor can recompute a quorum's merge it disagrees
    with; merge only the accepted ones (``accepted(reports)``).
    ``tensor_digest`` is set whenever the tensors were decoded and well formed.
    """

    contribution: Submission
    verdict: Verdict
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] | None = None
    meta: dict[str, str] | None = None
    tensor_digest: bytes | None = None
    timings: dict[str, float] = field(default_factory=dict)
    end: Any = None     # compressed contributions: the end of training (a TrainState), where the replay ends

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


def validation_seed(replay_seed: bytes, job_id: int, round: int) -> int:
    """Seed of the round's validation batches (63 bits), fixed by the round's seed
    bytes so workers cannot know the batches before the round closes."""
    h = hashlib.sha256(VALIDATION_DOMAIN + bytes(replay_seed) + _u256(job_id) + _u256(round)).digest()
    return int.from_bytes(h[:8], "big") >> 1


# --------------------------------------------------------------------------- pipeline


def verify_round(ctx: RoundContext, contributions: Iterable[Submission],
                 fetch: Callable[[Submission], bytes], *, keep_params: bool = True,
                 progress: Callable[[Report], None] | None = None, prefetch: int = 4) -> list[Report]:
    """Verify the round's contributions in submission order (sorted by ``index``);
    one ``Report`` each, in that order. ``fetch(c)`` returns the checkpoint bytes
    or raises a storage error (``NotFoundError`` -> UNAVAILABLE, ``IntegrityError`` ->
    INTEGRITY; ``StorageUnreachable`` is raised out of here: no verdict).

    Three passes: every contribution first goes through the checks that need no
    model evaluation (up to its update norm); then the update norms of the survivors
    give the round's relative bound, and only contributions within it are evaluated
    on the validation split and have their drawn transcript segments replayed; last,
    a contribution whose tensors equal an earlier accepted one's is a DUPLICATE.

    Up to ``prefetch`` fetches (each one verified against its digest by the store) run
    in background threads ahead of the checks, so storage latency and hashing overlap
    the decoding and norm computations; 0 fetches one at a time. Verdicts do not
    depend on it: each contribution is still judged alone, in order."""
    ordered = sorted(contributions, key=lambda c: c.index)
    if len({c.index for c in ordered}) != len(ordered):
        raise ValueError("contribution indexes must be unique (submission order)")
    parent_tensors = tensor_digest(ctx.parent_params)
    cap = int(ctx.policy.max_checkpoint_bytes)
    # Fetched bytes waiting in memory stay under PREFETCH_BYTES whatever the model's size.
    largest = max((c.size for c in ordered if c.size <= cap), default=1)
    prefetch = min(int(prefetch), max(1, PREFETCH_BYTES // max(1, largest))) if prefetch else 0
    # A contribution's tensors live in memory only while it is checked: mergeable ones
    # wait on local disk (node.verification.spill), so memory does not grow with n.
    spill = SpillDir(ctx.spill_root)
    staged: list[tuple[Report, SpilledParams | None]] = []
    with _Prefetcher([c for c in ordered if c.size <= cap], fetch, prefetch) as fetched:  # no oversized downloads
        for c in ordered:
            report = Report(c, Verdict.ACCEPTED, "accepted", {"size": int(c.size)})
            decoded = _judged(report, lambda: _decoded_checks(ctx, c, fetched, report))
            held = None
            if decoded is not None:
                tensors, meta, data = decoded
                report.tensor_digest = tensor_digest(tensors)
                _judged(report, lambda: _update_checks(ctx, tensors, report, parent_tensors))
                held = SpilledParams(spill, data)
                report.meta = meta
                del tensors, data, decoded
            staged.append((report, held))
    bound = (relative_norm_bound(ctx.policy, [r.metrics["update_norm"] for r, _ in staged if r.accepted])
             if ctx.runs("norm") else None)
    first_with: dict[bytes, int] = {}
    reports = []
    for report, held in staged:
        decision = (ctx.decided or {}).get(report.index)
        if report.accepted and decision is not None:
            _adopt(report, *decision)
        elif report.accepted and (ctx.in_depth is None or report.index in ctx.in_depth):
            _judged(report, lambda: _expensive_checks(ctx, report, (held.load(), report.meta), bound))
        if report.accepted and ctx.copy_check:
            _judged(report, lambda: _not_a_copy(report, first_with))
        if report.accepted:
            report.reason = _accepted_reason(report.metrics)
        if keep_params and held is not None:
            report.params = held
        reports.append(report)
        if progress is not None:
            progress(report)
    return reports


def _judged(report: Report, checks: Callable[[], Any]) -> Any:
    """Run ``checks`` (which raise ``_Reject``); a rejection becomes the report's
    verdict. Returns what the checks returned, None when rejected."""
    try:
        return checks()
    except _Reject as r:
        report.verdict, report.reason = r.verdict, r.reason
        return None


@contextmanager
def _timed(report: Report, stage: str):
    t0 = time.process_time()
    try:
        yield
    finally:
        report.timings[stage] = report.timings.get(stage, 0.0) + time.process_time() - t0


class _Prefetcher:
    """``fetch`` for contributions in index order, up to ``ahead`` of them fetched
    ahead in threads (hashlib and socket reads release the GIL). A fetch's exception
    is raised where the contribution asks for its bytes, exactly as without it."""

    def __init__(self, ordered: list[Submission], fetch: Callable[[Submission], bytes], ahead: int):
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

    def __call__(self, c: Submission) -> bytes:
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


def _decoded_checks(ctx: RoundContext, c: Submission, fetch, report: Report) -> tuple[dict, dict, bytes]:
    """Size cap, fetch, integrity, format, lineage, sample count, structure, finite
    values: what makes a file a well-formed contribution of this worker to this round.
    Returns its (tensors, meta, bytes), mergeable from here on."""
    cap = int(ctx.policy.max_checkpoint_bytes)
    # -- size cap, from the on-chain size: no download of oversized objects
    if c.size > cap:
        raise _Reject(Verdict.FORMAT, f"declared size {c.size} bytes exceeds the cap of {cap} bytes")
    with _timed(report, "fetch"):
        data = _fetch_checked(lambda: fetch(c), c.cid, c.digest, c.size,
                              missing=Verdict.UNAVAILABLE, mismatch=Verdict.INTEGRITY, what="")
    with _timed(report, "decode"):
        tensors, meta = _decode(data, c.cid, cap)
    _check_lineage(ctx, c, meta)
    # -- SAMPLE_COUNT: the FedAvg weight a worker declares must be what the job's training uses
    expected = num_samples(ctx.config.train)
    if int(c.num_samples) != expected:
        raise _Reject(Verdict.SAMPLE_COUNT, f"declares {c.num_samples} samples; the job's training uses "
                                            f"{ctx.config.train.steps} steps x {ctx.config.train.batch_size} = {expected}")
    if ctx.config.compress.on:
        with _timed(report, "compression"):
            tensors, data = _compressed(ctx, c, tensors, meta, report)
    _check_structure(ctx.parent_params, tensors)
    for name in sorted(tensors):
        t = tensors[name]
        if is_float(t) and not np.isfinite(t).all():
            bad = int(t.size - np.count_nonzero(np.isfinite(t)))
            raise _Reject(Verdict.NON_FINITE, f"tensor {name!r} has {bad} NaN/Inf value(s)")
    return tensors, meta, data


def _fetch_checked(get: Callable[[], bytes], cid: str, digest: bytes, size: int | None, *,
                   missing: Verdict, mismatch: Verdict, what: str) -> bytes:
    """Bytes from storage that hash to ``digest`` (and are ``size`` long), or the
    rejection: ``missing`` when storage answers that it cannot deliver (not found, or a
    Kubo node that found no provider in time), ``mismatch`` when what it delivers is not
    what was committed. ``StorageUnreachable`` (the verifier's own storage does not
    answer) is raised as is: it is no verdict on the author."""
    try:
        data = bytes(get())
    except IntegrityError as e:
        raise _Reject(mismatch, f"{what}content does not match the committed digest: {e}") from None
    except CheckpointFormatError as e:
        raise _Reject(Verdict.FORMAT, f"{what}not a valid checkpoint: {e}") from None
    except StorageUnreachable:
        # The verifier's own storage does not answer: that says nothing of the author, so no
        # verdict; the caller waits for its storage (JobContext.ride_out) and judges again.
        raise
    except (NotFoundError, StorageError, OSError, TimeoutError) as e:
        raise _Reject(missing, f"could not fetch {what}{cid}: {e}") from None
    actual = sha256_bytes(data)
    if actual != bytes(digest):
        raise _Reject(mismatch, f"{what}content of {cid} hashes to {to_hex(actual)}, committed {to_hex(digest)}")
    if size is not None and len(data) != size:
        raise _Reject(mismatch, f"{what}content of {cid} is {len(data)} bytes, committed {size}")
    return data


def _update_checks(ctx: RoundContext, tensors, report: Report, parent_tensors: bytes) -> None:
    """No update at all, and the absolute update-norm cap."""
    if report.tensor_digest == parent_tensors:
        report.metrics["duplicate_of"] = -1
        raise _Reject(Verdict.DUPLICATE, "tensors identical to the round's parent (no update)")
    # -- only when the stage runs: a full pass over every tensor, which is most of what
    # "verification off" would otherwise still cost per contribution
    if not ctx.runs("norm"):
        return
    with _timed(report, "norm"):
        norm = update_norm(tensors, ctx.parent_params)
    report.metrics["update_norm"] = norm
    if not norm <= ctx.policy.max_update_norm:
        raise _Reject(Verdict.UPDATE_NORM, f"update norm {norm:.6g} exceeds the bound {ctx.policy.max_update_norm:g}")


def _expensive_checks(ctx: RoundContext, report: Report, decoded, bound: float | None) -> None:
    policy, metrics = ctx.policy, report.metrics
    tensors, meta = decoded
    # -- UPDATE_NORM, relative to the round
    if bound is not None:
        metrics["update_norm_bound"] = bound
        if not metrics["update_norm"] <= bound:
            raise _Reject(Verdict.UPDATE_NORM, f"update norm {metrics['update_norm']:.6g} exceeds "
                                               f"{policy.max_update_norm_ratio:g}x the round's median ({bound:.6g})")
    # -- VALIDATION_LOSS
    if ctx.runs("validation"):
        with _timed(report, "validation"):
            parent_loss = ctx.parent_loss()
            loss = ctx.val_loss(tensors)
        metrics.update(val_loss=loss, parent_val_loss=parent_loss, val_loss_increase=loss - parent_loss)
        limit = parent_loss + policy.max_val_loss_increase
        if not (math.isfinite(loss) and loss <= limit):
            raise _Reject(Verdict.VALIDATION_LOSS,
                          f"validation loss {loss:.6g} > parent's {parent_loss:.6g} + "
                          f"{policy.max_val_loss_increase:g}")
    # -- TRANSCRIPT, TRANSCRIPT_UNAVAILABLE, REPLAY
    if ctx.replaying():
        with _timed(report, "replay"):
            _replay_segments(ctx, report, tensors, meta)


def _adopt(report: Report, verdict: int, credit: int) -> None:
    """Take the verdict and credit the contribution's committee decided on chain."""
    report.metrics["committee_credit"] = int(credit)
    if int(verdict) != Verdict.ACCEPTED:
        try:
            report.verdict = Verdict(int(verdict))
            label = report.verdict.label
        except ValueError:      # a code this version does not know: kept as decided
            report.verdict, label = int(verdict), f"verdict {int(verdict)}"
        report.reason = f"{label}, decided by its verification committee"


def _not_a_copy(report: Report, first_with: dict[bytes, int]) -> None:
    """Judged last, against contributions that passed everything: a copy can then
    never cost the original its acceptance, whichever was submitted first."""
    first = first_with.setdefault(report.tensor_digest, report.index)
    if first != report.index:
        report.metrics["duplicate_of"] = first
        raise _Reject(Verdict.DUPLICATE, f"tensors identical to accepted submission #{first}")


def _decode(data: bytes, cid: str, cap: int):
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


def _check_lineage(ctx: RoundContext, c: Submission, meta: Mapping[str, str]) -> None:
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
            hint = " (a copy of another worker's checkpoint?)" if key == "worker" else ""
            raise _Reject(Verdict.LINEAGE, f"checkpoint declares {key} {meta[key]!r}, expected {expected[key]!r}{hint}")


def _check_structure(parent: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray]) -> None:
    problem = structure_mismatch(parent, tensors)
    if problem:
        raise _Reject(Verdict.STRUCTURE, problem)


def _accepted_reason(metrics: Mapping[str, Any]) -> str:
    parts = [f"update norm {metrics['update_norm']:.4g}"] if "update_norm" in metrics else []
    if "val_loss" in metrics:
        parts.append(f"val loss {metrics['val_loss']:.4f} (parent {metrics['parent_val_loss']:.4f})")
    skipped = metrics.get("replay_not_rerun") or []
    rerun = [i for i in metrics.get("replay_segments") or [] if i not in skipped]
    if rerun:
        parts.append(f"segments {','.join(map(str, rerun))} replayed within {metrics['replay_distance']:.2g}")
    if skipped:
        parts.append(f"segments {','.join(map(str, skipped))} not rerun (sealed to its verifiers; no key here)")
    if "committee_credit" in metrics:
        parts.append(f"decided by its verification committee, credit {metrics['committee_credit']}")
    return "accepted: " + ", ".join(parts) if parts else "accepted"


# --------------------------------------------------------------------------- segment replay


def _replay_segments(ctx: RoundContext, report: Report, tensors, meta) -> None:
    """Replay the drawn segments of the contribution's transcript (node.training.transcript)."""
    cfg, policy, c = ctx.config, ctx.policy, report.contribution
    cap = tx.snapshot_cap(policy)
    private = ctx.data_root_of is not None
    try:
        manifest = tx.read_manifest(meta, steps=cfg.train.steps, segment_steps=policy.segment_steps, max_size=cap,
                                    private=private, dp=cfg.dp is not None)
    except tx.TranscriptError as e:
        raise _Reject(Verdict.TRANSCRIPT, str(e)) from None
    bounds = tx.segment_bounds(cfg.train.steps, policy.segment_steps)
    chosen = ctx.segments_to_replay(c.worker, len(bounds))
    report.metrics["replay_segments"] = chosen
    if (ctx.shard_of is None and not private) or ctx.fetch_object is None:
        raise ValueError("RoundContext.shard_of and fetch_object are needed for the replay stage")
    train = _node_train()
    seed = train.derive_seed(cfg.seed, ctx.job_id, ctx.round, c.worker)
    shard = None if private else ctx.shard_of(c.worker.lower())
    snapshots: dict[int, tx.TrainState] = {}

    def state_at(i: int) -> tx.TrainState:
        """The published state at boundary i (0 = the parent, fresh optimizer; last = the checkpoint)."""
        if i == 0:
            return tx.TrainState.fresh(ctx.parent_params)
        if i == len(bounds):
            return report.end if report.end is not None else tx.TrainState(bounds[-1][1], tensors)
        if i not in snapshots:
            snapshots[i] = _snapshot(ctx, c, manifest.snapshots[i - 1], cap)
        return snapshots[i]

    worst = 0.0
    for i in chosen:
        # what only the drawn verifiers read first (noise seeds, windows): without it nothing
        # else is fetched, and a verifier that may not read it does not rerun the segment
        try:
            dp = _dp_step(ctx, c, manifest.dp_seeds[i], i, bounds[i]) if cfg.dp is not None else None
            if private:
                shard = _revealed_windows(ctx, c, manifest.windows[i], i, seed, bounds[i])
        except NotRerun as e:
            report.metrics.setdefault("replay_not_rerun", []).append(i)
            report.metrics["not_rerun_reason"] = str(e)
            continue
        start, end = state_at(i), state_at(i + 1)
        replayed, _, _ = train.train_steps(ctx.lm, cfg.train, start, shard, seed, end.step,
                                           threads=ctx.replay_threads, device=ctx.replay_device, dp=dp)
        d = tx.replay_distance(start, end, replayed)
        worst = max(worst, d)
        report.metrics["replay_distance"] = worst
        if not d <= policy.replay_tolerance:
            a, b = bounds[i]
            raise _Reject(Verdict.REPLAY, f"segment {i} (steps {a}-{b}) replays {d:.3g} of its movement away "
                                          f"from the published end (tolerance {policy.replay_tolerance:g})")


def _dp_step(ctx: RoundContext, c: Submission, ref: tx.SnapshotRef, segment: int, bounds: tuple[int, int]):
    """The DP step segment ``segment`` replays with: the job's clipping and noise, drawn
    from the seeds the worker sealed to this verifier, checked against the manifest's
    commitment (DP_SEEDS otherwise); ``NotRerun`` where this verifier may not read them."""
    from node.training import dp as dpmod

    what = f"the noise seeds of segment {segment}: "
    if ctx.unsealed is None:
        raise NotRerun(f"{what}this verifier was given no way to open sealed reveals")
    _undisclosed(ctx, c, Verdict.DP_SEEDS, what)
    blob = ctx.unsealed(c.worker).item(dpmod.item_name(segment), what, missing=Verdict.DP_SEEDS,
                                       unrevealed=Verdict.DP_SEEDS)
    try:
        seeds = dpmod.open_seed_item(blob, ref.digest, bounds)
    except dpmod.SeedError as e:
        raise _Reject(Verdict.DP_SEEDS, f"segment {segment}: {e}") from None
    return dpmod.DPStep.of(ctx.config.dp, seeds.__getitem__)


def _compressed(ctx: RoundContext, c: Submission, payload, meta, report: Report) -> tuple[dict, bytes]:
    """A compressed contribution (node.training.compress): its end of training and the
    error feedback its parent's registry commits it to, fetched; their compression must
    be the submitted payload, and what it leaves the committed next error feedback.
    Returns the contribution as the merge sees it (parent + the decompressed update) and
    those tensors' bytes (what waits on disk for the later stages)."""
    from node.training import compress as cz

    cap, spec, w = tx.snapshot_cap(ctx.policy), ctx.config.compress, c.worker.lower()
    try:
        end_ref, ef_ref = cz.meta_refs(meta)
    except cz.CompressionError as e:
        raise _Reject(Verdict.COMPRESSION, str(e)) from None

    def fetched(ref, what: str, expect: dict) -> dict:
        data = _fetch_checked(lambda: ctx.fetch_object(ref.cid, ref.digest), ref.cid, ref.digest, ref.size,
                              missing=Verdict.TRANSCRIPT_UNAVAILABLE, mismatch=Verdict.TRANSCRIPT, what=what)
        try:
            return cz.decode_bits(data, cid=ref.cid, expect_meta=expect, like=ctx.parent_params, max_size=cap)
        except cz.CompressionError as e:
            raise _Reject(Verdict.TRANSCRIPT, f"{what}{e}") from None

    bits = fetched(end_ref, "the end of training: ", cz.link_meta(cz.END_KIND, ctx.job_id, ctx.round, w, ctx.parent_digest))
    prior = (ctx.error_feedback or {}).get(w)
    ef_in = None if prior is None else fetched(prior, "its error feedback: ", {"kind": cz.EF_KIND, "worker": w})
    expected, ef_out = cz.compress(spec, bits, ef_in)
    why = cz.same_payload(payload, expected)
    if why:
        raise _Reject(Verdict.COMPRESSION, why)
    ef_blob = cz.encode_bits(ef_out, cz.link_meta(cz.EF_KIND, ctx.job_id, ctx.round, w, ctx.parent_digest))
    if sha256_bytes(ef_blob) != ef_ref.digest or len(ef_blob) != ef_ref.size:
        raise _Reject(Verdict.COMPRESSION, "its committed next error feedback is not what its compression leaves")
    params = cz.with_update(ctx.parent_params, cz.decompress(spec, payload, ctx.parent_params))
    report.end = tx.TrainState(int(ctx.config.train.steps), cz.end_params(bits, ctx.parent_params), delta=bits)
    return params, checkpoint.encode(params, {})


def _undisclosed(ctx: RoundContext, c: Submission, verdict: Verdict, what: str) -> None:
    """A drawn artifact of a worker that did not disclose on chain, in time: unrevealed,
    whatever storage holds (the chain, not this verifier's clock, says it was late)."""
    if ctx.disclosed is not None and c.worker.lower() not in ctx.disclosed:
        raise _Reject(verdict, f"{what}not revealed: no Disclosed record of {c.worker} on chain for round "
                               f"{ctx.round} by its disclosure deadline")


def _snapshot(ctx: RoundContext, c: Submission, ref: tx.SnapshotRef, cap: int) -> tx.TrainState:
    what = f"the snapshot at step {ref.step}: "
    if ctx.policy.reveals:
        _undisclosed(ctx, c, Verdict.TRANSCRIPT_UNREVEALED, what)
    # published only once the draw is known: missing then means the worker did not reveal
    # it, unless the chain records that it did (then storage is what failed)
    missing = (Verdict.TRANSCRIPT_UNREVEALED if ctx.policy.reveals and ctx.disclosed is None
               else Verdict.TRANSCRIPT_UNAVAILABLE)
    data = _fetch_checked(lambda: ctx.fetch_object(ref.cid, ref.digest), ref.cid, ref.digest, ref.size,
                          missing=missing, mismatch=Verdict.TRANSCRIPT, what=what)
    link = tx.snapshot_meta(ctx.job_id, ctx.round, c.worker, ctx.parent_digest, ref.step)
    try:
        return tx.decode_snapshot(data, cid=ref.cid, expect_meta=link, like=ctx.parent_params, max_size=cap)
    except tx.TranscriptError as e:
        raise _Reject(Verdict.TRANSCRIPT, str(e)) from None


def _revealed_windows(ctx: RoundContext, c: Submission, ref: tx.SnapshotRef, segment: int, seed: int,
                      bounds: tuple[int, int]) -> bytes:
    """The sparse shard segment ``segment`` replays on: its revealed window bundle,
    checked against the manifest's digest and, chunk by chunk, the worker's root."""
    from node.training import privdata

    what = f"the window bundle of segment {segment}: "
    _undisclosed(ctx, c, Verdict.WINDOWS_UNREVEALED, what)
    if ctx.unsealed is not None:
        data = ctx.unsealed(c.worker).item(f"windows-{segment}", what)
        if len(data) != ref.size or sha256_bytes(data) != bytes(ref.digest):
            raise _Reject(Verdict.WINDOWS_PROOF, f"{what}the sealed bundle is not the one the manifest commits to "
                                                 f"(sha256 {to_hex(ref.digest)}, {ref.size} bytes)")
    else:
        missing = Verdict.WINDOWS_UNREVEALED if ctx.disclosed is None else Verdict.TRANSCRIPT_UNAVAILABLE
        data = _fetch_checked(lambda: ctx.fetch_object(ref.cid, ref.digest), ref.cid, ref.digest, ref.size,
                              missing=missing, mismatch=Verdict.WINDOWS_PROOF, what=what)
    root, length = ctx.data_root_of(c.worker.lower())
    cfg = ctx.config
    want = privdata.segment_chunks(seed, bounds[0], bounds[1], length, cfg.model.block_size, cfg.train.batch_size,
                                   cfg.model.token_bytes)
    meta = privdata.bundle_meta(ctx.job_id, ctx.round, c.worker, ctx.parent_digest, segment)
    try:
        return privdata.open_bundle(data, expect_meta=meta, root=root, length=length, want_chunks=want)
    except privdata.BundleError as e:
        raise _Reject(Verdict.WINDOWS_PROOF, f"segment {segment}: {e}") from None


def _node_train():
    from node.training import train     # torch, only where a replay runs

    return train


# --------------------------------------------------------------------------- helpers for callers


def accepted(reports: Iterable[Report], mask: Iterable[bool] | None = None) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(worker, num_samples, params) of the accepted reports (or of those ``mask``
    marks, in report order: an auditor recomputing a quorum's merge), sorted by
    lowercase worker address: the input of ``node.verification.merge.merge``. Needs ``keep_params``."""
    reports = list(reports)
    marks = [r.accepted for r in reports] if mask is None else list(mask)
    out = []
    for r, ok in zip(reports, marks):
        if ok:
            if r.params is None:
                raise ValueError(f"contribution #{r.index} of {r.worker} is marked accepted but has no "
                                 f"mergeable tensors ({r.reason})")
            out.append((r.worker.lower(), r.contribution.num_samples, r.params))
    out.sort(key=lambda t: t[0])
    return out


def verdict_bytes(reports: Iterable[Report]) -> list[int]:
    """One verdict code per contribution, in submission order (the proposal's ``verdicts``)."""
    return [int(r.verdict) for r in sorted(reports, key=lambda r: r.index)]


def with_stages(ctx: RoundContext, stages: Iterable[str] | None) -> RoundContext:
    """A copy of ``ctx`` running only ``stages`` (e.g. CHEAP_STAGES for a benchmark)."""
    return replace(ctx, stages=stages)


__all__ = [
    "STAGES", "CHEAP_STAGES", "REPLAY_MODES", "RoundContext", "Report",
    "verify_round", "validation_seed", "relative_norm_bound", "accepted", "verdict_bytes", "with_stages",
]
