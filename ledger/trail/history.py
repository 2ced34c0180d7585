"""A job's history rebuilt from the chain alone: events (paginated log queries) plus
view calls. No local state of any party is read, so anyone can run it.

Used by ``ledger history`` and by the audit, which re-checks what this returns.

``worker_table`` sums up each contributor from the same record: rounds accepted,
rejections with their verdicts, accepted samples, the finalized settlements' credit,
and the wei the contract paid, slashed and returned (its events).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from ledger.digest import short, to_hex
from ledger.tables import text_table
from ledger.units import eth
from ledger.protocol.verdicts import describe


@dataclass
class RoundHistory:
    round: int
    info: object                          # contract.RoundInfo (the view)
    submissions: list = field(default_factory=list)   # contract.Submission, in submission order
    proposals: list = field(default_factory=list)     # contract.Proposal (a reveal), in chain order
    events: list = field(default_factory=list)        # every ChainEvent of this round
    commits: list = field(default_factory=list)       # contract.Commit, in chain order
    ballots: list = field(default_factory=list)       # contract.Vote (verification committees), in chain order

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
    # DP jobs: rounds a worker trained on its data -> the epsilon it spent (the job's accountant,
    # node.training.dp.epsilon_spent; set by whoever read the config: this module imports no torch)
    epsilon_of: Callable[[int], float] | None = None


def load_history(ledger, job_id: int) -> JobHistory:
    job = ledger.job(job_id)
    events = ledger.events(job_id)
    subs = ledger.submissions(job_id)
    props = ledger.proposals(job_id)
    commits = ledger.commits(job_id)
    ballots = ledger.committee_votes(job_id)
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
                ballots=[b for b in ballots if b.round == r],
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
        for b in rh.ballots:
            out.append(f"  {_when(getattr(b, 'timestamp', 0))}  vote     {b.aggregator}  {_ballot_text(b.ballot)}  "
                       f"tx {b.tx_hash}")
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
    out.append("")
    out.extend(render_workers(h))
    return "\n".join(out)


def _ballot_text(raw: bytes) -> str:
    from ledger.protocol.committee import decode_ballot

    try:
        entries = decode_ballot(raw)
    except ValueError as e:
        return f"malformed ballot ({e})"
    return "[" + " ".join(f"#{e.index} {describe(e.verdict)}" for e in entries) + "]"


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
        "workers": [row.to_dict() for row in worker_table(h)],
    }
    return json.dumps(doc, default=conv, indent=2)


# ------------------------------------------------------------------ contributors


@dataclass
class WorkerRow:
    """One contributor of a job: what its contributions got in the finalized rounds and
    what the contract paid it. Amounts are wei.

    A worker's row counts only rounds that finalized (a skipped round judges no one);
    an aggregator's row (``aggregator``) has only its reward share in ``paid``."""

    address: str
    aggregator: bool = False
    index: int | None = None          # the worker's index in the job (``getWorkers``); None: not a worker
    submitted: int = 0                # submissions, in any round
    accepted_rounds: list[int] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)   # (round, verdict code)
    samples: int = 0                  # num_samples of the accepted contributions
    credit: int = 0                   # the finalized settlements' credits
    staked: int = 0                   # StakePosted
    paid: int = 0                     # RewardPaid
    slashed: int = 0                  # Slashed
    returned: int = 0                 # StakeReturned, and the refund of WorkerLeft
    left: bool = False                # left an open job (WorkerLeft)
    epsilon: float | None = None      # DP jobs: the epsilon its submitted rounds spent of its data's privacy

    @property
    def role(self) -> str:
        return "aggregator" if self.aggregator else "worker"

    @property
    def accepted(self) -> int:
        return len(self.accepted_rounds)

    @property
    def rejections(self) -> list[str]:
        """``round N: <verdict label>``, one per rejected contribution."""
        return [f"round {r}: {describe(v)}" for r, v in self.rejected]

    def to_dict(self) -> dict:
        return {
            "address": self.address, "role": self.role, "index": self.index, "submitted": self.submitted,
            "accepted": self.accepted, "accepted_rounds": list(self.accepted_rounds),
            "rejected": [{"round": r, "verdict": v, "label": describe(v)} for r, v in self.rejected],
            "rejections": self.rejections, "samples": self.samples, "credit": self.credit,
            "staked": self.staked, "paid": self.paid, "slashed": self.slashed, "returned": self.returned,
            "left": self.left, "epsilon_spent": self.epsilon,
        }


def contributor_rows(workers: Sequence[str], contributions: Iterable[tuple[int, str, int | None, int]],
                     credits: Mapping[int, Sequence[int]] | None = None, events: Iterable = ()) -> list[WorkerRow]:
    """The rows of ``worker_table`` from their parts.

    ``workers``: the job's workers in index order. ``contributions``: (round, worker,
    finalized verdict or None where the round judged none, num_samples), one per
    submission. ``credits``: round -> the finalized settlement's credits, indexed like
    ``workers`` (a round's worker indexes are a prefix of the job's: joiners are
    appended). ``events``: the job's ``ChainEvent``s, for what was paid, slashed and
    returned. One row per worker in index order, then any other submitter, then the
    aggregators that were paid."""
    rows: dict[str, WorkerRow] = {}
    paid_aggs: dict[str, WorkerRow] = {}

    def worker(addr: str) -> WorkerRow:
        key = str(addr).lower()
        if key not in rows:
            rows[key] = WorkerRow(address=str(addr))
        return rows[key]

    for n, w in enumerate(workers):
        row = worker(w)
        if row.index is None:
            row.index = n
    for r, w, verdict, num_samples in contributions:
        row = worker(w)
        row.submitted += 1
        if verdict is None:
            continue
        if int(verdict) == 0:
            row.accepted_rounds.append(int(r))
            row.samples += int(num_samples)
        else:
            row.rejected.append((int(r), int(verdict)))
    for r, cs in sorted((credits or {}).items()):
        for n, c in enumerate(cs):
            if c and n < len(workers):
                worker(workers[n]).credit += int(c)
    for e in events:
        a = e.args
        if e.name == "RewardPaid":
            account = str(a["account"])
            if a.get("aggregator"):
                row = paid_aggs.setdefault(account.lower(), WorkerRow(address=account, aggregator=True))
            else:
                row = worker(account)
            row.paid += int(a["amount"])
        elif e.name == "Slashed":
            worker(a["worker"]).slashed += int(a["amount"])
        elif e.name == "StakePosted":
            worker(a["worker"]).staked += int(a["amount"])
        elif e.name == "StakeReturned":
            worker(a["worker"]).returned += int(a["amount"])
        elif e.name == "WorkerLeft":
            row = worker(a["worker"])
            row.returned += int(a.get("refund", 0))
            row.left = True
    return list(rows.values()) + list(paid_aggs.values())


def worker_table(h: JobHistory) -> list[WorkerRow]:
    """One row per worker of the job (index order; a submitter the job does not list
    after them), then one per aggregator the contract paid: rounds accepted, rejections
    with their verdicts, accepted samples, credit, and the wei paid, slashed and
    returned. Verdicts and credits are the finalized ones (the quorum's reveal)."""
    contributions = []
    credits = {}
    for rh in h.rounds:
        quorum = rh.quorum_proposals()
        verdicts = list(quorum[0].verdicts) if quorum else []
        for n, s in enumerate(rh.submissions):
            i = getattr(s, "index", n)
            contributions.append((rh.round, s.worker, verdicts[i] if 0 <= i < len(verdicts) else None, s.num_samples))
        if quorum:
            settlement = getattr(quorum[0], "settlement", None)
            credits[rh.round] = tuple(settlement.credits) if settlement is not None else ()
    rows = contributor_rows(h.job.workers, contributions, credits, h.events)
    if h.epsilon_of is not None:
        for row in rows:
            if not row.aggregator:
                # every submitted round counts: its checkpoint is public whatever its verdict
                row.epsilon = h.epsilon_of(row.submitted)
    return rows


def _percent(bps: int) -> str:
    return f"{int(bps) / 100:g}%"


def render_workers(h: JobHistory) -> list[str]:
    """The contributors' table of ``ledger history``: the lines after the timeline.
    Amounts in ETH, exact."""
    j = h.job
    rows = worker_table(h)
    terms = []
    reward = int(getattr(j, "reward", 0) or 0)
    stake = int(getattr(j, "worker_stake", 0) or 0)
    if reward:
        terms.append(f"reward {eth(reward)} ETH, {_percent(getattr(j, 'aggregator_bps', 0))} to the quorum's aggregators")
    else:
        terms.append("no reward")
    if stake:
        terms.append(f"stake {eth(stake)} ETH per worker, {_percent(getattr(j, 'slash_bps', 0))} slashed for cheating")
    pool_back = sum(int(e.args.get("amount", 0)) for e in h.events if e.name == "PoolReturned")
    if pool_back:
        terms.append(f"{eth(pool_back)} ETH returned to the creator")
    out = ["contributors  (" + "; ".join(terms) + ")"]
    if not rows:
        return out + ["  no workers"]
    dp = h.epsilon_of is not None
    headers = ["address", "role", "submitted", "accepted", "samples", "credit", "paid ETH", "slashed ETH",
               "returned ETH"] + (["epsilon spent"] if dp else []) + ["rejected"]
    body = []
    for r in rows:
        if r.aggregator:
            body.append([r.address, r.role, "-", "-", "-", "-", eth(r.paid), "-", "-"] + (["-"] if dp else []) + [""])
            continue
        body.append([r.address, r.role + (" (left)" if r.left else ""), r.submitted, r.accepted, r.samples,
                     r.credit, eth(r.paid), eth(r.slashed), eth(r.returned)]
                    + ([epsilon_text(r.epsilon)] if dp else []) + [", ".join(r.rejections) or "-"])
    out.extend("  " + line for line in text_table(headers, body, right=set(range(2, 10 if dp else 9))))
    return out


def epsilon_text(eps: float | None) -> str:
    return "-" if eps is None else f"{eps:.3g}"


# ------------------------------------------------------------------ following a job


def event_line(e) -> str:
    """One chain event of a job as a line of ``ledger history --follow``."""
    when = time.strftime("%H:%M:%S", time.gmtime(e.timestamp)) if e.timestamp else "--:--:--"
    a = e.args
    who = a.get("worker") or a.get("aggregator") or a.get("account") or ""
    r = f"round {a['round']}" if "round" in a else ""
    detail = ""
    if e.name == "UpdateSubmitted":
        detail = f"{a.get('numSamples')} samples"
    elif e.name == "BatchSubmitted":
        from ledger.ethereum.contract import batch_entries

        try:
            workers = ", ".join(w for w, *_ in batch_entries(bytes(a.get("entries", b""))))
        except ValueError as err:
            workers = f"malformed entries ({err})"
        detail = f"relayer {a.get('relayer')}, submissions of {workers}"
    elif e.name == "ProposalRevealed":
        detail = "verdicts [" + " ".join(describe(v) for v in bytes(a.get("verdicts", b""))) + "]"
    elif e.name == "RoundSkipped":
        detail = {1: "too few submissions", 2: "no quorum"}.get(int(a.get("reason", 0)), "")
    elif "amount" in a:
        detail = f"{eth(a['amount'])} ETH"
    parts = [when, f"block {e.block}", e.name, r, str(who), detail, f"tx {e.tx_hash}"]
    return "  ".join(p for p in parts if p)


def follow(ledger, job_id: int, poll: float = 1.0, stop: threading.Event | None = None):
    """Yield each of the job's events once, in chain order, as it lands; return once the
    job has completed and its last event was yielded (or ``stop`` is set). A chain that
    rolled back and mined an event again yields it again, at its new place."""
    seen: set = set()
    stop = stop or threading.Event()
    while not stop.is_set():
        done = ledger.job(job_id).completed
        for e in ledger.events(job_id):
            key = (e.block, e.log_index, e.tx_hash)
            if key not in seen:
                seen.add(key)
                yield e
        if done:
            return
        stop.wait(poll)
