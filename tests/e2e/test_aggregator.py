"""Aggregators as real processes: quorum, dishonesty, crashes, stalls, Byzantine workers."""

from __future__ import annotations

import json
import signal
import time

import pytest

from ledger.protocol.verdicts import Verdict
from node.context import party_dir
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
    """Commit-reveal through real aggregator processes: a liar commits a merge nobody else
    computes; an honest aggregator is killed -9 right after its commit; the second honest
    one commits, which closes the commits, and reveals; one honest + one dishonest reveal
    does not finalize; the first one, restarted, reveals exactly what it committed (the
    salt survived in its state file) and the honest quorum finalizes."""
    env = deployed
    job = env.create_job(W[:2], A, quorum=2, rounds=1)
    workers = _run_workers(env, job, W[:2])
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2, 180, "both submissions", workers)
    lie = env.commit_as(A[2], job, 1, [0, 0], b"\x66" * 32, b"\x77" * 32, 1234)
    crashed = _run_aggregators(env, job, A[:1], LEDGER_CRASH_AT="aggregator:after-commit")[0]
    assert crashed.wait(timeout=180) == -signal.SIGKILL, log_text(crashed)
    assert env.ledger.has_committed(job, 1, address(A[0])) and not env.ledger.has_proposed(job, 1, address(A[0]))
    honest = _run_aggregators(env, job, A[1:2])
    wait_for(lambda: env.ledger.has_committed(job, 1, address(A[1])), 180, "the second honest commit", honest)
    env.reveal_as(A[2], job, 1, lie)  # every aggregator committed: reveals are open
    wait_for(lambda: env.ledger.has_proposed(job, 1, address(A[1])), 180, "the second honest reveal", honest)
    time.sleep(1.0)
    assert env.ledger.round(job, 1).status != "finalized", "one honest + one dishonest reveal must not finalize"
    honest += _run_aggregators(env, job, A[:1])
    wait_for(lambda: env.ledger.round(job, 1).status == "finalized", 180, "the honest quorum", honest)
    rd = env.ledger.round(job, 1)
    assert rd.merged_digest != b"\x66" * 32
    props = env.ledger.proposals(job, 1)
    dissent = [p for p in props if p.outcome != rd.outcome]
    assert [p.aggregator for p in dissent] == [address(A[2])]
    assert sorted(p.aggregator for p in props if p.outcome == rd.outcome) == sorted(address(k) for k in A[:2])
    assert "revealed merge" in log_text(honest[-1]) and "committed" not in log_text(honest[-1])  # no second commit
    from ledger.trail.history import load_history, render_timeline

    timeline = render_timeline(load_history(env.ledger, job))
    assert "DISSENT" in timeline and timeline.count("  commit   0x") == 3 and timeline.count("  reveal   0x") == 3


def test_absent_aggregators_quorum_of_the_others_then_a_skip(deployed):
    """3 aggregators, quorum 2. Round 1: one never runs; the other two commit, the commit
    phase ends at its deadline, they reveal and finalize. Round 2: a second one has
    stopped; the last one alone commits, reveals after the commit deadline, and since no
    quorum can follow, the round is skipped at once with the parent kept."""
    env = deployed
    window = 8
    job = env.create_job(W[:2], A, quorum=2, rounds=2, proposal_window=window)
    procs = _run_workers(env, job, W[:2])
    procs += _run_aggregators(env, job, A[:1]) + _run_aggregators(env, job, A[1:2], "--rounds", "1")
    wait_for(lambda: env.ledger.job(job).completed, 300, "the job to complete", procs)
    r1, r2 = env.ledger.round(job, 1), env.ledger.round(job, 2)
    assert (r1.status, r1.commits, r1.proposals) == ("finalized", 2, 2)
    commits = env.ledger.commits(job, 1)
    reveals = env.ledger.proposals(job, 1)
    # the absent aggregator held the reveals back until the commit deadline, no longer
    assert min(p.timestamp for p in reveals) > r1.commit_deadline == min(c.timestamp for c in commits) + window
    assert (r2.status, r2.skip_reason, r2.commits, r2.proposals) == ("skipped", "no-quorum", 1, 1)
    assert r2.parent == r1.merged_digest and r2.merged_digest == r1.merged_digest
    assert env.ledger.job(job).current_parent == r1.merged_digest
    assert [p.aggregator for p in env.ledger.proposals(job, 2)] == [address(A[0])]
    assert "no quorum" in log_text(procs[2])


def test_two_aggregators_that_disagree_the_window_expires_and_the_audit_agrees(deployed, tmp_path):
    """A strict aggregator and a lax one (norm and validation stages off) judge a x100
    scaled update differently; the third commits and dies before revealing. No outcome
    reaches the quorum: after the reveal deadline the round is skipped, the job moves on
    (here: completes on its genesis model), and the audit reports the skip as consistent,
    naming the reveal that agrees with its own verification."""
    env = deployed
    # every aggregator must commit within the window of the first commit: under load one
    # takes 20 s to start and judge (CI once saw the mute one miss an 8 s window)
    window = 25
    attacker = keys(1, "scaler")[0]
    job = env.create_job([W[0], attacker], A, quorum=2, rounds=1, proposal_window=window)
    procs = _run_workers(env, job, W[:1], "--rounds", "1")
    procs.append(env.spawn_module(attacker, "node.simulate.adversary", "--job", str(job), "--attack", "scale", "--rounds", "1"))
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2, 180, "both submissions", procs)
    strict = _run_aggregators(env, job, A[:1])[0]
    lax = _run_aggregators(env, job, A[1:2], "--skip-stage", "norm", "--skip-stage", "validation",
                          "--skip-stage", "replay")[0]
    mute = _run_aggregators(env, job, A[2:], LEDGER_CRASH_AT="aggregator:after-commit")[0]
    procs += [strict, lax, mute]
    assert mute.wait(timeout=180) == -signal.SIGKILL, log_text(mute)
    wait_for(lambda: env.ledger.job(job).completed, 240, "the skip after the reveal deadline", procs)
    rd = env.ledger.round(job, 1)
    assert (rd.status, rd.skip_reason, rd.commits, rd.proposals) == ("skipped", "no-quorum", 3, 2)
    skipped = next(e for e in env.ledger.events(job) if e.name == "RoundSkipped")
    assert skipped.timestamp > rd.reveal_deadline  # the window expired: the mute aggregator could still have revealed
    info = env.ledger.job(job)
    assert info.completed and info.current_parent == info.genesis_digest
    props = {p.aggregator: p for p in env.ledger.proposals(job, 1)}
    subs = env.ledger.submissions(job, 1)
    scaled = [s.index for s in subs if s.worker == address(attacker)][0]
    assert props[address(A[0])].verdicts[scaled] != Verdict.ACCEPTED
    assert props[address(A[1])].verdicts[scaled] == Verdict.ACCEPTED
    for p in (strict, lax):
        assert p.wait(timeout=60) == 0, log_text(p)

    from node.roles.audit import audit_job
    from node.reports.text import render_text

    report = audit_job(env.ledger, env.store, job, replay="none")
    assert report.ok, [d.line() for d in report.discrepancies]
    (ra,) = report.rounds
    assert (ra.status, ra.skip_reason) == ("skipped", "no-quorum")
    agree = {p.aggregator: p.agrees_with_audit for p in ra.proposals}
    assert agree == {address(A[0]): True, address(A[1]): False}
    assert not any(p.agrees_with_quorum for p in ra.proposals)
    assert "no quorum" in render_text(report, color=False)


@pytest.mark.parametrize("point", ["aggregator:after-publish", "aggregator:after-commit"])
def test_aggregator_kill_9_resumes_without_double_proposal(deployed, point):
    env = deployed
    job = env.create_job(W[:2], A[:1], quorum=1, rounds=1)
    workers = _run_workers(env, job, W[:2])
    wait_for(lambda: env.ledger.round(job, 1).submissions == 2, 180, "both submissions", workers)
    crashed = _run_aggregators(env, job, A[:1], LEDGER_CRASH_AT=point)[0]
    assert crashed.wait(timeout=180) == -signal.SIGKILL, log_text(crashed)
    assert not env.ledger.has_proposed(job, 1, address(A[0]))
    assert env.ledger.has_committed(job, 1, address(A[0])) == (point == "aggregator:after-commit")
    state = party_dir(env.settings.data_dir / "aggregator", env.ledger.chain_id, env.ledger.address, job,
                      address(A[0])) / "round-1.json"
    assert state.stat().st_mode & 0o077 == 0, "the salt is a secret until the reveal"
    salt = json.loads(state.read_text())["salt"]
    again = _run_aggregators(env, job, A[:1])[0]
    wait_for(lambda: env.ledger.job(job).completed, 180, "the job to complete", [again])
    assert len(env.ledger.proposals(job, 1)) == 1 and len(env.ledger.commits(job, 1)) == 1
    # the restart revealed with the salt it kept before the crash: it did not judge the round again
    assert "0x" + env.ledger.proposals(job, 1)[0].salt.hex() == salt == json.loads(state.read_text())["salt"]


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
    "copy": {Verdict.LINEAGE},          # a byte copy names the original worker
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
        procs.append(env.spawn_module(k, "node.simulate.adversary", "--job", str(job), "--attack", attack, "--rounds", "1"))
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
            # passes the cheap checks; its transcript's last segment does not end in those
            # tensors (and were it accepted, the median would drop it)
            assert got in (Verdict.REPLAY, Verdict.VALIDATION_LOSS, Verdict.UPDATE_NORM), got.name
        else:
            assert got in EXPECTED[attack], f"{attack}: got {got.name}"


def test_waiting_roles_reread_on_a_contract_event_or_a_deadline_not_on_every_block(deployed):
    """What every waiting worker and aggregator does between reads of the job: return when
    a block holds an event of the ledger (every state change emits one), or when a round's
    deadline passes with no transaction at all; empty blocks (one a second here, as on a
    real chain) change nothing and do not wake it. Re-reading the job on each of them
    was most of an idle aggregator's CPU."""
    import threading

    from node.context import JobContext

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
