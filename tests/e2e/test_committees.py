"""Verification committees through the real roles (anvil, the embedded store, a relay,
worker and aggregator processes; ``ledger.protocol.committee``):

- 16 workers, one of them lazy (half its declared steps), and 5 aggregators with
  committees of 3, for 2 rounds: each aggregator judges in depth only what its
  committees hold and votes on chain; every contribution is decided by its committee;
  the honest ones are accepted, the lazy one rejected by its committee (replay); the
  honest workers submit through a relay (one batch a round); the audit says OK;
- the contract enforces the committees: members only, one vote, by the vote deadline, and
  2 of 3 aggregators revealing an outcome against a decision cannot finalize it
  (``AgainstCommittee``); the round is skipped and the next one finalizes through the
  honest aggregator processes, the draws on chain equal the Python draw (a round closed
  by its deadline: proven by block headers; one every worker submitted to: its block);
- a colluding committee: 3 of 4 aggregators vote to accept a lazy contribution, so every
  committee of 3 has a colluding majority; the honest aggregator follows the decision on
  chain and the round finalizes, and the audit (which re-verifies everything) says
  AUDIT FAILED naming the round, the worker and the check.
"""

from __future__ import annotations

import re

import pytest

from ledger.protocol import committee as cm
from ledger.protocol.verdicts import Verdict
from support import address, chain_of_its_own, keys, log_text, replay_config, wait_for

pytestmark = pytest.mark.slow

HONEST = keys(15, "cmt-w")
LAZY = keys(1, "cmt-lazy")[0]
AGGS = keys(5, "cmt-agg")
RELAYER = keys(1, "cmt-relay")[0]
COL_W, COL_LAZY = keys(2, "cmt-col-w")
COL_HONEST_AGG = keys(1, "cmt-col-hon")[0]
COLLUDERS = keys(3, "cmt-col-agg")


def _config(**policy):
    return replay_config(**{"reveal_window": 15, **policy})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "committees") as env:
        env.fund(*HONEST, LAZY, *AGGS, RELAYER, COL_W, COL_LAZY, COL_HONEST_AGG, *COLLUDERS)
        yield env


def test_vote_is_an_aggregators_and_is_read_back(world):
    env = world
    job = env.create_job(keys(1, "cmt-vote-w"), AGGS[:3], rounds=1, config=_config(committee_size=2))
    ballot = cm.encode_ballot([cm.Entry(0, 0, 3)])
    from ledger.errors import ContractReverted

    with pytest.raises(ContractReverted, match="NotAggregator"):
        env.as_party(RELAYER).vote(job, 1, ballot)
    # nothing is drawn, nor can be, while the round is open: no vote counts
    with pytest.raises(ContractReverted, match="RoundNotClosed"):
        env.as_party(AGGS[1]).vote(job, 1, ballot)
    assert env.ledger.committee_votes(job, 1) == [] and env.ledger.committees_drawn(job, 1) is None


def test_committees_of_three_judge_sixteen_workers(world):
    env = world
    workers = [*HONEST, LAZY]
    job = env.create_job(workers, AGGS, quorum=3, rounds=2, round_duration=300, proposal_window=160,
                         config=_config(committee_size=3, vote_window=60))
    relay = env.spawn(RELAYER, "relay", "run", "--listen", "127.0.0.1:0", "--poll", "0.3")
    url = wait_for(lambda: (m := re.search(r"relay listening on (http://\S+)", log_text(relay))) and m.group(1),
                   60, "the relay to listen", [relay])
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.5", "--relay", url)
             for k in HONEST]
    procs.append(env.spawn_module(LAZY, "node.simulate.adversary", "--job", str(job), "--attack", "lazy", "--poll", "0.5"))
    aggs = [env.spawn(a, "aggregator", "run", "--job", str(job), "--poll", "0.5") for a in AGGS]
    wait_for(lambda: env.ledger.job(job).completed, 900, "the job of 16 workers", [relay, *aggs])
    lazy = address(LAZY).lower()
    for r in (1, 2):
        rd = env.ledger.round(job, r)
        assert rd.status == "finalized", (r, rd.status)
        subs = env.ledger.submissions(job, r)
        assert len(subs) == 16
        # the honest workers' submissions went out in one relayed batch
        relayed = [s for s in subs if s.worker.lower() != lazy]
        assert len({s.tx_hash for s in relayed}) == 1
        (final,) = [p for p in env.ledger.proposals(job, r) if p.outcome == rd.outcome][:1]
        verdict = {s.worker.lower(): final.verdicts[s.index] for s in subs}
        assert verdict.pop(lazy) == Verdict.REPLAY
        assert set(verdict.values()) == {Verdict.ACCEPTED}, final.verdicts
        # every contribution was decided by its committee of 3, the lazy one rejected there
        from node.context import JobContext
        from node.verification.rounds import committee_tally, replay_seed

        ctx = JobContext.load(env.ledger, env.store, job)
        t, _ = committee_tally(ctx, r, subs, replay_seed(env.ledger, job, r, subs))
        assert sorted(t.decided) == list(range(16)) and not t.absent(), (t.ignored, t.absent())
        assert all(len(m) == 3 for m in t.committees.values())
        assert {i: d.verdict for i, d in t.decided.items()} == {s.index: final.verdicts[s.index] for s in subs}
        # each aggregator judged in depth only what its committees hold: 3 x 16 / 5, rounded
        counts = {a.lower(): sum(a.lower() in {x.lower() for x in m} for m in t.committees.values())
                  for a in map(address, AGGS)}
        assert sorted(counts.values()) == [9, 9, 10, 10, 10], counts
        for a, p in zip(AGGS, aggs):
            n = counts[address(a).lower()]
            assert f"round {r}: drawn to judge {n} of 16 contribution(s)" in log_text(p), log_text(p)[-3000:]
    assert "replay" in log_text(aggs[0]) and "decided by its verification committee" in log_text(aggs[0])
    for p in [*procs, *aggs]:
        assert p.wait(timeout=120) == 0, log_text(p)[-3000:]
    out, report = env.audit(job, timeout=600)
    assert out.returncode == 0 and report and report["ok"], out.stdout[-3000:] + out.stderr
    # who voted on what is in the history: 5 votes a round
    hist = env.run(None, "history", "--job", str(job))
    assert hist.returncode == 0 and hist.stdout.count("  vote     ") == 10, hist.stdout[-3000:] + hist.stderr
    assert any("  vote     " in line and "replay" in line for line in hist.stdout.splitlines()), hist.stdout[-3000:]
    relay.terminate()
    relay.wait(timeout=30)


def test_a_colluding_committee_fails_the_audit(world):
    env = world
    # 3 of 4 aggregators collude: every committee of 3 holds at least 2 of them (its quorum)
    job = env.create_job([COL_W, COL_LAZY], [COL_HONEST_AGG, *COLLUDERS], quorum=3, rounds=1, round_duration=240,
                         proposal_window=120, config=_config(committee_size=3, committee_quorum=2, vote_window=40))
    procs = [env.spawn(COL_W, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3"),
             env.spawn_module(COL_LAZY, "node.simulate.adversary", "--job", str(job), "--attack", "lazy", "--poll", "0.3")]
    honest = env.spawn(COL_HONEST_AGG, "aggregator", "run", "--job", str(job), "--poll", "0.3")
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2 and env.ledger.round(job, 1).status != "open",
             300, "round 1 to close", [*procs, honest])
    # the colluders vote to accept what their committees judge, the lazy one included, before
    # running the protocol (the contract takes a vote only from a committee's members)
    from node.verification.rounds import DrawNotReady, replay_seed

    subs = env.ledger.submissions(job, 1)
    seeds = []

    def drawn() -> bool:
        try:
            seeds.append(replay_seed(env.ledger, job, 1, subs))
            return True
        except DrawNotReady:
            return False

    wait_for(drawn, 60, "the round's draw to be seeded", [*procs, honest])
    comms = cm.committees(seeds[-1], job, 1, len(subs), env.ledger.job(job).aggregators, 3)
    for k in COLLUDERS:
        mine = [i for i, members in sorted(comms.items()) if address(k).lower() in {m.lower() for m in members}]
        env.as_party(k).vote(job, 1, cm.encode_ballot([cm.Entry(i, 0, 1) for i in mine]))
    aggs = [honest, *(env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3") for k in COLLUDERS)]
    wait_for(lambda: env.ledger.job(job).completed, 400, "the colluded round", [*procs, *aggs])
    rd = env.ledger.round(job, 1)
    assert rd.status == "finalized"
    subs = env.ledger.submissions(job, 1)
    lazy = next(s for s in subs if s.worker.lower() == address(COL_LAZY).lower())
    (final,) = [p for p in env.ledger.proposals(job, 1) if p.outcome == rd.outcome][:1]
    assert final.verdicts[lazy.index] == Verdict.ACCEPTED
    assert "decided by its verification committee" in log_text(honest)
    res, report = env.audit(job, timeout=600)
    assert res.returncode != 0 and report and not report["ok"], res.stdout[-2000:] + res.stderr
    found = [d for d in report["discrepancies"] if d["party"].lower() == address(COL_LAZY).lower()]
    assert found and found[0]["round"] == 1 and found[0]["check"] == "replay", report["discrepancies"]
    text = env.run(None, "audit", "--job", str(job), "--no-progress", "--replay", "sample", timeout=600)
    assert "AUDIT FAILED" in text.stdout and "round 1" in text.stdout and address(COL_LAZY) in text.stdout \
        and "replay" in text.stdout, text.stdout[-2000:]


ENF_W = keys(3, "cmt-enf-w")
ENF_AGGS = keys(3, "cmt-enf-agg")


def test_a_quorum_against_its_committees_cannot_finalize(world):
    env = world
    from ledger.errors import ContractReverted
    from node.verification.rounds import replay_seed

    job = env.create_job(ENF_W, ENF_AGGS, quorum=2, rounds=2, round_duration=40, proposal_window=40,
                         config=_config(committee_size=2, vote_window=20, reveal_window=5))
    aggs = [address(k) for k in ENF_AGGS]
    # round 1: two of three workers submit, so the round closes at its deadline
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in ENF_W[:2]]
    wait_for(lambda: env.ledger.round(job, 1).status == "closed", 300, "round 1 to close", procs)
    subs = env.ledger.submissions(job, 1)
    assert len(subs) == 2

    def seed():
        env.ledger.chain.nudge()
        try:
            return replay_seed(env.ledger, job, 1, subs)
        except Exception:
            return None

    s1 = wait_for(seed, 60, "round 1's seed block")
    comms = cm.committees(s1, job, 1, 2, aggs, 2)
    members = {k: [i for i, m in comms.items() if address(k) in m] for k in ENF_AGGS}
    outsider = next(k for k in ENF_AGGS if 0 not in members[k])
    with pytest.raises(ContractReverted, match="NotInCommittee"):
        env.as_party(outsider).vote(job, 1, cm.encode_ballot([cm.Entry(0, 0, 7)]))
    # every committee decides: accepted, credit 7 (the draw on chain is Python's, headers proving the close)
    for k, mine in members.items():
        if mine:
            env.as_party(k).vote(job, 1, cm.encode_ballot([cm.Entry(i, 0, 7) for i in mine]))
    drawn = env.ledger.committees_drawn(job, 1)
    assert drawn is not None and drawn.seed == s1
    voter = next(k for k in ENF_AGGS if members[k])
    with pytest.raises(ContractReverted, match="AlreadyVoted"):
        env.as_party(voter).vote(job, 1, cm.encode_ballot([cm.Entry(members[voter][0], 0, 7)]))
    # two aggregators (a quorum) reveal an outcome rejecting both: the one that reaches the quorum reverts
    info = env.ledger.job(job)

    def commit(k):
        try:
            return env.commit_as(k, job, 1, [Verdict.VALIDATION_LOSS] * 2, info.current_parent,
                                 info.current_parent_cid, info.current_parent_size)
        except ContractReverted as e:   # the workers' disclosures first
            assert e.name == "DisclosuresPending", e
            env.ledger.chain.nudge()
            return None

    bad = [wait_for(lambda: commit(k), 60, "a commit") for k in ENF_AGGS[1:]]
    chain = env.ledger.chain
    wait_for(lambda: chain.nudge() and chain.block_timestamp(chain.block_number()) > env.ledger.round(job, 1).commit_deadline,
             60, "the commit phase to end")
    env.reveal_as(ENF_AGGS[1], job, 1, bad[0])
    with pytest.raises(ContractReverted, match="AgainstCommittee"):
        env.reveal_as(ENF_AGGS[2], job, 1, bad[1])
    assert env.ledger.round(job, 1).status == "closed" and env.ledger.balance_of(aggs[2]) == 0

    def skipped():
        try:
            env.ledger.close_round(job, 1)
        except ContractReverted:
            env.ledger.chain.nudge()
        return env.ledger.round(job, 1).status == "skipped"

    wait_for(skipped, 120, "round 1 to be skipped")
    # the honest path: the third worker joins in, the three aggregators run; round 2 finalizes
    procs.append(env.spawn(ENF_W[2], "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3"))
    runs = [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3") for k in ENF_AGGS]
    wait_for(lambda: env.ledger.job(job).completed, 400, "round 2 to finalize", [*procs, *runs])
    assert env.ledger.round(job, 2).status == "finalized"
    subs2 = env.ledger.submissions(job, 2)
    assert len(subs2) == 3   # closed by its last submission: the draw's block from the round's slot
    assert env.ledger.committees_drawn(job, 2).seed == replay_seed(env.ledger, job, 2, subs2)
    assert len(env.ledger.committee_votes(job, 2)) >= 2
