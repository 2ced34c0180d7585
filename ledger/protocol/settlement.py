"""Who contributed what, and what it is paid: credit, slashes and payouts.

One module for what an aggregator reveals and what the audit recomputes:

- ``credit_of``: what an accepted contribution is worth. One unit for being accepted,
  plus one per ``CREDIT_QUANTUM`` nats it lowers the validation loss below its parent's
  (the loss the verification measured anyway, on the round's drawn validation
  batches); the accepted sample count where the job's verification measures no loss.
- ``CHEATING``: the rejections that slash a stake. Each one shows that training did not
  happen as declared (a transcript that does not replay or does not chain, a window proof
  that fails, a byte copy, a sample count that is not the job's). Rejections an honest
  worker can meet (its storage down, a loss just over the bound, a snapshot not revealed
  in time, a stale parent) never slash.
- ``settle``: the ``Settlement`` (credits per worker index, the slashed bitmap) a round's
  verdicts give.
- ``expected_payments``: the contract's payouts, recomputed from a job's events and its
  finalized settlements, so the audit compares them with the ``RewardPaid``,
  ``Slashed``, ``StakeReturned`` and ``PoolReturned`` events.

Why a coarse quantum: honest verifiers measure the same validation loss to about 1e-7
across CPU kernel paths and thread counts, not bit for bit, and the credit is part of
the outcome the quorum must agree on byte for byte. Two honest aggregators split only
when a loss difference falls within ~1e-7 of a multiple of the quantum: with 1e-3 that is
about 2e-4 per contribution (README "Credit"). The audit accepts a revealed credit that a
loss within ``AUDIT_LOSS_SLACK`` of its own measurement gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from eth_abi import encode as abi_encode
from eth_utils import keccak

from ledger.protocol.verdicts import Verdict

CREDIT_QUANTUM = 1e-3  # nats of validation loss per credit unit
AUDIT_LOSS_SLACK = 1e-5  # nats: how far another machine's loss may lie from the quorum's
BPS = 10_000

CHEATING = frozenset({
    Verdict.REPLAY,
    Verdict.TRANSCRIPT,
    Verdict.WINDOWS_PROOF,
    Verdict.SEALED,
    Verdict.COMPRESSION,
    Verdict.DUPLICATE,
    Verdict.SAMPLE_COUNT,
})



@dataclass(frozen=True)
class Settlement:
    """What a proposal settles besides the merge (the contract's ``Settlement``): one
    credit per worker index of the round (0 unless its contribution was accepted) and
    the bitmap of worker indexes it slashes."""

    credits: tuple[int, ...] = ()
    slashed: int = 0

    def to_abi(self) -> tuple:
        return ([int(c) for c in self.credits], int(self.slashed))

    def digest(self) -> bytes:
        """keccak256(abi.encode(uint64[] credits, uint128 slashed)): the outcome's last part."""
        return keccak(abi_encode(["uint64[]", "uint128"], [[int(c) for c in self.credits], int(self.slashed)]))

    def slashed_indexes(self) -> list[int]:
        return [i for i in range(128) if (self.slashed >> i) & 1]


def credit_of(verdict: int, metrics: Mapping[str, Any] | None, num_samples: int, slack: float = 0.0) -> int:
    """The credit of one contribution (0 unless accepted). ``slack`` shifts the measured
    gain (the audit's tolerance for another machine's low bits)."""
    if int(verdict) != Verdict.ACCEPTED:
        return 0
    m = metrics or {}
    if m.get("committee_credit") is not None:
        return int(m["committee_credit"])   # its verification committee measured it (ledger.protocol.committee)
    if m.get("val_loss") is None or m.get("parent_val_loss") is None:
        return max(1, int(num_samples))
    gain = float(m["parent_val_loss"]) - float(m["val_loss"]) + slack
    if not math.isfinite(gain):
        return 1
    return 1 + int(math.floor(max(0.0, gain) / CREDIT_QUANTUM))


def credit_range(verdict: int, metrics: Mapping[str, Any] | None, num_samples: int) -> tuple[int, int]:
    """The credits an honest verifier may have revealed for a contribution this machine measured."""
    return (credit_of(verdict, metrics, num_samples, -AUDIT_LOSS_SLACK),
            credit_of(verdict, metrics, num_samples, AUDIT_LOSS_SLACK))


@dataclass(frozen=True)
class Judged:
    """What settling needs of one judged contribution."""

    worker: str
    verdict: int
    metrics: Mapping[str, Any]
    num_samples: int


def settle(round_workers: Sequence[str], judged: Iterable[Judged]) -> Settlement:
    """The settlement of a round whose worker indexes are ``round_workers`` (every worker
    index the round has: named, then joined before it opened)."""
    index = {w.lower(): i for i, w in enumerate(round_workers)}
    credits = [0] * len(round_workers)
    slashed = 0
    for j in judged:
        i = index.get(j.worker.lower())
        if i is None:
            raise ValueError(f"{j.worker} submitted but is not a worker of the round")
        if int(j.verdict) in CHEATING:
            slashed |= 1 << i
        else:
            credits[i] = credit_of(j.verdict, j.metrics, j.num_samples)
    return Settlement(tuple(credits), slashed)


def round_workers(workers: Sequence[str], joined: Iterable[tuple[str, int]], round: int) -> list[str]:
    """The worker indexes of round ``round``: the job's workers (``getWorkers``, in index
    order) without those that joined for a later round (``joined``: (worker, fromRound))."""
    later = {w.lower() for w, first in joined if int(first) > int(round)}
    return [w for w in workers if w.lower() not in later]


# ------------------------------------------------------------------------ payouts


@dataclass(frozen=True)
class Payment:
    """One balance change the contract records: ``kind`` is the event's name."""

    kind: str  # RewardPaid / Slashed / StakeReturned / PoolReturned / WorkerLeft
    round: int  # 0 where the event has none
    account: str
    amount: int

    def key(self) -> tuple:
        return self.kind, self.round, self.account.lower(), int(self.amount)


PAYMENT_EVENTS = ("RewardPaid", "Slashed", "StakeReturned", "PoolReturned", "WorkerLeft")


def recorded_payments(events: Iterable[Any]) -> list[Payment]:
    """The payments a job's events record, in chain order (``ChainEvent``s)."""
    out = []
    for e in events:
        if e.name not in PAYMENT_EVENTS:
            continue
        a = e.args
        account = a.get("account") or a.get("worker") or a.get("creator")
        amount = a.get("amount", a.get("refund", 0))
        out.append(Payment(e.name, int(a.get("round") or 0), str(account), int(amount)))
    return out


def expected_payments(*, creator: str, workers: Sequence[str], aggregators: Sequence[str], quorum: int,
                      num_rounds: int, aggregator_bps: int, slash_bps: int, worker_stake: int,
                      events: Iterable[Any], finalized: Mapping[int, tuple[Settlement, Sequence[str]]]) -> list[Payment]:
    """What the contract must have paid, replayed from the job's events in chain order.

    ``finalized``: round -> (its finalized settlement, the aggregators whose reveal is the
    finalized outcome). ``workers``: every worker index of the job (``getWorkers``)."""
    pool = 0
    stakes: dict[str, int] = {}
    out: list[Payment] = []
    for e in events:
        a = e.args
        if e.name == "RewardFunded":
            pool += int(a["amount"])
        elif e.name == "StakePosted":
            stakes[a["worker"].lower()] = int(a["amount"])
        elif e.name == "WorkerLeft":
            out.append(Payment("WorkerLeft", 0, a["worker"], stakes.pop(a["worker"].lower(), 0)))
        elif e.name == "RoundFinalized":
            r = int(a["round"])
            if r not in finalized:
                continue
            s, agreeing = finalized[r]
            share = pool // (num_rounds - r + 1)
            if share:
                to_aggs = share * aggregator_bps // BPS
                to_workers = share - to_aggs
                total = sum(s.credits)
                if total:
                    for i, c in enumerate(s.credits):
                        amount = to_workers * c // total
                        if c and amount:
                            out.append(Payment("RewardPaid", r, workers[i], amount))
                            pool -= amount
                each = to_aggs // quorum
                if each:
                    agreeing_set = {x.lower() for x in agreeing}
                    for agg in aggregators:
                        if agg.lower() in agreeing_set:
                            out.append(Payment("RewardPaid", r, agg, each))
                            pool -= each
            for i in s.slashed_indexes():
                w = workers[i].lower()
                held = stakes.get(w, 0)
                cut = held * slash_bps // BPS
                if cut:
                    stakes[w] = held - cut
                    pool += cut
                    out.append(Payment("Slashed", r, workers[i], cut))
        elif e.name == "JobCompleted":
            if worker_stake:
                for w in workers:
                    held = stakes.pop(w.lower(), 0)
                    if held:
                        out.append(Payment("StakeReturned", 0, w, held))
            if pool:
                out.append(Payment("PoolReturned", 0, creator, pool))
                pool = 0
    return out
