"""A party's local state belongs to one deployment, one job and one account, and one
process at a time; nothing is submitted that the party's own store does not serve.

- `ledger deploy --force` makes a new contract whose job ids start again at 1: the
  worker of the new job 1 trains and publishes its own round instead of reusing the old
  deployment's state (keyed by chain id and contract address too);
- a worker restarted against a store that lost its objects (before or after its
  submission) puts them back from its local files, and the round accepts it;
- a second `worker run` for the same job and account is refused in one line naming the
  first one's pid (an flock, released by the kernel: after kill -9 a new one starts).
"""

from __future__ import annotations

import json
import shutil
import signal

from eth_account import Account

from ledger.store.embedded import EmbeddedStore
from node.context import party_dir
from support import DEV0, Env, address, keys, log_text, wait_for

W = keys(2, "deployments-w")
A = keys(1, "deployments-a")[0]


def _worker(env, key, job, *more, **extra_env):
    return env.spawn(key, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3", *more, **extra_env)


def _aggregator(env, job, **extra_env):
    return env.spawn(A, "aggregator", "run", "--job", str(job), "--poll", "0.3", **extra_env)


def _state_dir(env, key, job):
    return party_dir(env.settings.data_dir / "worker", env.ledger.chain_id, env.ledger.address, job, address(key))


def _finish(env, job, procs):
    wait_for(lambda: env.ledger.job(job).completed, 240, f"job {job} to complete", procs)
    for p in procs:
        assert p.wait(timeout=60) == 0, log_text(p)[-3000:]


def test_a_redeployment_does_not_reuse_the_old_deployments_state(deployed):
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store

    env = deployed
    job = env.create_job([W[0]], [A], quorum=1, rounds=1)
    _finish(env, job, [_worker(env, W[0], job), _aggregator(env, job)])
    old_dir, old_contract = _state_dir(env, W[0], job), env.ledger.address
    assert json.loads((old_dir / "round-1.json").read_text())["status"] == "submitted"

    # A new deployment on the same chain (job ids start again at 1) and a fresh store.
    r = env.run(DEV0, "deploy", "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(env.settings.store_dir)
    new = Env(env.settings, open_ledger(env.settings, Account.from_key(DEV0)), open_store(env.settings))
    try:
        again = new.create_job([W[0]], [A], quorum=1, rounds=1)
        assert again == job and new.ledger.address != old_contract
        procs = [_worker(new, W[0], again), _aggregator(new, again)]
        _finish(new, again, procs)
        log = log_text(procs[0])
        assert "round 1: trained" in log and "already on chain" not in log, log[-3000:]
        (proposal,) = new.ledger.proposals(again, 1)
        assert list(proposal.verdicts) == [0], log_text(procs[1])[-3000:]
        new_dir = _state_dir(new, W[0], again)
        assert new_dir != old_dir and (new_dir / "round-1.json").exists() and (old_dir / "round-1.json").exists()
        assert f"chain-{new.ledger.chain_id}" in str(new_dir) and new.ledger.address.lower() in str(new_dir)
    finally:
        new.stop_all()


def test_a_worker_republishes_what_its_store_lost(deployed):
    env = deployed
    job = env.create_job(W, [A], quorum=1, rounds=1)
    # W0 dies published but not submitted; W1 dies right after its submission landed.
    for key, point in ((W[0], "worker:before-submit"), (W[1], "worker:after-submit")):
        p = _worker(env, key, job, LEDGER_CRASH_AT=point)
        assert p.wait(timeout=180) == -signal.SIGKILL, log_text(p)[-3000:]
    assert env.ledger.round(job, 1).submissions == 1
    store = EmbeddedStore(env.settings.store_dir)
    for key in W:
        state = json.loads((_state_dir(env, key, job) / "round-1.json").read_text())
        assert state["status"] == "published"
        for f in store.paths_of(state["cid"]):
            f.unlink()
        assert not store.has(state["cid"])
    procs = [_worker(env, k, job) for k in W] + [_aggregator(env, job)]
    _finish(env, job, procs)
    assert "publishing it again from the local files" in log_text(procs[0]), log_text(procs[0])[-3000:]
    assert "had lost its submission" in log_text(procs[1]), log_text(procs[1])[-3000:]
    (proposal,) = env.ledger.proposals(job, 1)
    assert list(proposal.verdicts) == [0, 0], log_text(procs[2])[-3000:]


def test_one_process_per_party_and_job(deployed):
    env = deployed
    # W[1] stays away until the end: the round stays open, both first processes alive
    job = env.create_job(W[:2], [A], quorum=1, rounds=1)
    first = _worker(env, W[0], job)
    agg = _aggregator(env, job)
    lock = _state_dir(env, W[0], job) / "lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 60, "the first worker's lock", [first])
    second = env.run(W[0], "worker", "run", "--job", str(job), "--no-progress", timeout=120)
    err = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(err) == 1, second.stdout + second.stderr
    assert err[0].startswith("error: worker ") and f"pid {first.pid}" in err[0], err
    dup = env.run(A, "aggregator", "run", "--job", str(job), timeout=120)
    assert dup.returncode == 2 and f"pid {agg.pid}" in dup.stderr, dup.stderr
    # kill -9 leaves no stale lock: the next one runs the job to its end
    first.kill()
    first.wait(timeout=30)
    _finish(env, job, [_worker(env, W[0], job), _worker(env, W[1], job), agg])
