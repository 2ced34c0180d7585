"""A running job as plain data, for ``ledger watch`` (the live page) and its /metrics.

``view(history, now, ...)`` turns a ``ledger.trail.history.JobHistory`` (the chain's events
and views, nothing else) into one JSON-ready dict: the rounds as a timeline, each
contribution's state (submitted, disclosed, committee votes, each aggregator's
verdict, the finalized verdict with its reason), each party's last action and lag,
the loss the contributions report by round, credit and payouts, and ``health``.

Health flags a party that has not done what the round asks of it while others have
(for ``late_after`` seconds), or whose deadline is ``late_after`` seconds away: a
worker that has not submitted, an aggregator that has not committed or revealed. It
reads only the chain's record, so anyone can compute it and nothing new is on chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ledger.digest import short, to_hex
from ledger.trail.history import JobHistory, RoundHistory, skip_text, worker_table
from ledger.units import eth
from ledger.protocol.phase import commits_closed
from ledger.protocol.verdicts import describe

DEFAULT_LATE_AFTER = 30.0


@dataclass(frozen=True)
class Late:
    party: str
    role: str
    late_for: str        # what it has not done: "submit round 2"
    deadline: int        # unix time it must be done by
    why: str             # in words

    def to_dict(self) -> dict:
        return {"party": self.party, "role": self.role, "late_for": self.late_for, "deadline": self.deadline,
                "why": self.why}


def phase(rh: RoundHistory, now: float, aggregators: int) -> str:
    """Where a round stands by the clock: open, commit, reveal, or its final status.
    The view says "open" until a transaction closes it; the deadline closes it too, and
    the commits close once every aggregator committed or at the commit deadline."""
    i = rh.info
    if i.status in ("finalized", "skipped"):
        return i.status
    if i.status == "open" and not i.all_submitted and now <= i.deadline:
        return "open"
    commits_over = i.commits >= 1 and commits_closed(i.commits, aggregators, i.commit_deadline, now)
    return "reveal" if commits_over else "commit"


def health(h: JobHistory, now: float, late_after: float = DEFAULT_LATE_AFTER) -> list[Late]:
    """The parties late for what the current round asks of them, before its deadline."""
    j = h.job
    if j.completed or not h.rounds:
        return []
    rh = h.rounds[-1]
    i, r = rh.info, rh.round
    where = phase(rh, now, len(j.aggregators))
    out: list[Late] = []

    def flag(parties, role, what, deadline, done_at):
        """Flag each of ``parties``: others did it ``late_after`` seconds ago, or the deadline is near."""
        if now > deadline:
            return
        near = deadline - now <= late_after
        others = done_at is not None and now - done_at >= late_after
        if not (near or others):
            return
        why = (f"{int(deadline - now)}s left before the deadline" if near
               else f"others did it {int(now - done_at)}s ago")
        for p in parties:
            out.append(Late(p, role, f"{what} round {r}", int(deadline), why))

    if where == "open":
        done = {s.worker.lower() for s in rh.submissions}
        left = {str(e.args.get("worker", "")).lower() for e in h.events if e.name == "WorkerLeft"}
        waiting = [w for w in j.workers if w.lower() not in done and w.lower() not in left]
        first = min((_ts(s) for s in rh.submissions), default=None)
        flag(waiting, "worker", "submit", i.deadline, first)
    elif where == "commit" and i.submissions >= j.min_submissions:
        done = {c.aggregator.lower() for c in rh.commits}
        waiting = [a for a in j.aggregators if a.lower() not in done]
        first = min((_ts(c) for c in rh.commits), default=None)
        flag(waiting, "aggregator", "commit", i.commit_deadline, first)
    elif where == "reveal":
        done = {p.aggregator.lower() for p in rh.proposals}
        waiting = [c.aggregator for c in rh.commits if c.aggregator.lower() not in done]
        first = min((_ts(p) for p in rh.proposals), default=None)
        flag(waiting, "aggregator", "reveal", i.reveal_deadline, first)
    return out


def _ts(x) -> int:
    return int(getattr(x, "timestamp", 0) or 0)


def parties(h: JobHistory, now: float) -> list[dict]:
    """Each worker and aggregator: its last action on chain, how long ago, and how many
    rounds behind the current one it last acted. Submissions come from the history's
    decoded ``Submission``s, so one sent in a relay's batch counts as its worker's."""
    acts = []
    for rh in h.rounds:
        acts += [(_ts(s), s.worker, "submitted", rh.round) for s in rh.submissions]
        acts += [(_ts(c), c.aggregator, "committed", rh.round) for c in rh.commits]
        acts += [(_ts(p), p.aggregator, "revealed", rh.round) for p in rh.proposals]
        acts += [(_ts(b), b.aggregator, "voted", rh.round) for b in rh.ballots]
        acts += [(int(e.timestamp or 0), str(e.args.get("worker", "")), "disclosed", rh.round)
                 for e in rh.events if e.name == "Disclosed"]
    last: dict[str, dict] = {}
    for at, who, verb, r in sorted(acts, key=lambda a: (a[0], a[3])):
        last[who.lower()] = {"action": f"{verb} round {r}", "round": r, "at": at}
    current = h.job.current_round
    out = []
    for role, addrs in (("worker", h.job.workers), ("aggregator", h.job.aggregators)):
        for a in addrs:
            seen = last.get(a.lower())
            out.append({
                "address": a, "role": role,
                "last_action": seen["action"] if seen else "nothing yet",
                "last_at": seen["at"] if seen else None,
                "idle_seconds": int(now - seen["at"]) if seen and seen["at"] else None,
                "rounds_behind": (current - seen["round"]) if seen else current,
            })
    return out


def contributions(rh: RoundHistory, disclosed: set[str], losses: dict) -> list[dict]:
    """Each submission of a round: its state, the verdicts each aggregator revealed and the committees' votes."""
    from ledger.protocol.committee import decode_ballot

    final = rh.quorum_proposals()
    final_verdicts = list(final[0].verdicts) if final else []
    votes: dict[int, list] = {}
    for b in rh.ballots:
        try:
            entries = decode_ballot(b.ballot)
        except ValueError:
            continue
        for e in entries:
            votes.setdefault(e.index, []).append({"aggregator": b.aggregator, "verdict": describe(e.verdict)})
    out = []
    for n, s in enumerate(rh.submissions):
        idx = getattr(s, "index", n)
        verdicts = [{"aggregator": p.aggregator, "verdict": describe(p.verdicts[idx]) if idx < len(p.verdicts) else "-",
                     "code": int(p.verdicts[idx]) if idx < len(p.verdicts) else None} for p in rh.proposals]
        if idx < len(final_verdicts):
            code = int(final_verdicts[idx])
            state, reason = ("accepted", "") if code == 0 else ("rejected", describe(code))
        elif rh.info.status == "skipped":
            state, reason = "not judged", "round skipped"
        elif verdicts:
            state, reason = "verdicts in", ""
        elif s.worker.lower() in disclosed:
            state, reason = "disclosed", ""
        else:
            state, reason = "submitted", ""
        out.append({"index": idx, "worker": s.worker, "digest": short(s.digest), "cid": s.cid,
                    "samples": s.num_samples, "at": _ts(s), "disclosed": s.worker.lower() in disclosed,
                    "verdicts": verdicts, "votes": votes.get(idx, []), "state": state, "reason": reason,
                    "loss": losses.get(bytes(s.digest))})
    return out


def view(h: JobHistory, now: float | None = None, late_after: float = DEFAULT_LATE_AFTER,
         losses: dict | None = None) -> dict:
    """The page's whole state as JSON-ready data. ``losses``: contribution digest ->
    the training loss its checkpoint's metadata reports (``loss_end``), where fetched."""
    now = time.time() if now is None else now
    losses = losses or {}
    j = h.job
    rounds = []
    for rh in h.rounds:
        i = rh.info
        disclosed = {str(e.args.get("worker", "")).lower() for e in rh.events if e.name == "Disclosed"}
        subs = contributions(rh, disclosed, losses)
        accepted_losses = [c["loss"] for c in subs if c["state"] == "accepted" and c["loss"] is not None]
        rounds.append({
            "round": rh.round, "status": i.status, "phase": phase(rh, now, len(j.aggregators)), "deadline": int(i.deadline),
            "commit_deadline": int(i.commit_deadline), "reveal_deadline": int(i.reveal_deadline),
            "parent": short(i.parent), "submissions": subs, "commits": [c.aggregator for c in rh.commits],
            "reveals": [p.aggregator for p in rh.proposals],
            "merged": i.merged_cid or None, "merged_digest": to_hex(i.merged_digest) if i.status == "finalized" else None,
            "skip": skip_text(rh, j) if i.status == "skipped" else None,
            "loss": (sum(accepted_losses) / len(accepted_losses)) if accepted_losses else None,
        })
    funded = bool(int(getattr(j, "reward", 0) or 0) or int(getattr(j, "worker_stake", 0) or 0))
    money = [{**row.to_dict(), "paid_eth": eth(row.paid), "slashed_eth": eth(row.slashed)}
             for row in worker_table(h)] if funded else []
    return {
        "job": {"id": j.job_id, "owner": j.owner, "rounds": j.num_rounds, "current_round": j.current_round,
                "completed": bool(j.completed), "quorum": j.quorum, "workers": len(j.workers),
                "aggregators": len(j.aggregators), "round_duration": j.round_duration,
                "proposal_window": j.proposal_window, "reward_eth": eth(getattr(j, "reward", 0) or 0),
                "funded": funded},
        "rounds": rounds,
        "parties": parties(h, now),
        "late": [x.to_dict() for x in health(h, now, late_after)],
        "money": money,
        "late_after": late_after,
    }
