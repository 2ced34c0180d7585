"""A party's own storage outage is nobody else's fault: with the IPFS backend, the roles
wait for their storage API to answer again, within the round's deadlines, as they wait
for a chain that went away (``JobContext.ride_out``).

- the aggregator's IPFS API stops just as the round closes: it records nothing while the
  API is down (no UNAVAILABLE against honest workers), says so, and once the API is back
  judges and accepts every contribution;
- a worker whose IPFS API is down when it publishes waits and submits once it is back,
  instead of exiting.
"""

from __future__ import annotations

import json
import time

import pytest

from ledger.services import anvil, ipfs_node
from ledger.config import load_settings
from node.context import party_dir
from support import address, deployed_env, keys, log_text, tiny_config, wait_for

W = keys(3, "storage-outage-w")
A = keys(1, "storage-outage-a")[0]

pytestmark = pytest.mark.filterwarnings("ignore:The .strict. parameter:FutureWarning")  # ipfshttpclient vs urllib3 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    try:
        ipfs_node.node_binary()
    except Exception as e:
        pytest.skip(f"the local IPFS node is not installed ({e})")
    d = tmp_path_factory.mktemp("storage-outage")
    settings = load_settings({"data_dir": d / "parties", "chain_port": 0, "ipfs_port": 0, "storage": "ipfs"},
                             env={}, config_file=None)
    anvil.chain_up(settings)
    up = ipfs_node.ipfs_up(settings)
    try:
        settings = settings.replace(ipfs_api=up.info.url)
        with deployed_env(settings) as env:
            yield env, up.info.port
    finally:
        ipfs_node.ipfs_down(settings)
        anvil.chain_down(settings)


def _spawn(env, key, *args, **extra):
    return env.spawn(key, *args, "--poll", "0.3", LEDGER_STORAGE="ipfs", LEDGER_IPFS_API=env.settings.ipfs_api, **extra)


def _outage(env, port, seconds, until_logged=None, procs=(), during=None):
    """Stop the IPFS node (by PID); start it again on the same port after ``seconds`` or
    once ``until_logged`` shows in every process's log (``during()`` adds processes
    started while the node is down)."""
    ipfs_node.ipfs_down(env.settings)
    t0 = time.monotonic()
    procs = [*procs, *(during() if during else ())]
    if until_logged:
        wait_for(lambda: all(until_logged in log_text(p) for p in procs), 120, until_logged, procs)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    ipfs_node.ipfs_up(env.settings, port=port)


def test_an_aggregators_storage_outage_is_not_blamed_on_the_workers(world):
    env, port = world
    # snapshots published with the checkpoint: the aggregator reads them while judging
    job = env.create_job(W[:2], [A], quorum=1, rounds=1, config=tiny_config(publish_snapshots="all", segment_steps=1))
    first = _spawn(env, W[0], "worker", "run", "--job", str(job), "--no-progress")
    late = _spawn(env, W[1], "worker", "run", "--job", str(job), "--no-progress", LEDGER_CRASH_AT="worker:before-submit")
    agg = _spawn(env, A, "aggregator", "run", "--job", str(job))
    assert late.wait(timeout=180) == -9, log_text(late)
    wait_for(lambda: env.ledger.round(job, 1).submissions == 1, 180, "the first submission", [first, agg])
    # The storage goes down, then the round closes on the second submission (published
    # before the outage): the aggregator judges the round with its API down.
    ipfs_node.ipfs_down(env.settings)
    st = json.loads((party_dir(env.settings.data_dir / "worker", env.ledger.chain_id, env.ledger.address, job,
                               address(W[1])) / "round-1.json").read_text())
    parent = env.ledger.round(job, 1).parent
    env.as_party(W[1]).submit_update(job, 1, parent, bytes.fromhex(st["digest"][2:]), st["cid"], st["size"],
                                     st["num_samples"])
    wait_for(lambda: "storage unreachable" in log_text(agg), 60, "the aggregator to notice its storage is down", [agg])
    time.sleep(8)
    assert not env.ledger.commits(job, 1), log_text(agg)[-3000:]        # nothing judged meanwhile
    ipfs_node.ipfs_up(env.settings, port=port)
    wait_for(lambda: env.ledger.job(job).completed, 240, "the job to complete", [first, agg])
    (proposal,) = env.ledger.proposals(job, 1)
    assert list(proposal.verdicts) == [0, 0], log_text(agg)[-3000:]
    text = log_text(agg)
    assert "storage back after" in text and "unavailable" not in text, text[-3000:]
    for p in (first, agg):
        assert p.wait(timeout=60) == 0, log_text(p)[-3000:]


def test_a_worker_waits_for_its_storage_to_publish(world):
    env, port = world
    cfg = tiny_config(publish_snapshots="all", segment_steps=100)
    cfg.train.steps = 400         # seconds of training: the outage starts while it trains
    job = env.create_job([W[2]], [A], quorum=1, rounds=1, config=cfg)
    worker = _spawn(env, W[2], "worker", "run", "--job", str(job), "--no-progress")
    wait_for(lambda: "round 1: parent" in log_text(worker), 120, "training to start", [worker])
    # the aggregator starts during the outage: it waits for its storage to read the job
    started = []
    _outage(env, port, 3, until_logged="storage unreachable", procs=[worker],
            during=lambda: started.append(_spawn(env, A, "aggregator", "run", "--job", str(job))) or started)
    (agg,) = started
    assert "round 1: trained" in log_text(worker) and worker.poll() is None, log_text(worker)[-3000:]
    wait_for(lambda: env.ledger.job(job).completed, 240, "the job to complete", [worker, agg])
    assert "storage back after" in log_text(worker)
    (proposal,) = env.ledger.proposals(job, 1)
    assert list(proposal.verdicts) == [0]
    for p in (worker, agg):
        assert p.wait(timeout=60) == 0, log_text(p)[-3000:]
