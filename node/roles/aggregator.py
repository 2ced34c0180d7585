"""The aggregator: when a round closes, verify every contribution, merge the
accepted ones deterministically, publish the merge, and propose it on chain by
commit-reveal: first a commit (a hash of the outcome, a secret salt and our
address), then, once every aggregator committed or the commit deadline passed, the
reveal (verdicts, merge and salt). The contract finalizes the round when k reveals
agree; aggregators never talk to each other, and none can copy another's outcome,
because commits close before any outcome is public. A round whose proposal window
passes without a quorum is skipped (``closeRound``) and the job moves on.

Crash-safe: the chain says whether we committed and revealed (``commitOf``,
``hasProposed``); the verdicts, the merged checkpoint's identity and the salt are
written to the round's state file (under the data dir) before the commit is sent,
so a restart after kill -9 at any point commits or reveals the very same outcome.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ledger import atomic
from ledger.monitor import metrics
from ledger.protocol import committee, phase
from ledger.ethereum.chain import tx_hash_of
from ledger.protocol.settlement import Settlement
from ledger.digest import short, to_hex
from ledger.errors import ContractReverted, LedgerError, StorageError, StorageUnreachable, TransactionFailed
from ledger.services.procs import hold_lock
from ledger.protocol.settlement import credit_of
from ledger.protocol.verdicts import Verdict, describe

from node.training import transcript
from node.simulate.faults import crash_point
from node.verification.rounds import (DrawNotReady, committee_tally, disclosed_workers, drawn_artifacts, judge_round,
                                      replay_seed, verify_submissions)
from node.context import JobContext

log = logging.getLogger("ledger.aggregator")

# Errors that mean "our clock ran ahead of the chain's, or a peer's transaction is not
# mined yet": the next poll tries again.
_RETRY = ("RoundNotClosed", "CommitPhaseOpen", "ProposalWindowOpen", "DisclosuresPending")
# Errors that mean the round moved on without us.
_MOVED_ON = ("RoundAlreadyFinalized", "WrongRound", "JobFinished", "CommitmentMismatch", "VerdictCountMismatch")


@dataclass
class AggregatorOptions:
    poll: float = 1.0
    replay: str = "policy"
    stages: set[str] | None = None
    max_rounds: int | None = None
    threads: int | None = None        # torch threads for replays and validation


class Aggregator:
    def __init__(self, ctx: JobContext, address: str, state_dir: Path, options: AggregatorOptions | None = None):
        self.ctx = ctx
        self.address = address
        if address.lower() not in [a.lower() for a in ctx.info.aggregators]:
            raise LedgerError(f"{address} is not an aggregator of job {ctx.job_id}; its aggregators are {', '.join(ctx.info.aggregators)}")
        self.dir = ctx.state_dir(state_dir, address)
        self.opt = options or AggregatorOptions()
        self._said = None
        self._manifests: dict = {}  # checkpoint digest -> transcript manifest, for the reveal wait

    def _say(self, key, msg: str, *args) -> None:
        """Log a waiting state once, not on every poll."""
        if self._said != key:
            log.info(msg, *args)
            self._said = key

    def run(self) -> int:
        """Judge every round until the job completes, riding out chain outages and outages
        of its own storage (never judged against the workers: see ``JobContext.ride_out``).
        One process per aggregator and job: a second one is refused (``AlreadyRunning``)."""
        ctx = self.ctx
        self._lock = hold_lock(self.dir / "lock", f"aggregator {self.address} on job {ctx.job_id} of contract "
                                                  f"{ctx.ledger.address} (chain {ctx.ledger.chain_id})")
        return ctx.ride_out(self._loop, log)

    def _loop(self) -> int:
        ctx, proposed = self.ctx, 0
        log.info("aggregator %s on job %d (quorum %d of %d, proposal window %ds)", self.address, ctx.job_id,
                 ctx.info.quorum, len(ctx.info.aggregators), ctx.info.proposal_window)
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
            if rd.submissions < info.min_submissions:
                log.info("round %d: closed with %d submissions, below the minimum %d: the parent is kept",
                         r, rd.submissions, info.min_submissions)
                self._close(r)
                continue
            now = time.time()
            commits_closed = phase.commits_closed(rd.commits, len(info.aggregators), rd.commit_deadline, now)
            if phase.quorum_out_of_reach(rd.commits, rd.proposals, len(info.aggregators), rd.commit_deadline,
                                         rd.reveal_deadline, now):
                # Nothing can bring a quorum any more: every commit is revealed, or the
                # reveal deadline passed. Skipping keeps the parent and opens the next round.
                log.info("round %d: no quorum (%d commits, %d reveals) by the end of the proposal window: "
                         "skipping it, the parent is kept", r, rd.commits, rd.proposals)
                self._close(r)
                continue
            if ctx.ledger.has_proposed(ctx.job_id, r, self.address):
                self._say((r, "revealed"), "round %d: revealed; waiting for the quorum (reveal deadline %s)",
                          r, _when(rd.reveal_deadline))
                ctx.wait(self.opt.poll, until=rd.reveal_deadline + 1)
                continue
            committed = ctx.ledger.commit_of(ctx.job_id, r, self.address)
            if committed == b"\0" * 32 and not commits_closed and not self._reveals_in(r, rd):
                continue
            if committed == b"\0" * 32:
                if commits_closed:
                    self._say((r, "late"), "round %d: commits closed at %s before we committed: this round "
                              "goes on without us", r, _when(rd.commit_deadline))
                    ctx.wait(self.opt.poll, until=rd.reveal_deadline + 1)
                    continue
                self._commit(r, rd)
                continue
            if not commits_closed:
                self._say((r, "committed"), "round %d: committed; waiting for the other commits (%d of %d) "
                          "or the commit deadline %s", r, rd.commits, len(info.aggregators), _when(rd.commit_deadline))
                ctx.wait(self.opt.poll, until=rd.commit_deadline + 1)
                continue
            if self._reveal(r, rd, committed):
                proposed += 1
                metrics.round_done()
                if self.opt.max_rounds is not None and proposed >= self.opt.max_rounds:
                    return proposed
            else:
                ctx.wait(self.opt.poll, until=rd.reveal_deadline + 1)

    def _reveals_in(self, r: int, rd) -> bool:
        """True once the round can be judged: its draw is seeded (the block ``DRAW_DELAY``
        after the close is mined) and, in a job with a disclosure phase, every submitter
        disclosed on chain or the disclosure deadline passed by the chain's clock (so every
        aggregator judges "revealed in time" from the same record); then, for a while, the
        disclosed artifacts are given time to reach this node's storage (a local wait: it
        decides nothing against anyone). Until then, wait and say False."""
        ctx = self.ctx
        if not ctx.config.discloses:
            return True
        subs = ctx.ledger.submissions(ctx.job_id, r)
        if not subs:
            return True
        chain = ctx.ledger.chain
        try:
            replay_seed(ctx.ledger, ctx.job_id, r, subs)
        except DrawNotReady as e:
            self._say((r, "draw"), "round %d: closed; %s", r, e)
            chain.nudge()
            ctx.wait(self.opt.poll, until=time.time())
            return False
        if int(getattr(ctx.info, "disclosure_window", 0) or 0):
            now = chain.block_timestamp(chain.block_number())
            if rd.disclosed < rd.submissions and now <= rd.disclosure_deadline:
                self._say((r, "disclose"), "round %d: %d of %d submitter(s) disclosed; waiting for the rest until "
                          "the disclosure deadline %s", r, rd.disclosed, rd.submissions, _when(rd.disclosure_deadline))
                ctx.wait(self.opt.poll, until=rd.disclosure_deadline + 1)
                return False
            disclosed = disclosed_workers(ctx, r) or frozenset()
            # leave half the commit phase to judge and commit
            until = rd.commit_deadline - ctx.info.proposal_window // 2
        else:
            disclosed = None
            closed_at = chain.block_timestamp(subs[-1].block) if 0 < rd.expected <= len(subs) else rd.deadline
            until = closed_at + int(ctx.config.policy.reveal_window)
        if time.time() > until:
            return True
        missing = [(w, what) for w, what, cid in drawn_artifacts(ctx, r, subs, self._manifests)
                   if (disclosed is None or w in disclosed) and not ctx.store.reachable(cid)]
        if not missing:
            return True
        self._say((r, "reveal"), "round %d: waiting until %s for %d drawn artifact(s) to be revealed (%s)", r,
                  _when(until), len(missing), ", ".join(f"{w[:10]}'s {what}" for w, what in missing[:6]))
        time.sleep(self.opt.poll)
        return False

    # ---- the round's outcome, kept on disk ---------------------------------------------
    def _state_file(self, r: int) -> Path:
        return self.dir / f"round-{r}.json"

    def _judge(self, r: int, rd) -> dict:
        """Verify and merge round ``r`` (or read what we decided before a restart). The
        salt is drawn here and written with the outcome before any commit is sent: the
        reveal after a restart then matches the commit."""
        ctx = self.ctx
        state_file = self._state_file(r)
        state = atomic.read_json(state_file, {}) or {}
        subs = ctx.ledger.submissions(ctx.job_id, r)
        # Judge only events that match the round's state (a rollback between the two reads
        # would have us judge erased submissions), and re-judge when the block seeding the
        # validation batches and the segment draw is no longer the one judged with.
        if ctx.ledger.commitment_of(ctx.job_id, r, subs) != rd.commitment:
            log.info("round %d: the submission events do not match the round's commitment (the chain moved or "
                     "rolled back); re-reading", r)
            return None
        try:
            seed = to_hex(replay_seed(ctx.ledger, ctx.job_id, r, subs))
        except DrawNotReady as e:
            self._say((r, "draw"), "round %d: closed; %s", r, e)
            ctx.ledger.chain.nudge()
            time.sleep(min(self.opt.poll, 1.0))
            return None
        if (state.get("commitment") == to_hex(rd.commitment) and state.get("seed") == seed
                and "verdicts" in state and "credits" in state and "salt" in state):
            if self._served(rd, state):
                return state
            # Not committed yet (only _commit judges): judge again and store the merge again.
            log.warning("round %d: this aggregator's store no longer serves its merge %s; judging the round again",
                        r, state["merged_cid"])
        t0 = time.perf_counter()
        decided = self._committees(r, rd.parent, subs, bytes.fromhex(seed[2:]))
        if decided is None:
            return None
        out = judge_round(ctx, r, rd.parent, subs, replay=self.opt.replay, stages=self.opt.stages,
                          threads=self.opt.threads, decided=decided)
        metrics.judged(out.verified.reports)
        for s, v, rep in zip(subs, out.verdicts, out.verified.reports):
            why = v or "committee_credit" in (rep.metrics or {})
            log.info("round %d: %s %s %s%s", r, s.worker, describe(v), short(s.digest), f" ({rep.reason})" if why else "")
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
            "credits": list(out.settlement.credits),
            "decided": sorted(decided or ()),
            "slashed": out.settlement.slashed,
            "salt": "0x" + secrets.token_bytes(32).hex(),
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mb": peak_rss_mb(),
        }
        # The salt is a secret until the reveal: the file is ours alone.
        atomic.write_json(state_file, state, mode=0o600)
        crash_point("aggregator:after-publish")
        return state

    # ---- verification committees (ledger.protocol.committee) -------------------------------------
    def _committees(self, r: int, parent: bytes, subs, seed: bytes) -> dict | None:
        """In a job with verification committees: vote on the contributions this aggregator
        was drawn to judge, then wait for every committee's decision (or the vote
        deadline). Returns the decisions (index -> (verdict, credit)) for ``judge_round``,
        {} without committees, None while waiting."""
        ctx = self.ctx
        got = committee_tally(ctx, r, subs, seed)
        if got is None:
            return {}
        t, deadline = got
        chain, me = ctx.ledger.chain, self.address.lower()
        head = chain.block_timestamp(chain.block_number())
        mine = sorted(i for i, members in t.committees.items() if me in {a.lower() for a in members})
        if mine and head <= deadline and time.time() <= deadline and me not in t.cast:
            self._vote(r, parent, subs, mine)
            return None
        undecided = t.undecided()
        if undecided and head <= deadline:
            # Chain timestamps only grow: once a block past the deadline is mined, no vote
            # that counts can still come. On a dev node nobody else may mine one: nudge.
            self._say((r, "votes", len(t.decided)), "round %d: %d of %d contribution(s) decided by their committees; "
                      "waiting for the rest until the vote deadline %s", r, len(t.decided), len(t.committees),
                      _when(deadline))
            if time.time() > deadline:
                chain.nudge()
            ctx.wait(self.opt.poll, until=deadline + 1)
            return None
        for a, idx in sorted(t.absent().items()):
            log.warning("round %d: aggregator %s was drawn for contribution(s) %s and cast no vote that counts",
                        r, a, ", ".join(f"#{i}" for i in idx))
        if undecided:
            log.info("round %d: %d contribution(s) undecided by the vote deadline (%s): judging them in depth here",
                     r, len(undecided), ", ".join(f"#{i}" for i in undecided))
        return {i: (d.verdict, d.credit) for i, d in t.decided.items()}

    def _vote(self, r: int, parent: bytes, subs, mine: list[int]) -> None:
        """Judge in depth the contributions this aggregator's committees hold, and vote."""
        ctx = self.ctx
        log.info("round %d: drawn to judge %d of %d contribution(s) (%s)", r, len(mine), len(subs),
                 ", ".join(f"#{i}" for i in mine))
        v = verify_submissions(ctx, r, parent, subs, replay=self.opt.replay, stages=self.opt.stages,
                               threads=self.opt.threads, in_depth=frozenset(mine), copy_check=False)
        entries = []
        for rep in v.reports:
            if rep.index in mine:
                verdict = int(rep.verdict)
                entries.append(committee.Entry(rep.index, verdict, credit_of(verdict, rep.metrics,
                                                                             rep.contribution.num_samples)))
                log.info("round %d: votes %s on #%d of %s%s", r, describe(verdict), rep.index, rep.worker,
                         f" ({rep.reason})" if verdict else "")
        try:
            receipt = ctx.ledger.vote(ctx.job_id, r, committee.encode_ballot(entries))
        except TransactionFailed as e:
            self._failed("vote", r, e, ())
            return
        crash_point("aggregator:after-vote")
        log.info("round %d: voted on %d contribution(s) in tx %s", r, len(entries), tx_hash_of(receipt))

    def _served(self, rd, state: dict) -> bool:
        """Whether this aggregator's store serves the merge it proposes (a proposal that
        keeps the parent names the parent, which is not ours to serve)."""
        return state["merged_digest"] == to_hex(rd.parent) or self.ctx.store.has(state["merged_cid"])

    def _merge_again(self, r: int, rd, state: dict) -> bool:
        """We committed to a merge our store has lost since: judge the round again (the same
        inputs give the same bytes) and put the merge back before revealing it."""
        ctx = self.ctx
        log.warning("round %d: this aggregator's store no longer serves its merge %s; merging again before the reveal",
                    r, state["merged_cid"])
        subs = ctx.ledger.submissions(ctx.job_id, r)
        decided = self._committees(r, rd.parent, subs, bytes.fromhex(state["seed"][2:]))
        if decided is None:
            return False
        out = judge_round(ctx, r, rd.parent, subs, replay=self.opt.replay, stages=self.opt.stages,
                          threads=self.opt.threads, decided=decided)
        m = out.merged
        if (m.merged_bytes is None or to_hex(m.digest) != state["merged_digest"] or out.verdicts != state["verdicts"]
                or out.settlement != self._settlement(state)):
            log.error("round %d: judged again, the round gives another outcome than the one committed to: not revealed", r)
            return False
        obj = ctx.store.put(m.merged_bytes)
        ctx.store.pin(obj.cid)
        return obj.cid == state["merged_cid"]

    @staticmethod
    def _settlement(state: dict) -> Settlement:
        return Settlement(tuple(int(c) for c in state.get("credits", ())), int(state.get("slashed", 0)))

    def _outcome(self, state: dict) -> bytes:
        return self.ctx.ledger.outcome_of(bytes.fromhex(state["merged_digest"][2:]), state["merged_cid"],
                                          state["merged_size"], state["verdicts"], self._settlement(state))

    # ---- transactions ----------------------------------------------------------------
    def _commit(self, r: int, rd) -> None:
        ctx = self.ctx
        state = self._judge(r, rd)
        if state is None:
            return
        commit = ctx.ledger.commit_hash_of(self._outcome(state), bytes.fromhex(state["salt"][2:]), self.address)
        try:
            receipt = ctx.ledger.commit_proposal(ctx.job_id, r, commit)
        except TransactionFailed as e:
            self._failed("commit", r, e, ("AlreadyCommitted", "CommitPhaseClosed"))
            return
        crash_point("aggregator:after-commit")
        log.info("round %d: committed to merge %s with %d accepted in tx %s (verify+merge %.1fs, peak memory %s MB)",
                 r, state["merged_cid"], sum(1 for v in state["verdicts"] if v == 0), tx_hash_of(receipt), state["seconds"],
                 state.get("peak_rss_mb", "?"))

    def _reveal(self, r: int, rd, committed: bytes) -> bool:
        ctx = self.ctx
        state = atomic.read_json(self._state_file(r), {}) or {}
        if "salt" not in state or state.get("commitment") != to_hex(rd.commitment):
            self._say((r, "lost"), "round %d: we committed but our state file %s is gone: cannot reveal; the round "
                      "finalizes without us or is skipped", r, self._state_file(r))
            return False
        outcome, salt = self._outcome(state), bytes.fromhex(state["salt"][2:])
        if ctx.ledger.commit_hash_of(outcome, salt, self.address) != committed:
            self._say((r, "mismatch"), "round %d: our state file %s does not match our commit on chain: cannot "
                      "reveal", r, self._state_file(r))
            return False
        if not self._served(rd, state) and not self._merge_again(r, rd, state):
            return False
        digest = bytes.fromhex(state["merged_digest"][2:])
        try:
            receipt = ctx.ledger.reveal_proposal(ctx.job_id, r, rd.commitment, state["verdicts"], digest,
                                                 state["merged_cid"], state["merged_size"], salt,
                                                 self._settlement(state))
        except TransactionFailed as e:
            self._failed("reveal", r, e, ("AlreadyRevealed", "RevealPhaseOver"))
            return False
        log.info("round %d: revealed merge %s (%s) with %d accepted in tx %s", r, state["merged_cid"], short(digest),
                 sum(1 for v in state["verdicts"] if v == 0), tx_hash_of(receipt))
        return True

    def _close(self, r: int) -> None:
        try:
            receipt = self.ctx.ledger.close_round(self.ctx.job_id, r)
            log.info("round %d: skipped in tx %s", r, tx_hash_of(receipt))
        except TransactionFailed as e:
            self._failed("closeRound", r, e, ())

    def _failed(self, what: str, r: int, e: TransactionFailed, benign: tuple) -> None:
        if not isinstance(e, ContractReverted):
            # Mined but failed without a decodable reason: the chain says what happened;
            # the next poll tries again if needed.
            log.warning("round %d: %s failed (%s); retrying", r, what, e)
        elif e.name in _MOVED_ON or e.name in benign:
            log.info("round %d: %s: %s (a restart, a peer was first, or the round moved on)", r, what, e.name)
        elif e.name in _RETRY:
            log.info("round %d: %s: %s: the chain's clock is behind ours; retrying", r, what, e.name)
        else:
            raise e
        time.sleep(max(self.opt.poll, 1.0))


    def _pin_verified(self, subs, reports) -> None:
        """Keep, on this aggregator's own store, what it fetched and judged retrievable, so
        a contribution and the transcript snapshots and window bundles it replayed stay
        available to auditors after their worker unpins them or its IPFS node is gone
        (the merge is pinned too). A pin of something the store lacks fetches it first."""
        ctx, cap = self.ctx, self.ctx.config.policy.max_checkpoint_bytes
        # windows sealed to their verifiers travel in one envelope per worker (its disclosure names it)
        sealed = ({d.worker.lower(): d.sealed_cid for d in ctx.ledger.disclosures(ctx.job_id, subs[0].round)
                   if getattr(d, "sealed_cid", "")} if ctx.config.seals and subs else {})
        for s, rep in zip(subs, reports):
            if rep.verdict in (Verdict.UNAVAILABLE, Verdict.INTEGRITY) or s.size > cap:
                continue
            cids = [s.cid]
            try:
                manifest = transcript.read_manifest(rep.meta or {}, steps=ctx.config.train.steps,
                                                    segment_steps=ctx.config.policy.segment_steps,
                                                    max_size=transcript.snapshot_cap(ctx.config.policy),
                                                    private=ctx.config.data.private)
                replayed = rep.metrics.get("replay_segments", [])
                cids += [manifest.snapshots[i - 1].cid for i in _touched(replayed, len(manifest.snapshots))]
                if ctx.config.seals:
                    cids += [sealed[s.worker.lower()]] if replayed and s.worker.lower() in sealed else []
                else:
                    cids += [manifest.windows[i].cid for i in replayed if i < len(manifest.windows or ())]
            except transcript.TranscriptError:
                pass
            for cid in cids:
                try:
                    ctx.store.pin(cid)
                except StorageUnreachable:
                    raise       # before the outcome is written: judged again once the store answers
                except StorageError as e:
                    log.warning("could not pin %s of %s's contribution: %s", cid, s.worker, e)


def _touched(segments: list[int], n_snapshots: int) -> set[int]:
    """The snapshot boundaries (1..n) the replayed segments start or end at."""
    return {b for i in segments for b in (i, i + 1) if 1 <= b <= n_snapshots}


def peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def _when(ts: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + " UTC"




def run_aggregator(ledger, store, job_id: int, address: str, state_dir: Path, options: AggregatorOptions | None = None) -> int:
    ctx = JobContext.load_riding_out(ledger, store, job_id, log)
    return Aggregator(ctx, address, state_dir, options).run()
