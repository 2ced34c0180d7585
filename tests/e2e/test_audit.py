"""`ledger audit`: a clean history verifies from chain + storage alone; every kind of
tampering is found and located (round, party, check)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ledger.config import load_settings
from ledger.digest import sha256_bytes
from support import address, chain_of_its_own, keys, tiny_config, wait_for

HONEST = keys(2, "honest")
AGGS = keys(2, "audit-agg")
NAN = keys(1, "nan")[0]
WRONG_SEED = keys(1, "wrong-seed")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One chain with four finished jobs: clean, a quorum that accepts a NaN checkpoint,
    a quorum that finalizes a merge that is not the merge, and a worker whose training
    does not replay."""
    with chain_of_its_own(tmp_path_factory, "audit") as env:
        jobs = {
            "clean": env.create_job(HONEST, AGGS[:1], quorum=1, rounds=2),
            "accepts-bad": env.create_job([HONEST[0], NAN], AGGS, quorum=2, rounds=1),
            "bad-merge": env.create_job(HONEST, AGGS, quorum=2, rounds=1),
            # aggregators that replay nothing (replay_segments 0): only the audit's replay can tell
            "replay": env.create_job([HONEST[0], WRONG_SEED], AGGS[:1], quorum=1, rounds=1,
                                     config=tiny_config(replay_segments=0)),
        }
        w = lambda k, j: env.spawn(k, "worker", "run", "--job", str(j), "--no-progress", "--poll", "0.3")
        procs = [w(k, jobs["clean"]) for k in HONEST] + [w(k, jobs["bad-merge"]) for k in HONEST]
        procs += [w(HONEST[0], jobs["accepts-bad"]), w(HONEST[0], jobs["replay"])]
        procs.append(env.spawn_module(NAN, "node.simulate.adversary", "--job", str(jobs["accepts-bad"]), "--attack", "nan"))
        procs.append(env.spawn_module(WRONG_SEED, "node.simulate.adversary", "--job", str(jobs["replay"]), "--attack", "wrong-seed"))
        for j in ("clean", "replay"):
            procs.append(env.spawn(AGGS[0], "aggregator", "run", "--job", str(jobs[j]), "--poll", "0.3"))
        # The colluding quorum: both aggregators sign what no honest verification gives.
        for name in ("accepts-bad", "bad-merge"):
            j = jobs[name]
            wait_for(lambda: env.ledger.round(j, 1).submissions == 2, 240, f"submissions of {name}", procs)
            bogus = sha256_bytes(f"not the merge of {name}".encode())
            pending = [env.commit_as(k, j, 1, [0, 0], bogus, bogus, 4242) for k in AGGS]
            for k, p in zip(AGGS, pending):  # both committed: the reveal phase is open
                env.reveal_as(k, j, 1, p)
        for name, j in jobs.items():
            wait_for(lambda: env.ledger.job(j).completed, 300, f"job {name} to complete", procs)
        env.stop_all()
        yield env, jobs


def _auditor(env, store_dir, tmp_path):
    """Settings of an outsider: an empty data dir, the RPC URL, the address, the store."""
    return load_settings(
        {"data_dir": tmp_path / "auditor", "rpc_url": env.ledger.chain.rpc_url, "contract": env.ledger.address,
         "store_path": store_dir},
        env={}, config_file=None)


def _audit(env, store_dir, tmp_path, job, replay="sample"):
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store
    from node.roles.audit import audit_job

    s = _auditor(env, store_dir, tmp_path)
    return audit_job(open_ledger(s), open_store(s), job, replay=replay)


def _where(report):
    return {(d.round, d.party.lower(), d.check) for d in report.discrepancies}


def _tampered_store(env, tmp_path):
    copy = tmp_path / "store-copy"
    shutil.copytree(env.settings.store_dir, copy)
    return copy


def _submission(env, job, round_, key):
    return next(s for s in env.ledger.submissions(job, round_) if s.worker == address(key))


def test_clean_history_verifies_from_an_empty_data_dir(world, tmp_path):
    env, jobs = world
    s = _auditor(env, env.settings.store_dir, tmp_path)
    cli_env = {k: v for k, v in env.env().items() if not k.startswith("LEDGER_")}
    cli_env.update(LEDGER_DATA_DIR=str(s.data_dir), LEDGER_RPC_URL=s.rpc_url, LEDGER_CONTRACT=s.contract,
                   LEDGER_STORE_DIR=str(s.store_dir))
    html = tmp_path / "report.html"
    r = subprocess.run([sys.executable, "-m", "ledger_cli", "audit", "--job", str(jobs["clean"]), "--html", str(html)],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    final = env.ledger.job(jobs["clean"]).current_parent
    assert "AUDIT OK" in r.stdout and final.hex() in r.stdout
    assert html.read_text().count("lineage-graph") >= 1
    assert not (s.data_dir / "worker").exists() and not (s.data_dir / "aggregator").exists()
    j = subprocess.run([sys.executable, "-m", "ledger_cli", "audit", "--job", str(jobs["clean"]), "--json"],
                       capture_output=True, text=True, env=cli_env, timeout=300)
    doc = json.loads(j.stdout)
    assert doc["ok"] is True and doc["final_digest"] == "0x" + final.hex() and len(doc["rounds"]) == 2
    h = subprocess.run([sys.executable, "-m", "ledger_cli", "history", "--job", str(jobs["clean"])],
                       capture_output=True, text=True, env=cli_env, timeout=120)
    assert h.returncode == 0 and h.stdout.count("[finalized]") == 2 and "submit" in h.stdout


def test_replaced_bytes_are_located(world, tmp_path):
    env, jobs = world
    store = _tampered_store(env, tmp_path)
    from ledger.store.embedded import EmbeddedStore

    sub = _submission(env, jobs["clean"], 2, HONEST[1])
    pack, _ = EmbeddedStore(store).paths_of(sub.cid)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    report = _audit(env, store, tmp_path, jobs["clean"])
    assert not report.ok
    assert (2, address(HONEST[1]).lower(), "integrity") in _where(report)


def test_deleted_artifact_is_located(world, tmp_path):
    env, jobs = world
    store = _tampered_store(env, tmp_path)
    from ledger.store.embedded import EmbeddedStore

    sub = _submission(env, jobs["clean"], 1, HONEST[0])
    for p in EmbeddedStore(store).paths_of(sub.cid):
        p.unlink()
    report = _audit(env, store, tmp_path, jobs["clean"])
    # Gone from storage after the quorum fetched it: not a wrong record, but not provable now.
    assert report.status == "INCOMPLETE" and not report.ok and not report.discrepancies
    assert (1, address(HONEST[0]).lower(), "availability") in {(d.round, d.party.lower(), d.check) for d in report.unavailable}


def test_colluding_quorum_finalizing_a_wrong_merge_is_found(world, tmp_path):
    env, jobs = world
    report = _audit(env, env.settings.store_dir, tmp_path, jobs["bad-merge"])
    assert (1, "", "merge") in _where(report)
    assert all(c.audit_verdict == 0 for r in report.rounds for c in r.contributions)


def test_quorum_accepting_a_rejected_contribution_is_found(world, tmp_path):
    env, jobs = world
    report = _audit(env, env.settings.store_dir, tmp_path, jobs["accepts-bad"])
    where = _where(report)
    assert (1, address(NAN).lower(), "verdict") in where
    d = next(d for d in report.discrepancies if d.check == "verdict")
    assert "non-finite" in d.expected and "accepted" in d.actual


def test_replay_mismatch_is_found_only_by_replay(world, tmp_path):
    env, jobs = world
    assert _audit(env, env.settings.store_dir, tmp_path, jobs["replay"], replay="none").ok
    assert _audit(env, env.settings.store_dir, tmp_path, jobs["replay"], replay="sample").ok   # the quorum's own draw: none
    report = _audit(env, env.settings.store_dir, tmp_path, jobs["replay"], replay="all")
    assert _where(report) == {(1, address(WRONG_SEED).lower(), "replay")}


def test_generate_runs_only_a_verified_model(world, tmp_path):
    env, jobs = world
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store
    from node.commands.generate import UnverifiedModel, generate_verified

    s = _auditor(env, env.settings.store_dir, tmp_path)
    g = generate_verified(open_ledger(s), open_store(s), jobs["clean"], "ROMEO:", max_new_tokens=40)
    assert g.text.startswith("ROMEO:") and len(g.text.encode()) >= 40
    with pytest.raises(UnverifiedModel, match="round 1"):
        generate_verified(open_ledger(s), open_store(s), jobs["bad-merge"], "ROMEO:", max_new_tokens=10)


def _round_history(commits, reveals, status="closed", skip_reason="", reveal_deadline=1000, skipped_at=None):
    """A round's history as the chain would give it, built by hand: the contract refuses to
    record what these cases describe, so the audit's own checks are exercised directly."""
    from types import SimpleNamespace

    from ledger.ethereum.contract import ChainEvent, Commit, Proposal, RoundInfo, TrainingLedger
    from ledger.protocol.settlement import Settlement
    from ledger.trail.history import RoundHistory

    info = RoundInfo(job_id=1, round=1, parent=b"\1" * 32, deadline=0, submissions=2, commitment=b"\2" * 32,
                     status=status, merged_digest=b"", merged_cid="", merged_size=0, outcome=b"", accepted=0,
                     proposals=len(reveals), commits=len(commits), commit_deadline=reveal_deadline - 100,
                     reveal_deadline=reveal_deadline, skip_reason=skip_reason)
    cs = [Commit(1, 1, a, h, 0, block, "0x", 0) for a, h, block in commits]
    ps = []
    for a, merged, salt, block in reveals:
        outcome = TrainingLedger.outcome_of(merged, merged, 10, [0, 0], Settlement((0, 0)))
        ps.append(Proposal(1, 1, a, merged, merged, 10, outcome, 2, [0, 0], block, "0x", 0, salt=salt,
                           settlement=Settlement((0, 0))))
    events = [ChainEvent("RoundSkipped", {"round": 1}, 99, "0x", 0, timestamp=skipped_at)] if skipped_at else []
    # every committer is an aggregator of the job: the commits are closed once they all committed
    ctx = SimpleNamespace(info=SimpleNamespace(quorum=2, min_submissions=1, aggregators=[a for a, _, _ in commits]),
                          ledger=TrainingLedger)
    return ctx, RoundHistory(round=1, info=info, submissions=[], proposals=ps, events=events, commits=cs)


def test_audit_checks_each_reveal_against_its_commit_and_their_order():
    from ledger.ethereum.contract import TrainingLedger
    from ledger.protocol.settlement import Settlement
    from node.roles.audit import _check_commit_reveal

    a, b, c = (address(k) for k in keys(3, "cr"))
    m, salt = b"\5" * 32, b"\6" * 32
    good = TrainingLedger.commit_hash_of(TrainingLedger.outcome_of(m, m, 10, [0, 0], Settlement((0, 0))), salt, a)
    ctx, rh = _round_history([(a, good, 1), (b, good, 2)], [(a, m, salt, 3), (b, m, salt, 4), (c, m, salt, 5)])
    found = [d for _, d in _check_commit_reveal(ctx, rh)]
    # a's reveal opens its commit; b copied a's commit hash (its address does not open it); c never committed
    assert [(d.party, d.check, d.expected) for d in found] == [
        (b, "commit-reveal", f"commit 0x{good.hex()}"), (c, "commit-reveal", "a commit before the reveal")]
    ctx, rh = _round_history([(a, good, 5)], [(a, m, salt, 3)])  # revealed before the last commit
    found = [d for _, d in _check_commit_reveal(ctx, rh)]
    assert [d.expected for d in found] == ["every commit before the first reveal"]


def test_audit_checks_the_reason_of_a_no_quorum_skip():
    from ledger.ethereum.contract import TrainingLedger
    from ledger.protocol.settlement import Settlement
    from node.roles.audit import _check_skip

    a, b, c = (address(k) for k in keys(3, "sk"))
    m, salt = b"\5" * 32, b"\6" * 32
    h = lambda x: TrainingLedger.commit_hash_of(TrainingLedger.outcome_of(m, m, 10, [0, 0], Settlement((0, 0))), salt, x)  # noqa: E731
    # two agreeing reveals reached the quorum of 2: the skip is wrong
    ctx, rh = _round_history([(a, h(a), 1), (b, h(b), 2)], [(a, m, salt, 3), (b, m, salt, 4)], "skipped", "no-quorum",
                             skipped_at=2000)
    found = [d for _, d in _check_skip(ctx, rh)]
    assert [(d.check, d.actual) for d in found] == [("skip", "2 agreeing reveals")]
    # skipped before the reveal deadline while a commit was still unrevealed
    ctx, rh = _round_history([(a, h(a), 1), (c, h(c), 2)], [(a, m, salt, 3)], "skipped", "no-quorum",
                             reveal_deadline=1000, skipped_at=900)
    found = [d for _, d in _check_skip(ctx, rh)]
    assert [d.check for d in found] == ["skip"] and "1 commit(s) unrevealed" in found[0].actual
    # the same after the deadline, or with every commit revealed: consistent
    for at, reveals in ((1001, [(a, m, salt, 3)]), (900, [(a, m, salt, 3), (c, b"\7" * 32, salt, 4)])):
        ctx, rh = _round_history([(a, h(a), 1), (c, h(c), 2)], reveals, "skipped", "no-quorum", skipped_at=at)
        found = [d for _, d in _check_skip(ctx, rh)]
        assert found == []
