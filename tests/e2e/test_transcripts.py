"""Transcripts that scale, through the real worker, aggregator and audit processes.

- Under the default policy a worker commits to every snapshot of its transcript but
  stores only the ones its drawn segments start and end at, once the round has closed
  and the draw is known: at most 3 checkpoints' worth (a compact snapshot is 1.5).
  After the workers have gone (processes stopped, local files deleted) the auditor
  still replays each drawn segment from storage: AUDIT OK.
- A worker that withholds its drawn snapshots gets its own verdict,
  ``transcript-unrevealed``, from the quorum and from the audit.
- An aggregator's peak memory does not grow with the number of contributions: with 8
  it stays within 3 checkpoints' worth of its peak with 2 (contributions wait on disk
  and the merge reads blocks; only the prefetch queue, at most 4 deep, differs).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from ledger.store import checkpoint
from ledger.protocol.verdicts import Verdict
from support import address, keys, log_text, tiny_config, wait_for

pytestmark = pytest.mark.slow


def _config():
    cfg = tiny_config()
    cfg.train.steps, cfg.policy.segment_steps, cfg.policy.replay_segments = 6, 2, 1
    assert cfg.policy.publish_snapshots == "drawn"      # the default under test
    return cfg


def _audit(env, job: int, replay: str) -> tuple[int, dict]:
    out = env.run(None, "audit", "--job", str(job), "--replay", replay, "--json", "--no-progress", timeout=300)
    assert out.stdout.strip(), out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def test_only_drawn_snapshots_are_stored_and_still_audited_after_the_workers_left(deployed):
    from node.context import JobContext
    from node.training import transcript as tx
    from node.verification.rounds import replay_seed

    env = deployed
    w0, w1, withhold = keys(3, "tx-worker")
    agg = keys(1, "tx-agg")[0]
    job = env.create_job([w0, w1, withhold], [agg], quorum=1, rounds=1, config=_config(), proposal_window=40)
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in (w0, w1)]
    procs.append(env.spawn_module(withhold, "node.simulate.adversary", "--job", str(job), "--attack", "withhold",
                                  "--poll", "0.3"))
    procs.append(env.spawn(agg, "aggregator", "run", "--job", str(job), "--poll", "0.3"))
    wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", procs)
    assert "revealed the snapshots of drawn segment" in log_text(procs[0])
    env.stop_all()                                              # the workers are gone ...
    shutil.rmtree(env.settings.data_dir / "worker")             # ... and so is everything they kept

    ctx = JobContext.load(env.ledger, env.store, job)
    cfg = ctx.config
    inner = tx.inner_boundaries(cfg.train.steps, cfg.policy.segment_steps)
    for r in (1,):
        subs = env.ledger.submissions(job, r)
        seed = replay_seed(env.ledger, job, r, subs)
        for s in subs:
            if s.worker.lower() == address(withhold).lower():
                continue
            meta = checkpoint.read_meta(env.store.get(s.cid, s.digest))
            m = tx.read_manifest(meta, steps=cfg.train.steps, segment_steps=cfg.policy.segment_steps,
                                 max_size=tx.snapshot_cap(cfg.policy))
            drawn = tx.draw_segments(seed, job, r, s.worker, len(inner) + 1, cfg.policy.replay_segments)
            need = {st for seg in drawn for st in tx.segment_snapshot_steps(cfg.train.steps, cfg.policy.segment_steps, seg)}
            stored = {ref.step for ref in m.snapshots if env.store.has(ref.cid)}
            assert stored == need, (r, s.worker, drawn, stored, need)
            # a compact snapshot is 1.5 checkpoints' worth; at most two are stored a round
            transcript_bytes = sum(ref.size for ref in m.snapshots if ref.step in stored)
            assert transcript_bytes <= 3.05 * s.size, (transcript_bytes, s.size)
            assert all(1.4 * s.size < ref.size < 1.6 * s.size for ref in m.snapshots)

    rc, report = _audit(env, job, "sample")
    assert rc == 0 and report["ok"], report.get("discrepancies")
    got = {(r["round"], c["worker"].lower()): c for r in report["rounds"] for c in r["contributions"]}
    for r in (1,):
        for k in (w0, w1):
            c = got[(r, address(k).lower())]
            assert c["onchain_verdict"] == c["audit_verdict"] == Verdict.ACCEPTED
            assert len(c["replayed_segments"]) == 1 and c["replay_distance"] is not None, c
        c = got[(r, address(withhold).lower())]
        assert c["onchain_verdict"] == c["audit_verdict"] == Verdict.TRANSCRIPT_UNREVEALED, c
        assert "snapshot" in c["reason"], c["reason"]
    # --replay all cannot replay more than was revealed: the drawn segments again, still OK
    rc, report = _audit(env, job, "all")
    assert rc == 0 and report["ok"], report.get("discrepancies")
    assert all(len(c["replayed_segments"]) == 1 for r in report["rounds"] for c in r["contributions"]
               if c["audit_verdict"] == Verdict.ACCEPTED)


def _peak(log: str) -> int:
    m = re.findall(r"peak memory (\d+) MB", log)
    assert m, log[-2000:]
    return int(m[-1])


def test_aggregator_memory_is_flat_in_the_number_of_contributions(deployed):
    env = deployed
    cfg = _config()
    # ~7M parameters: a 28 MB checkpoint, large enough that holding every contribution shows
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = 4, 384, 4
    cfg.train.steps, cfg.train.batch_size, cfg.policy.segment_steps = 2, 4, 2
    cfg.policy.val_batches, cfg.policy.val_batch_size = 1, 4
    peaks, size = {}, None
    for n in (2, 8):
        workers, agg = keys(n, f"mem{n}-worker"), keys(1, f"mem{n}-agg")[0]
        job = env.create_job(workers, [agg], quorum=1, rounds=1, config=cfg, proposal_window=60)
        procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.5") for k in workers]
        a = env.spawn(agg, "aggregator", "run", "--job", str(job), "--poll", "0.5")
        wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", [*procs, a])
        assert env.ledger.round(job, 1).status == "finalized"
        peaks[n] = _peak(log_text(a))
        size = env.ledger.submissions(job, 1)[0].size
        env.stop_all()
    ckpt_mb = size / 2**20
    assert ckpt_mb > 20
    # holding the contributions would add 6 checkpoints' worth (and more with the merge's copies)
    assert peaks[8] - peaks[2] <= 3 * ckpt_mb, (peaks, ckpt_mb)
