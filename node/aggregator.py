"""The aggregator: when a round closes, verify every contribution, merge the
accepted ones deterministically, publish the merge and propose it on chain with one
verdict per contribution — one transaction. The contract finalizes the round when
k aggregators proposed the same outcome; aggregators never talk to each other.

Crash-safe: the chain says whether we proposed (``hasProposed``); the merged
checkpoint is kept locally until it is on chain, so a restart after kill -9
publishes and proposes the very same bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ledger import atomic
from ledger.cid import cid_to_chain
from ledger.digest import short, to_hex
from ledger.errors import ContractReverted, StorageError, TransactionFailed
from ledger.verdicts import Verdict, describe

from .faults import crash_point
from .rounds import judge_round, replay_seed
from .task import JobContext

log = logging.getLogger("ledger.aggregator")


@dataclass
class AggregatorOptions:
    poll: float = 1.0
    replay: str = "policy"
    stages: set[str] | None = None
    max_rounds: int | None = None


class Aggregator:
    def __init__(self, ctx: JobContext, address: str, state_dir: Path, options: AggregatorOptions | None = None):
        self.ctx = ctx
        self.address = address
        if address.lower() not in [a.lower() for a in ctx.info.aggregators]:
            from ledger.errors import LedgerError

            raise LedgerError(f"{address} is not an aggregator of job {ctx.job_id}; its aggregators are {', '.join(ctx.info.aggregators)}")
        self.dir = Path(state_dir) / f"job-{ctx.job_id}" / address.lower()
        self.opt = options or AggregatorOptions()

    def run(self) -> int:
        """Judge every round until the job completes, riding out chain outages."""
        return self.ctx.ride_out(self._loop, log)

    def _loop(self) -> int:
        ctx, proposed, said = self.ctx, 0, None
        log.info("aggregator %s on job %d (quorum %d of %d)", self.address, ctx.job_id, ctx.info.quorum, len(ctx.info.aggregators))
        while True:
            info = ctx.refresh()
            if info.completed:
                log.info("job %d is complete; final model %s", ctx.job_id, to_hex(info.current_parent))
                return proposed
            r = info.current_round
            rd = ctx.ledger.round(ctx.job_id, r)
            # Open first: no one proposes for an open round, and this is the check that runs
            # once a block for the whole of the training, so it should be the one read.
            if not ctx.round_closed(rd):
                ctx.wait(self.opt.poll, until=rd.deadline)
                continue
            if ctx.ledger.has_proposed(ctx.job_id, r, self.address):
                if said != (r, "wait"):
                    log.info("round %d: proposed; waiting for the quorum", r)
                    said = (r, "wait")
                ctx.wait(self.opt.poll)
                continue
            if rd.submissions < info.min_submissions:
                self._close_below_minimum(r, rd)
                continue
            self.handle_round(r, rd)
            proposed += 1
            if self.opt.max_rounds is not None and proposed >= self.opt.max_rounds:
                return proposed

    def _close_below_minimum(self, r: int, rd) -> None:
        log.info("round %d: closed with %d submissions, below the minimum %d: the parent is kept", r, rd.submissions, self.ctx.info.min_submissions)
        try:
            self.ctx.ledger.close_round(self.ctx.job_id, r)
        except ContractReverted as e:
            # Another aggregator closed it first, or the chain's clock is a second behind ours.
            log.debug("closeRound: %s", e)
            time.sleep(self.opt.poll)

    def handle_round(self, r: int, rd) -> None:
        ctx = self.ctx
        state_file = self.dir / f"round-{r}.json"
        state = atomic.read_json(state_file, {}) or {}
        subs = ctx.ledger.submissions(ctx.job_id, r)
        # Judge only events that match the round's state (a rollback between the two reads
        # would have us judge erased submissions), and re-judge when the block seeding the
        # validation batches and the replay sample is no longer the one judged with.
        if ctx.ledger.commitment_of(ctx.job_id, r, subs) != rd.commitment:
            log.info("round %d: the submission events do not match the round's commitment (the chain moved or "
                     "rolled back); re-reading", r)
            return
        seed = to_hex(replay_seed(ctx.ledger, subs))
        if state.get("commitment") != to_hex(rd.commitment) or state.get("seed") != seed or "verdicts" not in state:
            t0 = time.perf_counter()
            out = judge_round(ctx, r, rd.parent, subs, replay=self.opt.replay, stages=self.opt.stages)
            for s, v, rep in zip(subs, out.verdicts, out.verified.reports):
                log.info("round %d: %s %s %s%s", r, s.worker, describe(v), short(s.digest), f" ({rep.reason})" if v else "")
            self._pin_verified(subs, out.verified.reports)
            m = out.merged
            if m.merged_bytes is not None:
                obj = ctx.store.put(m.merged_bytes)
                ctx.store.pin(obj.cid)
                merged_cid = obj.cid
            else:
                merged_cid = out.verified.parent.cid
                log.info("round %d: fewer than %d accepted contributions: proposing to keep the parent", r, ctx.info.min_submissions)
            state = {
                "commitment": to_hex(rd.commitment),
                "seed": seed,
                "verdicts": out.verdicts,
                "merged_digest": to_hex(m.digest),
                "merged_cid": merged_cid,
                "merged_size": m.size,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            atomic.write_json(state_file, state)
            crash_point("aggregator:after-publish")
        digest = bytes.fromhex(state["merged_digest"][2:])
        try:
            receipt = ctx.ledger.propose(
                ctx.job_id, r, rd.commitment, state["verdicts"], digest, cid_to_chain(state["merged_cid"]), state["merged_size"]
            )
        except TransactionFailed as e:
            if not isinstance(e, ContractReverted):
                # Mined but failed without a decodable reason: the chain says whether we
                # proposed; the next poll proposes again if not.
                log.warning("round %d: proposal failed (%s); retrying", r, e)
                time.sleep(max(self.opt.poll, 1.0))
                return
            if e.name in ("CommitmentMismatch", "WrongRound", "VerdictCountMismatch"):
                log.warning("round %d: the chain no longer shows the round as judged (%s: rolled back?); re-reading", r, e.name)
                return
            if e.name in ("AlreadyProposed", "RoundAlreadyFinalized"):
                log.info("round %d: %s (a restart after proposing, or the quorum was already reached)", r, e.name)
                return
            if e.name == "RoundNotClosed":
                # Our clock ran ahead of the chain's: the next poll proposes again.
                log.info("round %d: the chain's clock has not passed the deadline yet; retrying", r)
                time.sleep(max(self.opt.poll, 1.0))
                return
            raise
        h = receipt["transactionHash"]
        log.info("round %d: proposed merge %s (%s) with %d accepted in tx %s (verify+merge %.1fs)",
                 r, state["merged_cid"], short(digest), sum(1 for v in state["verdicts"] if v == 0),
                 h.to_0x_hex() if hasattr(h, "to_0x_hex") else h, state["seconds"])


    def _pin_verified(self, subs, reports) -> None:
        """Keep what this aggregator fetched and judged retrievable, so an accepted contribution
        stays available to auditors after its worker unpins it (the merge is pinned too)."""
        ctx, cap = self.ctx, self.ctx.config.policy.max_checkpoint_bytes
        for s, rep in zip(subs, reports):
            if rep.verdict in (Verdict.UNAVAILABLE, Verdict.INTEGRITY) or s.size > cap:
                continue
            try:
                ctx.store.pin(ctx.cid(s.cid, s.size))
            except StorageError as e:
                log.warning("could not pin %s's contribution: %s", s.worker, e)


def run_aggregator(ledger, store, job_id: int, address: str, state_dir: Path, options: AggregatorOptions | None = None) -> int:
    ctx = JobContext.load(ledger, store, job_id)
    return Aggregator(ctx, address, state_dir, options).run()
