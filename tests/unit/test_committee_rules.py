"""Verification committees' pure rules (``ledger.protocol.committee``): the draw, ballots from
anyone's bytes, and what the votes on chain decide. The roles that use them run in
``tests/e2e/test_committees.py``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import pytest

from ledger.protocol import committee as cm
from ledger.protocol.jobconfig import JobConfig

AGGS = [f"0x{i:040x}" for i in range(1, 6)]


@dataclass
class V:
    aggregator: str
    ballot: bytes
    timestamp: int = 100


def test_the_draw_is_a_function_of_the_seed_and_spreads_the_work():
    seed = bytes(range(32))
    comms = cm.committees(seed, 1, 1, 16, AGGS, 3)
    assert comms == cm.committees(seed, 1, 1, 16, AGGS, 3)
    assert all(len(m) == 3 and len(set(m)) == 3 and set(m) <= set(AGGS) for m in comms.values())
    assert all(list(m) == [a for a in AGGS if a in m] for m in comms.values())   # job order
    # another seed (round, job) draws other committees: nobody knows its judges before the seed
    assert comms != cm.committees(bytes(32), 1, 1, 16, AGGS, 3)
    assert comms != cm.committees(seed, 1, 2, 16, AGGS, 3)
    # every aggregator sits on 16 x 3 / 5 committees, rounded: the busiest is not twice the mean
    load = Counter(a for m in comms.values() for a in m)
    assert sorted(load.values()) in ([9, 9, 10, 10, 10],), load
    # and over many seeds each committee is any 3 of the 5 alike (10 sets, 1/10 each)
    sets = Counter(frozenset(m) for s in range(300) for m in cm.committees(s.to_bytes(32, "big"), 1, 1, 4, AGGS, 3).values())
    assert len(sets) == 10 and all(abs(n / 1200 - 0.1) < 0.03 for n in sets.values()), sets
    with pytest.raises(ValueError, match="a committee of 6 out of 5"):
        cm.committees(seed, 1, 1, 4, AGGS, 6)


def test_sizes_and_quorums_follow_the_policy():
    p = JobConfig().policy
    assert cm.effective_size(p, 5) == 0
    p.committee_size = 3
    assert cm.effective_size(p, 5) == 3 and cm.effective_size(p, 3) == 0   # c >= m: everyone judges everything
    assert cm.effective_quorum(p, 3) == 2
    p.committee_quorum = 3
    assert cm.effective_quorum(p, 3) == 3
    with pytest.raises(ValueError, match="exceeds committee_size"):
        JobConfig.from_bytes(JobConfig().to_bytes().replace(
            b'"krum_f":1', b'"committee_quorum":4,"committee_size":3,"vote_window":60,"krum_f":1'))
    # off by default, and then the config hashes as before committees existed
    assert b"committee" not in JobConfig().to_bytes()


def test_ballots_round_trip_and_hostile_bytes_are_refused():
    entries = [cm.Entry(0, 0, 12), cm.Entry(5, 9, 0), cm.Entry(65535, 255, 2**64 - 1)]
    raw = cm.encode_ballot(reversed(entries))
    assert len(raw) == 33 and cm.decode_ballot(raw) == entries
    for bad, words in [(b"", "non-empty"), (raw[:-1], "multiple"), (raw[11:22] + raw[:11], "increase"),
                       (raw[:11] * 2, "increase")]:
        with pytest.raises(ValueError, match=words):
            cm.decode_ballot(bad)
    for e in (cm.Entry(-1, 0, 0), cm.Entry(0, 256, 0), cm.Entry(0, 0, 2**64)):
        with pytest.raises(ValueError, match="out of range"):
            cm.encode_ballot([e])


def _ballot(*entries):
    return cm.encode_ballot(cm.Entry(*e) for e in entries)


def test_what_the_votes_decide():
    comms = {0: tuple(AGGS[:3]), 1: tuple(AGGS[2:]), 2: tuple(AGGS[1:4])}
    a0, a1, a2, a3, a4 = AGGS
    votes = [
        V(a0, _ballot((0, 0, 7))),
        V(a0, _ballot((0, 9, 0))),                      # a second vote: only the first counts
        V(a1, _ballot((0, 0, 7), (1, 0, 3), (2, 9, 0))),  # #1 is not a1's: ignored
        V(a2, _ballot((0, 9, 0), (1, 0, 3), (2, 0, 5))),
        V(a3, _ballot((1, 0, 4), (2, 9, 0)), timestamp=101),   # after the deadline: ignored
        V(a4, b"\x01"),                                  # malformed: its one vote is spent
    ]
    t = cm.tally(votes, comms, quorum=2, deadline=100)
    assert t.decided[0] == cm.Decision(0, 7, (a0, a1))
    assert 1 not in t.decided and 2 not in t.decided and t.undecided() == [1, 2]
    assert any("second vote" in x for x in t.ignored) and any("after the vote deadline" in x for x in t.ignored)
    assert any("without being drawn" in x for x in t.ignored) and any("malformed" in x for x in t.ignored)
    # a3 is visible as absent from #1 and #2; a4 voted (malformed), so it is not "absent"
    assert t.absent() == {a3: [1, 2]}
    # the first pair to reach the quorum stands, whatever comes after
    t = cm.tally([V(a2, _ballot((1, 9, 0))), V(a3, _ballot((1, 9, 0))), V(a4, _ballot((1, 0, 1)))],
                 comms, quorum=1, deadline=100)
    assert t.decided[1] == cm.Decision(9, 0, (a2,))


def test_the_chance_of_a_dishonest_committee():
    # checked by enumeration: committees of 3 out of 6, 2 of them dishonest
    m, f, c = 6, 2, 3
    bad = set(range(f))
    all_c = list(combinations(range(m), c))
    majority = sum(1 for s in all_c if len(bad & set(s)) >= 2) / len(all_c)
    assert cm.all_dishonest(m, f, c) == pytest.approx(majority)
    assert cm.all_dishonest(m, f, c, q=3) == 0.0
    assert cm.all_dishonest(16, 4, 3, q=3) == pytest.approx(4 / 560)
