"""A chain whose clock runs behind the parties' clocks: an aggregator that sees a
deadline pass before the chain does retries its proposal until the chain agrees, and
counts one proposal, not one per retry."""

from __future__ import annotations

import time

from support import keys, log_text, wait_for

W = keys(2, "clock-worker")
A = keys(1, "clock-aggregator")
# Seconds the chain's clock is set behind the wall clock: longer than a loaded machine takes
# to verify the round (8 s seen under two parallel test workers), so retries are still seen.
LAG = 20


def test_aggregator_retries_a_lagging_chain_and_counts_one_proposal(deployed):
    env = deployed
    job = env.create_job(W, A, quorum=1, rounds=1, round_duration=25)
    worker = env.spawn(W[0], "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")
    wait_for(lambda: env.ledger.round(job, 1).submissions == 1, 120, "worker 0's submission", [worker])
    # Worker 1 never comes, so the round closes at its deadline; on chain that is LAG
    # seconds after it passed on the aggregator's clock (anvil lets its clock be set back).
    resp = env.ledger.chain.w3.provider.make_request("evm_setTime", [int(time.time()) - LAG])
    assert "error" not in resp, resp
    agg = env.spawn(A[0], "aggregator", "run", "--job", str(job), "--poll", "0.3")
    wait_for(lambda: env.ledger.job(job).completed, 180, "the job to complete", [worker, agg])
    assert agg.wait(timeout=60) == 0, log_text(agg)
    text = log_text(agg)
    retries = text.count("RoundNotClosed: the chain's clock is behind ours; retrying")
    assert retries >= 2, text  # the lag was seen ...
    assert "proposed 1 round(s)" in text, text  # ... and not counted as proposals
    assert len(env.ledger.proposals(job, 1)) == 1
