"""A job's history rebuilt from the chain alone: events (paginated log queries) plus
view calls. No local state of any party is read, so anyone can run it.

Used by ``ledger history`` and by the audit, which re-checks what this returns.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .digest import short, to_hex
from .verdicts import describe


@dataclass
class RoundHistory:
    round: int
    info: object                          # contract.RoundInfo (the view)
    submissions: list = field(default_factory=list)   # contract.Submission, in submission order
    proposals: list = field(default_factory=list)     # contract.Proposal (a reveal), in chain order
    events: list = field(default_factory=list)        # every ChainEvent of this round
    commits: list = field(default_factory=list)       # contract.Commit, in chain order

    @property
    def status(self) -> str:
        return self.info.status

    def quorum_proposals(self) -> list:
        """The proposals that voted for the finalized outcome."""
        if self.info.status != "finalized":
            return []
        return [p for p in self.proposals if p.outcome == self.info.outcome]

    def votes(self) -> dict:
        """Reveals per outcome."""
        out: dict = {}
        for p in self.proposals:
            out[p.outcome] = out.get(p.outcome, 0) + 1
        return out


@dataclass
class JobHistory:
    job: object                           # contract.JobInfo
    events: list
    rounds: list[RoundHistory]


def load_history(ledger, job_id: int) -> JobHistory:
    job = ledger.job(job_id)
    events = ledger.events(job_id)
    subs = ledger.submissions(job_id)
    props = ledger.proposals(job_id)
    commits = ledger.commits(job_id)
    last = job.current_round if not job.completed else job.num_rounds
    rounds = []
    for r in range(1, last + 1):
        rounds.append(
            RoundHistory(
                round=r,
                info=ledger.round(job_id, r),
                submissions=[s for s in subs if s.round == r],
                proposals=[p for p in props if p.round == r],
                events=[e for e in events if e.args.get("round") == r],
                commits=[c for c in commits if c.round == r],
            )
        )
    return JobHistory(job=job, events=events, rounds=rounds)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def render_timeline(h: JobHistory) -> str:
    """The human-readable timeline: who did what, when, with tx hashes and CIDs."""
    j = h.job
    out = [
        f"job {j.job_id}  owner {j.owner}",
        f"  config  {j.config_cid}  sha256 {to_hex(j.config_digest)}",
        f"  genesis {j.genesis_cid}  sha256 {to_hex(j.genesis_digest)}",
        f"  {len(j.workers)} workers, {len(j.aggregators)} aggregators, quorum {j.quorum}, "
        f"{j.num_rounds} rounds of {j.round_duration}s, min {j.min_submissions} submissions, "
        f"proposal window {j.proposal_window}s to commit + {j.proposal_window}s to reveal",
        f"  status: {'completed' if j.completed else f'round {j.current_round} in progress'}",
    ]
    for rh in h.rounds:
        i = rh.info
        out.append("")
        out.append(f"round {rh.round}  [{i.status}]  parent {short(i.parent)}  deadline {_when(i.deadline)} UTC")
        for n, s in enumerate(rh.submissions):
            out.append(
                f"  {_when(getattr(s, 'timestamp', 0))}  submit   #{n} {s.worker}  {short(s.digest)}  "
                f"{s.cid}  {s.num_samples} samples  tx {s.tx_hash}"
            )
        for c in rh.commits:
            out.append(f"  {_when(getattr(c, 'timestamp', 0))}  commit   {c.aggregator}  {short(c.commit_hash)}  tx {c.tx_hash}")
        for p in rh.proposals:
            verdicts = " ".join(describe(v) for v in p.verdicts)
            agree = ""
            if i.status == "finalized":
                agree = "  (quorum)" if p.outcome == i.outcome else "  (DISSENT)"
            elif i.skip_reason == "no-quorum":
                agree = "  (no quorum)"
            out.append(
                f"  {_when(getattr(p, 'timestamp', 0))}  reveal   {p.aggregator}  merged {short(p.merged_digest)}  "
                f"[{verdicts}]{agree}  tx {p.tx_hash}"
            )
        if i.status == "finalized":
            out.append(f"  finalized: merged {i.merged_cid}  sha256 {to_hex(i.merged_digest)}")
        elif i.status == "skipped":
            out.append("  skipped: " + skip_text(rh, j) + "; parent kept")
        elif i.status == "closed":
            out.append(f"  closed: {i.commits} commits (until {_when(i.commit_deadline)} UTC), {i.proposals} reveals "
                       f"(until {_when(i.reveal_deadline)} UTC)")
    if j.completed:
        out.append("")
        out.append(f"final model sha256 {to_hex(j.current_parent)}")
    return "\n".join(out)


def skip_text(rh: RoundHistory, job) -> str:
    """Why a round was skipped, in words."""
    i = rh.info
    if i.skip_reason == "no-quorum":
        votes = sorted(rh.votes().values(), reverse=True)
        return (f"no quorum of {job.quorum} by the end of the proposal window ({i.commits} commits, "
                f"{i.proposals} reveals, largest agreement {votes[0] if votes else 0})")
    return f"{i.submissions} submissions, below the minimum {job.min_submissions}"


def _closing_event(rh: RoundHistory):
    """The event that ended the round (RoundFinalized or RoundSkipped), if any."""
    for e in rh.events:
        if e.name in ("RoundFinalized", "RoundSkipped"):
            return e
    return None


def to_json(h: JobHistory) -> str:
    """The history as one JSON document. Digests are ``0x`` hex; CIDs are CID strings
    (``Qm…`` / ``b…``; null where nothing was merged); each round names the transaction
    and block that finalized (or skipped) it."""

    def conv(o):
        if isinstance(o, (bytes, bytearray)):
            return to_hex(bytes(o)) if len(o) == 32 else "0x" + bytes(o).hex()
        if hasattr(o, "__dataclass_fields__"):
            return {k: getattr(o, k) for k in o.__dataclass_fields__}
        if hasattr(o, "to_0x_hex"):
            return o.to_0x_hex()
        return str(o)

    def merged(obj) -> dict:
        d = conv(obj)
        d["merged_cid"] = obj.merged_cid or None
        return d

    def round_doc(rh: RoundHistory) -> dict:
        closing = _closing_event(rh)
        return {
            "round": rh.round,
            "info": merged(rh.info),
            "finalized_tx": closing.tx_hash if closing else None,
            "finalized_block": closing.block if closing else None,
            "finalized_at": closing.timestamp if closing else None,
            "closed_by": closing.name if closing else None,
            "submissions": [conv(s) for s in rh.submissions],
            "commits": [conv(c) for c in rh.commits],
            "proposals": [{**merged(p), "verdict_labels": [describe(v) for v in p.verdicts]} for p in rh.proposals],
        }

    j = h.job
    doc = {
        "job": j,
        "rounds": [round_doc(rh) for rh in h.rounds],
    }
    return json.dumps(doc, default=conv, indent=2)
