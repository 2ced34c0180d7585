"""TrainingLedger on a real anvil: every revert path, every event's fields, the round
lifecycle (commit-reveal, finalize with k=2 of n=3, skip below the minimum or without
a quorum after the proposal window, several rounds to completion), the off-chain
commitment/outcome/commit hash, the Chain client (local signing,
revert decoding, paginated logs, error mapping), and a cross-check with `cast`.

The contract is deployed from the committed artifact with web3 directly (no
ledger.ethereum.deploy), deployed once on the module's anvil and reverted to that state
after each test (``contract_env``); the Chain client's own tests get a fresh anvil (``rpc_url``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from conftest import DEV_KEYS
from ledger.ethereum.deploy import deploy_contracts
from ledger.ethereum.chain import Chain
from ledger.store.cid import cid_from_chain, cid_to_chain
from ledger.ethereum import contract as contract_mod
from ledger.ethereum.contract import ChainEvent, JobParams, TrainingLedger
from ledger.protocol.settlement import Settlement
from ledger.errors import ChainUnreachable, ContractReverted, InsufficientFunds, LedgerError, WrongChain
from support.contract import ContractEnv, AGGS, CAST, DURATION, GENESIS, OUTSIDER, OWNER, WINDOW, WORKERS, h, reverted

Z3 = Settlement((0, 0, 0))  # no credit, no slash for the three workers


@pytest.fixture
def env(contract_env) -> ContractEnv:
    return contract_env


# ------------------------------------------------------------------------------ job creation


def test_create_job_events_and_views(env: ContractEnv):
    p = env.params()
    rc = env.chain.transact(env.ledger.contract.functions.createJob(p.to_abi()), context="create")
    (created,) = env.events(rc, "JobCreated")
    assert created["jobId"] == 1 and created["creator"] == OWNER.address
    got = dict(created["params"])
    assert got == {
        "configDigest": p.config_digest, "configCid": p.config_cid, "configSize": p.config_size,
        "genesisDigest": p.genesis_digest, "genesisCid": p.genesis_cid, "genesisSize": p.genesis_size,
        "workers": p.workers, "aggregators": p.aggregators, "quorum": 2, "roundDuration": DURATION,
        "numRounds": 3, "minSubmissions": 2, "cidVersion": 0, "proposalWindow": WINDOW, "disclosureWindow": 0,
        "maxWorkers": 0, "workerStake": 0, "slashBps": 0, "aggregatorBps": 0,
        "committeeSize": 0, "committeeQuorum": 0, "voteWindow": 0,
    }
    (opened,) = env.events(rc, "RoundOpened")
    assert opened == {"jobId": 1, "round": 1, "parent": GENESIS, "deadline": env.block_time(rc) + DURATION}

    assert env.ledger.job_count() == 1
    j = env.ledger.job(1)
    assert (j.job_id, j.owner, j.config_digest, cid_to_chain(j.config_cid), j.config_size) == (1, OWNER.address, p.config_digest, p.config_cid, 1234)
    assert (j.genesis_digest, j.genesis_cid, j.genesis_size) == (GENESIS, cid_from_chain(p.genesis_cid, 56789, 0), 56789)
    assert j.workers == p.workers and j.aggregators == p.aggregators
    assert (j.quorum, j.round_duration, j.num_rounds, j.min_submissions, j.cid_version) == (2, DURATION, 3, 2, 0)
    assert (j.current_round, j.current_parent, j.current_parent_cid, j.current_parent_size) == (1, GENESIS, j.genesis_cid, 56789)
    assert j.completed is False and j.created_block == rc["blockNumber"] and j.proposal_window == WINDOW

    r = env.ledger.round(1, 1)
    assert r.status == "open" and r.parent == GENESIS and r.submissions == 0 and r.proposals == 0
    assert r.deadline == opened["deadline"]
    # before any commit, the commit phase would end a window after the deadline, the reveal phase a window later
    assert (r.commits, r.commit_deadline, r.reveal_deadline, r.skip_reason) == (
        0, opened["deadline"] + WINDOW, opened["deadline"] + 2 * WINDOW, "")
    assert r.commitment == TrainingLedger.commitment_seed(1, 1) == TrainingLedger.commitment_of(1, 1, [])
    assert r.commitment == keccak((1).to_bytes(32, "big") + (1).to_bytes(32, "big"))
    assert env.ledger.round(1, 2).status == "none"
    assert env.ledger.contract.functions.getWorkers(1).call() == p.workers
    assert env.ledger.contract.functions.getAggregators(1).call() == p.aggregators
    assert env.create() == 2 and env.ledger.job_count() == 2


ZERO = "0x" + "00" * 20
MANY_AGGS = [to_checksum_address(keccak(text=f"a{i}")[:20]) for i in range(256)]


@pytest.mark.parametrize(
    "change, error, args",
    [
        (dict(workers=[]), "NoWorkers", {}),
        (dict(aggregators=[]), "NoAggregators", {}),
        (dict(quorum=0), "QuorumNotMajority", {"quorum": 0, "aggregators": 3}),
        # 1 of 3 is not a majority: one aggregator would finalize alone
        (dict(quorum=1), "QuorumNotMajority", {"quorum": 1, "aggregators": 3}),
        (dict(quorum=4), "QuorumNotMajority", {"quorum": 4, "aggregators": 3}),
        (dict(aggregators=[a.address for a in AGGS] + [OUTSIDER.address]), "QuorumNotMajority",
         {"quorum": 2, "aggregators": 4}),  # 2 of 4: a tie
        (dict(proposal_window=0), "ZeroDuration", {}),
        (dict(config_digest=b"\0" * 32), "ZeroDigest", {}),
        (dict(aggregators=[AGGS[0].address, ZERO, AGGS[1].address]), "ZeroAddress", {}),
        (dict(aggregators=MANY_AGGS, quorum=200), "TooManyAggregators", {"count": 256, "max": 255}),
        # a worker who also judges would vote on its own contribution
        (dict(aggregators=[AGGS[0].address, WORKERS[1].address, AGGS[1].address]), "DuplicateMember",
         {"account": WORKERS[1].address}),
        (dict(round_duration=0), "ZeroDuration", {}),
        (dict(num_rounds=0), "ZeroDuration", {}),
        (dict(min_submissions=0), "MinSubmissionsOutOfRange", {"minSubmissions": 0, "workers": 3}),
        (dict(min_submissions=4), "MinSubmissionsOutOfRange", {"minSubmissions": 4, "workers": 3}),
        (dict(cid_version=2), "BadCidVersion", {"cidVersion": 2}),
        (dict(genesis_digest=b"\0" * 32), "ZeroDigest", {}),
        (dict(workers=[WORKERS[0].address, WORKERS[0].address]), "DuplicateMember", {"account": WORKERS[0].address}),
        (dict(aggregators=[AGGS[0].address, AGGS[0].address]), "DuplicateMember", {"account": AGGS[0].address}),
        (dict(workers=[ZERO], min_submissions=1), "ZeroAddress", {}),
        (dict(slash_bps=10_001), "BpsOutOfRange", {"bps": 10_001}),
        (dict(aggregator_bps=10_001), "BpsOutOfRange", {"bps": 10_001}),
        (dict(max_workers=2), "MaxWorkersBelowNamed", {"maxWorkers": 2, "named": 3}),
        (dict(workers=[to_checksum_address(keccak(text=str(i))[:20]) for i in range(129)], min_submissions=1),
         "TooManyWorkers", {"count": 129, "max": 128}),
    ],
)
def test_create_job_rejects_invalid_params(env: ContractEnv, change, error, args):
    """Each wrong parameter has its own typed error, with the values that are wrong."""
    with reverted(error) as exc:
        env.create(**change)
    assert exc.value.args_dict == args
    assert env.ledger.job_count() == 0


@pytest.mark.parametrize("n, quorum", [(1, 1), (2, 2), (3, 2), (3, 3), (4, 3), (5, 3)])
def test_quorum_may_be_any_strict_majority(env: ContractEnv, n, quorum):
    aggs = [to_checksum_address(keccak(text=f"agg {i}")[:20]) for i in range(n)]
    job = env.create(aggregators=aggs, quorum=quorum)
    assert env.ledger.job(job).quorum == quorum and env.ledger.job(job).aggregators == aggs


def test_255_aggregators_is_the_maximum(env: ContractEnv):
    aggs = [to_checksum_address(keccak(text=f"a{i}")[:20]) for i in range(255)]
    job = env.create(aggregators=aggs, quorum=128)
    assert len(env.ledger.job(job).aggregators) == 255


def test_the_python_side_takes_the_contracts_limits_and_layout(env: ContractEnv):
    """The limits the CLI and the job config check are the deployed contract's own; the
    structs are read and written by the ABI's field names, whatever their order."""
    from ledger.protocol import jobconfig
    from ledger_cli import job_cmds

    f = env.ledger.contract.functions
    assert (contract_mod.MAX_WORKERS, contract_mod.MAX_AGGREGATORS) == (f.MAX_WORKERS().call(), f.MAX_AGGREGATORS().call())
    assert jobconfig.MAX_WORKERS == job_cmds.MAX_WORKERS == contract_mod.MAX_WORKERS
    assert job_cmds.MAX_AGGREGATORS == contract_mod.MAX_AGGREGATORS
    # every event whose first topic is the job id, none other (Withdrawn's is an account)
    names = contract_mod.job_event_names(env.ledger.abi)
    assert {"JobCreated", "RoundFinalized", "RewardPaid", "CommitteeVoted"} <= set(names) and "Withdrawn" not in names
    # JobParams by name: an ABI with createJob's fields in another order gets them in that order
    p = env.params()
    fields = contract_mod.abi_fields(env.ledger.abi, "createJob", "inputs")
    by_name = dict(zip(fields, p.to_abi(env.ledger.abi)))
    swapped = json.loads(json.dumps(env.ledger.abi))
    create = next(e for e in swapped if e.get("name") == "createJob")
    create["inputs"][0]["components"].reverse()
    assert p.to_abi(swapped) == tuple(by_name[n] for n in reversed(fields))
    create["inputs"][0]["components"].append({"name": "newKnob", "type": "uint8"})
    with pytest.raises(LedgerError, match="newKnob"):
        p.to_abi(swapped)
    # a view's result is read by name, and a result the ABI does not describe is refused
    info = env.ledger.job(env.create())
    assert info.quorum == p.quorum and info.round_duration == p.round_duration and info.pool == p.reward
    with pytest.raises(LedgerError, match="getRound returned 2 fields"):
        env.ledger._named("getRound", (1, 2))


def test_128_workers_is_the_maximum(env: ContractEnv):
    workers = [to_checksum_address(keccak(text=str(i))[:20]) for i in range(127)] + [WORKERS[0].address]
    job = env.create(workers=workers, min_submissions=1)
    env.submit(job, 1, 0)  # the 128th worker: the bitmap's top bit
    assert env.ledger.has_submitted(job, 1, WORKERS[0].address)
    assert not env.ledger.has_submitted(job, 1, workers[0])
    assert env.ledger.round(job, 1).submissions == 1


# ------------------------------------------------------------------------------ submissions


def test_submission_event_fields_order_and_commitment(env: ContractEnv):
    job = env.create()
    rcs = [env.submit(job, 1, i) for i in (2, 0, 1)]  # submission order differs from registration order
    (ev,) = env.events(rcs[0], "UpdateSubmitted")
    assert ev == {"jobId": job, "round": 1, "worker": WORKERS[2].address, "digest": h(f"ckpt {job} 1 2"),
                  "cid": h(f"cid {job} 1 2"), "size": 100_002, "numSamples": 1_002}
    subs = env.ledger.submissions(job, 1)
    assert [s.worker for s in subs] == [WORKERS[i].address for i in (2, 0, 1)]
    assert [s.index for s in subs] == [0, 1, 2]
    for s, rc, i in zip(subs, rcs, (2, 0, 1)):
        assert (s.job_id, s.round, s.digest, cid_to_chain(s.cid), s.size, s.num_samples) == (job, 1, h(f"ckpt {job} 1 {i}"), h(f"cid {job} 1 {i}"), 100_000 + i, 1_000 + i)
        assert s.block == rc["blockNumber"] and s.tx_hash == rc["transactionHash"].to_0x_hex()
        assert s.log_index == rc["logs"][0]["logIndex"] and s.timestamp == env.block_time(rc)
    r = env.ledger.round(job, 1)
    assert r.submissions == 3 and r.status == "closed"  # every worker submitted: closed before the deadline
    assert TrainingLedger.commitment_of(job, 1, subs) == r.commitment
    # the rule written out: keccak256(abi.encodePacked(c, worker, digest, cid, uint64 size, uint64 numSamples))
    c = keccak(job.to_bytes(32, "big") + (1).to_bytes(32, "big"))
    for s in subs:
        c = keccak(c + bytes.fromhex(s.worker[2:]) + s.digest + cid_to_chain(s.cid) + s.size.to_bytes(8, "big") + s.num_samples.to_bytes(8, "big"))
    assert c == r.commitment
    # order matters
    assert TrainingLedger.commitment_of(job, 1, list(reversed(subs))) != r.commitment
    assert all(env.ledger.has_submitted(job, 1, w.address) for w in WORKERS)
    assert not env.ledger.has_submitted(job, 1, OUTSIDER.address)
    assert not env.ledger.has_submitted(job, 2, WORKERS[0].address)


def test_submit_reverts(env: ContractEnv):
    job = env.create()
    with reverted("UnknownJob") as e:
        env.submit(99, 1, 0)
    assert e.value.args_dict == {"jobId": 99}
    with reverted("NotWorker") as e:
        env.as_(OUTSIDER).submit_update(job, 1, GENESIS, h("x"), h("y"), 1, 1)
    assert e.value.args_dict == {"jobId": job, "account": OUTSIDER.address}
    with reverted("WrongRound") as e:
        env.submit(job, 2, 0)
    assert e.value.args_dict == {"jobId": job, "current": 1, "given": 2}
    with reverted("WrongParent") as e:
        env.submit(job, 1, 0, parent=h("not the parent"))
    assert e.value.args_dict == {"jobId": job, "round": 1, "expected": GENESIS, "given": h("not the parent")}
    env.submit(job, 1, 0)
    with reverted("AlreadySubmitted") as e:
        env.submit(job, 1, 0, digest=h("another"))
    assert e.value.args_dict == {"jobId": job, "round": 1, "worker": WORKERS[0].address}
    assert "AlreadySubmitted" in str(e.value) and "submit job" in str(e.value)
    # late: past the deadline (block.timestamp > deadline)
    deadline = env.ledger.round(job, 1).deadline
    env.warp(DURATION + 5)
    with reverted("RoundClosed") as e:
        env.submit(job, 1, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "deadline": deadline}
    assert env.ledger.round(job, 1).submissions == 1
    assert env.ledger.round(job, 1).status == "closed"


def test_submission_at_the_deadline_is_on_time(env: ContractEnv):
    job = env.create()
    deadline = env.ledger.round(job, 1).deadline
    env.w3.provider.make_request("evm_setNextBlockTimestamp", [deadline])
    rc = env.submit(job, 1, 0)
    assert env.block_time(rc) == deadline
    env.w3.provider.make_request("evm_setNextBlockTimestamp", [deadline + 1])
    with reverted("RoundClosed"):
        env.submit(job, 1, 1)


# ------------------------------------------------------------------------------ proposals: commit-reveal


def test_full_round_finalizes_with_2_of_3(env: ContractEnv):
    job = env.create()
    env.submit_all(job, 1)
    r1 = env.ledger.round(job, 1)
    merged, mcid = h("merged 1"), h("merged cid 1")
    verdicts = [0, 8, 0]
    outcome = TrainingLedger.outcome_of(merged, mcid, 7777, verdicts, Z3)
    assert outcome == keccak(merged + mcid + (7777).to_bytes(8, "big") + bytes(verdicts) + Z3.digest())
    salt = h("salt 0")
    commit = TrainingLedger.commit_hash_of(outcome, salt, AGGS[0].address)
    assert commit == keccak(outcome + salt + bytes.fromhex(AGGS[0].address[2:]))

    # commits: nothing about the outcome is public; the first commit fixes the commit deadline
    rc0 = env.commit(job, 1, 0, verdicts, merged, cid=mcid, size=7777, salt=salt)
    (c0,) = env.events(rc0, "ProposalCommitted")
    assert c0 == {"jobId": job, "round": 1, "aggregator": AGGS[0].address, "commitHash": commit,
                  "commitDeadline": env.block_time(rc0) + WINDOW}
    r = env.ledger.round(job, 1)
    assert (r.status, r.commits, r.proposals) == ("closed", 1, 0)
    assert (r.commit_deadline, r.reveal_deadline) == (c0["commitDeadline"], c0["commitDeadline"] + WINDOW)
    assert env.ledger.commit_of(job, 1, AGGS[0].address) == commit
    assert env.ledger.has_committed(job, 1, AGGS[0].address) and not env.ledger.has_committed(job, 1, AGGS[1].address)
    # no reveal while commits are open (another aggregator has yet to commit, the deadline is ahead)
    with reverted("CommitPhaseOpen") as e:
        env.reveal(job, 1, 0)
    assert e.value.args_dict == {"jobId": job, "round": 1, "commitDeadline": c0["commitDeadline"]}
    rc1 = env.commit(job, 1, 1, verdicts, merged, cid=mcid, size=7777)
    (c1,) = env.events(rc1, "ProposalCommitted")
    assert c1["commitDeadline"] == c0["commitDeadline"]  # the later commit does not move it
    env.commit(job, 1, 2, [0, 0, 0], h("a third view"))  # every aggregator committed: reveals open at once

    rc = env.reveal(job, 1, 0)
    (p1,) = env.events(rc, "ProposalRevealed")
    assert p1 == {"jobId": job, "round": 1, "aggregator": AGGS[0].address, "mergedDigest": merged, "mergedCid": mcid,
                  "mergedSize": 7777, "outcome": outcome, "accepted": 2, "verdicts": bytes(verdicts), "salt": salt}
    assert env.events(rc, "RoundFinalized") == []
    r = env.ledger.round(job, 1)
    assert r.status == "closed" and (r.commits, r.proposals) == (3, 1) and r.outcome == b"\0" * 32
    assert env.ledger.votes(job, 1, outcome) == 1
    assert env.ledger.has_proposed(job, 1, AGGS[0].address) and not env.ledger.has_proposed(job, 1, AGGS[1].address)
    assert env.ledger.proposal_of(job, 1, AGGS[0].address) == outcome

    rc2 = env.reveal(job, 1, 1)
    assert len(env.events(rc2, "ProposalRevealed")) == 1
    (fin,) = env.events(rc2, "RoundFinalized")
    assert fin == {"jobId": job, "round": 1, "mergedDigest": merged, "mergedCid": mcid, "mergedSize": 7777,
                   "outcome": outcome, "accepted": 2}
    (opened,) = env.events(rc2, "RoundOpened")
    assert opened == {"jobId": job, "round": 2, "parent": merged, "deadline": env.block_time(rc2) + DURATION}
    assert env.events(rc2, "JobCompleted") == []

    r = env.ledger.round(job, 1)
    assert (r.status, r.parent, r.submissions, r.commitment) == ("finalized", GENESIS, 3, r1.commitment)
    assert (r.merged_digest, cid_to_chain(r.merged_cid), r.merged_size, r.outcome, r.accepted, r.proposals) == (merged, mcid, 7777, outcome, 2, 2)
    assert (r.commits, r.commit_deadline, r.reveal_deadline, r.skip_reason) == (3, c0["commitDeadline"], c0["commitDeadline"] + WINDOW, "")
    assert r.deadline == r1.deadline
    assert env.ledger.votes(job, 1, outcome) == 2
    j = env.ledger.job(job)
    assert (j.current_round, j.current_parent, cid_to_chain(j.current_parent_cid), j.current_parent_size) == (2, merged, mcid, 7777)
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.parent, r2.submissions, r2.commits, r2.proposals) == ("open", merged, 0, 0, 0)
    # past rounds keep who submitted; the new round starts empty
    assert env.ledger.has_submitted(job, 1, WORKERS[1].address)
    assert not env.ledger.has_submitted(job, 2, WORKERS[1].address)

    # the third aggregator is too late: the round is finalized (double finalize impossible)
    with reverted("RoundAlreadyFinalized") as e:
        env.reveal(job, 1, 2, commitment=r1.commitment)
    assert e.value.args_dict == {"jobId": job, "round": 1}
    with reverted("RoundAlreadyFinalized"):
        env.reveal(job, 1, 0, commitment=r1.commitment)
    # closing a finalized round is refused with the same error
    with reverted("RoundAlreadyFinalized") as e:
        env.as_(OUTSIDER).close_round(job, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1}
    # the old parent no longer opens anything: round 2 builds on the merge
    with reverted("WrongParent"):
        env.submit(job, 2, 0, parent=GENESIS)
    env.submit(job, 2, 0, parent=merged)
    with reverted("WrongRound"):
        env.submit(job, 1, 1, parent=GENESIS)


def test_commit_and_reveal_reverts(env: ContractEnv):
    job = env.create()
    merged = h("m")
    agg0 = env.as_(AGGS[0])
    with reverted("UnknownJob"):
        agg0.commit_proposal(42, 1, h("c"))
    with reverted("UnknownJob"):
        agg0.reveal_proposal(42, 1, b"\1" * 32, [0], merged, h("c"), 1, h("s"), Z3)
    with reverted("NotAggregator") as e:
        env.as_(OUTSIDER).commit_proposal(job, 1, h("c"))
    assert e.value.args_dict == {"jobId": job, "account": OUTSIDER.address}
    with reverted("NotAggregator"):  # a worker is not an aggregator
        env.as_(WORKERS[0]).commit_proposal(job, 1, h("c"))
    with reverted("NotAggregator"):
        env.as_(OUTSIDER).reveal_proposal(job, 1, b"\1" * 32, [0], merged, h("c"), 1, h("s"), Z3)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)
    partial = env.ledger.round(job, 1).commitment
    deadline = env.ledger.round(job, 1).deadline
    # before the round closes (one worker missing, deadline ahead)
    with reverted("RoundNotClosed") as e:
        env.commit(job, 1, 0, [0, 0], merged)
    assert e.value.args_dict == {"jobId": job, "round": 1, "deadline": deadline}
    env.submit(job, 1, 2)
    full = env.ledger.round(job, 1).commitment
    with reverted("WrongRound") as e:
        env.commit(job, 2, 0, [0, 0, 0], merged)
    assert e.value.args_dict == {"jobId": job, "current": 1, "given": 2}
    with reverted("EmptyCommit"):
        agg0.commit_proposal(job, 1, b"\0" * 32)
    # aggregator 0 commits to a proposal that will fail the content checks; 1 and 2 to good ones
    env.commit(job, 1, 0, [0, 3, 5], merged)
    with reverted("AlreadyCommitted") as e:
        env.commit(job, 1, 0, [0, 0, 0], merged)
    assert e.value.args_dict == {"jobId": job, "round": 1, "aggregator": AGGS[0].address}
    with reverted("NotCommitted") as e:  # commits still open: yet nothing to reveal
        env.as_(AGGS[1]).reveal_proposal(job, 1, full, [0, 0, 0], merged, h("c"), 1, h("s"), Z3)
    assert e.value.args_dict == {"jobId": job, "round": 1, "aggregator": AGGS[1].address}
    env.commit(job, 1, 1, [0, 0, 5], merged)
    env.commit(job, 1, 2, [0, 0, 0], merged)
    # the content checks of a reveal
    with reverted("CommitmentMismatch") as e:  # a commitment that covers only the first two submissions
        env.reveal(job, 1, 1, commitment=partial)
    assert e.value.args_dict == {"jobId": job, "round": 1, "expected": full, "given": partial}
    with reverted("VerdictCountMismatch") as e:
        env.reveal(job, 1, 1, verdicts=[0, 0])
    assert e.value.args_dict == {"jobId": job, "round": 1, "expected": 3, "given": 2}
    with reverted("VerdictCountMismatch"):
        env.reveal(job, 1, 1, verdicts=[0, 0, 5, 0])
    # fewer than minSubmissions (2) accepted: the merge must keep the parent
    with reverted("MergeMustKeepParent") as e:
        env.reveal(job, 1, 0)
    assert e.value.args_dict == {"jobId": job, "round": 1, "parent": GENESIS, "given": merged}
    # a reveal must be exactly what was committed: another outcome, or another salt, fails
    with reverted("RevealMismatch") as e:
        env.reveal(job, 1, 1, verdicts=[0, 0, 0])
    assert e.value.args_dict == {"jobId": job, "round": 1, "aggregator": AGGS[1].address}
    with reverted("RevealMismatch"):
        env.reveal(job, 1, 1, salt=h("another salt"))
    env.reveal(job, 1, 1)
    with reverted("AlreadyRevealed") as e:
        env.reveal(job, 1, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "aggregator": AGGS[1].address}
    assert env.ledger.round(job, 1).proposals == 1


def test_reveal_deadline_and_late_reveals(env: ContractEnv):
    job = env.create()
    env.submit_all(job, 1)
    env.commit(job, 1, 0, [0, 0, 0], h("m"))
    env.commit(job, 1, 1, [0, 0, 0], h("m"))
    r = env.ledger.round(job, 1)
    env.warp_past(r.commit_deadline)
    with reverted("CommitPhaseClosed") as e:  # the third aggregator missed the commit phase
        env.commit(job, 1, 2, [0, 0, 0], h("m"))
    assert e.value.args_dict == {"jobId": job, "round": 1, "commitDeadline": r.commit_deadline}
    env.reveal(job, 1, 0)
    with reverted("ProposalWindowOpen") as e:  # aggregator 1 may still reveal
        env.as_(OUTSIDER).close_round(job, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "revealDeadline": r.reveal_deadline}
    env.warp_past(r.reveal_deadline)
    with reverted("RevealPhaseOver") as e:
        env.reveal(job, 1, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "revealDeadline": r.reveal_deadline}
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped") == [{"jobId": job, "round": 1, "parent": GENESIS, "submissions": 3, "reason": 2}]
    r = env.ledger.round(job, 1)
    assert (r.status, r.skip_reason, r.commits, r.proposals, r.merged_digest) == ("skipped", "no-quorum", 2, 1, GENESIS)


def test_copying_a_proposal_is_useless(env: ContractEnv):
    """An aggregator who verified nothing cannot ride on another's work: it cannot see an
    outcome before commits close, cannot reveal what it did not commit, and cannot replay
    another's commit (the committer's address is in the hash)."""
    job = env.create()
    env.submit_all(job, 1)
    verdicts, merged = [0, 0, 0], h("honest merge")
    rc = env.commit(job, 1, 0, verdicts, merged)
    honest_commit = env.events(rc, "ProposalCommitted")[0]["commitHash"]
    # the copier commits the very same hash, and later reveals the honest outcome and salt
    env.as_(AGGS[1]).commit_proposal(job, 1, honest_commit)
    env.commit(job, 1, 2, verdicts, merged)
    env.reveal(job, 1, 0)  # public now, but every commit is in
    honest = env.pending[(job, 1, 0)]
    with reverted("RevealMismatch"):
        env.as_(AGGS[1]).reveal_proposal(job, 1, env.ledger.round(job, 1).commitment, verdicts, merged,
                                         honest["cid"], honest["size"], honest["salt"], Z3)
    assert env.ledger.round(job, 1).status == "closed"
    rc = env.reveal(job, 1, 2)  # a second independent verification finalizes
    assert len(env.events(rc, "RoundFinalized")) == 1


def test_disagreeing_proposals_do_not_finalize(env: ContractEnv):
    job = env.create()
    env.submit_all(job, 1)
    good, bad = h("honest merge"), h("dishonest merge")
    rcs = env.propose(job, 1, {0: ([0, 0, 0], good), 1: ([0, 0, 0], bad)})  # a lone disagreeing aggregator
    assert env.events(rcs[1], "RoundFinalized") == []
    r = env.ledger.round(job, 1)
    assert r.status == "closed" and r.proposals == 2
    out_good = TrainingLedger.outcome_of(good, h(f"cid of {good.hex()}"), 4242, [0, 0, 0], Z3)
    out_bad = TrainingLedger.outcome_of(bad, h(f"cid of {bad.hex()}"), 4242, [0, 0, 0], Z3)
    assert env.ledger.votes(job, 1, out_good) == 1 and env.ledger.votes(job, 1, out_bad) == 1
    # same merge but different verdicts is a different outcome too
    assert TrainingLedger.outcome_of(good, h(f"cid of {good.hex()}"), 4242, [0, 0, 1], Z3) != out_good
    assert env.ledger.job(job).current_round == 1
    # aggregator 2 missed the commit phase (propose() waited out the deadline): the round cannot
    # finalize any more, and once every commit is revealed anyone may skip it at once
    with reverted("CommitPhaseClosed"):
        env.commit(job, 1, 2, [0, 0, 0], good)
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped") == [{"jobId": job, "round": 1, "parent": GENESIS, "submissions": 3, "reason": 2}]
    (opened,) = env.events(rc, "RoundOpened")
    assert opened["round"] == 2 and opened["parent"] == GENESIS
    # the dissent stays visible
    props = env.ledger.proposals(job, 1)
    assert [(p.aggregator, p.merged_digest, p.outcome) for p in props] == [
        (AGGS[0].address, good, out_good), (AGGS[1].address, bad, out_bad)]
    assert [p.verdicts for p in props] == [[0, 0, 0]] * 2
    assert all(p.accepted == 3 and p.merged_size == 4242 for p in props)
    assert [p.block for p in props] == sorted(p.block for p in props)
    commits = env.ledger.commits(job, 1)
    assert [c.aggregator for c in commits] == [AGGS[0].address, AGGS[1].address]
    assert [p.salt for p in props] == [env.pending[(job, 1, i)]["salt"] for i in range(2)]
    assert [c.commit_hash for c in commits] == [TrainingLedger.commit_hash_of(p.outcome, p.salt, p.aggregator) for p in props]
    names = [e.name for e in env.ledger.events(job)]
    assert names.count("ProposalCommitted") == 2 and names.count("ProposalRevealed") == 2 and "RoundFinalized" not in names

    # round 2: the third aggregator breaks the tie
    env.submit_all(job, 2)
    rcs = env.propose(job, 2, {0: ([0, 0, 0], good), 1: ([0, 0, 0], bad), 2: ([0, 0, 0], good)})
    (fin,) = env.events(rcs[2], "RoundFinalized")
    assert fin["outcome"] == out_good and fin["mergedDigest"] == good


def test_three_way_disagreement_is_skipped_once_all_revealed(env: ContractEnv):
    job = env.create(num_rounds=1)
    env.submit_all(job, 1)
    env.propose(job, 1, {a: ([0, 0, 0], h(f"view {a}")) for a in range(3)})
    r = env.ledger.round(job, 1)
    assert (r.status, r.commits, r.proposals) == ("closed", 3, 3)
    rc = env.as_(OUTSIDER).close_round(job, 1)  # long before the reveal deadline: nothing can change
    assert env.block_time(rc) < r.reveal_deadline
    assert env.events(rc, "RoundSkipped")[0]["reason"] == 2
    assert env.events(rc, "JobCompleted") == [{"jobId": job, "finalDigest": GENESIS, "finalCid": h("genesis cid"), "finalSize": 56789}]


def test_round_nobody_commits_to_is_skipped_after_the_commit_deadline(env: ContractEnv):
    """An absent quorum: the round closed early (every worker submitted) and no aggregator
    commits; the commit phase ends a window after the round's deadline."""
    job = env.create()
    env.submit_all(job, 1)
    r = env.ledger.round(job, 1)
    assert r.commit_deadline == r.deadline + WINDOW
    env.warp_past(r.deadline)
    with reverted("ProposalWindowOpen"):
        env.as_(OUTSIDER).close_round(job, 1)
    env.warp_past(r.commit_deadline)
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped")[0]["reason"] == 2
    assert env.ledger.round(job, 1).skip_reason == "no-quorum"


def test_commit_deadline_runs_from_the_round_deadline_when_the_first_commit_is_late(env: ContractEnv):
    job = env.create()
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)
    deadline = env.ledger.round(job, 1).deadline
    env.warp_past(deadline + 100)
    rc = env.commit(job, 1, 0, [0, 0], h("m"))
    assert env.events(rc, "ProposalCommitted")[0]["commitDeadline"] == deadline + WINDOW


# ------------------------------------------------------------------------------ skipped rounds


def test_round_below_minimum_is_skipped_and_keeps_its_parent(env: ContractEnv):
    job = env.create(min_submissions=2)
    env.submit(job, 1, 0)
    r1 = env.ledger.round(job, 1)
    with reverted("RoundNotClosed") as e:
        env.as_(OUTSIDER).close_round(job, 1)
    assert e.value.args_dict == {"jobId": job, "round": 1, "deadline": r1.deadline}
    env.warp(DURATION + 1)
    with reverted("WrongRound"):
        env.as_(OUTSIDER).close_round(job, 2)
    with reverted("UnknownJob"):
        env.as_(OUTSIDER).close_round(7, 1)
    rc = env.as_(OUTSIDER).close_round(job, 1)  # anyone may skip a dead round
    (sk,) = env.events(rc, "RoundSkipped")
    assert sk == {"jobId": job, "round": 1, "parent": GENESIS, "submissions": 1, "reason": 1}
    (opened,) = env.events(rc, "RoundOpened")
    assert opened == {"jobId": job, "round": 2, "parent": GENESIS, "deadline": env.block_time(rc) + DURATION}
    r = env.ledger.round(job, 1)
    assert (r.status, r.parent, r.submissions, r.commitment) == ("skipped", GENESIS, 1, r1.commitment)
    assert (r.merged_digest, cid_to_chain(r.merged_cid), r.merged_size) == (GENESIS, h("genesis cid"), 56789)
    assert r.outcome == b"\0" * 32 and r.accepted == 0 and r.skip_reason == "too-few-submissions"
    j = env.ledger.job(job)
    assert (j.current_round, j.current_parent) == (2, GENESIS)
    with reverted("WrongRound"):
        env.as_(OUTSIDER).close_round(job, 1)
    with reverted("WrongRound"):
        env.commit(job, 1, 0, [0], GENESIS)

    # round 2 reuses the (job, parent) slot: it starts empty and works
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.parent, r2.submissions) == ("open", GENESIS, 0)
    assert r2.commitment == TrainingLedger.commitment_seed(job, 2)
    with reverted("WrongRound"):  # the old round number in the same slot
        env.submit(job, 1, 1)
    env.submit(job, 2, 0)  # worker 0 submitted in round 1 too
    env.submit(job, 2, 1)
    assert env.ledger.has_submitted(job, 1, WORKERS[0].address) and not env.ledger.has_submitted(job, 1, WORKERS[1].address)
    assert env.ledger.has_submitted(job, 2, WORKERS[1].address)
    assert env.ledger.round(job, 1).submissions == 1 and env.ledger.round(job, 2).submissions == 2
    subs2 = env.ledger.submissions(job, 2)
    assert TrainingLedger.commitment_of(job, 2, subs2) == env.ledger.round(job, 2).commitment
    # enough submissions: after the deadline the round is closed and can be proposed on, so
    # closeRound refuses until the proposal window is over
    env.warp(DURATION + 1)
    r2 = env.ledger.round(job, 2)
    assert r2.status == "closed"
    with reverted("ProposalWindowOpen") as e:
        env.as_(OUTSIDER).close_round(job, 2)
    assert e.value.args_dict == {"jobId": job, "round": 2, "revealDeadline": r2.reveal_deadline}
    env.propose(job, 2, {0: ([0, 0], h("m2")), 1: ([0, 0], h("m2"))})
    assert env.ledger.round(job, 2).status == "finalized"


def test_merge_that_keeps_the_parent_reuses_the_slot(env: ContractEnv):
    job = env.create(min_submissions=2)
    env.submit_all(job, 1)
    # only one accepted (< 2): the merge is the parent itself
    env.propose(job, 1, {a: ([0, 6, 7], GENESIS) for a in (0, 1)}, cid=h("genesis cid"), size=56789)
    r1 = env.ledger.round(job, 1)
    assert (r1.status, r1.merged_digest, r1.accepted) == ("finalized", GENESIS, 1)
    r2 = env.ledger.round(job, 2)
    assert (r2.status, r2.parent, r2.submissions) == ("open", GENESIS, 0)
    for i in range(3):
        assert not env.ledger.has_submitted(job, 2, WORKERS[i].address)
        assert env.ledger.has_submitted(job, 1, WORKERS[i].address)
    env.submit_all(job, 2)
    assert env.ledger.round(job, 2).submissions == 3
    assert env.ledger.round(job, 1).submissions == 3


# ------------------------------------------------------------------------------ whole job


def test_several_rounds_to_job_completed(env: ContractEnv):
    job = env.create(num_rounds=3, min_submissions=2)
    other = env.create(num_rounds=1, min_submissions=1)  # a second job interleaved: its events stay apart
    parent = GENESIS
    merges = []
    for rnd in (1, 2, 3):
        env.submit_all(job, rnd, parent)
        if rnd == 1:
            env.submit(other, 1, 0)
        merged = h(f"merged {rnd}")
        rcs = env.propose(job, rnd, {a: ([0, 0, 0], merged) for a in range(3)}, reveals=(0, 1), size=1000 + rnd)
        assert env.events(rcs[1], "RoundFinalized")  # the second agreeing reveal finalizes
        merges.append(merged)
        parent = merged
    rc = rcs[1]
    assert env.events(rc, "RoundOpened") == []
    (done,) = env.events(rc, "JobCompleted")
    assert done == {"jobId": job, "finalDigest": merges[-1], "finalCid": h(f"cid of {merges[-1].hex()}"), "finalSize": 1003}
    with reverted("RoundAlreadyFinalized"):
        env.reveal(job, 3, 2)
    j = env.ledger.job(job)
    assert j.completed and j.current_round == 3 and j.current_parent == merges[-1] and j.current_parent_size == 1003
    assert [env.ledger.round(job, r).status for r in (1, 2, 3, 4)] == ["finalized", "finalized", "finalized", "none"]
    assert [env.ledger.round(job, r).parent for r in (1, 2, 3)] == [GENESIS, merges[0], merges[1]]
    with reverted("JobFinished") as e:
        env.submit(job, 3, 0, parent=merges[-1])
    assert e.value.args_dict == {"jobId": job}
    with reverted("JobFinished"):
        env.submit(job, 4, 0, parent=merges[-1])
    with reverted("JobFinished"):
        env.commit(job, 4, 2, [0, 0, 0], merges[-1])
    with reverted("JobFinished"):
        env.as_(OUTSIDER).close_round(job, 4)

    events = env.ledger.events(job)
    assert all(isinstance(e, ChainEvent) and e.args["jobId"] == job for e in events)
    assert [(e.block, e.log_index) for e in events] == sorted((e.block, e.log_index) for e in events)
    names = [e.name for e in events]
    per_round = ["UpdateSubmitted"] * 3 + ["ProposalCommitted"] * 3 + ["ProposalRevealed", "SettlementRevealed"] * 2 + ["RoundFinalized"]
    assert names == (["JobCreated", "RoundOpened"] + per_round + ["RoundOpened"] + per_round
                     + ["RoundOpened"] + per_round + ["JobCompleted"])
    for e in events:
        assert e.tx_hash.startswith("0x") and len(e.tx_hash) == 66
        assert e.timestamp == int(env.w3.eth.get_block(e.block)["timestamp"])
    assert [e.round for e in events if e.name == "RoundFinalized"] == [1, 2, 3]
    assert events[0].args["params"]["numRounds"] == 3
    other_events = env.ledger.events(other)
    assert [e.name for e in other_events] == ["JobCreated", "RoundOpened", "UpdateSubmitted"]
    assert len(env.ledger.submissions(job)) == 9 and len(env.ledger.proposals(job)) == 6
    assert len(env.ledger.commits(job)) == 9
    assert [s.round for s in env.ledger.submissions(job)] == [1] * 3 + [2] * 3 + [3] * 3
    for rnd in (1, 2, 3):
        subs = env.ledger.submissions(job, rnd)
        assert [s.index for s in subs] == [0, 1, 2]
        assert TrainingLedger.commitment_of(job, rnd, subs) == env.ledger.round(job, rnd).commitment


def test_skipping_the_last_round_completes_the_job(env: ContractEnv):
    job = env.create(num_rounds=1, min_submissions=2)
    env.warp(DURATION + 1)
    rc = env.as_(OUTSIDER).close_round(job, 1)
    assert env.events(rc, "RoundSkipped") == [{"jobId": job, "round": 1, "parent": GENESIS, "submissions": 0, "reason": 1}]
    assert env.events(rc, "JobCompleted") == [{"jobId": job, "finalDigest": GENESIS, "finalCid": h("genesis cid"), "finalSize": 56789}]
    assert env.ledger.job(job).completed
    with reverted("JobFinished"):
        env.submit(job, 1, 0)


def test_views_of_unknown_jobs_revert(env: ContractEnv):
    with reverted("UnknownJob"):
        env.ledger.job(5)
    with reverted("UnknownJob"):
        env.ledger.round(5, 1)
    f = env.ledger.contract.functions
    with reverted("UnknownJob") as e:
        env.chain.call(f.getWorkers(5), "getWorkers")
    assert e.value.args_dict == {"jobId": 5}
    with reverted("UnknownJob") as e:
        env.chain.call(f.getAggregators(5), "getAggregators")
    assert e.value.args_dict == {"jobId": 5}
    env.create()  # job 1 exists; job 2 does not
    assert env.chain.call(f.getWorkers(1), "getWorkers") == [w.address for w in WORKERS]
    with reverted("UnknownJob"):
        env.chain.call(f.getAggregators(2), "getAggregators")
    assert env.ledger.has_submitted(5, 1, WORKERS[0].address) is False
    assert env.ledger.has_proposed(5, 1, AGGS[0].address) is False
    assert env.ledger.has_committed(5, 1, AGGS[0].address) is False


# ------------------------------------------------------------------------------ the Chain client


def test_chain_unreachable_and_wrong_chain(rpc_url):
    with pytest.raises(ChainUnreachable) as e:
        Chain.connect("http://127.0.0.1:9", OWNER)
    msg = str(e.value)
    assert "http://127.0.0.1:9" in msg and "ledger chain up" in msg
    with pytest.raises(ChainUnreachable):
        Chain.connect("not a url")
    with pytest.raises(WrongChain, match="31337"):
        Chain.connect(rpc_url, expected_chain_id=1)
    ch = Chain.connect(rpc_url, expected_chain_id=31337)
    assert ch.chain_id == 31337 and ch.address is None


def test_block_number_fast_path_agrees_and_a_lost_endpoint_still_says_so(rpc_url):
    """The head is read over a bare kept-alive connection (the hot read of every waiting
    node); it must agree with web3's answer, and when the endpoint goes away the caller
    still gets web3's ChainUnreachable rather than a silent None or a raw socket error."""
    ch = Chain.connect(rpc_url)
    ch.w3.provider.make_request("evm_mine", [])
    assert ch.block_number() == int(ch.w3.eth.block_number) > 0
    assert ch._fast.block_number() == ch.block_number()       # the fast path answered
    # credentials in a URL are left to requests, which knows how to send them
    from ledger.ethereum.chain import _FastReads
    assert _FastReads("http://user:secret@127.0.0.1:1/").block_number() is None
    # an endpoint that stops answering (here: a port nothing listens on)
    from web3 import Web3
    dead = Chain(Web3(Web3.HTTPProvider("http://127.0.0.1:9")), 31337, rpc_url="http://127.0.0.1:9")
    assert dead._fast.block_number() is None
    with pytest.raises(ChainUnreachable, match="127.0.0.1:9"):
        dead.block_number()


def test_private_key_never_shown(env: ContractEnv):
    key_hex = DEV_KEYS[1][2:].lower()
    ch = env.chain.with_account(WORKERS[0])
    texts = [repr(ch), str(ch), repr(env.ledger.with_account(WORKERS[0]))]
    job = env.create()
    try:
        env.as_(WORKERS[0]).submit_update(job, 1, h("wrong"), h("d"), h("c"), 1, 1)
    except ContractReverted as e:
        texts += [str(e), repr(e)]
    broke = Account.create()
    job2 = env.create(workers=[broke.address], min_submissions=1)
    try:
        env.as_(broke).submit_update(job2, 1, GENESIS, h("d"), h("c"), 1, 1)
    except InsufficientFunds as e:
        texts += [str(e), repr(e)]
    assert len(texts) == 7
    for t in texts:
        assert key_hex not in t.lower() and broke.key.hex() not in t.lower()
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(ch)


def test_insufficient_funds(env: ContractEnv):
    poor = Account.create()
    job = env.create(workers=[poor.address], min_submissions=1)
    with pytest.raises(InsufficientFunds) as e:
        env.ledger.with_account(poor).submit_update(job, 1, GENESIS, h("d"), h("c"), 1, 1)
    assert poor.address in str(e.value) and "0 wei" in str(e.value)
    # funded, the same call goes through
    env.w3.provider.make_request("anvil_setBalance", [poor.address, hex(10**18)])
    env.ledger.with_account(poor).submit_update(job, 1, GENESIS, h("d"), h("c"), 1, 1)


def test_mined_revert_is_decoded_by_replay(env: ContractEnv):
    """A transaction sent with an explicit gas limit is mined with status 0: the error comes from eth_call replay."""
    job = env.create()
    env.submit(job, 1, 0)
    fn = env.ledger.contract.functions.submitUpdate(job, 1, GENESIS, h("d"), h("c"), 1, 1)
    worker_chain = env.chain.with_account(WORKERS[0])
    before = env.w3.eth.block_number
    with reverted("AlreadySubmitted") as e:
        worker_chain.transact(fn, context="replayed", gas=200_000)
    assert env.w3.eth.block_number == before + 1  # it was mined
    assert e.value.args_dict["worker"] == WORKERS[0].address and "replayed" in str(e.value)
    # and through call(): the same decoding
    with reverted("AlreadySubmitted"):
        worker_chain.call(fn)


def test_transact_needs_an_account(env: ContractEnv):
    from ledger.errors import AccountError

    ro = Chain.connect(env.rpc_url)
    with pytest.raises(AccountError):
        ro.transact(env.ledger.contract.functions.closeRound(1, 1))


def test_get_logs_is_paginated(env: ContractEnv):
    job = env.create(min_submissions=1)
    for _ in range(5):  # pad the chain with blocks
        env.w3.provider.make_request("evm_mine", [])
    env.submit_all(job, 1)
    ev = env.ledger.contract.events.UpdateSubmitted
    whole = env.chain.get_logs(ev, 0, "latest", {"jobId": job})
    calls = []
    real = ev.get_logs

    class Counting:
        event_name = "UpdateSubmitted"

        def get_logs(self, **kw):
            calls.append((kw["from_block"], kw["to_block"]))
            return real(**kw)

    paged = env.chain.get_logs(Counting(), 0, "latest", {"jobId": job}, page=2)
    assert [dict(l["args"]) for l in paged] == [dict(l["args"]) for l in whole] and len(whole) == 3
    last = env.w3.eth.block_number
    assert calls[0] == (0, 1) and calls[-1][1] == last and len(calls) == (last + 2) // 2
    # a provider refusing large ranges: the page shrinks until it works
    refused = []

    class Capped:
        event_name = "UpdateSubmitted"

        def get_logs(self, **kw):
            if kw["to_block"] - kw["from_block"] + 1 > 3:
                refused.append(kw)
                raise ValueError({"code": -32005, "message": "query exceeds max block range 3"})
            return real(**kw)

    capped = env.chain.get_logs(Capped(), 0, "latest", {"jobId": job}, page=2000)
    assert [dict(l["args"]) for l in capped] == [dict(l["args"]) for l in whole] and refused
    raw = env.chain.get_raw_logs(env.address, None, 0, "latest", page=3)
    assert len(raw) == len(env.chain.get_raw_logs(env.address, None, 0, "latest"))


# ------------------------------------------------------------------------------ an independent client: cast


def _cast(*args: str) -> str:
    if not CAST.exists():
        pytest.skip(f"cast is not installed at {CAST} (make install-npm)")
    out = subprocess.run([str(CAST), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_events_and_views_cross_checked_with_cast(env: ContractEnv):
    job = env.create()
    rc = env.submit(job, 1, 1)
    tx = rc["transactionHash"].to_0x_hex()
    receipt = json.loads(_cast("receipt", tx, "--json", "--rpc-url", env.rpc_url))
    assert int(receipt["status"], 16) == 1 and int(receipt["gasUsed"], 16) == rc["gasUsed"]
    (log,) = receipt["logs"]
    sig = "UpdateSubmitted(uint256,uint32,address,bytes32,bytes32,uint64,uint64)"
    assert log["topics"][0] == _cast("sig-event", sig)
    assert to_checksum_address(log["address"]) == env.address
    assert int(log["topics"][1], 16) == job and int(log["topics"][2], 16) == 1
    assert to_checksum_address("0x" + log["topics"][3][-40:]) == WORKERS[1].address
    decoded = [line.split()[0] for line in _cast("decode-abi", "--input", "f(bytes32,bytes32,uint64,uint64)", log["data"]).splitlines()]
    assert decoded == ["0x" + h(f"ckpt {job} 1 1").hex(), "0x" + h(f"cid {job} 1 1").hex(), "100001", "1001"]
    (sub,) = env.ledger.submissions(job, 1)
    assert sub.tx_hash == tx and sub.log_index == int(log["logIndex"], 16) and sub.block == int(log["blockNumber"], 16)

    # cast logs by signature and indexed job id: the same events web3 sees
    logs = json.loads(_cast(
        "logs", "--json", "--rpc-url", env.rpc_url, "--from-block", "0", "--to-block", "latest", "--address", env.address,
        "UpdateSubmitted(uint256 indexed,uint32 indexed,address indexed,bytes32,bytes32,uint64,uint64)", str(job),
    ))
    assert [l["transactionHash"] for l in logs] == [tx]
    all_logs = json.loads(_cast("logs", "--json", "--rpc-url", env.rpc_url, "--from-block", "0", "--address", env.address))
    ours = env.ledger.events(job)
    assert [(l["transactionHash"], int(l["logIndex"], 16)) for l in all_logs] == [(e.tx_hash, e.log_index) for e in ours]

    # views through cast call
    assert _cast("call", env.address, "hasSubmitted(uint256,uint32,address)(bool)", str(job), "1", WORKERS[1].address,
                 "--rpc-url", env.rpc_url) == "true"
    assert _cast("call", env.address, "jobCount()(uint256)", "--rpc-url", env.rpc_url) == "1"
    commitment = _cast("call", env.address,
                       "getRound(uint256,uint32)((bytes32,uint64,uint16,bytes32,uint8,bytes32,bytes32,uint64,bytes32,uint16,uint16,uint16,uint64,uint64,uint8))",
                       str(job), "1", "--rpc-url", env.rpc_url)
    assert "0x" + TrainingLedger.commitment_of(job, 1, [sub]).hex() in commitment


def test_wait_for_block_returns_at_the_next_block(env: ContractEnv):
    """The roles' wait: back as soon as a block past the one seen is mined (here by a
    transaction, long before the timeout), and after the timeout when none is asked for."""
    head = env.chain.block_number()
    assert env.chain.wait_for_block(None, 0.0) >= head      # no block to wait for: just the head
    env.w3.provider.make_request("evm_mine", [])
    t0 = time.monotonic()
    assert env.chain.wait_for_block(head, timeout=60) > head
    assert time.monotonic() - t0 < 30                      # did not sit out the timeout


# ------------------------------------------------------------------------------ disclosure


DISCLOSE = 120


def test_disclosure_gates_the_commits_and_is_judged_by_the_chain(env: ContractEnv):
    """A job with a disclosure window: submitters disclose once the round is closed and
    until its deadline + the window; commits open once every submitter disclosed or that
    time passed; a disclosure one second late is refused by the chain, for everyone."""
    job = env.create(disclosure_window=DISCLOSE)
    assert env.ledger.job(job).disclosure_window == DISCLOSE
    env.submit(job, 1, 0)
    with reverted("RoundNotClosed"):
        env.as_(WORKERS[0]).disclose(job, 1)
    env.submit(job, 1, 1)
    r = env.ledger.round(job, 1)
    assert r.disclosure_deadline == r.deadline + DISCLOSE and r.disclosed == 0
    # every window is timed from the disclosures: no commit deadline before they end
    assert r.commit_deadline == r.deadline + DISCLOSE + WINDOW
    env.warp_past(r.deadline)                                   # closed at the deadline, worker 2 missing
    with reverted("NotSubmitted"):
        env.as_(WORKERS[2]).disclose(job, 1)
    with reverted("NotWorker"):
        env.as_(OUTSIDER).disclose(job, 1)
    with reverted("WrongRound"):
        env.as_(WORKERS[0]).disclose(job, 2)
    with reverted("DisclosuresPending"):
        env.commit(job, 1, 0, [0, 0], h("merged"))
    rc = env.as_(WORKERS[0]).disclose(job, 1)
    assert env.events(rc, "Disclosed") == [{"jobId": job, "round": 1, "worker": WORKERS[0].address,
                                            "sealedCid": b"\0" * 32, "sealedSize": 0}]
    assert env.ledger.has_disclosed(job, 1, WORKERS[0].address)
    assert not env.ledger.has_disclosed(job, 1, WORKERS[1].address)
    with reverted("AlreadyDisclosed"):
        env.as_(WORKERS[0]).disclose(job, 1)
    with reverted("DisclosuresPending"):                         # worker 1 may still disclose
        env.commit(job, 1, 0, [0, 0], h("merged"))
    # the last second is in time; the next one is not
    env.w3.provider.make_request("evm_setNextBlockTimestamp", [r.disclosure_deadline])
    sealed = cid_from_chain(h("sealed bundles"), 777, 0)
    env.as_(WORKERS[1]).disclose(job, 1, sealed, 777)
    assert env.ledger.round(job, 1).disclosed == 2
    # the first job: everyone disclosed, so commits opened at once and the round finalizes
    env.propose(job, 1, {0: ([0, 0], h("merged")), 1: ([0, 0], h("merged"))})
    done = env.ledger.round(job, 1)
    assert done.status == "finalized" and done.disclosed == 2 and done.disclosure_deadline == r.disclosure_deadline
    assert [(d.worker, d.sealed_cid, d.sealed_size) for d in env.ledger.disclosures(job, 1)] == [
        (WORKERS[0].address, "", 0), (WORKERS[1].address, sealed, 777)]
    # one second late: refused, and commits open at the deadline without it
    job2 = env.create(disclosure_window=DISCLOSE)
    env.submit(job2, 1, 0)
    env.submit(job2, 1, 1)
    r2 = env.ledger.round(job2, 1)
    env.warp_past(r2.disclosure_deadline)
    with reverted("DisclosureClosed"):
        env.as_(WORKERS[0]).disclose(job2, 1)
    env.commit(job2, 1, 0, [0, 0], h("merged"))                 # the deadline passed: commits are open


def test_a_round_where_everyone_disclosed_early_times_its_commits_from_the_first(env: ContractEnv):
    job = env.create(disclosure_window=DISCLOSE)
    env.submit(job, 1, 0)
    env.submit(job, 1, 1)
    last = env.submit(job, 1, 2)
    # the disclosure window runs from the round's close (the last submission), not its deadline
    r = env.ledger.round(job, 1)
    assert r.disclosure_deadline == env.block_time(last) + DISCLOSE < r.deadline
    for w in WORKERS:
        env.as_(w).disclose(job, 1)
    rc = env.commit(job, 1, 0, [0, 0, 0], h("merged"))
    (ev,) = env.events(rc, "ProposalCommitted")
    assert ev["commitDeadline"] == env.block_time(rc) + WINDOW


def test_a_job_without_disclosures_refuses_them(env: ContractEnv):
    job = env.create()
    env.submit_all(job, 1)
    with reverted("NothingToDisclose"):
        env.as_(WORKERS[0]).disclose(job, 1)
    env.commit(job, 1, 0, [0, 0, 0], h("merged"))               # commits open at the close, as before


def test_only_the_creator_grants_access(env: ContractEnv):
    """`grant` records (to, by, cid, size) for the job's creator; anyone else gets NotCreator."""
    job = env.create()
    obj = cid_from_chain(h("a sealed key"), 321, 0)
    with reverted("NotCreator") as exc:
        env.as_(WORKERS[0]).grant(job, AGGS[0].address, obj, 321)
    assert exc.value.args_dict == {"jobId": job, "account": WORKERS[0].address}
    with reverted("UnknownJob"):
        env.ledger.grant(job + 1, AGGS[0].address, obj, 321)
    assert env.ledger.grants(job) == []
    rc = env.ledger.grant(job, AGGS[0].address, obj, 321)
    env.ledger.grant(job, WORKERS[2].address, "", 0)
    got = env.ledger.grants(job)
    assert [(g.to, g.by, g.cid, g.size) for g in got] == [
        (AGGS[0].address, OWNER.address, obj, 321), (WORKERS[2].address, OWNER.address, "", 0)]
    assert got[0].block == rc["blockNumber"] and got[0].tx == rc["transactionHash"].to_0x_hex()
