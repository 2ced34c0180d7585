"""Who contributed what, paid on chain, through the real roles (anvil, the embedded store,
worker and aggregator processes):

- a funded, staked job: two honest workers are paid pro rata to the credit the quorum
  revealed, the quorum's aggregators get their share, a lazy worker and a forger are
  slashed, an honest worker whose contribution was UNAVAILABLE is not; every stake comes
  back when the job ends and is withdrawn; the audit recomputes every credit and payout;
- an open job: a third worker joins (`ledger worker join`) once round 1 closes to
  submissions and trains, is accepted and paid in round 2;
- a colluding quorum that reveals credits the verification does not give: the round
  finalizes (two of three aggregators agree) and pays what they said, and the audit
  says AUDIT FAILED naming the round, the worker and the check.
"""

from __future__ import annotations


import numpy as np
import pytest

from ledger.store import checkpoint
from ledger.protocol.settlement import Settlement
from ledger.protocol.settlement import recorded_payments
from ledger.store.embedded import EmbeddedStore
from ledger.protocol.verdicts import Verdict
from support import address, chain_of_its_own, keys, log_text, public_keys, replay_config, wait_for

pytestmark = pytest.mark.slow

ETH = 10**18
HONEST = keys(2, "pay-honest")
LAZY, FORGER, GONE = keys(3, "pay-cheat")
AGGS = keys(3, "pay-agg")
OPEN_W = keys(3, "pay-open")
OPEN_AGG = keys(1, "pay-open-agg")[0]
COLLUDE_W = keys(2, "pay-col-w")
HON_AGG, C1, C2 = keys(3, "pay-col-agg")


def _economics(**kw):
    from node.roles.owner import Economics

    return Economics(**kw)


def _payments(env, job):
    """(event name, account) -> the amounts it records, in chain order."""
    out = {}
    for p in recorded_payments(env.ledger.events(job)):
        out.setdefault((p.kind, p.account.lower()), []).append(p.amount)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "rewards") as env:
        env.fund(*HONEST, LAZY, FORGER, GONE, *AGGS, *OPEN_W, OPEN_AGG, *COLLUDE_W, HON_AGG, C1, C2)
        yield env


@pytest.fixture(scope="module")
def staked(world):
    env = world
    workers = [*HONEST, LAZY, FORGER, GONE]
    # GONE never discloses: the aggregators wait for the disclosure window (15 s), then judge
    job = env.create_job(workers, AGGS, quorum=2, rounds=1, config=replay_config(reveal_window=15),
                         economics=_economics(reward=3 * ETH, worker_stake=ETH, slash_bps=5_000, aggregator_bps=1_000))
    # a worker cannot submit before it posts its stake: one posts it through the CLI
    out = env.run(HONEST[0], "worker", "join", "--job", str(job))
    assert out.returncode == 0 and "posted a stake of 1 ETH" in out.stdout, out.stdout + out.stderr
    for k in workers[1:]:
        env.as_party(k).stake(job, ETH)
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in HONEST]
    procs += [env.spawn_module(k, "node.simulate.adversary", "--job", str(job), "--attack", a, "--poll", "0.3")
              for k, a in ((LAZY, "lazy"), (FORGER, "forge"))]
    procs += [env.spawn(a, "aggregator", "run", "--job", str(job), "--poll", "0.3") for a in AGGS]
    # an honest worker whose storage fails: its bytes are in a store no verifier reads
    private = EmbeddedStore(env.settings.data_dir.parent / "gone-private")
    obj = private.put(checkpoint.encode({"x": np.zeros(4, np.float32)}, {"tag": "gone"}))
    env.as_party(GONE).submit_update(job, 1, env.ledger.job(job).current_parent, obj.digest, obj.cid, obj.size, 40)
    wait_for(lambda: env.ledger.job(job).completed, 400, "the staked job", procs)
    return env, job, procs


def test_honest_work_is_paid_pro_rata_and_cheats_are_slashed(staked):
    env, job, procs = staked
    subs = env.ledger.submissions(job, 1)
    (final,) = [p for p in env.ledger.proposals(job, 1) if p.outcome == env.ledger.round(job, 1).outcome][:1]
    verdict = {s.worker.lower(): final.verdicts[s.index] for s in subs}
    assert verdict == {address(HONEST[0]).lower(): Verdict.ACCEPTED, address(HONEST[1]).lower(): Verdict.ACCEPTED,
                       address(LAZY).lower(): Verdict.REPLAY, address(FORGER).lower(): Verdict.REPLAY,
                       address(GONE).lower(): Verdict.UNAVAILABLE}, [log_text(p)[-1500:] for p in procs[-3:]]
    workers = env.ledger.round_workers(job, 1)
    s = final.settlement
    credit = {w.lower(): c for w, c in zip(workers, s.credits)}
    slashed = {w.lower() for i, w in enumerate(workers) if (s.slashed >> i) & 1}
    assert slashed == {address(LAZY).lower(), address(FORGER).lower()}
    assert credit[address(HONEST[0]).lower()] > 0 and credit[address(HONEST[1]).lower()] > 0
    assert sum(credit.values()) == credit[address(HONEST[0]).lower()] + credit[address(HONEST[1]).lower()]

    pay = _payments(env, job)
    share = 3 * ETH                            # one round: the whole pool
    to_aggs = share * 1_000 // 10_000
    total = sum(s.credits)
    for k in HONEST:                           # pro rata to credit, to the wei
        a = address(k).lower()
        assert pay[("RewardPaid", a)] == [(share - to_aggs) * credit[a] // total]
    quorum = {p.aggregator.lower() for p in env.ledger.proposals(job, 1) if p.outcome == final.outcome}
    assert len(quorum) == 2
    for a in AGGS:
        got = pay.get(("RewardPaid", address(a).lower()), [])
        assert got == ([to_aggs // 2] if address(a).lower() in quorum else []), (a, got)
    # half of each cheat's stake went to the pool; the UNAVAILABLE one kept all of it
    for k in (LAZY, FORGER):
        assert pay[("Slashed", address(k).lower())] == [ETH // 2]
        assert pay[("StakeReturned", address(k).lower())] == [ETH // 2]
    for k in (*HONEST, GONE):
        assert ("Slashed", address(k).lower()) not in pay
        assert pay[("StakeReturned", address(k).lower())] == [ETH]
    paid_out = sum(v[0] for (name, _), v in pay.items() if name == "RewardPaid")
    owner = env.ledger.job(job).owner.lower()
    assert pay[("PoolReturned", owner)] == [share - paid_out + 2 * (ETH // 2)]
    assert env.ledger.job(job).pool == 0


def test_every_stake_and_reward_is_withdrawn(staked):
    env, job, _ = staked
    gone = address(GONE)
    before = env.ledger.w3.eth.get_balance(gone)
    owed = env.ledger.balance_of(gone)
    assert owed == ETH
    out = env.run(GONE, "account", "withdraw")
    assert out.returncode == 0 and "withdrew 1 ETH" in out.stdout, out.stdout + out.stderr
    assert env.ledger.balance_of(gone) == 0
    rc = env.ledger.w3.eth.get_transaction_receipt(out.stdout.split(" in tx ")[1].strip())
    assert env.ledger.w3.eth.get_balance(gone) == before + ETH - rc["gasUsed"] * rc["effectiveGasPrice"]
    again = env.run(GONE, "account", "withdraw")
    assert again.returncode != 0 and "NothingToWithdraw" in again.stderr and "Traceback" not in again.stderr
    for k in (*HONEST, LAZY, FORGER):
        assert env.ledger.balance_of(address(k)) > 0
        env.as_party(k).withdraw()
        assert env.ledger.balance_of(address(k)) == 0


def test_the_audit_recomputes_every_credit_and_payout(staked):
    env, job, _ = staked
    out, report = env.audit(job)
    assert report is not None, out.stdout + out.stderr
    assert out.returncode == 0 and report["ok"], report.get("discrepancies")


def test_history_shows_who_contributed_what_and_was_paid(staked):
    from ledger.units import eth

    env, job, _ = staked
    out = env.run(None, "history", "--job", str(job))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0].lower(): line for line in out.stdout.splitlines() if line.strip().startswith("0x")}
    (final,) = [p for p in env.ledger.proposals(job, 1) if p.outcome == env.ledger.round(job, 1).outcome][:1]
    credit = dict(zip((w.lower() for w in env.ledger.round_workers(job, 1)), final.settlement.credits))
    pay = _payments(env, job)
    for k in HONEST:
        a = address(k).lower()
        cells = rows[a].split()
        assert str(credit[a]) in cells and eth(pay[("RewardPaid", a)][0]) in cells, rows[a]
    assert "round 1: replay" in rows[address(LAZY).lower()] and "round 1: replay" in rows[address(FORGER).lower()]
    assert "round 1: unavailable" in rows[address(GONE).lower()]


def test_a_worker_joins_an_open_job_and_is_paid_from_round_2(world):
    env = world
    named, joiner = OPEN_W[:2], OPEN_W[2]
    job = env.create_job(named, [OPEN_AGG], quorum=1, rounds=2, config=replay_config(),
                         economics=_economics(reward=2 * ETH, max_workers=3, aggregator_bps=0))
    assert len(env.ledger.job(job).config_digest) == 32
    # the join waits for round 1 to close to submissions, then joins for round 2
    join = env.spawn(joiner, "worker", "join", "--job", str(job), "--wait", "300")
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in named]
    procs += [env.spawn(OPEN_AGG, "aggregator", "run", "--job", str(job), "--poll", "0.3"), join]
    wait_for(lambda: join.poll() is not None, 300, "the join", procs)
    text = log_text(join)
    assert join.returncode == 0 and "waiting for round 1" in text and "trains from round 2" in text, text
    assert env.ledger.worker_state(job, address(joiner))[0] in ("joined", "active")
    procs.append(env.spawn(joiner, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3"))
    wait_for(lambda: env.ledger.job(job).completed, 400, "the open job", procs)
    r1 = {s.worker.lower() for s in env.ledger.submissions(job, 1)}
    r2 = env.ledger.submissions(job, 2)
    assert address(joiner).lower() not in r1 and len(r1) == 2
    assert {s.worker.lower() for s in r2} == {address(k).lower() for k in OPEN_W}
    assert env.ledger.round(job, 2).expected == 3
    (final,) = [p for p in env.ledger.proposals(job, 2) if p.outcome == env.ledger.round(job, 2).outcome]
    assert all(v == Verdict.ACCEPTED for v in final.verdicts), final.verdicts
    assert len(final.settlement.credits) == 3 and len(env.ledger.round_workers(job, 1)) == 2
    pay = _payments(env, job)
    assert ("RewardPaid", address(joiner).lower()) in pay and len(pay[("RewardPaid", address(joiner).lower())]) == 1
    out, report = env.audit(job)
    assert out.returncode == 0 and report and report["ok"], out.stdout[-3000:] + out.stderr


def test_a_colluding_quorum_that_inflates_a_credit_fails_the_audit(world):
    from node.context import JobContext
    from node.verification.rounds import judge_round

    env = world
    job = env.create_job(COLLUDE_W, [HON_AGG, C1, C2], quorum=2, rounds=1, config=replay_config(),
                         economics=_economics(reward=ETH, aggregator_bps=1_000))
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in COLLUDE_W]
    procs.append(env.spawn(HON_AGG, "aggregator", "run", "--job", str(job), "--poll", "0.3"))
    wait_for(lambda: env.ledger.has_committed(job, 1, address(HON_AGG)), 300, "the honest commit", procs)
    # the colluders judge the round honestly (same verdicts, same merge) and inflate worker 0's credit
    ctx = JobContext.load(env.ledger, env.store, job)
    rd = env.ledger.round(job, 1)
    out = judge_round(ctx, 1, rd.parent, env.ledger.submissions(job, 1))
    assert out.verdicts == [0, 0]
    obj = env.store.put(out.merged.merged_bytes)
    workers = env.ledger.round_workers(job, 1)
    victim = workers.index(next(w for w in workers if w.lower() == address(COLLUDE_W[0]).lower()))
    credits = list(out.settlement.credits)
    credits[victim] += 5_000
    forged = Settlement(tuple(credits), 0)
    ps = [env.commit_as(k, job, 1, out.verdicts, obj.digest, obj.cid, obj.size, settlement=forged) for k in (C1, C2)]
    for k, p in zip((C1, C2), ps):
        wait_for(lambda: env.ledger.round(job, 1).commits == 3, 120, "every commit", procs)
        if env.ledger.round(job, 1).status != "finalized":
            env.reveal_as(k, job, 1, p)
    wait_for(lambda: env.ledger.job(job).completed, 200, "the colluded round", procs)
    assert env.ledger.round(job, 1).outcome == env.ledger.proposal_of(job, 1, address(C1))
    res, report = env.audit(job)
    assert res.returncode != 0 and report and not report["ok"], res.stdout[-2000:] + res.stderr
    found = [d for d in report["discrepancies"] if d["check"] == "credit"]
    assert len(found) == 1 and found[0]["round"] == 1, report["discrepancies"]
    assert found[0]["party"].lower() == address(COLLUDE_W[0]).lower()
    assert str(credits[victim]) in found[0]["actual"]
    text = env.run(None, "audit", "--job", str(job), "--no-progress", "--replay", "none", timeout=300)
    assert "AUDIT FAILED" in text.stdout and "round 1" in text.stdout and "credit" in text.stdout, text.stdout[-2000:]


def test_a_joiner_of_a_private_data_job_commits_its_own_text(world, tmp_path):
    from ledger.protocol import datacommit as dc
    from node.context import JobContext
    from node.roles.owner import create_job

    env = world
    named, joiner, stranger = keys(3, "pay-private")
    env.fund(named, joiner, stranger)
    texts = [bytes(range(32, 127)) * (40 + i) for i in range(2)]
    named_c, joiner_c = dc.commit(texts[0]), dc.commit(texts[1])
    job = create_job(env.ledger, env.store, replay_config(), [address(named)], [address(OPEN_AGG)], 1, 2, 120, 1,
                     proposal_window=30, data_roots=[(named_c.root, named_c.length)],
                     validation=bytes(range(32, 127)) * 20, economics=_economics(max_workers=2),
                     keys=public_keys(OPEN_AGG)).job_id
    # the round closes to submissions once its one named worker submitted: joins are taken then
    obj = env.store.put(checkpoint.encode({"x": np.zeros(4, np.float32)}, {"tag": "named"}))
    env.as_party(named).submit_update(job, 1, env.ledger.job(job).current_parent, obj.digest, obj.cid, obj.size, 8)
    refused = env.run(stranger, "worker", "join", "--job", str(job))
    assert refused.returncode != 0 and "trains on private data" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    root = f"0x{joiner_c.root.hex()}:{joiner_c.length}"
    out = env.run(joiner, "worker", "join", "--job", str(job), "--data-root", root)
    assert out.returncode == 0 and "trains from round 2" in out.stdout, out.stdout + out.stderr
    ctx = JobContext.load(env.ledger, env.store, job)
    assert ctx.data_root(0) == (named_c.root, named_c.length)
    assert ctx.data_root(ctx.worker_index(address(joiner))) == (joiner_c.root, joiner_c.length)
    full = env.run(stranger, "worker", "join", "--job", str(job), "--data-root", root)
    assert full.returncode != 0 and "JobFull" in full.stderr, full.stderr
