"""A chain whose clock runs behind the parties' clocks: an aggregator that sees a
deadline pass before the chain does waits, saying why, until the chain's clock closes the
round and seeds its draw, and counts one proposal, not one per wait."""

from __future__ import annotations

import time

from support import keys, log_text, wait_for

W = keys(2, "clock-worker")
A = keys(1, "clock-aggregator")
# Seconds the chain's clock is set behind the wall clock: long enough that the aggregator
# sees the deadline pass on its own clock well before the chain does.
LAG = 12


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
    # The lag is seen where the round's draw waits on the chain's clock (the seed is a
    # block past the deadline by the chain's clock), said once, not once per poll ...
    assert text.count("has not passed the round's deadline") == 1, text
    assert "proposed 1 round(s)" in text, text  # ... and not counted as proposals
    assert len(env.ledger.proposals(job, 1)) == 1
