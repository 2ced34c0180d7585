"""A whole small job on Hardhat's node, a second EVM implementation: deploy, fund
(hardhat_setBalance), workers and aggregators as real processes, a round whose
deadline passes with a worker missing on a chain that mines only on demand, the
history's finalizing transactions, and the audit."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from eth_account import Account

import support.hardhat as hardhat_node
from support import Env, address, deployed_env, keys, log_text, tiny_config, wait_for

W = keys(2, "hh-worker")
A = keys(2, "hh-aggregator")


@pytest.fixture
def hardhat(tmp_path):
    node = hardhat_node.start(tmp_path / "hardhat.log")
    try:
        yield node
    finally:
        hardhat_node.stop(node)
    assert node.proc.poll() is not None


@pytest.fixture
def hh_env(tmp_path, hardhat):
    from ledger.config import load_settings

    settings = load_settings({"data_dir": tmp_path / "data", "rpc_url": hardhat.url}, env={}, config_file=None)
    with deployed_env(settings) as env:
        yield env


def _env(env: Env, key: str | None = None, **extra) -> dict:
    return env.env(key, LEDGER_RPC_URL=env.settings.rpc_url, **extra)


def test_fund_detects_hardhat(hh_env):
    from ledger.ethereum.chain import dev_node_kind

    env = hh_env
    assert dev_node_kind(env.ledger.chain.w3) == "hardhat"
    fresh = Account.create().address
    r = subprocess.run([sys.executable, "-m", "ledger_cli", "account", "fund", fresh, "--eth", "3"],
                       capture_output=True, text=True, timeout=120, env=_env(env))
    assert r.returncode == 0, r.stderr
    assert env.ledger.chain.w3.eth.get_balance(fresh) == 3 * 10**18


def test_job_on_hardhat_with_a_deadline_passing_and_a_worker_missing(hh_env):
    env = hh_env
    w3 = env.ledger.chain.w3
    assert "hardhat" in w3.client_version.lower()
    duration = 35
    job = env.create_job(W, A, quorum=2, rounds=2, round_duration=duration, min_submissions=1, config=tiny_config())
    common = ("--job", str(job), "--poll", "0.3")
    procs = [
        # Worker 1 works both rounds; worker 0 only the first, so round 2 can close only at its deadline.
        env.spawn(W[0], "worker", "run", *common, "--no-progress", "--rounds", "1", LEDGER_RPC_URL=env.settings.rpc_url),
        env.spawn(W[1], "worker", "run", *common, "--no-progress", LEDGER_RPC_URL=env.settings.rpc_url),
    ] + [env.spawn(k, "aggregator", "run", *common, LEDGER_RPC_URL=env.settings.rpc_url) for k in A]

    wait_for(lambda: env.ledger.round(job, 1).status == "finalized", 240, "round 1 to finalize", procs)
    wait_for(lambda: env.ledger.round(job, 2).submissions == 1, 120, "worker 1's round-2 submission", procs)
    deadline = env.ledger.round(job, 2).deadline
    # Once worker 1 submitted nobody transacts: on a chain that mines on demand its clock stands
    # still, and only the aggregators' proposals (judged against the pending block) can close it.
    wait_for(lambda: env.ledger.job(job).completed, duration + 150, "the job to complete after round 2's deadline", procs)
    assert time.time() > deadline
    rd2 = env.ledger.round(job, 2)
    assert rd2.status == "finalized" and rd2.submissions == 1
    props = env.ledger.proposals(job, 2)
    assert len(props) == 2 and {p.aggregator for p in props} == {address(k) for k in A}
    assert all(p.verdicts == [0] for p in props)
    # The chain's own clock agrees the proposals came after the deadline.
    assert all(env.ledger.chain.block_timestamp(p.block) > deadline for p in props)
    for p in procs:
        assert p.wait(timeout=120) == 0, log_text(p)
    for agg in procs[2:]:
        # One proposal per round, however many polls it took the chain's clock to get there.
        assert "proposed 2 round(s)" in log_text(agg), log_text(agg)
    assert "submitted 1 round(s)" in log_text(procs[0])

    h = subprocess.run([sys.executable, "-m", "ledger_cli", "history", "--job", str(job), "--json"],
                       capture_output=True, text=True, timeout=120, env=_env(env))
    assert h.returncode == 0, h.stderr
    doc = json.loads(h.stdout)
    for rd, r in zip(doc["rounds"], (1, 2)):
        assert rd["closed_by"] == "RoundFinalized"
        receipt = w3.eth.get_transaction_receipt(rd["finalized_tx"])
        assert receipt["blockNumber"] == rd["finalized_block"] and receipt["status"] == 1
        assert rd["info"]["merged_cid"].startswith("Qm")
        merged = env.ledger.round(job, r)
        assert env.store.get(rd["info"]["merged_cid"], merged.merged_digest)
        assert rd["finalized_tx"] in {p["tx_hash"] for p in rd["proposals"]}
        assert all(p["merged_cid"] == rd["info"]["merged_cid"] for p in rd["proposals"])

    audit = subprocess.run([sys.executable, "-m", "ledger_cli", "audit", "--job", str(job), "--replay", "all", "--no-progress"],
                           capture_output=True, text=True, timeout=300, env=_env(env))
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]
    assert "AUDIT OK final model" in audit.stdout
