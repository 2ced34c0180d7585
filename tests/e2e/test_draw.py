"""Trust at the edges of a round: a draw nobody can predict, and reveals judged from the chain.

- The last submitter cannot compute its draw: whatever it can see when it submits (every
  block up to the head, its own transaction), the seed is the hash of a block mined
  ``DRAW_DELAY`` blocks after the one that closes the round, which does not exist yet;
  right after its submission the draw is still not computable (``DrawNotReady``).
  The same for a round closed by its deadline.
- Reveals at the boundary: two workers store what the draw asked but leave the
  disclosure to the test, which sends one in the last second of the disclosure window
  and one in the second after (refused by the contract). Three aggregators, on their
  own clocks, all judge the first revealed and the second unrevealed: the round
  finalizes with one outcome, and the audit agrees.
"""

from __future__ import annotations

import json
import time

import pytest

from ledger.errors import ContractReverted
from ledger.protocol.verdicts import Verdict
from support import address, keys, log_text, tiny_config, wait_for

pytestmark = pytest.mark.slow


def _rpc(env, method: str, *params):
    resp = env.ledger.w3.provider.make_request(method, list(params))
    assert "error" not in resp, resp
    return resp.get("result")


def _pause(env) -> None:
    """No empty blocks every second any more, only a block per transaction (or evm_mine)."""
    _rpc(env, "evm_setIntervalMining", 0)
    _rpc(env, "evm_setAutomine", True)


def _resume(env) -> None:
    _rpc(env, "evm_setAutomine", True)
    _rpc(env, "evm_setIntervalMining", 1)


def _config():
    cfg = tiny_config()
    cfg.train.steps, cfg.policy.segment_steps = 6, 2
    return cfg


def _two_worker_job(env, tag: str):
    """A one-round job of two workers (keys ``<tag>-worker``) and one aggregator: (job, its
    parent, worker a, worker b)."""
    a, b = keys(2, f"{tag}-worker")
    agg = keys(1, f"{tag}-agg")[0]
    job = env.create_job([a, b], [agg], quorum=1, rounds=1, round_duration=60, config=_config())
    return job, env.ledger.job(job).current_parent, a, b


def test_the_last_submitter_cannot_compute_its_draw(deployed):
    from node.verification.rounds import DRAW_DELAY, DrawNotReady, replay_seed

    env = deployed
    job, parent, a, b = _two_worker_job(env, "draw")
    _pause(env)                                    # blocks only when a transaction comes: the test's clock
    try:
        env.as_party(a).submit_update(job, 1, parent, b"\1" * 32, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", 10, 40)
        chain = env.ledger.chain
        # everything the last submitter can see before it sends its submission
        head = chain.block_number()
        seen = {chain.block_hash(n) for n in range(head + 1)}
        rc = env.as_party(b).submit_update(job, 1, parent, b"\2" * 32,
                                           "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", 10, 40)
        subs = env.ledger.submissions(job, 1)
        assert len(subs) == 2 and subs[-1].block == rc["blockNumber"]
        # its submission closed the round, and still nobody can compute the draw
        for _ in range(DRAW_DELAY):
            with pytest.raises(DrawNotReady):
                replay_seed(env.ledger, job, 1, subs)
            _rpc(env, "evm_mine")
        seed = replay_seed(env.ledger, job, 1, subs)
        assert seed == chain.block_hash(rc["blockNumber"] + DRAW_DELAY)
        assert seed not in seen and seed != chain.block_hash(rc["blockNumber"])
        # every party reads the same seed later, from the chain alone
        assert replay_seed(env.ledger, job, 1, env.ledger.submissions(job, 1)) == seed
    finally:
        _resume(env)


def test_a_round_closed_by_its_deadline_is_seeded_after_the_deadline(deployed):
    from node.verification.rounds import DRAW_DELAY, DrawNotReady, replay_seed

    env = deployed
    job, parent, a, _ = _two_worker_job(env, "dl")
    chain = env.ledger.chain
    _pause(env)
    try:
        env.as_party(a).submit_update(job, 1, parent, b"\1" * 32, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", 10, 40)
        subs = env.ledger.submissions(job, 1)
        deadline = env.ledger.round(job, 1).deadline
        with pytest.raises(DrawNotReady):        # still open: no block past the deadline yet
            replay_seed(env.ledger, job, 1, subs)
        _rpc(env, "evm_setNextBlockTimestamp", deadline + 1)
        _rpc(env, "evm_mine")
        closing = chain.block_number()
        with pytest.raises(DrawNotReady):
            replay_seed(env.ledger, job, 1, subs)
        for _ in range(DRAW_DELAY):
            _rpc(env, "evm_mine")
        assert replay_seed(env.ledger, job, 1, subs) == chain.block_hash(closing + DRAW_DELAY)
    finally:
        _resume(env)


def test_reveals_at_the_boundary_are_judged_alike_by_every_aggregator(deployed):
    env = deployed
    honest, on_time, late = keys(3, "edge-worker")
    aggs = keys(3, "edge-agg")
    cfg = _config()
    cfg.policy.reveal_window = 20
    job = env.create_job([honest, on_time, late], aggs, quorum=2, rounds=1, round_duration=120, config=cfg,
                         proposal_window=60)
    procs = [env.spawn(honest, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")]
    procs += [env.spawn_module(k, "node.simulate.adversary", "--job", str(job), "--attack", "silent", "--poll", "0.3")
              for k in (on_time, late)]
    procs += [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3") for k in aggs]
    wait_for(lambda: env.ledger.round(job, 1).submissions == 3, 120, "the three submissions", procs)
    wait_for(lambda: all("stores its drawn artifacts" in log_text(p) for p in procs[1:3]), 120,
             "the silent workers to store their drawn artifacts", procs)
    rd = env.ledger.round(job, 1)
    deadline = rd.disclosure_deadline
    assert deadline and rd.status == "closed"
    chain = env.ledger.chain
    wait_for(lambda: chain.block_timestamp(chain.block_number()) >= deadline - 3, 60, "the last seconds of the window")
    _pause(env)
    try:
        _rpc(env, "evm_setNextBlockTimestamp", deadline)          # the last second: in time
        rc = env.as_party(on_time).disclose(job, 1)
        assert chain.block_timestamp(rc["blockNumber"]) == deadline
        _rpc(env, "evm_setNextBlockTimestamp", deadline + 1)      # the second after: refused, for everyone
        with pytest.raises(ContractReverted, match="DisclosureClosed"):
            env.as_party(late).disclose(job, 1)
    finally:
        _resume(env)
    assert {d.worker.lower() for d in env.ledger.disclosures(job, 1)} == {address(honest).lower(), address(on_time).lower()}

    wait_for(lambda: env.ledger.round(job, 1).status == "finalized", 240, "the round to finalize", procs)
    subs = env.ledger.submissions(job, 1)
    want = [Verdict.TRANSCRIPT_UNREVEALED if s.worker.lower() == address(late).lower() else Verdict.ACCEPTED
            for s in subs]
    props = env.ledger.proposals(job, 1)
    assert len(props) >= 2 and all(p.verdicts == want for p in props), [(p.aggregator, p.verdicts) for p in props]
    # every aggregator judged alike, the one whose reveal came after the quorum's too (its log)
    for p in procs[3:]:
        text = log_text(p)
        assert f"{address(late)} transcript-unrevealed" in text, text[-2000:]
        assert f"{address(on_time)} accepted" in text and f"{address(honest)} accepted" in text, text[-2000:]
    out = env.run(None, "audit", "--job", str(job), "--json", "--no-progress", timeout=300)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], report.get("discrepancies")
