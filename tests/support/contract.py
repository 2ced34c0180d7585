"""A deployed TrainingLedger acting as each of anvil's dev accounts: the contract-level tests' harness
(tests/chain: the contract, its economics, batched submissions), with the raw deploy of a
contract that is not ours."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from conftest import DEV_KEYS
from ledger.ethereum.chain import Chain
from ledger.ethereum.contract import JobParams, TrainingLedger
from ledger.ethereum.deploy import deploy_contracts
from ledger.errors import ContractReverted
from ledger.protocol.settlement import Settlement

ROOT = Path(__file__).resolve().parents[2]
CAST = ROOT / "hardhat-config/node_modules/.bin/cast"
DURATION = 600
WINDOW = 300

OWNER = Account.from_key(DEV_KEYS[0])
WORKERS = [Account.from_key(k) for k in DEV_KEYS[1:4]]
AGGS = [Account.from_key(k) for k in DEV_KEYS[4:7]]
OUTSIDER = Account.from_key(DEV_KEYS[7])




def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


GENESIS = h("genesis")


class ContractEnv:
    """A deployed TrainingLedger plus helpers acting as each party."""

    def __init__(self, rpc_url: str):
        self.rpc_url = rpc_url
        self.chain = Chain.connect(rpc_url, OWNER)
        rc, self.libraries = deploy_contracts(self.chain)
        self.address = rc["contractAddress"]
        self.ledger = TrainingLedger(self.chain, self.address)
        self.pending: dict = {}

    def reconnect(self) -> None:
        """New clients, after the chain was reverted under them: the old ones' caches (block
        timestamps, a job's members) describe blocks and jobs the revert undid."""
        self.chain = Chain.connect(self.rpc_url, OWNER)
        self.ledger = TrainingLedger(self.chain, self.address)
        self.pending.clear()

    @property
    def w3(self):
        return self.chain.w3

    def as_(self, account) -> TrainingLedger:
        return self.ledger.with_account(account)

    def params(self, **kw) -> JobParams:
        base = dict(
            config_digest=h("config"), config_cid=h("config cid"), config_size=1234,
            genesis_digest=GENESIS, genesis_cid=h("genesis cid"), genesis_size=56789,
            workers=[w.address for w in WORKERS], aggregators=[a.address for a in AGGS],
            quorum=2, round_duration=DURATION, num_rounds=3, min_submissions=2, cid_version=0,
            proposal_window=WINDOW,
        )
        base.update(kw)
        return JobParams(**base)

    def create(self, **kw) -> int:
        return self.ledger.create_job(self.params(**kw))

    def submit(self, job: int, rnd: int, i: int, parent: bytes = GENESIS, **kw):
        args = dict(digest=h(f"ckpt {job} {rnd} {i}"), cid=h(f"cid {job} {rnd} {i}"), size=100_000 + i, samples=1_000 + i)
        args.update(kw)
        return self.as_(WORKERS[i]).submit_update(job, rnd, parent, args["digest"], args["cid"], args["size"], args["samples"])

    def submit_all(self, job: int, rnd: int, parent: bytes = GENESIS, which=(0, 1, 2)) -> None:
        for i in which:
            self.submit(job, rnd, i, parent)

    def commit(self, job: int, rnd: int, a: int, verdicts, merged: bytes, cid: bytes | None = None, size: int = 4242,
               salt: bytes | None = None, settlement: Settlement | None = None):
        """Aggregator ``a`` commits to a proposal; ``reveal`` later sends what it hashed.
        ``settlement`` defaults to no credit and no slash for each of the job's workers."""
        cid = cid or h(f"cid of {merged.hex()}")
        salt = salt or h(f"salt {job} {rnd} {a}")
        settlement = settlement or Settlement((0,) * len(self.ledger.round_workers(job, rnd)))
        outcome = TrainingLedger.outcome_of(merged, cid, size, verdicts, settlement)
        rc = self.as_(AGGS[a]).commit_proposal(job, rnd, TrainingLedger.commit_hash_of(outcome, salt, AGGS[a].address))
        self.pending[(job, rnd, a)] = dict(verdicts=list(verdicts), merged=merged, cid=cid, size=size, salt=salt,
                                           settlement=settlement)
        return rc

    def reveal(self, job: int, rnd: int, a: int, commitment: bytes | None = None, **change):
        p = {**self.pending[(job, rnd, a)], **change}
        if commitment is None:
            commitment = self.ledger.round(job, rnd).commitment
        return self.as_(AGGS[a]).reveal_proposal(job, rnd, commitment, p["verdicts"], p["merged"], p["cid"], p["size"],
                                                 p["salt"], p["settlement"])

    def propose(self, job: int, rnd: int, proposals: dict, reveals=None, **kw) -> list:
        """Each aggregator in ``proposals`` (index -> (verdicts, merged)) commits; then, past
        the commit deadline unless every aggregator committed, each (or each in ``reveals``)
        reveals in order."""
        for a, (verdicts, merged) in proposals.items():
            self.commit(job, rnd, a, verdicts, merged, **kw)
        r = self.ledger.round(job, rnd)
        if r.commits < len(AGGS):
            self.warp_past(r.commit_deadline)
        return [self.reveal(job, rnd, a) for a in (proposals if reveals is None else reveals)]

    def warp(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def warp_past(self, ts: int) -> None:
        """Mine a block one second after unix time ``ts``."""
        self.w3.provider.make_request("evm_setNextBlockTimestamp", [int(ts) + 1])
        self.w3.provider.make_request("evm_mine", [])

    def events(self, rc, name: str) -> list[dict]:
        ev = getattr(self.ledger.contract.events, name)()
        from web3.logs import DISCARD

        return [dict(e["args"]) for e in ev.process_receipt(rc, errors=DISCARD)]

    def block_time(self, rc) -> int:
        return int(self.w3.eth.get_block(rc["blockNumber"])["timestamp"])


def reverted(name: str):
    """pytest.raises for ContractReverted with this error name."""
    return pytest.raises(ContractReverted, match=rf"\b{name}\(")


def finalize(env: ContractEnv, job: int, rnd: int, verdicts, merged: bytes, settlement: Settlement, aggs=(0, 1)):
    """Aggregators ``aggs`` commit and reveal the same outcome; returns the finalizing receipt."""
    rcs = env.propose(job, rnd, {a: (verdicts, merged) for a in aggs}, settlement=settlement)
    assert env.events(rcs[-1], "RoundFinalized"), "the last reveal should finalize"
    return rcs[-1]


# ------------------------------------------------------------------------------ 1. pro rata rewards


# Init code that deploys a 10-byte runtime returning 42: another contract, not ours.
OTHER_RUNTIME = "602a60005260206000f3"
OTHER_INITCODE = "0x600a600c600039600a6000f3" + OTHER_RUNTIME


def deploy_raw(rpc_url: str, initcode: str, key: str = DEV_KEYS[1]) -> str:
    """Deploy raw init code from a dev account; returns the contract address."""
    w3 = Web3(HTTPProvider(rpc_url))
    acct = Account.from_key(key)
    tx = {
        "from": acct.address,
        "data": initcode,
        "nonce": w3.eth.get_transaction_count(acct.address),
        "gas": 200_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "chainId": w3.eth.chain_id,
    }
    h = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    r = w3.eth.wait_for_transaction_receipt(h)
    assert r["status"] == 1
    return r["contractAddress"]
