"""Batched submissions on a real anvil: workers sign (EIP-712) and anyone relays many
signatures in one `submitBatch`, counted exactly as direct submissions (same events,
same commitment, the round closes early the same way); every check of `submitUpdate`
holds per entry (a worker of the job, active, the round, its parent, the deadline,
once), a tampered, foreign or replayed signature is refused naming the entry, a worker
that raced its relayer is skipped rather than sinking the batch; and the amortised gas
of a contribution at 64 workers is under 10,000.

One anvil for the module, a fresh contract per test (as tests/chain/test_economics.py).
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak
from web3.logs import DISCARD

from conftest import DEV_KEYS
from ledger.protocol.batch import SignedSubmission, sign_submission
from ledger.store.cid import cid_of_bytes
from ledger.ethereum.contract import TrainingLedger
from ledger.protocol.settlement import Settlement
from support.contract import AGGS, ContractEnv, DURATION, GENESIS, OUTSIDER, WORKERS, finalize, h, reverted

ETH = 10**18


@pytest.fixture
def env(contract_env) -> ContractEnv:
    return contract_env


def signed(env: ContractEnv, job: int, rnd: int, account, parent: bytes = GENESIS, *, tag: str = "", **kw) -> SignedSubmission:
    """``account``'s signature over a distinct checkpoint of (job, round)."""
    args = dict(digest=h(f"ckpt {job} {rnd} {account.address} {tag}"),
                cid=cid_of_bytes(f"cid {job} {rnd} {account.address} {tag}".encode()).cid,
                size=3_000_000_000, num_samples=1_000_000)
    args.update(kw)
    return sign_submission(account, env.ledger.chain_id, env.address, job, rnd, parent, args["digest"],
                           args["cid"], args["size"], args["num_samples"])


def relay(env: ContractEnv, job: int, rnd: int, entries, parent: bytes = GENESIS, roster=None, relayer=OUTSIDER):
    roster = roster if roster is not None else env.ledger.job(job).workers
    return env.as_(relayer).submit_batch(job, rnd, parent, roster, entries)


def events(env: ContractEnv, rc, name: str) -> list[dict]:
    ev = getattr(env.ledger.contract.events, name)()
    return [dict(e["args"]) for e in ev.process_receipt(rc, errors=DISCARD) if e["address"] == env.address]


# ------------------------------------------------------------------------------ counted as direct submissions


def test_a_relayed_batch_counts_like_direct_submissions(env: ContractEnv):
    job = env.create()
    entries = [signed(env, job, 1, w) for w in reversed(WORKERS)]  # any order: the batch's order counts
    rc = relay(env, job, 1, entries)
    (ev,) = events(env, rc, "BatchSubmitted")
    assert (ev["jobId"], ev["round"], ev["relayer"], len(ev["entries"])) == (job, 1, OUTSIDER.address, 300)
    subs = env.ledger.submissions(job, 1)
    assert [s.worker for s in subs] == [e.worker for e in entries]
    assert [(s.digest, s.cid, s.size, s.num_samples) for s in subs] == \
        [(e.digest, e.cid, e.size, e.num_samples) for e in entries]
    r = env.ledger.round(job, 1)
    # the same running commitment a direct submission builds, and the round closed early
    assert r.commitment == TrainingLedger.commitment_of(job, 1, subs)
    assert r.submissions == 3 and r.status == "closed"      # before its deadline
    for w in WORKERS:
        assert env.ledger.has_submitted(job, 1, w.address)
    # ...and the round finalizes on it as on direct submissions
    finalize(env, job, 1, [0, 0, 0], h("m1"), Settlement((1, 1, 1)))
    assert env.ledger.round(job, 1).status == "finalized"
    # a relayer pays; the workers need no ether to submit
    fresh = Account.create()
    job2 = env.create(workers=[fresh.address, WORKERS[0].address], min_submissions=1)
    relay(env, job2, 1, [signed(env, job2, 1, fresh)])
    assert env.w3.eth.get_balance(fresh.address) == 0 and env.ledger.has_submitted(job2, 1, fresh.address)


def test_a_worker_that_raced_its_relayer_is_skipped_not_fatal(env: ContractEnv):
    job = env.create()
    env.submit(job, 1, 0)                      # worker 0 submits directly first
    mine = signed(env, job, 1, WORKERS[0])
    rc = relay(env, job, 1, [mine, signed(env, job, 1, WORKERS[1])])
    assert events(env, rc, "SubmissionSkipped") == [{"jobId": job, "round": 1, "worker": WORKERS[0].address}]
    assert len(events(env, rc, "BatchSubmitted")[0]["entries"]) == 100 * 1
    assert [s.worker for s in env.ledger.submissions(job, 1)] == [WORKERS[0].address, WORKERS[1].address]
    # twice in one batch: the first entry counts
    job = env.create()
    a, b = signed(env, job, 1, WORKERS[2], tag="a"), signed(env, job, 1, WORKERS[2], tag="b")
    relay(env, job, 1, [a, b])
    (sub,) = env.ledger.submissions(job, 1)
    assert sub.digest == a.digest
    # a batch of nothing new changes nothing
    before = env.ledger.round(job, 1).commitment
    rc = relay(env, job, 1, [b])
    assert len(events(env, rc, "BatchSubmitted")[0]["entries"]) == 100 * 0 and env.ledger.round(job, 1).commitment == before


# ------------------------------------------------------------------------------ refused


def test_tampered_foreign_or_replayed_signatures_are_refused_naming_the_entry(env: ContractEnv):
    job = env.create(num_rounds=2)
    good = signed(env, job, 1, WORKERS[0])
    tampered = SignedSubmission(**{**good.__dict__, "size": good.size + 1})
    with reverted("BadSignature") as e:
        relay(env, job, 1, [signed(env, job, 1, WORKERS[1]), tampered])
    assert f"BadSignature(jobId={job}, round=1, position=1)" in str(e.value)   # the second entry
    # signed by someone else than the worker it claims to be
    forged = SignedSubmission(**{**signed(env, job, 1, OUTSIDER).__dict__, "worker": WORKERS[0].address})
    with reverted("BadSignature"):
        relay(env, job, 1, [forged])
    # signed for another deployment (contract address) or another chain
    other = sign_submission(WORKERS[0], env.ledger.chain_id, AGGS[0].address, job, 1, GENESIS, good.digest, good.cid,
                            good.size, good.num_samples)
    foreign = sign_submission(WORKERS[0], env.ledger.chain_id + 1, env.address, job, 1, GENESIS, good.digest,
                              good.cid, good.size, good.num_samples)
    for s in (other, foreign):
        with reverted("BadSignature"):
            relay(env, job, 1, [SignedSubmission(**{**s.__dict__, "contract": env.address})])
    # the malleable twin (s -> n - s, v flipped) of a valid signature
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s_ = int.from_bytes(good.signature[32:64], "big")
    v = good.signature[64]
    twin = good.signature[:32] + (n - s_).to_bytes(32, "big") + bytes([55 - v])
    assert SignedSubmission(**{**good.__dict__, "signature": twin}).signer() is None
    with reverted("BadSignature"):
        relay(env, job, 1, [SignedSubmission(**{**good.__dict__, "signature": twin})])
    assert not env.ledger.submissions(job, 1)
    # a round-1 signature replayed in round 2 (same parent even) does not verify
    relay(env, job, 1, [good, *(signed(env, job, 1, w) for w in WORKERS[1:])])
    finalize(env, job, 1, [0, 0, 0], GENESIS, Settlement((0, 0, 0)))
    assert env.ledger.round(job, 2).status == "open"
    replay = SignedSubmission(**{**good.__dict__, "round": 2})
    with reverted("BadSignature"):
        relay(env, job, 2, [replay])


def test_the_round_and_roster_checks_of_a_direct_submission(env: ContractEnv):
    job = env.create(num_rounds=2)
    s0 = signed(env, job, 1, WORKERS[0])
    with reverted("UnknownJob"):
        relay(env, 99, 1, [s0], roster=[w.address for w in WORKERS])
    with reverted("RosterMismatch"):
        relay(env, job, 1, [s0], roster=[w.address for w in reversed(WORKERS)])
    with reverted("RosterMismatch"):
        relay(env, job, 1, [s0], roster=[w.address for w in WORKERS[:2]])
    with reverted("WrongRound"):
        relay(env, job, 2, [signed(env, job, 2, WORKERS[0])])
    with reverted("WrongParent"):
        relay(env, job, 1, [signed(env, job, 1, WORKERS[0], parent=h("other"))], parent=h("other"))
    with pytest.raises(ValueError, match="not a worker of job"):
        relay(env, job, 1, [signed(env, job, 1, OUTSIDER)])
    env.w3.provider.make_request("evm_increaseTime", [DURATION + 1])
    env.w3.provider.make_request("evm_mine", [])
    with reverted("RoundClosed"):
        relay(env, job, 1, [s0])


def test_only_active_workers_count(env: ContractEnv):
    S = 10**16
    job = env.create(worker_stake=S, slash_bps=100)
    env.as_(WORKERS[0]).stake(job, S)
    with reverted("StakeMissing"):
        relay(env, job, 1, [signed(env, job, 1, WORKERS[0]), signed(env, job, 1, WORKERS[1])])
    relay(env, job, 1, [signed(env, job, 1, WORKERS[0])])
    # an open job: a joiner is queued until the next round opens
    job = env.create(workers=[WORKERS[0].address], max_workers=3, min_submissions=1, num_rounds=2)
    relay(env, job, 1, [signed(env, job, 1, WORKERS[0])])           # closes round 1 (the only worker)
    env.as_(WORKERS[1]).join(job, 0)
    env.as_(WORKERS[2]).join(job, 0)
    roster = env.ledger.job(job).workers
    assert len(roster) == 3                                         # the roster hash follows the joins
    with reverted("NotActiveYet"):
        relay(env, job, 1, [signed(env, job, 1, WORKERS[1])])
    env.as_(WORKERS[2]).leave(job)
    finalize(env, job, 1, [0], h("m1"), Settlement((1,)))
    with reverted("WorkerHasLeft"):
        relay(env, job, 2, [signed(env, job, 2, WORKERS[2], parent=h("m1"))], parent=h("m1"))
    rc = relay(env, job, 2, [signed(env, job, 2, w, parent=h("m1")) for w in WORKERS[:2]], parent=h("m1"))
    assert len(events(env, rc, "BatchSubmitted")[0]["entries"]) == 100 * 2
    assert env.ledger.round(job, 2).status == "closed"             # both active workers: closed early


def test_signed_submissions_cross_the_wire_and_hostile_json_is_refused(env: ContractEnv):
    s = signed(env, 1, 1, WORKERS[0])
    back = SignedSubmission.from_json(s.to_json())
    assert back == s and back.signer() == WORKERS[0].address
    bad = [
        ([], "JSON object"),
        ({**s.to_json(), "size": -1}, "'size'"),
        ({**s.to_json(), "size": True}, "'size'"),
        ({**s.to_json(), "round": 2**64}, "'round'"),
        ({**s.to_json(), "digest": "0x12"}, "'digest' is 1 bytes"),
        ({**s.to_json(), "signature": "zz"}, "'signature' is not hex"),
        ({**s.to_json(), "cid": "not-a-cid"}, "'cid'"),
        ({**s.to_json(), "worker": "0x1234"}, "not an address"),
        ({k: v for k, v in s.to_json().items() if k != "parent"}, "missing field 'parent'"),
    ]
    for d, msg in bad:
        with pytest.raises(ValueError, match=msg):
            SignedSubmission.from_json(d)
    assert SignedSubmission.from_json({**s.to_json(), "num_samples": 7}).signer() != WORKERS[0].address


# ------------------------------------------------------------------------------ gas


def test_a_batched_contribution_costs_under_10k_gas_at_64_workers(env: ContractEnv):
    """64 workers (fresh keys: they hold no ether), realistic fields: the relayer's
    transaction divided by the entries it carries."""
    workers = [Account.from_key(keccak(text=f"batch worker {i}")) for i in range(64)]
    aggs = [Account.from_key(keccak(text=f"batch aggregator {i}")).address for i in range(16)]
    rc = env.chain.transact(env.ledger.contract.functions.createJob(
        env.params(workers=[w.address for w in workers], aggregators=aggs, quorum=9, min_submissions=1).to_abi()))
    create_gas = int(rc["gasUsed"])
    job = env.ledger.job_count()
    print(f"createJob gas, 64 workers and 16 aggregators: {create_gas:,}")
    assert create_gas < 30_000_000 // 4, create_gas      # a quarter of a 30M-gas block
    rc = relay(env, job, 1, [signed(env, job, 1, w) for w in workers])
    per = int(rc["gasUsed"]) / 64
    print(f"submitBatch gas per contribution at 64 workers: {per:,.0f}")
    assert per <= 10_000, per
    assert env.ledger.round(job, 1).status == "closed"
