"""Aggregators as real processes: quorum, dishonesty, crashes, stalls, Byzantine workers."""

from __future__ import annotations

import signal
import time

import pytest

from ledger.verdicts import Verdict
from support import address, keys, log_text, tiny_config, wait_for

W = keys(4, "worker")
A = keys(3, "aggregator")


def _run_workers(env, job, ks, *extra):
    return [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3", *extra) for k in ks]


def _run_aggregators(env, job, ks, *extra, **extra_env):
    return [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3", *extra, **extra_env) for k in ks]


def test_three_aggregators_quorum_two_finalize_several_rounds(deployed):
    env = deployed
    job = env.create_job(W[:2], A, quorum=2, rounds=3)
    procs = _run_workers(env, job, W[:2]) + _run_aggregators(env, job, A)
    wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", procs)
    for r in (1, 2, 3):
        rd = env.ledger.round(job, r)
        assert rd.status == "finalized"
        props = env.ledger.proposals(job, r)
        assert len(props) >= 2
        quorum = [p for p in props if p.outcome == rd.outcome]
        assert len(quorum) >= 2
        # independent aggregators reached the same bytes
        assert len({p.merged_digest for p in props}) == 1
        assert all(p.verdicts == [0, 0] for p in props)
    assert env.ledger.round(job, 2).parent == env.ledger.round(job, 1).merged_digest
    assert env.ledger.job(job).current_parent == env.ledger.round(job, 3).merged_digest
    for p in procs:
        assert p.wait(timeout=60) == 0, log_text(p)


def test_lone_dishonest_aggregator_cannot_finalize_and_is_visible(deployed):
    env = deployed
    job = env.create_job(W[:2], A, quorum=2, rounds=1)
    workers = _run_workers(env, job, W[:2])
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2, 180, "both submissions", workers)
    rd = env.ledger.round(job, 1)
    # The dishonest aggregator proposes a merge nobody else computes.
    liar = env.as_party(A[2])
    liar.propose(job, 1, rd.commitment, [0, 0], b"\x66" * 32, b"\x77" * 32, 1234)
    honest = _run_aggregators(env, job, A[:1])
    wait_for(lambda: env.ledger.has_proposed(job, 1, address(A[0])), 180, "the honest proposal", honest)
    time.sleep(1.0)
    assert env.ledger.round(job, 1).status != "finalized", "one honest + one dishonest vote must not finalize"
    honest += _run_aggregators(env, job, A[1:2])
    wait_for(lambda: env.ledger.round(job, 1).status == "finalized", 180, "the honest quorum", honest)
    rd = env.ledger.round(job, 1)
    assert rd.merged_digest != b"\x66" * 32
    props = env.ledger.proposals(job, 1)
    dissent = [p for p in props if p.outcome != rd.outcome]
    assert [p.aggregator for p in dissent] == [address(A[2])]
    from ledger.history import load_history, render_timeline

    assert "DISSENT" in render_timeline(load_history(env.ledger, job))


def test_aggregator_kill_9_resumes_without_double_proposal(deployed):
    env = deployed
    job = env.create_job(W[:2], A[:1], quorum=1, rounds=1)
    workers = _run_workers(env, job, W[:2])
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2, 180, "both submissions", workers)
    crashed = _run_aggregators(env, job, A[:1], LEDGER_CRASH_AT="aggregator:after-publish")[0]
    assert crashed.wait(timeout=180) == -signal.SIGKILL, log_text(crashed)
    assert not env.ledger.has_proposed(job, 1, address(A[0]))
    again = _run_aggregators(env, job, A[:1])[0]
    wait_for(lambda: env.ledger.job(job).completed, 180, "the job to complete", [again])
    assert len(env.ledger.proposals(job, 1)) == 1


def test_absent_worker_does_not_stall_the_round(deployed):
    env = deployed
    job = env.create_job(W[:3], A[:1], quorum=1, rounds=1, round_duration=25)
    procs = _run_workers(env, job, W[:2]) + _run_aggregators(env, job, A[:1])
    wait_for(lambda: env.ledger.job(job).completed, 240, "the job to complete at the deadline", procs)
    rd = env.ledger.round(job, 1)
    assert rd.status == "finalized" and rd.submissions == 2


def test_round_below_minimum_keeps_its_parent(deployed):
    env = deployed
    job = env.create_job(W[:2], A[:1], quorum=1, rounds=2, round_duration=6, min_submissions=2)
    genesis = env.ledger.job(job).genesis_digest
    procs = _run_workers(env, job, W[:1]) + _run_aggregators(env, job, A[:1])
    wait_for(lambda: env.ledger.job(job).current_round >= 2, 120, "round 1 to be closed", procs)
    assert env.ledger.round(job, 1).status == "skipped"
    assert env.ledger.round(job, 2).parent == genesis


EXPECTED = {
    "tamper": {Verdict.INTEGRITY},
    "stale-parent": {Verdict.LINEAGE},
    "nan": {Verdict.NON_FINITE},
    "scale": {Verdict.UPDATE_NORM},
    "noise": {Verdict.UPDATE_NORM, Verdict.VALIDATION_LOSS},
    "shape": {Verdict.STRUCTURE},
    "pickle": {Verdict.FORMAT},
    "copy": {Verdict.DUPLICATE},
}


@pytest.mark.slow
def test_byzantine_workers_are_rejected_with_the_right_reason(deployed):
    env = deployed
    attacks = list(EXPECTED) + ["sign-flip"]
    honest = keys(3, "honest")
    bad = keys(len(attacks), "byzantine")
    job = env.create_job(honest + bad, A[:2], quorum=2, rounds=1, round_duration=240,
                         config=tiny_config(merge_rule="median"))
    procs = _run_workers(env, job, honest, "--rounds", "1")
    wait_for(lambda: env.ledger.round(job, 1).submissions >= 1, 180, "an honest submission", procs)
    for k, attack in zip(bad, attacks):
        procs.append(env.spawn_module(k, "node.adversary", "--job", str(job), "--attack", attack, "--rounds", "1"))
    procs += _run_aggregators(env, job, A[:2])
    wait_for(lambda: env.ledger.job(job).completed, 400, "the round to finalize", procs)
    rd = env.ledger.round(job, 1)
    subs = env.ledger.submissions(job, 1)
    quorum = [p for p in env.ledger.proposals(job, 1) if p.outcome == rd.outcome]
    verdict = {s.worker: Verdict(v) for s, v in zip(subs, quorum[0].verdicts)}
    for k in honest:
        assert verdict[address(k)] == Verdict.ACCEPTED
    for k, attack in zip(bad, attacks):
        got = verdict[address(k)]
        if attack == "sign-flip":
            # passes the cheap checks; the median drops it (the merge stays near the honest ones)
            assert got in (Verdict.ACCEPTED, Verdict.VALIDATION_LOSS, Verdict.UPDATE_NORM)
        else:
            assert got in EXPECTED[attack], f"{attack}: got {got.name}"


def test_waiting_roles_reread_on_a_contract_event_or_a_deadline_not_on_every_block(deployed):
    """What every waiting worker and aggregator does between reads of the job: return when
    a block holds an event of the ledger (every state change emits one), or when a round's
    deadline passes with no transaction at all; empty blocks (one a second here, as on a
    real chain) change nothing and do not wake it. Re-reading the job on each of them
    was most of an idle aggregator's CPU."""
    import threading

    from node.task import JobContext

    env = deployed
    job = env.create_job(W[:1], A[:1], quorum=1, rounds=1)
    ctx = JobContext.load(env.ledger, env.store, job)
    mine = lambda: env.ledger.chain.w3.provider.make_request("evm_mine", [])  # noqa: E731
    t0 = time.monotonic()
    ctx.wait(0.05)                                        # nothing seen yet: back at once
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    mine(), mine()
    ctx.wait(0.05, until=time.time() + 2.5)               # empty blocks only: sits out the deadline
    assert 2.4 <= time.monotonic() - t0 < 15
    t0 = time.monotonic()
    ctx.wait(0.05, idle=1.0)                              # no event, no deadline: the safety re-read
    assert 0.95 <= time.monotonic() - t0 < 15
    timer = threading.Timer(0.5, lambda: env.create_job(W[1:2], A[:1]))
    timer.start()
    t0 = time.monotonic()
    ctx.wait(0.05, until=time.time() + 120, idle=120)     # an event (JobCreated): back as soon as it is mined
    timer.join()
    assert 0.45 <= time.monotonic() - t0 < 60
