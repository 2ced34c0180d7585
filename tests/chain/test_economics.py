"""TrainingLedger's economics on a real anvil: the reward pool paid pro rata to credit
when a round finalizes (and to the quorum's aggregators), a skipped round's share kept,
the pool's remainder returned, pull withdrawals, stakes and slashing, settlement checks,
open enrollment (join/leave), the new createJob checks, and the submission's gas.

Every amount is computed in the test from the rule (share = pool // rounds left; the
quorum's part = share * aggregatorBps // 10000, split equally among the quorum; the
rest pro rata to credit, floored), never read back from the contract.

One anvil for the module (a fresh contract per test: every test deploys its own
TrainingLedger, so job ids start at 1 and balances start at zero); account ETH
balances are only ever compared as differences.
"""

from __future__ import annotations

import pytest
from eth_account import Account

from conftest import DEV_KEYS
from ledger.protocol.settlement import Settlement
from support.contract import AGGS, ContractEnv, GENESIS, OUTSIDER, OWNER, WORKERS, finalize, h, reverted

ETH = 10**18
BPS = 10_000
EXTRA = Account.from_key(DEV_KEYS[8])  # a second outsider (funded by anvil)
EVERYONE = [OWNER, *WORKERS, *AGGS, OUTSIDER, EXTRA]
W0, W1, W2 = WORKERS


@pytest.fixture
def env(contract_env) -> ContractEnv:
    return contract_env


# ------------------------------------------------------------------------------ helpers


def payout(pool: int, rounds_left: int, credits, bps: int, quorum: int, matching) -> tuple[dict, dict]:
    """The rule, written out: (worker index -> wei, aggregator index -> wei) a finalizing round pays."""
    share = pool // rounds_left
    to_aggs = share * bps // BPS
    to_workers = share - to_aggs
    total = sum(credits)
    workers = {i: to_workers * c // total for i, c in enumerate(credits) if c and to_workers * c // total} if total else {}
    each = to_aggs // quorum
    aggs = {a: each for a in matching} if each else {}
    return workers, aggs


def paid_events(job: int, rnd: int, workers: dict, aggs: dict, worker_addrs=None) -> list[dict]:
    """The RewardPaid events of a payout, in the contract's order (workers by index, then aggregators)."""
    worker_addrs = worker_addrs or [w.address for w in WORKERS]
    out = [{"jobId": job, "round": rnd, "account": worker_addrs[i], "amount": a, "aggregator": False}
           for i, a in sorted(workers.items())]
    out += [{"jobId": job, "round": rnd, "account": AGGS[i].address, "amount": a, "aggregator": True}
            for i, a in sorted(aggs.items())]
    return out


def balances(env: ContractEnv) -> dict[str, int]:
    return {a.address: env.ledger.balance_of(a.address) for a in EVERYONE}


def assert_solvent(env: ContractEnv, jobs) -> None:
    """The contract holds exactly every withdrawable balance + every pool + every stake."""
    owed = sum(balances(env).values())
    for job in jobs:
        info = env.ledger.job(job)
        owed += info.pool + sum(env.ledger.worker_state(job, w)[1] for w in info.workers)
    assert env.w3.eth.get_balance(env.address) == owed


def gas_cost(env: ContractEnv, rc) -> int:
    return int(rc["gasUsed"]) * int(rc["effectiveGasPrice"])





def test_a_finalized_round_pays_its_share_pro_rata_and_to_the_quorum(env: ContractEnv):
    reward = 3 * ETH + 12_345
    job = env.create(reward=reward, aggregator_bps=1000, num_rounds=3)
    info = env.ledger.job(job)
    assert (info.reward, info.pool, info.aggregator_bps, info.worker_stake, info.slash_bps) == (reward, reward, 1000, 0, 0)
    funded = [e.args for e in env.ledger.events(job) if e.name == "RewardFunded"]
    assert funded == [{"jobId": job, "amount": reward}]
    assert env.w3.eth.get_balance(env.address) == reward

    # round 1: worker 2 rejected (credit 0); aggregator 2 reveals the same merge with another split
    env.submit_all(job, 1)
    verdicts, m1, good = [0, 0, 5], h("merged 1"), Settlement((1, 3, 0))
    env.commit(job, 1, 0, verdicts, m1, settlement=good)
    env.commit(job, 1, 1, verdicts, m1, settlement=good)
    env.commit(job, 1, 2, verdicts, m1, settlement=Settlement((2, 2, 0)))
    env.reveal(job, 1, 2)
    assert env.events(env.reveal(job, 1, 0), "RewardPaid") == []  # one vote: nothing paid yet
    rc = env.reveal(job, 1, 1)
    assert env.events(rc, "RoundFinalized")
    # the numbers, by hand: share = (3e18 + 12345) // 3 = 1e18 + 4115; the quorum's part
    # 1e17 + 411 (411.5 floored), 5e16 + 205 each; workers 9e17 + 3704, split 1:3
    w0, w1, each = 225 * 10**15 + 926, 675 * 10**15 + 2778, 5 * 10**16 + 205
    workers, aggs = payout(reward, 3, good.credits, 1000, 2, matching=(0, 1))
    assert workers == {0: w0, 1: w1} and aggs == {0: each, 1: each}
    assert env.events(rc, "RewardPaid") == paid_events(job, 1, workers, aggs)
    paid1 = w0 + w1 + 2 * each
    assert paid1 == reward // 3 - 1  # one wei of the quorum's part stays (dust)
    assert balances(env) == {**{a.address: 0 for a in EVERYONE}, W0.address: w0, W1.address: w1,
                             AGGS[0].address: each, AGGS[1].address: each}
    pool = reward - paid1
    assert env.ledger.job(job).pool == pool
    assert env.w3.eth.get_balance(env.address) == reward  # credited, not sent
    assert_solvent(env, [job])

    # round 2: all three commit the same; aggregator 2 reveals after the quorum: nothing for it
    credits2 = Settlement((2, 1, 4))
    env.submit_all(job, 2, parent=m1)
    m2 = h("merged 2")
    for a in (0, 1, 2):
        env.commit(job, 2, a, [0, 0, 0], m2, settlement=credits2)
    env.reveal(job, 2, 0)
    rc = env.reveal(job, 2, 1)
    with reverted("RoundAlreadyFinalized"):
        env.reveal(job, 2, 2, commitment=env.ledger.round(job, 2).commitment)
    workers, aggs = payout(pool, 2, credits2.credits, 1000, 2, matching=(0, 1))
    assert env.events(rc, "RewardPaid") == paid_events(job, 2, workers, aggs)
    paid2 = sum(workers.values()) + sum(aggs.values())
    pool -= paid2
    assert env.ledger.job(job).pool == pool
    assert env.ledger.balance_of(W2.address) == workers[2]
    assert env.ledger.balance_of(AGGS[2].address) == 0
    assert env.ledger.balance_of(AGGS[0].address) == each + aggs[0]

    # round 3 (the last): aggregator 2 never commits; the whole pool is the share, the dust returns
    before = balances(env)
    credits3 = Settlement((1, 1, 1))
    env.submit_all(job, 3, parent=m2)
    rc = finalize(env, job, 3, [0, 0, 0], h("merged 3"), credits3)
    workers, aggs = payout(pool, 1, credits3.credits, 1000, 2, matching=(0, 1))
    assert env.events(rc, "RewardPaid") == paid_events(job, 3, workers, aggs)
    left = pool - sum(workers.values()) - sum(aggs.values())
    assert left > 0
    assert env.events(rc, "JobCompleted") and env.events(rc, "StakeReturned") == []
    assert env.events(rc, "PoolReturned") == [{"jobId": job, "creator": OWNER.address, "amount": left}]
    after = balances(env)
    assert after[OWNER.address] - before[OWNER.address] == left
    for i, w in enumerate(WORKERS):
        assert after[w.address] - before[w.address] == workers[i]
    assert after[AGGS[2].address] == 0
    info = env.ledger.job(job)
    assert info.completed and info.pool == 0 and info.reward == reward
    assert sum(after.values()) == reward == env.w3.eth.get_balance(env.address)
    assert_solvent(env, [job])


# ------------------------------------------------------------------------------ 2. skipped rounds


def test_a_skipped_rounds_share_stays_in_the_pool_and_the_rest_returns_to_the_creator(env: ContractEnv):
    reward = ETH + 1
    job = env.create(reward=reward, aggregator_bps=500, num_rounds=3)
    # round 1: one submission of the two needed: skipped, nothing paid
    env.submit(job, 1, 0)
    env.warp_past(env.ledger.round(job, 1).deadline)
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped") and env.events(rc, "RewardPaid") == []
    assert env.ledger.job(job).pool == reward
    assert sum(balances(env).values()) == 0

    # round 2: the share is pool // 2 (two rounds left), not pool // 3
    env.submit_all(job, 2)
    credits = Settlement((1, 1, 0))
    rc = finalize(env, job, 2, [0, 0, 0], h("merged 2"), credits)
    share = reward // 2
    assert share == 5 * 10**17
    workers, aggs = payout(reward, 2, credits.credits, 500, 2, matching=(0, 1))
    to_aggs = share * 500 // BPS
    assert workers == {0: (share - to_aggs) // 2, 1: (share - to_aggs) // 2} and aggs == {0: to_aggs // 2, 1: to_aggs // 2}
    assert env.events(rc, "RewardPaid") == paid_events(job, 2, workers, aggs)
    pool = reward - sum(workers.values()) - sum(aggs.values())
    assert pool == reward - share  # 5e17 divides evenly here
    assert env.ledger.job(job).pool == pool

    # round 3: nobody submits: skipped, the job completes, the whole pool goes back
    env.warp_past(env.ledger.round(job, 3).deadline)
    rc = env.as_(OUTSIDER).close_round(job, 3)
    assert env.events(rc, "RoundSkipped") and env.events(rc, "JobCompleted")
    assert env.events(rc, "RewardPaid") == []
    assert env.events(rc, "PoolReturned") == [{"jobId": job, "creator": OWNER.address, "amount": pool}]
    assert env.ledger.balance_of(OWNER.address) == pool == 5 * 10**17 + 1
    assert env.ledger.job(job).pool == 0
    assert_solvent(env, [job])


def test_a_finalized_round_without_credit_pays_only_the_quorum(env: ContractEnv):
    """Zero total credit: the workers' part stays in the pool; the quorum is still paid."""
    reward = 2 * ETH
    job = env.create(reward=reward, aggregator_bps=2500, num_rounds=2)
    env.submit_all(job, 1)
    rc = finalize(env, job, 1, [0, 0, 0], h("m"), Settlement((0, 0, 0)))
    each = (ETH * 2500 // BPS) // 2
    assert each == 125 * 10**15
    assert env.events(rc, "RewardPaid") == paid_events(job, 1, {}, {0: each, 1: each})
    assert env.ledger.job(job).pool == reward - 2 * each


# ------------------------------------------------------------------------------ 3. withdraw


def test_withdraw_sends_the_balance_once(env: ContractEnv):
    reward = ETH + 1
    job = env.create(reward=reward, num_rounds=1)
    env.submit_all(job, 1)
    rc = finalize(env, job, 1, [0, 0, 0], h("m"), Settlement((1, 1, 0)))
    half = reward // 2
    assert env.events(rc, "RewardPaid") == paid_events(job, 1, {0: half, 1: half}, {})
    assert env.events(rc, "PoolReturned") == [{"jobId": job, "creator": OWNER.address, "amount": 1}]
    assert env.ledger.balance_of(W0.address) == half == 5 * 10**17

    contract_before = env.w3.eth.get_balance(env.address)
    eth_before = env.w3.eth.get_balance(W0.address)
    rc = env.as_(W0).withdraw()
    assert env.events(rc, "Withdrawn") == [{"account": W0.address, "amount": half}]
    assert env.w3.eth.get_balance(W0.address) - eth_before == half - gas_cost(env, rc)
    assert env.w3.eth.get_balance(env.address) == contract_before - half
    assert env.ledger.balance_of(W0.address) == 0
    with reverted("NothingToWithdraw") as e:
        env.as_(W0).withdraw()
    assert e.value.args_dict == {"account": W0.address}
    with reverted("NothingToWithdraw"):
        env.as_(OUTSIDER).withdraw()

    # the creator's returned dust, one wei, is withdrawable too
    eth_before = env.w3.eth.get_balance(OWNER.address)
    rc = env.as_(OWNER).withdraw()
    assert env.events(rc, "Withdrawn") == [{"account": OWNER.address, "amount": 1}]
    assert env.w3.eth.get_balance(OWNER.address) - eth_before == 1 - gas_cost(env, rc)
    assert env.w3.eth.get_balance(env.address) == half  # worker 1's, still to withdraw
    assert_solvent(env, [job])


# ------------------------------------------------------------------------------ 4. stakes and slashing


def test_stakes_are_posted_once_slashed_into_the_pool_and_returned_at_completion(env: ContractEnv):
    S = ETH
    job = env.create(worker_stake=S, slash_bps=2500, num_rounds=3)
    info = env.ledger.job(job)
    assert (info.worker_stake, info.slash_bps, info.pool, info.reward) == (S, 2500, 0, 0)
    for w in WORKERS:
        assert env.ledger.worker_state(job, w.address) == ("unstaked", 0)
    with reverted("StakeMissing") as e:
        env.submit(job, 1, 0)
    assert e.value.args_dict == {"jobId": job, "worker": W0.address}
    for wrong in (S - 1, S + 1, 0):
        with reverted("WrongStake") as e:
            env.as_(W0).stake(job, wrong)
        assert e.value.args_dict == {"jobId": job, "expected": S, "given": wrong}
    with reverted("NotWorker"):
        env.as_(OUTSIDER).stake(job, S)
    with reverted("NotWorker"):
        env.as_(AGGS[0]).stake(job, S)
    rc = env.as_(W0).stake(job, S)
    assert env.events(rc, "StakePosted") == [{"jobId": job, "worker": W0.address, "amount": S}]
    assert env.ledger.worker_state(job, W0.address) == ("active", S)
    with reverted("NoStakeDue") as e:
        env.as_(W0).stake(job, S)
    assert e.value.args_dict == {"jobId": job, "worker": W0.address}
    env.as_(W1).stake(job, S)
    env.as_(W2).stake(job, S)
    assert env.w3.eth.get_balance(env.address) == 3 * S

    # a job without stakes takes none
    free = env.create()
    assert env.ledger.worker_state(free, W0.address) == ("active", 0)
    for amount in (0, S):
        with reverted("NoStakeDue"):
            env.as_(W0).stake(free, amount)

    # round 1: worker 2 rejected for cheating and slashed 25 % of its stake into the (empty) pool
    env.submit_all(job, 1)
    slash2 = Settlement((1, 1, 0), 1 << 2)
    rc = finalize(env, job, 1, [0, 0, 1], h("m1"), slash2)
    cut1 = S * 2500 // BPS
    assert cut1 == 25 * 10**16
    assert env.events(rc, "RewardPaid") == []  # the pool was empty when the round was paid
    assert env.events(rc, "Slashed") == [{"jobId": job, "round": 1, "worker": W2.address, "amount": cut1}]
    assert env.ledger.job(job).pool == cut1
    assert env.ledger.worker_state(job, W2.address) == ("active", S - cut1)
    assert env.ledger.worker_state(job, W0.address) == ("active", S)
    assert_solvent(env, [job, free])

    # round 2: the round is paid from the pool first (share = pool // 2), then slashed again:
    # 25 % of what is left of worker 2's stake
    env.submit_all(job, 2, parent=h("m1"))
    rc = finalize(env, job, 2, [0, 0, 1], h("m2"), slash2)
    workers, aggs = payout(cut1, 2, (1, 1, 0), 0, 2, matching=(0, 1))
    assert workers == {0: cut1 // 4, 1: cut1 // 4} and aggs == {}
    assert env.events(rc, "RewardPaid") == paid_events(job, 2, workers, {})
    cut2 = (S - cut1) * 2500 // BPS
    assert cut2 == 1875 * 10**14
    assert env.events(rc, "Slashed") == [{"jobId": job, "round": 2, "worker": W2.address, "amount": cut2}]
    pool = cut1 - 2 * (cut1 // 4) + cut2
    assert env.ledger.job(job).pool == pool
    assert env.ledger.worker_state(job, W2.address) == ("active", S - cut1 - cut2)
    assert_solvent(env, [job, free])

    # round 3 completes the job: every stake left comes back, the pool goes to the creator
    before = balances(env)
    env.submit_all(job, 3, parent=h("m2"))
    rc = finalize(env, job, 3, [0, 0, 0], h("m3"), Settlement((0, 0, 0)))
    assert env.events(rc, "RewardPaid") == [] and env.events(rc, "Slashed") == []
    assert env.events(rc, "StakeReturned") == [
        {"jobId": job, "worker": W0.address, "amount": S},
        {"jobId": job, "worker": W1.address, "amount": S},
        {"jobId": job, "worker": W2.address, "amount": S - cut1 - cut2},
    ]
    assert env.events(rc, "PoolReturned") == [{"jobId": job, "creator": OWNER.address, "amount": pool}]
    after = balances(env)
    assert after[W0.address] - before[W0.address] == S
    assert after[W2.address] == S - cut1 - cut2 == 5625 * 10**14
    assert after[OWNER.address] - before[OWNER.address] == pool
    for w in WORKERS:
        assert env.ledger.worker_state(job, w.address) == ("active", 0)
    assert env.ledger.job(job).pool == 0
    assert_solvent(env, [job, free])
    with reverted("JobFinished"):
        env.as_(W0).stake(job, S)

    eth_before = env.w3.eth.get_balance(W2.address)
    rc = env.as_(W2).withdraw()
    assert env.events(rc, "Withdrawn") == [{"account": W2.address, "amount": S - cut1 - cut2}]
    assert env.w3.eth.get_balance(W2.address) - eth_before == S - cut1 - cut2 - gas_cost(env, rc)
    assert_solvent(env, [job, free])


# ------------------------------------------------------------------------------ 5. settlement checks


def test_a_settlement_names_only_workers_that_submitted(env: ContractEnv):
    job = env.create(num_rounds=1)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)  # worker 2 does not submit
    env.warp_past(env.ledger.round(job, 1).deadline)
    good = Settlement((2, 1, 0), 0)
    for a in (0, 1, 2):
        env.commit(job, 1, a, [0, 0], h("m"), settlement=good)
    with reverted("CreditCountMismatch") as e:
        env.reveal(job, 1, 0, settlement=Settlement((2, 1)))
    assert e.value.args_dict == {"jobId": job, "round": 1, "expected": 3, "given": 2}
    with reverted("CreditCountMismatch") as e:
        env.reveal(job, 1, 0, settlement=Settlement((2, 1, 0, 0)))
    assert e.value.args_dict == {"jobId": job, "round": 1, "expected": 3, "given": 4}
    bad = [
        (Settlement((2, 1, 1), 0), 2),        # credits worker 2, which did not submit
        (Settlement((2, 1, 0), 1 << 2), 2),   # slashes worker 2, which did not submit
        (Settlement((2, 1, 0), 1 << 5), 5),   # slashes an index past the workers
        (Settlement((2, 1, 0), 1 << 127), 127),
        (Settlement((2, 1, 0), 1 << 1), 1),   # credits and slashes worker 1
        (Settlement((0, 1, 0), 1 << 0), None),  # slashes without credit: fine (fails later, not committed)
    ]
    for s, index in bad:
        if index is None:
            with reverted("RevealMismatch"):
                env.reveal(job, 1, 0, settlement=s)
            continue
        with reverted("InvalidSettlement") as e:
            env.reveal(job, 1, 0, settlement=s)
        assert e.value.args_dict == {"jobId": job, "round": 1, "index": index}, s
    assert env.ledger.round(job, 1).proposals == 0
    env.reveal(job, 1, 0)
    rc = env.reveal(job, 1, 1)
    assert env.events(rc, "RoundFinalized") and env.events(rc, "JobCompleted")
    revealed = [e.args for e in env.ledger.events(job) if e.name == "SettlementRevealed"]
    assert revealed == [{"jobId": job, "round": 1, "aggregator": AGGS[a].address, "credits": [2, 1, 0], "slashed": 0}
                        for a in (0, 1)]


# ------------------------------------------------------------------------------ 6. open jobs


def test_join_and_leave_only_in_an_open_job(env: ContractEnv):
    job = env.create()
    env.submit_all(job, 1)  # closed: between rounds
    with reverted("JobNotOpen") as e:
        env.as_(OUTSIDER).join(job, 0)
    assert e.value.args_dict == {"jobId": job}
    with reverted("JobNotOpen"):
        env.as_(W0).leave(job)
    with reverted("UnknownJob"):
        env.as_(OUTSIDER).join(job + 1, 0)


def test_a_joiner_trains_from_the_next_round(env: ContractEnv):
    S = 10**17
    job = env.create(workers=[W0.address, W1.address], max_workers=3, worker_stake=S, min_submissions=1)
    info = env.ledger.job(job)
    assert info.is_open and (info.max_workers, info.active_workers) == (3, 2)
    env.as_(W0).stake(job, S)
    env.as_(W1).stake(job, S)
    r1 = env.ledger.round(job, 1)
    assert (r1.status, r1.expected) == ("open", 2)
    with reverted("RoundInProgress") as e:
        env.as_(OUTSIDER).join(job, S)
    assert e.value.args_dict == {"jobId": job, "round": 1, "deadline": r1.deadline}
    with reverted("RoundInProgress"):
        env.as_(W0).leave(job)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)
    assert env.ledger.round(job, 1).status == "closed"  # both expected workers submitted

    for wrong in (S - 1, 0, S + 1):
        with reverted("WrongStake") as e:
            env.as_(OUTSIDER).join(job, wrong)
        assert e.value.args_dict == {"jobId": job, "expected": S, "given": wrong}
    for already in (W0, AGGS[0]):
        with reverted("AlreadyJoined") as e:
            env.as_(already).join(job, S)
        assert e.value.args_dict == {"jobId": job, "account": already.address}
    rc = env.as_(OUTSIDER).join(job, S, data_root=h("data"), data_bytes=777)
    assert env.events(rc, "WorkerJoined") == [{"jobId": job, "worker": OUTSIDER.address, "index": 2, "fromRound": 2,
                                               "dataRoot": h("data"), "dataBytes": 777}]
    assert env.events(rc, "StakePosted") == [{"jobId": job, "worker": OUTSIDER.address, "amount": S}]
    assert env.ledger.worker_state(job, OUTSIDER.address) == ("joined", S)
    assert env.ledger.joins(job) == [(OUTSIDER.address, 2)]
    assert env.ledger.job(job).active_workers == 2
    with reverted("AlreadyJoined"):
        env.as_(OUTSIDER).join(job, S)
    with reverted("NotActiveYet") as e:
        env.as_(OUTSIDER).submit_update(job, 1, GENESIS, h("d"), h("c"), 1, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "worker": OUTSIDER.address}
    with reverted("JobFull") as e:
        env.as_(EXTRA).join(job, S)
    assert e.value.args_dict == {"jobId": job, "maxWorkers": 3}
    with reverted("ContributionPending") as e:
        env.as_(W1).leave(job)
    assert e.value.args_dict == {"jobId": job, "round": 1, "worker": W1.address}
    assert env.ledger.round_workers(job, 1) == [W0.address, W1.address]
    assert_solvent(env, [job])

    # round 1 is settled over its two workers; round 2 opens with the joiner active
    finalize(env, job, 1, [0, 0], h("m1"), Settlement((0, 0)))
    info = env.ledger.job(job)
    assert (info.current_round, info.active_workers) == (2, 3)
    assert info.workers == [W0.address, W1.address, OUTSIDER.address]
    assert env.ledger.worker_state(job, OUTSIDER.address) == ("active", S)
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.expected) == ("open", 3)
    assert env.ledger.round_workers(job, 2) == info.workers
    with reverted("RoundInProgress"):  # round 2 accepts submissions: no leaving now
        env.as_(OUTSIDER).leave(job)
    rc = env.as_(OUTSIDER).submit_update(job, 2, h("m1"), h("d2"), h("c2"), 10, 10)
    assert env.events(rc, "UpdateSubmitted")[0]["worker"] == OUTSIDER.address
    assert env.ledger.has_submitted(job, 2, OUTSIDER.address)
    env.submit(job, 2, 0, parent=h("m1"))
    assert env.ledger.round(job, 2).status == "open"  # 2 of 3
    env.submit(job, 2, 1, parent=h("m1"))
    assert env.ledger.round(job, 2).status == "closed"
    # the joiner is credited like any worker, at its index
    finalize(env, job, 2, [0, 0, 0], h("m2"), Settlement((0, 0, 5)))
    assert env.ledger.round(job, 2).status == "finalized"


def test_leaving_between_rounds_refunds_the_stake_and_the_next_round_expects_fewer(env: ContractEnv):
    S = 3 * 10**17
    job = env.create(max_workers=4, worker_stake=S, min_submissions=1, num_rounds=3)
    for w in WORKERS:
        env.as_(w).stake(job, S)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)  # worker 2 sits round 1 out
    env.warp_past(env.ledger.round(job, 1).deadline)
    with reverted("ContributionPending"):
        env.as_(W0).leave(job)
    with reverted("NotWorker"):
        env.as_(OUTSIDER).leave(job)
    rc = env.as_(W2).leave(job)
    assert env.events(rc, "WorkerLeft") == [{"jobId": job, "worker": W2.address, "refund": S}]
    assert env.ledger.balance_of(W2.address) == S
    assert env.ledger.worker_state(job, W2.address) == ("left", 0)
    with reverted("WorkerHasLeft"):
        env.as_(W2).leave(job)
    with reverted("AlreadyJoined"):
        env.as_(W2).join(job, S)
    # a joiner may leave before its first round: its stake comes back, it is never expected
    env.as_(OUTSIDER).join(job, S)
    rc = env.as_(OUTSIDER).leave(job)
    assert env.events(rc, "WorkerLeft") == [{"jobId": job, "worker": OUTSIDER.address, "refund": S}]
    assert env.ledger.worker_state(job, OUTSIDER.address) == ("left", 0)
    assert env.ledger.job(job).active_workers == 2
    assert_solvent(env, [job])

    finalize(env, job, 1, [0, 0], h("m1"), Settlement((1, 1, 0)))
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.expected) == ("open", 2)
    assert env.ledger.job(job).active_workers == 2
    with reverted("WorkerHasLeft"):
        env.submit(job, 2, 2, parent=h("m1"))
    with reverted("WorkerHasLeft"):
        env.as_(OUTSIDER).submit_update(job, 2, h("m1"), h("d"), h("c"), 1, 1)
    env.submit(job, 2, 0, parent=h("m1"))
    env.submit(job, 2, 1, parent=h("m1"))
    assert env.ledger.round(job, 2).status == "closed"  # the two remaining workers: closed early
    assert len(env.ledger.round_workers(job, 2)) == 4  # credits are indexed over every index, left ones too
    finalize(env, job, 2, [0, 0], h("m2"), Settlement((0, 0, 0, 0)))

    # the last round is skipped: only the stakes still held come back (not the refunded ones)
    env.warp_past(env.ledger.round(job, 3).deadline)
    rc = env.as_(EXTRA).close_round(job, 3)
    assert env.events(rc, "JobCompleted")
    assert env.events(rc, "StakeReturned") == [{"jobId": job, "worker": W0.address, "amount": S},
                                              {"jobId": job, "worker": W1.address, "amount": S}]
    assert env.ledger.balance_of(W2.address) == S and env.ledger.balance_of(OUTSIDER.address) == S
    assert env.w3.eth.get_balance(env.address) == 4 * S
    assert_solvent(env, [job])
    with reverted("JobFinished"):
        env.as_(W0).leave(job)
    with reverted("JobFinished"):
        env.as_(EXTRA).join(job, S)


def test_a_worker_that_left_cannot_post_a_stake(env: ContractEnv):
    """A named worker of a staked open job that leaves before staking is gone for good
    (it cannot submit, join or leave again). Posting the stake afterwards must be
    refused: accepted, the money would sit in the job, useless, until it completes."""
    S = 10**16
    job = env.create(worker_stake=S, max_workers=3, min_submissions=1, num_rounds=1)
    env.as_(W0).stake(job, S)
    env.as_(W1).stake(job, S)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)
    env.warp_past(env.ledger.round(job, 1).deadline)
    rc = env.as_(W2).leave(job)  # never staked: nothing to refund
    assert env.events(rc, "WorkerLeft") == [{"jobId": job, "worker": W2.address, "refund": 0}]
    assert env.ledger.worker_state(job, W2.address) == ("left", 0)
    with reverted("WorkerHasLeft") as e:
        env.as_(W2).stake(job, S)
    assert e.value.args_dict == {"jobId": job, "worker": W2.address}
    assert env.ledger.worker_state(job, W2.address) == ("left", 0)


def test_an_open_job_may_start_without_workers(env: ContractEnv):
    with reverted("NoWorkers") as e:
        env.create(workers=[], min_submissions=1)
    assert e.value.args_dict == {}
    job = env.create(workers=[], max_workers=2, min_submissions=1, num_rounds=2)
    info = env.ledger.job(job)
    assert info.workers == [] and info.active_workers == 0
    r1 = env.ledger.round(job, 1)
    assert (r1.status, r1.expected) == ("open", 0)
    with reverted("RoundInProgress"):  # a round expecting nobody waits for its deadline
        env.as_(W0).join(job, 0)
    env.warp_past(r1.deadline)
    assert env.ledger.round(job, 1).status == "closed"
    with reverted("WrongStake") as e:  # no stake: nothing may be sent
        env.as_(W0).join(job, 1)
    assert e.value.args_dict == {"jobId": job, "expected": 0, "given": 1}
    rc = env.as_(W0).join(job, 0)
    assert env.events(rc, "WorkerJoined") == [{"jobId": job, "worker": W0.address, "index": 0, "fromRound": 2,
                                               "dataRoot": b"\0" * 32, "dataBytes": 0}]
    assert env.events(rc, "StakePosted") == []
    assert env.ledger.worker_state(job, W0.address) == ("joined", 0)
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped")[0]["reason"] == 1  # too few submissions
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.expected) == ("open", 1)
    assert env.ledger.worker_state(job, W0.address) == ("active", 0)
    env.submit(job, 2, 0)
    assert env.ledger.round(job, 2).status == "closed"  # its one worker submitted


def test_a_joiner_of_the_last_round_gets_its_stake_back_at_completion(env: ContractEnv):
    S = 10**15
    job = env.create(max_workers=4, worker_stake=S, num_rounds=1)
    for w in WORKERS:
        env.as_(w).stake(job, S)
    env.submit_all(job, 1)
    rc = env.as_(OUTSIDER).join(job, S)
    assert env.events(rc, "WorkerJoined")[0]["fromRound"] == 2  # a round that never opens
    rc = finalize(env, job, 1, [0, 0, 0], h("m"), Settlement((0, 0, 0)))
    assert env.events(rc, "StakeReturned") == [{"jobId": job, "worker": a.address, "amount": S}
                                              for a in (*WORKERS, OUTSIDER)]
    assert env.ledger.balance_of(OUTSIDER.address) == S
    assert env.ledger.worker_state(job, OUTSIDER.address)[1] == 0
    assert_solvent(env, [job])


@pytest.mark.parametrize(
    "change, error, args",
    [
        (dict(slash_bps=10_001), "BpsOutOfRange", {"bps": 10_001}),
        (dict(aggregator_bps=10_001), "BpsOutOfRange", {"bps": 10_001}),
        (dict(max_workers=2), "MaxWorkersBelowNamed", {"maxWorkers": 2, "named": 3}),
        (dict(max_workers=129), "TooManyWorkers", {"count": 129, "max": 128}),
    ],
)
def test_create_job_rejects_bad_economics(env: ContractEnv, change, error, args):
    with reverted(error) as e:
        env.create(**change)
    assert e.value.args_dict == args
    assert env.ledger.job_count() == 0


def test_create_job_accepts_the_economic_limits(env: ContractEnv):
    job = env.create(slash_bps=10_000, aggregator_bps=10_000, max_workers=128, worker_stake=2**128 - 1, reward=7)
    info = env.ledger.job(job)
    assert (info.slash_bps, info.aggregator_bps, info.max_workers, info.worker_stake, info.reward, info.pool) == (
        10_000, 10_000, 128, 2**128 - 1, 7, 7)
    job = env.create(max_workers=3)  # exactly the named workers
    assert env.ledger.job(job).max_workers == 3


# ------------------------------------------------------------------------------ 7. gas


def test_a_staked_workers_submission_costs_under_40k_gas(env: ContractEnv):
    """The hot path stays under 40,000 gas for a staked job's worker (its stake posted),
    with a realistic checkpoint: sha256 digests, a 3 GB file, a million samples. Calldata
    is priced per non-zero byte, so absurd sizes (all eight bytes non-zero) cost ~100 more."""
    S = 10**16
    job = env.create(worker_stake=S, slash_bps=100, reward=ETH, aggregator_bps=100, num_rounds=2)
    for w in WORKERS:
        env.as_(w).stake(job, S)
    big = dict(size=3_000_000_000, samples=1_000_000)
    used = [int(env.submit(job, 1, i, **big)["gasUsed"]) for i in range(3)]
    print("submitUpdate gas, round 1:", used)
    assert max(used) < 40_000, used
    # the same in a later round (the slots are rewritten, never created)
    finalize(env, job, 1, [0, 0, 0], h("m1"), Settlement((1, 1, 1)))
    used2 = [int(env.submit(job, 2, i, parent=h("m1"), **big)["gasUsed"]) for i in range(3)]
    print("submitUpdate gas, round 2:", used2)
    assert max(used2) < 40_000, used2
