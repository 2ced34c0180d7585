"""The default audit (`--replay sample`) vouches only for what it read, and says what it
could not; an unfinished job reads as unfinished.

- every published transcript snapshot is fetched and hashed, replayed or not: a flipped
  byte in a snapshot no one replayed is AUDIT FAILED naming it (policy "all": every
  snapshot is published with its checkpoint);
- a round's stored merge moved aside is AUDIT INCOMPLETE (exit 3), and the next round
  is still checked (from the audit's own merge, which hashes to the on-chain digest; or,
  when that cannot be recomputed either, by hashing what the round stored): a flipped
  byte there is still found;
- with round 2 of 3 open, the audit ends `AUDIT OK (job unfinished: round 2 of 3 open)
  latest model 0x...` (text, JSON, HTML) and `ledger generate` says so in its header.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ledger.store import checkpoint
from ledger.config import load_settings
from ledger.store.embedded import EmbeddedStore
from node.training import transcript as tx
from support import address, chain_of_its_own, keys, tiny_config, wait_for

W = keys(3, "artifacts-w")
A = keys(1, "artifacts-a")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "audit-artifacts") as env:
        jobs = {
            # every snapshot published with its checkpoint; 5 one-step segments, one drawn
            "all": env.create_job(W[:2], [A], quorum=1, rounds=2,
                                  config=tiny_config(publish_snapshots="all", segment_steps=1)),
            # its worker stops after round 1 (snapshots published with the checkpoint: nothing
            # is left to reveal once it is gone)
            "open": env.create_job(W[2:], [A], quorum=1, rounds=3, round_duration=3600,
                                   config=tiny_config(publish_snapshots="all")),
        }
        w = lambda k, j, *more: env.spawn(k, "worker", "run", "--job", str(j), "--no-progress", "--poll", "0.3", *more)
        procs = [w(k, jobs["all"]) for k in W[:2]] + [w(W[2], jobs["open"], "--rounds", "1")]
        procs += [env.spawn(A, "aggregator", "run", "--job", str(j), "--poll", "0.3") for j in jobs.values()]
        wait_for(lambda: env.ledger.job(jobs["all"]).completed, 300, "job all", procs)
        wait_for(lambda: env.ledger.job(jobs["open"]).current_round == 2, 300, "round 1 of job open", procs)
        env.stop_all()
        yield env, jobs


def _settings(env, tmp_path, store):
    return load_settings({"data_dir": tmp_path / "auditor", "rpc_url": env.ledger.chain.rpc_url,
                          "contract": env.ledger.address, "store_path": store}, env={}, config_file=None)


def _audit(env, tmp_path, store, job):
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store
    from node.roles.audit import audit_job

    s = _settings(env, tmp_path, store)
    return audit_job(open_ledger(s), open_store(s), job, replay="sample", evaluate_merged=False)


def _cli(env, tmp_path, store, *args):
    s = _settings(env, tmp_path, store)
    e = {k: v for k, v in env.env().items() if not k.startswith("LEDGER_")}
    e.update(LEDGER_DATA_DIR=str(s.data_dir), LEDGER_RPC_URL=s.rpc_url, LEDGER_CONTRACT=s.contract,
             LEDGER_STORE_DIR=str(store))
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], capture_output=True, text=True, env=e,
                          timeout=300)


def _copy(env, tmp_path):
    copy = tmp_path / "store-copy"
    shutil.copytree(env.settings.store_dir, copy)
    return copy


def _flip(store, cid):
    pack, _ = EmbeddedStore(store).paths_of(cid)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))


def _remove(store, cid):
    for f in EmbeddedStore(store).paths_of(cid):
        f.unlink()


def _sub(env, job, r, key):
    return next(s for s in env.ledger.submissions(job, r) if s.worker == address(key))


def test_a_flipped_byte_in_a_published_snapshot_nobody_replayed_fails_the_audit(world, tmp_path):
    env, jobs = world
    job = jobs["all"]
    clean = _audit(env, tmp_path, env.settings.store_dir, job)
    assert clean.ok, [d.line() for d in clean.discrepancies + clean.unavailable]
    sub = _sub(env, job, 1, W[0])
    (ca,) = [c for c in clean.rounds[0].contributions if c.worker == address(W[0])]
    assert len(ca.replayed_segments) == 1
    seg = ca.replayed_segments[0]
    meta = checkpoint.read_meta(env.store.get(sub.cid, sub.digest))
    cfg = tiny_config(publish_snapshots="all", segment_steps=1)
    manifest = tx.read_manifest(meta, steps=cfg.train.steps, segment_steps=1, max_size=tx.snapshot_cap(cfg.policy))
    # a snapshot neither end of the replayed segment (snapshot k is boundary k+1)
    snap = next(s for k, s in enumerate(manifest.snapshots) if k + 1 not in (seg, seg + 1))
    store = _copy(env, tmp_path)
    _flip(store, snap.cid)
    r = _cli(env, tmp_path, store, "audit", "--job", str(job), "--no-progress")
    assert r.returncode == 1 and "AUDIT FAILED" in r.stdout, r.stdout + r.stderr
    assert snap.cid in r.stdout and f"snapshot at step {snap.step}" in r.stdout, r.stdout
    report = _audit(env, tmp_path, store, job)
    assert {(d.round, d.party.lower(), d.check) for d in report.discrepancies} == {(1, address(W[0]).lower(), "integrity")}
    # the audit read every published snapshot: 4 a contribution, 2 contributions, 2 rounds
    assert clean.bytes_verified > sum(s.size for s in env.ledger.submissions(job)) + sum(
        ref.size for ref in manifest.snapshots) * 3


def test_a_missing_merge_is_incomplete_and_the_next_round_is_still_checked(world, tmp_path):
    env, jobs = world
    job = jobs["all"]
    merge1 = env.ledger.round(job, 1)
    store = _copy(env, tmp_path)
    _remove(store, merge1.merged_cid)
    r = _cli(env, tmp_path, store, "audit", "--job", str(job), "--no-progress")
    assert r.returncode == 3 and "AUDIT INCOMPLETE" in r.stdout and merge1.merged_cid in r.stdout, r.stdout + r.stderr
    report = _audit(env, tmp_path, store, job)
    assert report.status == "INCOMPLETE" and not report.discrepancies
    assert [(d.round, d.check) for d in report.unavailable] == [(1, "merged-artifact")]
    # round 2 was verified in full: its parent is the audit's own merge of round 1
    r2 = report.rounds[1]
    assert r2.ok and r2.recomputed_digest == r2.merged_digest and len(r2.contributions) == 2
    assert all(c.audit_verdict == 0 for c in r2.contributions)
    # ... and a fault there is still found
    _flip(store, _sub(env, job, 2, W[1]).cid)
    report = _audit(env, tmp_path, store, job)
    assert report.status == "FAILED"
    assert (2, address(W[1]).lower(), "integrity") in {(d.round, d.party.lower(), d.check) for d in report.discrepancies}


def test_a_round_whose_parent_cannot_be_had_is_still_hashed(world, tmp_path):
    env, jobs = world
    job = jobs["all"]
    store = _copy(env, tmp_path)
    # round 1's merge and one of the contributions it merged: the merge cannot be recomputed
    _remove(store, env.ledger.round(job, 1).merged_cid)
    _remove(store, _sub(env, job, 1, W[0]).cid)
    report = _audit(env, tmp_path, store, job)
    assert report.status == "INCOMPLETE", [d.line() for d in report.discrepancies]
    assert {(d.round, d.check) for d in report.unavailable} >= {(1, "merged-artifact"), (2, "parent")}
    _flip(store, _sub(env, job, 2, W[1]).cid)
    report = _audit(env, tmp_path, store, job)
    assert (2, address(W[1]).lower(), "integrity") in {(d.round, d.party.lower(), d.check) for d in report.discrepancies}


def test_an_unfinished_job_reads_as_unfinished(world, tmp_path):
    env, jobs = world
    job = jobs["open"]
    latest = "0x" + env.ledger.round(job, 1).merged_digest.hex()
    store = env.settings.store_dir
    html = tmp_path / "report.html"
    r = _cli(env, tmp_path, store, "audit", "--job", str(job), "--no-progress", "--html", str(html))
    last = [line for line in r.stdout.splitlines() if line.strip()][-2]     # then "HTML report: ..."
    assert r.returncode == 0 and last == f"AUDIT OK (job unfinished: round 2 of 3 open) latest model {latest}", r.stdout
    assert "job unfinished: round 2 of 3 open" in html.read_text()
    doc = json.loads(_cli(env, tmp_path, store, "audit", "--job", str(job), "--json").stdout)
    assert doc["finished"] is False and doc["unfinished"] == "job unfinished: round 2 of 3 open"
    assert doc["final_digest"] is None and doc["latest_digest"] == latest and doc["ok"] is True
    g = _cli(env, tmp_path, store, "generate", "--job", str(job), "--max-new-tokens", "5")
    assert g.returncode == 0, g.stderr
    assert g.stdout.splitlines()[0] == (f"# model {latest} (audit OK; job unfinished: round 2 of 3 open: the latest "
                                        "model, not a final one)"), g.stdout
