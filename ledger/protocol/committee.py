"""Verification committees: which aggregators judge which contribution in depth, and
what their votes on chain decide.

A job whose policy sets ``committee_size`` c > 0 (fewer than its aggregators) has every
contribution of a round judged in depth (validation loss, segment replay) by c of its m
aggregators, not by all of them:

- **The draw.** The seed is the round's replay seed: the hash of a block mined after
  the round closed (``node.verification.rounds.replay_seed``), so no worker knows its
  judges while it trains, and every party computes the same committees from the chain
  alone. It shuffles the aggregators (ranked by ``keccak256(seed, jobId, round,
  aggregator)``) and the contributions (by ``keccak256(seed, jobId, round, index)``); the
  k-th contribution in that order gets the c aggregators at positions kc .. kc+c-1
  (mod m) of theirs. Each committee is thus a uniformly random set of c aggregators,
  and every aggregator sits on nc/m committees, rounded up or down: the round waits for
  the busiest aggregator, and independent lotteries would load some with twice the
  mean.
- **The vote.** Each member sends one ``vote`` transaction for the round carrying a
  ballot: (submission index, verdict, credit) for each contribution it was drawn for.
  What counts is a function of the chain's record: an aggregator's first vote of the
  round, mined by the vote deadline, its entries for contributions it was drawn for.
- **The decision.** A contribution is decided by the first (verdict, credit) pair that
  ``quorum`` members voted for (in chain order), a majority of the committee by
  default. An undecided one (members absent or split) is judged in depth by every
  aggregator after the deadline, as without committees, so a silent committee costs
  time, never the contribution.

Every aggregator still runs the cheap checks (fetch, digest, format, norms) on every
contribution, which merging needs anyway, and takes the decided verdicts and credits
for the rest; the merge, the commit-reveal quorum and the audit are unchanged. The
audit re-verifies everything and so catches a committee that voted against the
verification (README, "Verification committees").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from typing import Iterable, Mapping, Sequence

from eth_abi import encode as abi_encode
from eth_utils import keccak

ENTRY_BYTES = 11   # index (2), verdict (1), credit (8), big-endian
MAX_CREDIT = 2**64 - 1


@dataclass(frozen=True)
class Entry:
    """One contribution's vote: its submission index, verdict byte and credit."""

    index: int
    verdict: int
    credit: int


@dataclass(frozen=True)
class Decision:
    """What a committee decided for one contribution, and who carried it."""

    verdict: int
    credit: int
    voters: tuple[str, ...]


@dataclass
class Tally:
    """A round's committees and what their counted votes decided."""

    committees: dict[int, tuple[str, ...]]                  # submission index -> members
    decided: dict[int, Decision] = field(default_factory=dict)
    voted: dict[str, int] = field(default_factory=dict)      # lower-case voter -> counted entries
    cast: set[str] = field(default_factory=set)              # lower-case: every aggregator that sent a vote
    ignored: list[str] = field(default_factory=list)         # why a vote (or entry) did not count

    def undecided(self) -> list[int]:
        return [i for i in sorted(self.committees) if i not in self.decided]

    def absent(self) -> dict[str, list[int]]:
        """Aggregator -> the contributions it was drawn for and cast no counted vote on."""
        out: dict[str, list[int]] = {}
        for i, members in sorted(self.committees.items()):
            for a in members:
                if a.lower() not in self.voted:
                    out.setdefault(a, []).append(i)
        return out


def effective_size(policy, n_aggregators: int) -> int:
    """The committee size a job's policy gives: 0 (off) or at least as many as aggregators
    means every aggregator judges every contribution."""
    c = int(getattr(policy, "committee_size", 0) or 0)
    return 0 if c <= 0 or c >= n_aggregators else c


def effective_quorum(policy, size: int) -> int:
    q = int(getattr(policy, "committee_quorum", 0) or 0)
    return q if q > 0 else size // 2 + 1


def _rank(seed: bytes, job_id: int, round: int, kind: str, value) -> bytes:
    return keccak(abi_encode(["bytes32", "uint256", "uint256", "string", kind], [bytes(seed), int(job_id), int(round),
                                                                                 kind, value]))


def committees(seed: bytes, job_id: int, round: int, n_submissions: int, aggregators: Sequence[str],
               size: int) -> dict[int, tuple[str, ...]]:
    """Submission index -> the ``size`` aggregators drawn to judge it (in job order)."""
    m = len(aggregators)
    if not 0 < size <= m:
        raise ValueError(f"a committee of {size} out of {m} aggregator(s)")
    shuffled = sorted(aggregators, key=lambda a: _rank(seed, job_id, round, "address", a))
    order = sorted(range(n_submissions), key=lambda i: _rank(seed, job_id, round, "uint256", i))
    out = {}
    for k, i in enumerate(order):
        chosen = {shuffled[(k * size + j) % m].lower() for j in range(size)}
        out[i] = tuple(a for a in aggregators if a.lower() in chosen)
    return out


def encode_ballot(entries: Iterable[Entry]) -> bytes:
    out = bytearray()
    for e in sorted(entries, key=lambda e: e.index):
        if not (0 <= e.index < 2**16 and 0 <= e.verdict < 256 and 0 <= e.credit <= MAX_CREDIT):
            raise ValueError(f"ballot entry out of range: {e}")
        out += e.index.to_bytes(2, "big") + bytes([e.verdict]) + e.credit.to_bytes(8, "big")
    return bytes(out)


def decode_ballot(raw: bytes) -> list[Entry]:
    """The entries of a ballot from chain (anyone's bytes): ValueError unless well formed
    (whole entries, indexes strictly increasing)."""
    raw = bytes(raw)
    if not raw or len(raw) % ENTRY_BYTES:
        raise ValueError(f"a ballot is a non-empty multiple of {ENTRY_BYTES} bytes, got {len(raw)}")
    out, last = [], -1
    for k in range(0, len(raw), ENTRY_BYTES):
        e = Entry(int.from_bytes(raw[k:k + 2], "big"), raw[k + 2], int.from_bytes(raw[k + 3:k + 11], "big"))
        if e.index <= last:
            raise ValueError(f"ballot indexes must increase, got {e.index} after {last}")
        last = e.index
        out.append(e)
    return out


def tally(votes: Iterable, comms: Mapping[int, Sequence[str]], quorum: int, deadline: int) -> Tally:
    """What a round's votes decide. ``votes``: the round's ``CommitteeVoted`` events in chain
    order (``ledger.ethereum.contract.Vote``: aggregator, ballot, timestamp). Counted: the first vote
    of each aggregator mined at or before ``deadline`` (a chain timestamp), and in it the
    entries for contributions that aggregator was drawn for; a pair decides once
    ``quorum`` members voted for it, and the first pair to get there stands."""
    t = Tally({i: tuple(m) for i, m in comms.items()})
    members = {i: {a.lower() for a in m} for i, m in comms.items()}
    counts: dict[int, dict[tuple[int, int], list[str]]] = {}
    for v in votes:
        who = v.aggregator.lower()
        t.cast.add(who)
        if who in t.voted:
            t.ignored.append(f"{v.aggregator}: a second vote (only the first counts)")
            continue
        if int(v.timestamp) > int(deadline):
            t.ignored.append(f"{v.aggregator}: voted at {v.timestamp}, after the vote deadline {deadline}")
            continue
        t.voted[who] = 0      # its one vote, even when malformed
        try:
            entries = decode_ballot(v.ballot)
        except ValueError as e:
            t.ignored.append(f"{v.aggregator}: malformed ballot ({e})")
            continue
        for e in entries:
            if who not in members.get(e.index, ()):
                t.ignored.append(f"{v.aggregator}: voted on #{e.index} without being drawn for it")
                continue
            t.voted[who] += 1
            voters = counts.setdefault(e.index, {}).setdefault((e.verdict, e.credit), [])
            voters.append(v.aggregator)
            if e.index not in t.decided and len(voters) >= quorum:
                t.decided[e.index] = Decision(e.verdict, e.credit, tuple(voters))
    return t


def all_dishonest(m: int, f: int, c: int, q: int | None = None) -> float:
    """The chance that a drawn committee of ``c`` out of ``m`` aggregators, ``f`` of them
    dishonest, holds at least ``q`` dishonest members (a majority by default): enough to
    decide a contribution against the verification."""
    q = c // 2 + 1 if q is None else q
    total = comb(m, c)
    return sum(comb(f, k) * comb(m - f, c - k) for k in range(q, c + 1)) / total if total else 0.0
