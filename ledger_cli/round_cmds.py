"""`ledger round status` and `ledger round close`: anyone can see what a round waits for,
and anyone can close a round that can no longer move the model.

The contract's ``closeRound`` is open to every account: a round past its deadline with
fewer than ``minSubmissions`` submissions (TooFewSubmissions), or one whose proposal
window ended without a quorum (NoQuorum), is skipped and the job moves on with the
parent kept. Aggregators do this themselves; these commands let a worker or an
observer do it when no aggregator is left to.

Times are the chain's: the pending block's timestamp, the clock ``closeRound`` will be
judged by. Whether a close would be accepted is asked of the chain itself (an
``eth_call`` of ``closeRound`` against the pending block), never guessed; the words
around it come from ``getRound``/``getJob``. No torch, no ``node``: these start fast.

A refusal is one line on stderr and exit code 2, as for a usage error; 0 on success;
1 for the environment (chain unreachable, no account, no funds).
"""

from __future__ import annotations

import json
import time

from ledger.digest import to_hex
from ledger.errors import ContractReverted, LedgerError
from ledger.ethereum.party import open_party
from ledger.protocol import phase

from .common import add_command, add_group, add_job_arg, int_in

MAX_ROUND = 2**32 - 1


class Refused(LedgerError):
    """The chain would refuse (or refused) the request; nothing was changed."""

    exit_code = 2


def register(sub) -> None:
    s = add_group(sub, "round", "see what a round waits for, and close (skip) a stuck round: any account", examples=(
        "ledger round status --job 1",
        "ledger --account observer round close --job 1 --round 3",
    ))
    p = add_command(
        s, "status", "what a round waits for (submissions, commits, reveals, deadlines) and whether a close "
                     "would be accepted now", _status,
        "ledger round status --job 1 --round 2 --json",
        description=(
            "Reads the round from the chain: its submissions (n of the job's workers, the minimum that\n"
            "lets it merge), its deadline, the aggregators' commits and reveals with the commit and\n"
            "reveal deadlines (UTC, and how far from the chain's clock), what it waits for, and\n"
            "whether `ledger round close` would be accepted now (asked of the chain, not guessed).\n"
            "Needs no account. Default round: the job's current one."
        ),
    )
    add_job_arg(p)
    p.add_argument("--round", type=int_in(1, MAX_ROUND), default=None, metavar="R",
                   help="the round (default: the job's current round)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add_command(
        s, "close", "skip a round that can no longer move the model (the contract's closeRound; any account)", _close,
        "ledger --account observer round close --job 1 --round 3",
        description=(
            "Sends closeRound(job, round): the round is skipped and the parent kept when its deadline\n"
            "passed with fewer submissions than the job's minimum, or when its proposal window ended\n"
            "without a quorum (the reveal deadline passed, or the commit phase is over and every commit\n"
            "is revealed). The chain decides; when it refuses, the reason is one line and the exit code\n"
            "2 (nothing is sent, no gas is spent). Any funded account may call it."
        ),
    )
    add_job_arg(p)
    p.add_argument("--round", type=int_in(1, MAX_ROUND), required=True, metavar="R",
                   help="the round to close: the job's current round (see `ledger round status`)")


# ---------------------------------------------------------------------------- time


def chain_now(chain) -> int:
    """The chain's clock: the pending block's timestamp (the one a transaction sent now is
    judged by), else the latest block's."""
    for tag in ("pending", "latest"):
        try:
            ts = chain.w3.eth.get_block(tag)["timestamp"]
            if ts:
                return int(ts)
        except Exception:
            continue
    return int(time.time())


def utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ts))) if ts else "-"


def relative(ts: int, now: int) -> str:
    """``in 37s`` / ``12s ago`` / ``now``."""
    d = int(ts) - int(now)
    if d == 0:
        return "now"
    return f"in {d}s" if d > 0 else f"{-d}s ago"


def when(ts: int, now: int) -> str:
    return f"{utc(ts)} ({relative(ts, now)})" if ts else "-"


# ---------------------------------------------------------------------------- reading


def _read(ledger, job_id: int, round_: int | None):
    """(job, round info, round number): UnknownJob and a round that does not exist are refusals."""
    try:
        job = ledger.job(job_id)
    except ContractReverted as e:
        raise Refused(_unknown_job(ledger, job_id)) if e.name == "UnknownJob" else e
    r = job.current_round if round_ is None else int(round_)
    if r > job.num_rounds:
        raise Refused(f"job {job_id} has {job.num_rounds} round(s): there is no round {r}")
    return job, ledger.round(job_id, r), r


def _unknown_job(ledger, job_id: int) -> str:
    try:
        n = ledger.job_count()
    except LedgerError:
        n = None
    known = f"jobs 1..{n}" if n else "no jobs yet"
    return f"job {job_id} does not exist on the contract {ledger.address} ({known})"


def waits_for(job, rd, now: int) -> str:
    """What the round waits for, in words (the order the aggregator reasons in)."""
    if rd.status == "finalized":
        return f"nothing: finalized, merged {to_hex(rd.merged_digest)} with {rd.accepted} accepted contribution(s)"
    if rd.status == "skipped":
        why = "too few submissions" if rd.skip_reason == "too-few-submissions" else "no quorum"
        return f"nothing: skipped ({why}), the parent kept"
    if rd.status == "none":
        return f"round {job.current_round} to end first (not opened yet)"
    nw, na = _expected(rd, job), len(job.aggregators)
    if rd.submissions < nw and now <= rd.deadline:
        then = ("then anyone may close it (too few submissions)" if rd.submissions < job.min_submissions
                else "then the aggregators' proposals")
        return f"submissions ({rd.submissions} of {nw}) until the deadline {relative(rd.deadline, now)}; {then}"
    if rd.submissions < job.min_submissions:
        return (f"nothing: closed with {rd.submissions} submission(s), below the minimum {job.min_submissions}; "
                "anyone may close (skip) it")
    if not phase.commits_closed(rd.commits, na, rd.commit_deadline, now):
        return (f"the aggregators' commits ({rd.commits} of {na}) until the commit deadline "
                f"{relative(rd.commit_deadline, now)}; then their reveals")
    if not phase.quorum_out_of_reach(rd.commits, rd.proposals, na, rd.commit_deadline, rd.reveal_deadline, now):
        return (f"reveals ({rd.proposals} of {rd.commits} commits) until the reveal deadline "
                f"{relative(rd.reveal_deadline, now)}: {job.quorum} matching reveal(s) finalize it")
    return (f"nothing can bring a quorum of {job.quorum} any more ({rd.commits} commits, {rd.proposals} reveals): "
            "anyone may close (skip) it")


def explain(err: ContractReverted, ledger, job_id: int, r: int, now: int | None = None) -> str:
    """One line saying why the chain refuses ``closeRound(job_id, r)``."""
    name, a = err.name, err.args_dict
    if name == "UnknownJob":
        return _unknown_job(ledger, job_id)
    try:
        job = ledger.job(job_id)
        rd = ledger.round(job_id, r)
    except LedgerError:
        return f"the chain refuses to close round {r} of job {job_id}: {name}"
    now = chain_now(ledger.chain) if now is None else now
    where = f"round {r} of job {job_id}"
    if name == "RoundAlreadyFinalized":
        return f"{where} is already finalized (merged {to_hex(rd.merged_digest)}): there is nothing to close"
    if name == "JobFinished":
        if rd.status == "skipped":
            return f"{where} was already skipped ({rd.skip_reason}) and the job is completed"
        return f"job {job_id} is completed: every round is finalized or skipped (final model {to_hex(job.current_parent)})"
    if name == "WrongRound":
        current = int(a.get("current", job.current_round))
        if r < current:
            if rd.status == "skipped":
                return f"{where} was already skipped ({rd.skip_reason}); the current round is {current}"
            return f"{where} is already {rd.status}; the current round is {current}"
        if r > job.num_rounds:
            return f"job {job_id} has {job.num_rounds} round(s): there is no round {r}"
        return f"{where} has not opened yet; the current round is {current}"
    if name == "RoundNotClosed":
        deadline = int(a.get("deadline", rd.deadline))
        if rd.submissions < job.min_submissions:
            return (f"{where} is still open: {rd.submissions} of {_expected(rd, job)} submitted, below the minimum "
                    f"{job.min_submissions}, and its deadline {when(deadline, now)} has not passed; "
                    "it can be skipped only after the deadline")
        return (f"{where} is still open: {rd.submissions} of {_expected(rd, job)} submitted until the deadline "
                f"{when(deadline, now)}; then the aggregators propose")
    if name == "ProposalWindowOpen":
        reveal = int(a.get("revealDeadline", rd.reveal_deadline))
        na = len(job.aggregators)
        if not phase.commits_closed(rd.commits, na, rd.commit_deadline, now):
            return (f"{where}: the commit phase is still open ({rd.commits} of {na} aggregators committed) until "
                    f"{when(rd.commit_deadline, now)}; a close is accepted after the reveal deadline {when(reveal, now)}, "
                    "or once every commit is revealed after the commit phase")
        return (f"{where}: the reveal phase is still open ({rd.proposals} of {rd.commits} commits revealed, quorum "
                f"{job.quorum}) until {when(reveal, now)}; a close is accepted after that, or once every commit is revealed")
    shown = ", ".join(f"{k}={v}" for k, v in a.items())
    return f"the chain refuses to close {where}: {name}({shown})"


def probe_close(ledger, job_id: int, r: int) -> ContractReverted | None:
    """None if ``closeRound(job_id, r)`` would be accepted in the pending block, else the
    chain's refusal. A read: nothing is sent."""
    fn = ledger.contract.functions.closeRound(int(job_id), int(r))
    try:
        ledger.chain.call(fn, f"close job {job_id} round {r}", block_identifier="pending")
    except ContractReverted as e:
        return e
    return None


# ---------------------------------------------------------------------------- commands


def _expected(rd, job) -> int:
    """The workers a round waits for: the chain's count for the round (an open job's
    workers who left, or joined for a later round, are not among them), else the roster."""
    return rd.expected or len(job.workers)


def _status(args, settings) -> int:
    ledger, _, _ = open_party(settings, need_account=False)
    job, rd, r = _read(ledger, args.job, args.round)
    now = chain_now(ledger.chain)
    refusal = probe_close(ledger, args.job, r)
    close = {"accepted": refusal is None, "refusal": None, "reason": ""}
    if refusal is None:
        close["skips_as"] = "too-few-submissions" if rd.submissions < job.min_submissions else "no-quorum"
        close["reason"] = f"a close now would skip round {r} ({close['skips_as']}), the parent kept"
    else:
        close["refusal"] = refusal.name
        close["reason"] = explain(refusal, ledger, args.job, r, now)
    nw, na = _expected(rd, job), len(job.aggregators)
    if args.json:
        doc = {
            "job": args.job, "round": r, "status": rd.status, "current_round": job.current_round,
            "num_rounds": job.num_rounds, "completed": job.completed, "now": now, "now_utc": utc(now),
            "submissions": rd.submissions, "workers": nw, "min_submissions": job.min_submissions,
            "deadline": rd.deadline, "deadline_utc": utc(rd.deadline), "deadline_in_s": rd.deadline - now,
            "commits": rd.commits, "aggregators": na, "quorum": job.quorum,
            "commit_deadline": rd.commit_deadline, "commit_deadline_utc": utc(rd.commit_deadline),
            "commit_deadline_in_s": rd.commit_deadline - now,
            "reveals": rd.proposals, "reveal_deadline": rd.reveal_deadline,
            "reveal_deadline_utc": utc(rd.reveal_deadline), "reveal_deadline_in_s": rd.reveal_deadline - now,
            "skip_reason": rd.skip_reason, "parent": to_hex(rd.parent),
            "merged_digest": to_hex(rd.merged_digest) if rd.status == "finalized" else None,
            "waits_for": waits_for(job, rd, now), "close": close,
        }
        print(json.dumps(doc, indent=2))
        return 0
    state = "completed" if job.completed else f"current round {job.current_round} of {job.num_rounds}"
    lines = [
        f"job {args.job} round {r} [{rd.status}]  ({state}; chain time {utc(now)})",
        f"  submissions  {rd.submissions}/{nw} (minimum {job.min_submissions})  deadline {when(rd.deadline, now)}",
        f"  commits      {rd.commits}/{na}  commit deadline {when(rd.commit_deadline, now)}",
        f"  reveals      {rd.proposals}/{rd.commits} (quorum {job.quorum})  reveal deadline "
        f"{when(rd.reveal_deadline, now)}",
    ]
    if rd.status == "finalized":
        lines.append(f"  merged       {to_hex(rd.merged_digest)}  {rd.merged_cid}")
    lines.append(f"  waits for    {waits_for(job, rd, now)}")
    lines.append(f"  close now    {'accepted' if refusal is None else 'refused'}: {close['reason']}")
    print("\n".join(lines))
    return 0


def _close(args, settings) -> int:
    ledger, _, account = open_party(settings)
    job, rd, r = _read(ledger, args.job, args.round)
    try:
        receipt = ledger.close_round(args.job, r)
    except ContractReverted as e:
        raise Refused(explain(e, ledger, args.job, r)) from None
    after = ledger.round(args.job, r)
    from ledger.ethereum.chain import tx_hash_of

    job = ledger.job(args.job)
    nxt = "the job is completed" if job.completed else f"round {job.current_round} is open"
    print(f"round {r} of job {args.job} skipped ({after.skip_reason or 'closed'}), the parent "
          f"{to_hex(after.parent)} kept; {nxt}; tx {tx_hash_of(receipt)} from {account.address}")
    return 0
