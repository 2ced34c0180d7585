"""Judging a round: the one piece of code that aggregators run to decide and the
auditor runs to check. Given the round's on-chain submissions it fetches, verifies
and merges, and returns the verdicts and the merged checkpoint bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.store import checkpoint
from ledger.protocol import committee
from ledger.protocol import settlement as settlemod
from ledger.protocol.settlement import Settlement
from ledger.digest import sha256_bytes
from ledger.errors import LedgerError, NotFoundError, StorageUnreachable
from ledger.protocol.verdicts import Verdict

from node.training import transcript as tx
from node.verification import merge as mergemod
from node.verification import outer as outermod
from node.verification import verify as verifymod
from node.context import JobContext, Located


@dataclass
class Verified:
    round: int
    parent: Located
    parent_params: dict
    contributions: list
    reports: list
    parent_val_loss: float | None = None
    parent_state: dict = field(default_factory=dict)   # the parent's every tensor (its outer/ state included)
    parent_meta: dict = field(default_factory=dict)

    @property
    def verdicts(self) -> list[int]:
        return verifymod.verdict_bytes(self.reports)


@dataclass
class Merged:
    merged_bytes: bytes | None          # None when the round keeps its parent
    digest: bytes
    size: int
    keeps_parent: bool
    accepted: list[str]                 # workers merged, sorted
    info: dict = field(default_factory=dict)


@dataclass
class RoundOutcome:
    verified: Verified
    merged: Merged
    settlement: Settlement

    @property
    def verdicts(self) -> list[int]:
        return self.verified.verdicts


# The draw is seeded by the hash of the block this many blocks after the one that closed
# the round: a block nobody has when the last submission is made.
DRAW_DELAY = 2


class DrawNotReady(LedgerError):
    """The block that seeds a round's draw is not mined yet: wait (``Chain.nudge`` on a dev node)."""


def close_block(ledger, job_id: int, r: int, submissions) -> int | None:
    """The block that closed round ``r``: the last submission's when every worker
    submitted, else the first block past the round's deadline (None: not mined yet).
    Read from the chain alone, the same for every party."""
    # the workers the round waited for (recorded with it): not the job's, which joins may
    # have grown since, nor those that left
    rd = ledger.round(job_id, r)
    if submissions and 0 < rd.expected <= len(submissions):
        return int(submissions[-1].block)
    start = int(submissions[-1].block) if submissions else 0
    return ledger.chain.first_block_after(int(rd.deadline), lo=start)


def replay_seed(ledger, job_id: int, r: int, submissions) -> bytes:
    """The seed of round ``r``'s segment lottery and validation batches: the hash of the
    block ``DRAW_DELAY`` blocks after the one that closed the round (``close_block``).

    Fixed only once every submission is final, and unknown to everyone when the last
    one is sent, the last submitter included: the seed block is mined later, on top of
    it. Whoever produces that block can still bias the draw, by one bit, by withholding
    it (README, "Trust model"). Raises ``DrawNotReady`` until the block exists."""
    if not submissions:
        return b"\0" * 32
    close = close_block(ledger, job_id, r, submissions)
    head = ledger.chain.block_number()
    if close is None:
        # Only the chain's clock closes a round at its deadline; a party whose clock runs
        # ahead sees the deadline pass first and must hear why it waits.
        deadline, now = int(ledger.round(job_id, r).deadline), ledger.chain.block_timestamp(head)
        raise DrawNotReady(f"job {job_id} round {r}: the chain's clock ({now}) has not passed the round's deadline "
                           f"({deadline}) in a mined block yet; the draw is seeded {DRAW_DELAY} blocks after that one")
    if close + DRAW_DELAY > head:
        raise DrawNotReady(f"job {job_id} round {r}: the draw is seeded by block {close + DRAW_DELAY}, not mined yet "
                           f"(head {head})")
    return bytes(ledger.block_hash(close + DRAW_DELAY))


def vote_deadline(ctx: JobContext, r: int, submissions) -> int:
    """The chain time until which round ``r``'s committee votes count: ``vote_window``
    seconds after the round can be judged (its disclosure deadline in a job with one,
    else the timestamp of the block that closed it). From the chain alone."""
    rd = ctx.ledger.round(ctx.job_id, r)
    if int(getattr(ctx.info, "disclosure_window", 0) or 0):
        start = int(rd.disclosure_deadline)
    else:
        close = close_block(ctx.ledger, ctx.job_id, r, submissions)
        if close is None:
            raise DrawNotReady(f"job {ctx.job_id} round {r}: not closed in a mined block yet")
        start = ctx.ledger.chain.block_timestamp(close)
    return start + int(ctx.config.policy.vote_window)


def committee_tally(ctx: JobContext, r: int, submissions, seed: bytes):
    """(the round's committee ``Tally`` from the votes on chain so far, its vote
    deadline), or None when the job has no committees."""
    size = committee.effective_size(ctx.config.policy, len(ctx.info.aggregators))
    if not size or not submissions:
        return None
    comms = committee.committees(seed, ctx.job_id, r, len(submissions), ctx.info.aggregators, size)
    deadline = vote_deadline(ctx, r, submissions)
    quorum = committee.effective_quorum(ctx.config.policy, size)
    return committee.tally(ctx.ledger.committee_votes(ctx.job_id, r), comms, quorum, deadline), deadline


def disclosed_workers(ctx: JobContext, r: int) -> frozenset[str] | None:
    """Lower-case addresses of round ``r``'s workers that disclosed in time (``Disclosed``
    events; the contract refuses a late one), or None when the job has no disclosures."""
    if not int(getattr(ctx.info, "disclosure_window", 0) or 0):
        return None
    return frozenset(d.worker.lower() for d in ctx.ledger.disclosures(ctx.job_id, r))


def drawn_artifacts(ctx: JobContext, r: int, submissions, cache: dict | None = None) -> list[tuple[str, str, str]]:
    """(worker, what, CID) of everything the verifiers' draw needs revealed from round
    ``r``'s submissions: the drawn segments' snapshots (policy ``publish_snapshots``
    "drawn") and, for private data, their window bundles. A checkpoint that cannot be
    fetched or has no valid manifest needs none (verification rejects it on its own).
    ``cache`` maps a checkpoint digest to its manifest across calls."""
    from node.training import transcript as tx

    cfg = ctx.config
    private, snaps = cfg.data.private, cfg.policy.reveals
    if not (private or snaps):
        return []
    cache = {} if cache is None else cache
    seed = replay_seed(ctx.ledger, ctx.job_id, r, submissions)
    inner = tx.inner_boundaries(cfg.train.steps, cfg.policy.segment_steps)
    out = []
    for s in submissions:
        if s.digest not in cache:
            try:
                raw = ctx.store.get(s.cid, s.digest, max_size=cfg.policy.max_checkpoint_bytes)
                meta = checkpoint.read_meta(raw, max_size=cfg.policy.max_checkpoint_bytes)
                cache[s.digest] = tx.read_manifest(meta, steps=cfg.train.steps, segment_steps=cfg.policy.segment_steps,
                                                   max_size=tx.snapshot_cap(cfg.policy), private=private)
            except StorageUnreachable:
                raise   # our own storage is down: nothing is known of this checkpoint yet (ride_out waits)
            except Exception:  # noqa: BLE001 - hostile or missing: the verification decides its verdict
                cache[s.digest] = None
        m = cache[s.digest]
        if m is None:
            continue
        n = len(inner) + 1
        for seg in tx.draw_segments(seed, ctx.job_id, r, s.worker, n, cfg.policy.replay_segments):
            if private and not cfg.seals:
                out.append((s.worker.lower(), f"window bundle of segment {seg}", m.windows[seg].cid))
            if snaps:
                for step in tx.segment_snapshot_steps(cfg.train.steps, cfg.policy.segment_steps, seg):
                    out.append((s.worker.lower(), f"snapshot at step {step}", m.snapshots[inner.index(step)].cid))
    if cfg.seals:    # the windows travel sealed, in one envelope per worker that the disclosure names
        out += [(d.worker.lower(), "sealed reveal", d.sealed_cid) for d in ctx.ledger.disclosures(ctx.job_id, r)
                if getattr(d, "sealed_cid", "")]
    return out


def readers_of(ctx: JobContext, r: int, submissions, seed: bytes, index: int) -> list[str]:
    """Who may read what submission ``index`` of round ``r`` reveals after the draw: the
    aggregators that judge it (its verification committee, or all of them without
    committees) and the job's named auditors. Worker and verifiers compute it alike."""
    size = committee.effective_size(ctx.config.policy, len(ctx.info.aggregators))
    if size and submissions:
        judges = committee.committees(seed, ctx.job_id, r, len(submissions), ctx.info.aggregators, size)[index]
    else:
        judges = tuple(ctx.info.aggregators)
    seen = {a.lower() for a in judges}
    return [*judges, *(a for a in ctx.config.access.auditors if a.lower() not in seen)]


def unsealer(ctx: JobContext, r: int, submissions, seed: bytes, reader) -> "Callable[[str], verifymod.Unsealed]":
    """``RoundContext.unsealed`` for round ``r``: each worker's sealed reveal, fetched by the
    CID its disclosure names (checked against that CID) and opened with ``reader``'s key
    (a LocalAccount; None: an auditor that holds no key). Cached per worker."""
    from ledger.privacy import sealing
    from node.training import privdata

    index = {s.worker.lower(): s.index for s in submissions}
    disclosed = {d.worker.lower(): d for d in ctx.ledger.disclosures(ctx.job_id, r)}
    cache: dict[str, verifymod.Unsealed] = {}
    cap = tx.snapshot_cap(ctx.config.policy)

    def open_(worker: str) -> verifymod.Unsealed:
        U = verifymod.Unsealed
        w = worker.lower()
        if reader is None:
            return U(None, "no-key", "this auditor holds no key of the job (not a named auditor, no grant)")
        if reader.address.lower() not in {a.lower() for a in readers_of(ctx, r, submissions, seed, index[w])}:
            return U(None, "not-a-reader", f"{reader.address} is not among the readers the draw named for {worker}")
        d = disclosed.get(w)
        if d is None or not getattr(d, "sealed_cid", ""):
            return U(None, "unrevealed", f"{worker} disclosed no sealed reveal for round {r}")
        try:
            blob = ctx.store.get_by_cid(d.sealed_cid, max_size=cap)
        except StorageUnreachable:
            raise
        except NotFoundError as e:
            return U(None, "unavailable", f"its sealed reveal {d.sealed_cid} could not be fetched ({e})")
        except LedgerError as e:
            return U(None, "broken", f"its sealed reveal {d.sealed_cid} is not what the disclosure names ({e})")
        try:
            return U(sealing.unseal(blob, reader, privdata.reveal_binding(ctx.job_id, r, worker)), "open", "")
        except sealing.SealError as e:
            return U(None, "broken", f"its sealed reveal {d.sealed_cid} does not open for {reader.address}: {e}")

    def get(worker: str) -> verifymod.Unsealed:
        if worker.lower() not in cache:
            cache[worker.lower()] = open_(worker)
        return cache[worker.lower()]

    return get


def verify_submissions(ctx: JobContext, r: int, parent_digest: bytes, submissions, *, replay: str = "policy",
                       stages: set[str] | None = None, threads: int | None = None,
                       withheld: set[int] = frozenset(), decided=None, in_depth=None,
                       copy_check: bool = True, reader=None) -> Verified:
    """Run the shared verification pipeline over every submission of round ``r``.

    ``replay``: "policy" (the job policy's drawn segments, as aggregators do), "none"
    or "all" (every segment of every transcript). ``threads``: this verifier's torch
    threads for replays (default: the job's). ``withheld``: submission indices to
    treat as unfetchable (the audit re-verifying a round as its quorum saw it,
    whatever storage serves now). ``decided``, ``in_depth``, ``copy_check``: verification
    committees (``verify.RoundContext``). ``reader``: the account that opens what workers
    sealed to their verifiers (default: the party's own, an aggregator's or a named auditor's).
    """
    cfg = ctx.config
    parent = ctx.locate_model(parent_digest, before_round=r)
    parent_state, parent_meta = ctx.load_full(parent)
    parent_params = outermod.model_tensors(parent_state)
    contributions = list(submissions)
    if [s.index for s in contributions] != list(range(len(contributions))):
        raise ValueError(f"round {r}: submissions must be the round's, in submission order")
    shard_index = {w.lower(): i for i, w in enumerate(ctx.info.workers)}
    seed = replay_seed(ctx.ledger, ctx.job_id, r, submissions)
    rctx = verifymod.RoundContext(
        config=cfg,
        job_id=ctx.job_id,
        round=r,
        parent_digest=parent_digest,
        parent_params=parent_params,
        validation=ctx.validation,
        model=ctx.model,
        shard_of=lambda worker: ctx.shard(shard_index[worker.lower()]),
        data_root_of=(lambda worker: ctx.data_root(shard_index[worker.lower()])) if cfg.data.private else None,
        fetch_object=lambda cid, digest: ctx.store.get(cid, digest, max_size=tx.snapshot_cap(cfg.policy)),
        replay_seed=seed,
        unsealed=unsealer(ctx, r, contributions, seed, reader or ctx.ledger.chain.account) if cfg.seals else None,
        disclosed=disclosed_workers(ctx, r),
        replay_mode=replay,
        replay_threads=threads,
        stages=stages,
        decided=decided,
        in_depth=None if in_depth is None else frozenset(in_depth),
        copy_check=copy_check,
        error_feedback=_registry(v_round=r, meta=parent_meta) if cfg.compress.on else None,
    )

    def fetch(c) -> bytes:
        if c.index in withheld:
            raise NotFoundError(f"{c.cid}: recorded unavailable by the round's quorum")
        return ctx.store.get(c.cid, c.digest, max_size=cfg.policy.max_checkpoint_bytes)

    reports = verifymod.verify_round(rctx, contributions, fetch)
    return Verified(r, parent, parent_params, contributions, reports, rctx.parent_val_loss, parent_state, parent_meta)


def merge_accepted(ctx: JobContext, v: Verified, accepted: list[bool]) -> Merged:
    """Merge the contributions marked accepted (in submission order), bit-exactly."""
    try:
        good = verifymod.accepted(v.reports, accepted)
    except ValueError as e:
        raise LedgerError(f"round {v.round}: {e}") from None
    workers = [w for w, _, _ in good]
    if len(good) < max(1, ctx.info.min_submissions):
        return Merged(None, v.parent.digest, v.parent.size, True, workers)
    rule, outer = ctx.config.policy.merge_rule, ctx.config.outer
    if outer.rule == "none":
        result = mergemod.merge(rule, v.parent_params, good, ctx.config.policy)
    else:
        # DiLoCo: the rule's update is the negated pseudo-gradient; the outer step takes it
        # from the parent's committed momentum and commits the new one with the model.
        update, selected, rinfo = mergemod.rule_update(rule, v.parent_params, good, ctx.config.policy)
        try:
            momentum = outermod.momentum_of(v.parent_state, v.parent_params)
        except ValueError as e:
            raise LedgerError(f"round {v.round}: the parent's outer-optimizer state: {e}") from None
        tensors, _ = outermod.step(v.parent_params, update, momentum, outer)
        result = mergemod.MergeResult(tensors, selected, {**rinfo, "outer": outer.rule})
    # The metadata names the workers whose updates are in the merge (Krum selects a subset).
    meta = ctx.merge_meta(v.round, v.parent.digest, rule, result.selected)
    if ctx.config.compress.on:
        meta.update(_next_registry(v, result.selected))
    data = checkpoint.encode(result.params, meta)
    info = {**result.info, "selected": list(result.selected)}
    return Merged(data, sha256_bytes(data), len(data), False, workers, info)


def _registry(v_round: int, meta: dict) -> dict:
    from node.training import compress as cz

    try:
        return cz.registry(meta)
    except cz.CompressionError as e:
        raise LedgerError(f"round {v_round}: {e}") from None


def _next_registry(v: Verified, selected: list[str]) -> dict[str, str]:
    """The merge's error-feedback registry: the parent's, with each merged worker's
    committed next error feedback (a worker left out keeps its earlier one)."""
    from node.training import compress as cz

    reg = _registry(v.round, v.parent_meta)
    chosen = {w.lower() for w in selected}
    for rep in v.reports:
        if rep.worker.lower() in chosen and rep.meta is not None:
            reg[rep.worker.lower()] = cz.meta_refs(rep.meta)[1]
    return cz.registry_meta(reg)


def settlement_of(ctx: JobContext, v: Verified) -> Settlement:
    """The credits and slashes round ``v.round``'s verdicts give (``ledger.protocol.settlement``)."""
    judged = [settlemod.Judged(rep.worker, int(rep.verdict), rep.metrics or {}, rep.contribution.num_samples)
              for rep in v.reports]
    return settlemod.settle(ctx.ledger.round_workers(ctx.job_id, v.round, ctx.info), judged)


def judge_round(ctx: JobContext, r: int, parent_digest: bytes, submissions, *, replay: str = "policy",
                stages: set[str] | None = None, threads: int | None = None, decided=None) -> RoundOutcome:
    """Verify, merge and settle round ``r``; ``decided``: its committees' decisions."""
    v = verify_submissions(ctx, r, parent_digest, submissions, replay=replay, stages=stages, threads=threads,
                           decided=decided)
    merged = merge_accepted(ctx, v, [rep.verdict == Verdict.ACCEPTED for rep in v.reports])
    return RoundOutcome(v, merged, settlement_of(ctx, v))
