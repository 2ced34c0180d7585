"""Worker nodes as real processes: submission, crash safety, lateness, refusal."""

from __future__ import annotations

import signal

import pytest

from ledger.digest import sha256_bytes
from support import address, keys, log_text, tiny_config, wait_for

W = keys(3, "worker")
A = keys(1, "aggregator")


def test_two_workers_submit_round_one_with_correct_events(deployed):
    env = deployed
    job = env.create_job(W[:2], A, quorum=1, rounds=1)
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--rounds", "1", "--no-progress") for k in W[:2]]
    for p in procs:
        assert p.wait(timeout=180) == 0, log_text(p)
    subs = env.ledger.submissions(job, 1)
    assert sorted(s.worker for s in subs) == sorted(address(k) for k in W[:2])
    cfg = tiny_config()
    genesis = env.ledger.job(job).genesis_digest
    for s in subs:
        assert s.round == 1 and s.job_id == job
        assert s.num_samples == cfg.train.steps * cfg.train.batch_size
        data = env.store.get(s.cid, s.digest)
        assert sha256_bytes(data) == s.digest and len(data) == s.size
        from ledger.store import checkpoint

        _, meta = checkpoint.decode(data)
        assert meta["worker"] == s.worker.lower() and meta["round"] == "1"
        assert meta["parent"] == "0x" + genesis.hex()
    assert env.ledger.round(job, 1).submissions == 2
    for p in procs:
        text = log_text(p)
        assert "submitted" in text and "tx 0x" in text


@pytest.mark.parametrize("point", ["worker:train-step-3", "worker:after-publish", "worker:after-submit"])
def test_kill_9_resumes_without_double_submission(deployed, point):
    env = deployed
    job = env.create_job(W[:1], A, quorum=1, rounds=1)
    crashed = env.spawn(W[0], "worker", "run", "--job", str(job), "--rounds", "1", "--no-progress", LEDGER_CRASH_AT=point)
    assert crashed.wait(timeout=180) == -signal.SIGKILL, log_text(crashed)
    published_before = "published" in log_text(crashed)
    again = env.spawn(W[0], "worker", "run", "--job", str(job), "--rounds", "1", "--no-progress")
    # resumed: on chain, and the restarted worker saw it there (it never submits twice)
    wait_for(lambda: env.ledger.has_submitted(job, 1, address(W[0])) and (
                 again.poll() is not None   # it submitted itself and stopped (--rounds 1)
                 or "submitted; waiting" in log_text(again) or "already on chain" in log_text(again)),
             180, "the resumed submission", [again])
    again.kill()
    again.wait()
    subs = env.ledger.submissions(job, 1)
    assert len(subs) == 1, "exactly one submission after the restart"
    text = log_text(again)
    if published_before:
        # the finished checkpoint was not lost: no second training after the crash
        assert "trained" not in text, text
    if point == "worker:after-submit":
        assert "already on chain" in text or "submitted; waiting" in text, text


def test_worker_not_in_job_is_refused(deployed):
    env = deployed
    job = env.create_job(W[:1], A, quorum=1, rounds=1)
    outsider = keys(1, "outsider")[0]
    env.fund(outsider)
    r = env.run(outsider, "worker", "run", "--job", str(job), "--no-progress")
    assert r.returncode != 0
    assert f"is not a worker of job {job}" in r.stderr
    assert "Traceback" not in r.stderr and outsider[2:] not in r.stderr + r.stdout


def test_late_worker_is_told_and_moves_to_next_round(deployed):
    env = deployed
    # Two workers; only the first is on time. The round closes at its 25 s deadline.
    job = env.create_job(W[:2], A, quorum=1, rounds=2, round_duration=25)
    on_time = env.spawn(W[0], "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")
    wait_for(lambda: env.ledger.has_submitted(job, 1, address(W[0])), 120, "the first submission", [on_time])
    deadline = env.ledger.round(job, 1).deadline
    import time

    time.sleep(max(0, deadline - time.time()) + 1.5)
    late = env.spawn(W[1], "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")
    wait_for(lambda: "late" in log_text(late), 60, "the late message", [late])
    agg = env.spawn(A[0], "aggregator", "run", "--job", str(job), "--poll", "0.3")
    wait_for(lambda: env.ledger.has_submitted(job, 2, address(W[1])), 180, "the late worker's round-2 submission", [late, agg])
    assert not env.ledger.has_submitted(job, 1, address(W[1]))
    assert "round 1 closed" in log_text(late)
