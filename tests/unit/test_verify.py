"""The verification pipeline (node/verification/verify.py) on real checkpoint bytes and the real tiny GPT."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ledger.store import checkpoint
from ledger.digest import sha256_bytes, to_hex
from ledger.errors import IntegrityError, NotFoundError, StorageUnreachable
from ledger.protocol.jobconfig import JobConfig, ModelSpec, Policy, TrainSpec
from ledger.ethereum.contract import Submission
from ledger.protocol.verdicts import Verdict
from node.verification.merge import merge, tensor_digest
from node.training import transcript as tx
from node.verification.verify import (
    CHEAP_STAGES,
    RoundContext,
    accepted,
    validation_seed,
    verdict_bytes,
    verify_round,
    with_stages,
)

ROOT = Path(__file__).resolve().parents[2]
JOB, ROUND = 7, 3
SEED_BYTES = hashlib.sha256(b"block that closed round 3").digest()


def addr(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


# ---------------------------------------------------------------- the tiny task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny GPT job: 1 layer, 32 wide, 32-byte context, 4 steps a round in 2 segments
    of 2 steps; each worker's transcript (one snapshot, at step 2) in a real store."""
    from ledger.store.embedded import EmbeddedStore
    from node.models.bytegpt import GPTConfig, init_params
    from node.training.train import derive_seed, train_local

    cfg = JobConfig(
        seed=99,
        model=ModelSpec(block_size=32, n_layer=1, n_head=2, n_embd=32),
        train=TrainSpec(steps=4, batch_size=4, learning_rate=3e-3, threads=1),
        policy=Policy(max_update_norm=20.0, max_val_loss_increase=0.25, val_batches=2, val_batch_size=8,
                      segment_steps=2, replay_segments=1, max_checkpoint_bytes=4 * 1024 * 1024,
                      publish_snapshots="all"),
    )
    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    corpus = (ROOT / "data" / "tinyshakespeare.txt").read_bytes()
    shards = {addr(i): corpus[i * 20_000:(i + 1) * 20_000] for i in range(1, 6)}
    validation = corpus[-10_000:]
    parent = init_params(GPTConfig.from_spec(cfg.model), seed=cfg.seed)
    parent_bytes = checkpoint.encode(parent, {"kind": "genesis"})
    parent_digest = sha256_bytes(parent_bytes)

    def publish(worker: str, states, label_as: str | None = None) -> tx.Manifest:
        """Encode, store and commit to a transcript's snapshots (labelled for ``label_as``)."""
        snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(JOB, ROUND, label_as or worker, parent_digest, s.step),
                                             parent))
                 for s in states]
        for _, blob in snaps:
            store.put(blob)
        return tx.build_manifest(cfg.policy.segment_steps, snaps, store.options)

    def honest(worker: str, shard: bytes | None = None, seed: int | None = None):
        """(params, manifest, snapshots) of an honest round (or one on another shard / seed)."""
        seed = derive_seed(cfg.seed, JOB, ROUND, worker) if seed is None else seed
        res = train_local(cfg.model, cfg.train, parent, shards[worker] if shard is None else shard, seed,
                          segment_steps=cfg.policy.segment_steps)
        return res.params, publish(worker, res.snapshots), res.snapshots

    runs = {w: honest(w) for w in shards}
    return {"cfg": cfg, "parent": parent, "parent_digest": parent_digest, "shards": shards, "store": store,
            "validation": validation, "trained": {w: r[0] for w, r in runs.items()},
            "manifests": {w: r[1] for w, r in runs.items()}, "snapshots": {w: r[2] for w, r in runs.items()},
            "honest": honest, "publish": publish}


def meta_for(task, sender: str, manifest: tx.Manifest | None = None, **over) -> dict:
    """A contribution's metadata; its transcript is ``sender``'s honest one unless given."""
    manifest = manifest or task["manifests"].get(sender.lower())
    meta = {"job": str(JOB), "round": str(ROUND), "worker": sender.lower(),
            "parent": to_hex(task["parent_digest"]), "kind": "contribution",
            "transcript": manifest.to_json() if manifest else None}
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


class Round:
    """Builds a round's submissions (Submission + the bytes the store returns)."""

    def __init__(self, task):
        self.task = task
        self.contributions: list[Submission] = []
        self.served: dict[int, object] = {}      # index -> bytes, or an exception to raise

    def add(self, worker: str, data: bytes, *, digest: bytes | None = None, size: int | None = None,
            serve: object = None, num_samples: int = 16) -> int:
        i = len(self.contributions)
        self.contributions.append(Submission(
            job_id=JOB, round=ROUND, index=i, worker=worker, digest=sha256_bytes(data) if digest is None else digest,
            cid=f"cid-{i}", size=len(data) if size is None else size, num_samples=num_samples))
        self.served[i] = data if serve is None else serve
        return i

    def add_params(self, sender: str, params: dict, manifest: tx.Manifest | None = None, **meta_over) -> int:
        return self.add(sender, checkpoint.encode(params, meta_for(self.task, sender, manifest, **meta_over)))

    def fetch(self, c: Submission) -> bytes:
        got = self.served[c.index]
        if isinstance(got, BaseException):
            raise got
        return got

    def context(self, **over) -> RoundContext:
        t = self.task
        kw = dict(config=t["cfg"], job_id=JOB, round=ROUND, parent_digest=t["parent_digest"],
                  parent_params=t["parent"], validation=t["validation"],
                  shard_of=lambda w: t["shards"][w], fetch_object=t["store"].get,
                  replay_seed=SEED_BYTES, stages=CHEAP_STAGES)
        kw.update(over)
        return RoundContext(**kw)

    def verify(self, **over):
        return verify_round(self.context(**over), self.contributions, self.fetch)


def scaled(parent: dict, params: dict, factor: float) -> dict:
    return {k: (parent[k].astype(np.float64) + factor * (params[k].astype(np.float64) - parent[k])).astype(np.float32)
            for k in parent}


# ---------------------------------------------------------------- every rejection path


def test_the_verifiers_own_storage_outage_is_no_verdict(task):
    """StorageUnreachable (the verifier's own storage does not answer) says nothing of the
    author: it is raised out of the pipeline, never turned into UNAVAILABLE; the roles wait
    for their storage and judge again (tests/e2e/test_storage_outage.py)."""
    rd = Round(task)
    rd.add_params(addr(1), task["trained"][addr(1)])
    good = checkpoint.encode(task["trained"][addr(3)], meta_for(task, addr(3)))
    rd.add(addr(3), good, serve=StorageUnreachable("ipfs api down"))
    with pytest.raises(StorageUnreachable):
        rd.verify()


def test_each_rejection_path_gets_its_verdict(task, tmp_path):
    parent, trained = task["parent"], task["trained"]
    a, b = trained[addr(1)], trained[addr(2)]
    rd = Round(task)
    expect: dict[int, Verdict] = {}

    expect[rd.add_params(addr(1), a)] = Verdict.ACCEPTED
    expect[rd.add_params(addr(2), b)] = Verdict.ACCEPTED
    good = checkpoint.encode(trained[addr(3)], meta_for(task, addr(3)))
    expect[rd.add(addr(3), good, serve=NotFoundError("no such cid"))] = Verdict.UNAVAILABLE
    expect[rd.add(addr(3), good, serve=IntegrityError("cid-x", "0xaa", "0xbb"))] = Verdict.INTEGRITY
    # the store hands back content that is not what the chain's digest names
    other = checkpoint.encode(trained[addr(4)], meta_for(task, addr(3)))
    expect[rd.add(addr(3), good, serve=other)] = Verdict.INTEGRITY
    # right bytes, but the chain's size lies
    expect[rd.add(addr(3), good, size=len(good) - 1)] = Verdict.INTEGRITY

    # a pickle that would run code when unpickled: FORMAT, and it must never run
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    expect[rd.add(addr(3), pickle.dumps({"w": Evil(), "x": np.zeros(3, np.float32)}))] = Verdict.FORMAT
    expect[rd.add(addr(3), pickle.dumps({k: v for k, v in a.items()}))] = Verdict.FORMAT
    expect[rd.add(addr(3), os.urandom(4096))] = Verdict.FORMAT
    expect[rd.add(addr(3), good[:len(good) // 2])] = Verdict.FORMAT           # truncated
    expect[rd.add(addr(3), b"")] = Verdict.FORMAT
    # declared size over the cap: rejected without being fetched
    expect[rd.add(addr(3), good, size=10**9, serve=AssertionError("must not be fetched"))] = Verdict.FORMAT

    expect[rd.add_params(addr(3), trained[addr(3)], parent="0x" + "11" * 32)] = Verdict.LINEAGE
    expect[rd.add_params(addr(3), trained[addr(3)], parent=None)] = Verdict.LINEAGE
    expect[rd.add_params(addr(3), trained[addr(3)], round=str(ROUND - 1))] = Verdict.LINEAGE
    expect[rd.add_params(addr(3), trained[addr(3)], job="8")] = Verdict.LINEAGE
    expect[rd.add_params(addr(3), trained[addr(3)], worker=addr(4))] = Verdict.LINEAGE

    name = sorted(parent)[0]
    reshaped = dict(trained[addr(3)], **{name: np.zeros((1,) + parent[name].shape, np.float32)})
    expect[rd.add_params(addr(3), reshaped)] = Verdict.STRUCTURE
    as64 = dict(trained[addr(3)], **{name: trained[addr(3)][name].astype(np.float64)})
    expect[rd.add_params(addr(3), as64)] = Verdict.STRUCTURE
    missing = {k: v for k, v in trained[addr(3)].items() if k != name}
    expect[rd.add_params(addr(3), missing)] = Verdict.STRUCTURE
    expect[rd.add_params(addr(3), dict(trained[addr(3)], extra=np.zeros(2, np.float32)))] = Verdict.STRUCTURE

    for bad in (np.nan, np.inf, -np.inf):
        t = {k: v.copy() for k, v in trained[addr(3)].items()}
        t[name].reshape(-1)[5] = bad
        expect[rd.add_params(addr(3), t)] = Verdict.NON_FINITE

    # worker 4 copies worker 1's tensors under its own, correct metadata
    dup = rd.add_params(addr(4), {k: v.copy() for k, v in a.items()})
    expect[dup] = Verdict.DUPLICATE
    # worker 5 resubmits the parent unchanged
    lazy = rd.add_params(addr(5), parent)
    expect[lazy] = Verdict.DUPLICATE
    # x100 the honest update
    big = rd.add_params(addr(5), scaled(parent, trained[addr(5)], 100.0))
    expect[big] = Verdict.UPDATE_NORM
    # the same x100 update submitted again: copies are judged last, among accepted ones
    expect[rd.add_params(addr(4), scaled(parent, trained[addr(5)], 100.0))] = Verdict.UPDATE_NORM

    reports = rd.verify()
    got = {r.index: r.verdict for r in reports}
    assert got == expect, {i: (got[i].name, expect[i].name, reports[i].reason) for i in got if got[i] != expect[i]}
    assert not marker.exists(), "the pickle was loaded"
    assert [r.index for r in reports] == sorted(expect)
    assert verdict_bytes(reports) == [int(expect[i]) for i in sorted(expect)]

    # reasons are human sentences, metrics the measured values
    for r in reports:
        assert r.reason and isinstance(r.reason, str)
        json.dumps(r.summary())
    assert reports[dup].metrics["duplicate_of"] == 0
    assert reports[lazy].metrics["duplicate_of"] == -1 and "parent" in reports[lazy].reason
    honest_norm = reports[0].metrics["update_norm"]
    assert 0 < honest_norm < 20.0 < reports[big].metrics["update_norm"]
    # decoded tensors come with accepted reports (and mergeable rejected ones), never twice decoded
    assert reports[0].params is not None and reports[0].meta["worker"] == addr(1)
    assert reports[big].params is not None
    assert all(reports[i].params is None for i, v in expect.items()
               if v in (Verdict.UNAVAILABLE, Verdict.INTEGRITY, Verdict.FORMAT, Verdict.LINEAGE,
                        Verdict.STRUCTURE, Verdict.NON_FINITE))
    assert reports[0].tensor_digest == tensor_digest(a)

    good_ones = accepted(reports)
    assert [w for w, _, _ in good_ones] == [addr(1), addr(2)]
    res = merge("fedavg", parent, good_ones, task["cfg"].policy)
    assert res.selected == [addr(1), addr(2)]


def test_update_norm_value_and_bound(task):
    parent, t = task["parent"], task["trained"][addr(1)]
    rd = Round(task)
    rd.add_params(addr(1), t)
    rd.add_params(addr(2), scaled(parent, t, 100.0))
    r1, r2 = rd.verify()
    assert r1.verdict == Verdict.ACCEPTED and r2.verdict == Verdict.UPDATE_NORM
    assert r2.metrics["update_norm"] == pytest.approx(100 * r1.metrics["update_norm"], rel=1e-5)
    # the bound is the policy's: loosen it and the same contribution passes the norm check
    loose = replace(task["cfg"], policy=replace(task["cfg"].policy, max_update_norm=1e6))
    assert [r.verdict for r in rd.verify(config=loose)] == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    # and with the norm stage off
    off = rd.verify(stages=set())
    assert [r.verdict for r in off] == [Verdict.ACCEPTED, Verdict.ACCEPTED]
    # ...where the norm is not even computed (it is most of what "off" would still cost)
    assert all("update_norm" not in r.metrics and r.reason == "accepted" for r in off)


def test_duplicate_is_decided_in_submission_order(task):
    a = task["trained"][addr(1)]
    rd = Round(task)
    rd.add_params(addr(2), a)          # worker 2 submitted first: its copy is the original
    rd.add_params(addr(1), a)
    # the contributions may be handed over in any order: submission order is by index
    shuffled = rd.contributions[::-1]
    reports = verify_round(rd.context(), shuffled, rd.fetch)
    assert [(r.index, r.verdict) for r in reports] == [(0, Verdict.ACCEPTED), (1, Verdict.DUPLICATE)]


def test_fetch_failures_do_not_poison_later_checks(task):
    """An unavailable first copy is not 'seen': a later identical submission is judged on its own."""
    a = task["trained"][addr(1)]
    rd = Round(task)
    rd.add(addr(2), checkpoint.encode(a, meta_for(task, addr(2))), serve=NotFoundError("gone"))
    rd.add_params(addr(1), a)
    assert [r.verdict for r in rd.verify()] == [Verdict.UNAVAILABLE, Verdict.ACCEPTED]


def test_checksummed_worker_address_matches_lowercase_meta(task):
    rd = Round(task)
    w = addr(0xAB)
    checksummed = "0x" + w[2:].upper()
    rd.add(checksummed, checkpoint.encode(task["trained"][addr(1)], meta_for(task, w)))
    (r,) = rd.verify()
    assert r.verdict == Verdict.ACCEPTED
    assert accepted([r])[0][0] == w


# ---------------------------------------------------------------- validation loss (real model)


def test_validation_loss_rejects_a_damaging_update(task):
    parent = task["parent"]
    rng = np.random.default_rng(0)
    noisy = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.5) for k, v in parent.items()}
    rd = Round(task)
    rd.add_params(addr(1), task["trained"][addr(1)])
    rd.add_params(addr(2), noisy)
    calls = []
    from node.training.train import evaluate

    def counting_evaluate(*args):
        calls.append(args)
        return evaluate(*args)

    loose = replace(task["cfg"], policy=replace(task["cfg"].policy, max_update_norm=1e9))
    ctx = rd.context(config=loose, stages={"norm", "validation"}, evaluate=counting_evaluate)
    r1, r2 = verify_round(ctx, rd.contributions, rd.fetch)
    assert r1.verdict == Verdict.ACCEPTED, r1.reason
    assert r2.verdict == Verdict.VALIDATION_LOSS, r2.reason
    assert r2.metrics["val_loss"] > r2.metrics["parent_val_loss"] + 0.25
    assert r1.metrics["parent_val_loss"] == ctx.parent_val_loss == r2.metrics["parent_val_loss"]
    assert len(calls) == 3             # the parent once, then each contribution
    # every evaluation uses the same batches: the round's validation seed
    assert {c[5] for c in calls} == {validation_seed(SEED_BYTES, JOB, ROUND)}
    # the default evaluate (node.training.train's, with the job's thread count) gives the same numbers
    again = verify_round(rd.context(config=loose, stages={"norm", "validation"}), rd.contributions, rd.fetch)
    assert [r.metrics for r in again] == [r1.metrics, r2.metrics]


def test_validation_stage_off_never_evaluates(task):
    rd = Round(task)
    rd.add_params(addr(1), task["trained"][addr(1)])

    def boom(*_):
        raise AssertionError("evaluate must not run")

    (r,) = verify_round(rd.context(stages={"norm"}, evaluate=boom), rd.contributions, rd.fetch)
    assert r.verdict == Verdict.ACCEPTED and "val_loss" not in r.metrics


# ---------------------------------------------------------------- segment replay (real training)


def _forged(task, worker: str, params: dict) -> tx.Manifest:
    """A transcript no training produced: the straight line from the parent to ``params``."""
    parent, cfg = task["parent"], task["cfg"]
    honest_mid = task["snapshots"][worker][0]        # only its moments' shapes and step are borrowed
    mid = tx.TrainState(honest_mid.step, {k: ((parent[k] + params[k]) / 2).astype(np.float32) for k in parent},
                        {k: v * 0.5 for k, v in honest_mid.exp_avg.items()},
                        {k: v * 0.5 for k, v in honest_mid.exp_avg_sq.items()})
    assert cfg.policy.segment_steps == mid.step
    return task["publish"](worker, [mid])


def test_segment_replay_accepts_honest_and_rejects_each_dishonest_transcript(task):
    parent, trained, manifests = task["parent"], task["trained"], task["manifests"]
    rd = Round(task)
    expect = {}
    expect[rd.add_params(addr(1), trained[addr(1)])] = Verdict.ACCEPTED
    # worker 2 trained on worker 3's shard (its own seed, honest-looking transcript)
    p2, m2, _ = task["honest"](addr(2), shard=task["shards"][addr(3)])
    expect[rd.add_params(addr(2), p2, m2)] = Verdict.REPLAY
    # worker 3 is a free rider: the parent plus a little noise, behind a forged straight-line transcript
    rng = np.random.default_rng(1)
    noisy = {k: v + 1e-3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in parent.items()}
    expect[rd.add_params(addr(3), noisy, _forged(task, addr(3), noisy))] = Verdict.REPLAY
    # worker 4 is honest but a tiny bit off (another machine's kernels): within tolerance
    expect[rd.add_params(addr(4), {k: v + np.float32(1e-6) for k, v in trained[addr(4)].items()})] = Verdict.ACCEPTED
    # worker 5 commits to no transcript at all
    expect[rd.add(addr(5), checkpoint.encode(trained[addr(5)], {k: v for k, v in meta_for(task, addr(5)).items()
                                                                if k != "transcript"}))] = Verdict.TRANSCRIPT
    # ... or to a transcript on another schedule
    off = tx.Manifest(1, manifests[addr(5)].snapshots)
    expect[rd.add_params(addr(5), trained[addr(5)], off)] = Verdict.TRANSCRIPT
    # ... or to worker 1's snapshots (a copied transcript: they name worker 1)
    expect[rd.add_params(addr(5), trained[addr(5)], manifests[addr(1)])] = Verdict.TRANSCRIPT
    # ... or to a snapshot whose committed digest is not what storage holds under its CID
    ref = manifests[addr(5)].snapshots[0]
    wrong = tx.Manifest(2, (tx.SnapshotRef(ref.step, sha256_bytes(b"other"), ref.cid, ref.size),))
    expect[rd.add_params(addr(5), trained[addr(5)], wrong)] = Verdict.TRANSCRIPT
    # ... or to a snapshot nobody can fetch (withheld)
    gone = tx.Manifest(2, (tx.SnapshotRef(ref.step, ref.digest, "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", ref.size),))
    expect[rd.add_params(addr(5), trained[addr(5)], gone)] = Verdict.TRANSCRIPT_UNAVAILABLE

    reports = rd.verify(stages={"norm", "replay"}, replay_mode="all")
    got = {r.index: r.verdict for r in reports}
    assert got == expect, {i: (got[i].name, expect[i].name, reports[i].reason) for i in got if got[i] != expect[i]}
    assert reports[0].metrics["replay_distance"] == 0.0          # same machine, same torch: bit-identical
    assert reports[0].metrics["replay_segments"] == [0, 1]
    assert 0 < reports[3].metrics["replay_distance"] <= task["cfg"].policy.replay_tolerance
    assert reports[1].metrics["replay_distance"] > 0.1 and reports[2].metrics["replay_distance"] > 0.1
    assert "segment" in reports[1].reason and "tolerance" in reports[1].reason
    assert "not match" in reports[7].reason and "fetch" in reports[8].reason

    # in a job whose workers reveal only the drawn snapshots, after the draw, a drawn
    # snapshot missing from storage is the worker's failure to reveal it
    drawn = replace(task["cfg"], policy=replace(task["cfg"].policy, publish_snapshots="drawn", replay_segments=2))
    reports = rd.verify(stages={"norm", "replay"}, replay_mode="all", config=drawn)
    assert reports[8].verdict == Verdict.TRANSCRIPT_UNREVEALED, reports[8].reason

    # replay_mode "none" or the stage off: nothing is replayed, no transcript is read
    for kw in ({"replay_mode": "none", "stages": {"norm", "replay"}}, {"stages": {"norm"}}):
        again = rd.verify(**kw)
        # worker 5's five submissions carry the same tensors: the later four are copies
        assert [r.verdict for r in again] == [Verdict.ACCEPTED] * 5 + [Verdict.DUPLICATE] * 4
        assert all("replay_distance" not in r.metrics for r in again)


def test_a_tampered_snapshot_fails_the_segments_around_it(task):
    """A worker that commits to a snapshot it altered (a shortcut it did not train) is
    caught by either segment touching it: the one ending there and the one starting there."""
    w = addr(1)
    honest_mid = task["snapshots"][w][0]
    bumped = tx.TrainState(honest_mid.step, {k: v * np.float32(1.01) for k, v in honest_mid.params.items()},
                           honest_mid.exp_avg, honest_mid.exp_avg_sq)
    m = task["publish"](w, [bumped])
    rd = Round(task)
    rd.add_params(w, task["trained"][w], m)
    for seg in (0, 1):
        cfg = replace(task["cfg"], policy=replace(task["cfg"].policy, replay_segments=1))
        ctx = rd.context(config=cfg, stages={"replay"})
        ctx.segments_to_replay = lambda worker, n, seg=seg: [seg]      # force the draw onto each segment
        (r,) = verify_round(ctx, rd.contributions, rd.fetch)
        assert r.verdict == Verdict.REPLAY and f"segment {seg}" in r.reason, r.reason


def test_replay_draws_the_policy_count_of_segments(task):
    rd = Round(task)
    for i in (1, 2, 3, 4):
        rd.add_params(addr(i), task["trained"][addr(i)])
    for count, mode in ((0, "policy"), (1, "policy"), (2, "policy"), (1, "all")):
        cfg = replace(task["cfg"], policy=replace(task["cfg"].policy, replay_segments=count))
        reports = rd.verify(config=cfg, stages={"replay"}, replay_mode=mode)
        assert all(r.verdict == Verdict.ACCEPTED for r in reports), [r.reason for r in reports]
        for r in reports:
            n = 2 if mode == "all" else count
            want = tx.draw_segments(SEED_BYTES, JOB, ROUND, r.worker, 2, n) if n else []
            assert r.metrics.get("replay_segments", []) == want


def test_segment_draw_is_deterministic_seeded_and_uniform():
    draws = [tx.draw_segments(SEED_BYTES, JOB, ROUND, addr(i), 5, 1)[0] for i in range(500)]
    assert draws == [tx.draw_segments(SEED_BYTES, JOB, ROUND, addr(i).upper().replace("0X", "0x"), 5, 1)[0]
                     for i in range(500)]
    counts = [draws.count(k) for k in range(5)]
    assert all(60 <= c <= 140 for c in counts), counts          # ~100 each
    assert [tx.draw_segments(b"another block", JOB, ROUND, addr(i), 5, 1)[0] for i in range(500)] != draws
    assert [tx.draw_segments(SEED_BYTES, JOB, ROUND + 1, addr(i), 5, 1)[0] for i in range(500)] != draws
    two = tx.draw_segments(SEED_BYTES, JOB, ROUND, addr(1), 5, 2)
    assert len(set(two)) == 2 and two == sorted(two)
    assert tx.draw_segments(SEED_BYTES, JOB, ROUND, addr(1), 5, 9) == [0, 1, 2, 3, 4]


def test_restoring_a_snapshot_continues_training_bit_for_bit(task):
    """The property segment replay rests on: on one machine a segment replayed from a
    snapshot lands exactly where uninterrupted training went."""
    from node.training.train import derive_seed, train_steps

    cfg, w = task["cfg"], addr(2)
    mid = task["snapshots"][w][0]
    end, _, _ = train_steps(cfg.model, cfg.train, mid, task["shards"][w], derive_seed(cfg.seed, JOB, ROUND, w),
                            cfg.train.steps)
    assert all(np.array_equal(end.params[k], task["trained"][w][k]) for k in task["parent"])
    assert tx.replay_distance(mid, tx.TrainState(end.step, task["trained"][w]), end) == 0.0


# ---------------------------------------------------------------- determinism


def _round_for_determinism(task) -> Round:
    parent, trained = task["parent"], task["trained"]
    rd = Round(task)
    rd.add_params(addr(3), trained[addr(3)])
    rd.add_params(addr(1), trained[addr(1)])
    rd.add_params(addr(2), trained[addr(3)])
    rd.add_params(addr(5), scaled(parent, trained[addr(5)], 100.0))
    rd.add(addr(4), b"garbage")
    return rd


def test_two_aggregators_reach_the_same_verdicts(task):
    rd = _round_for_determinism(task)
    full = {"norm", "validation", "replay"}
    one = rd.verify(stages=full, replay_mode="all")
    contributions = rd.contributions[:]
    random.Random(1).shuffle(contributions)
    two = verify_round(rd.context(stages=full, replay_mode="all"), contributions, rd.fetch)
    assert [r.summary() for r in one] == [r.summary() for r in two]
    # the relabelled copy of #0: its own transcript does not end in those tensors
    assert verdict_bytes(one) == [0, 0, int(Verdict.REPLAY), int(Verdict.UPDATE_NORM), int(Verdict.FORMAT)]


def test_same_verdicts_in_a_separate_process(task, tmp_path):
    """Another process (another hash seed) recomputes the same verdicts and metrics."""
    rd = _round_for_determinism(task)
    full = {"norm", "validation", "replay"}
    here = [r.summary() for r in rd.verify(stages=full, replay_mode="all")]
    blob = tmp_path / "round.pkl"     # our own test data, written and read by this test
    with open(blob, "wb") as f:
        pickle.dump({"contributions": rd.contributions, "served": rd.served, "parent": task["parent"],
                     "parent_digest": task["parent_digest"], "cfg": task["cfg"].to_bytes(),
                     "shards": task["shards"], "validation": task["validation"],
                     "store": str(task["store"].root)}, f)
    code = f"""
import json, pickle, sys
sys.path.insert(0, {str(ROOT)!r})
from ledger.protocol.jobconfig import JobConfig
from ledger.store.embedded import EmbeddedStore
from node.verification.verify import RoundContext, verify_round
d = pickle.load(open({str(blob)!r}, "rb"))
ctx = RoundContext(config=JobConfig.from_bytes(d["cfg"]), job_id={JOB}, round={ROUND},
                   parent_digest=d["parent_digest"], parent_params=d["parent"], validation=d["validation"],
                   shard_of=lambda w: d["shards"][w], fetch_object=EmbeddedStore(d["store"]).get,
                   replay_seed={SEED_BYTES!r}, replay_mode="all",
                   stages={sorted(full)!r})
reports = verify_round(ctx, d["contributions"], lambda c: d["served"][c.index])
print(json.dumps([r.summary() for r in reports]))
"""
    env = dict(os.environ, PYTHONHASHSEED="4242")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(here))


def test_context_rejects_unknown_stage_and_mode(task):
    rd = Round(task)
    with pytest.raises(ValueError):
        rd.context(stages={"norm", "speed"})
    with pytest.raises(ValueError):
        rd.context(replay_mode="sometimes")
    ctx = rd.context(stages=None)
    assert with_stages(ctx, CHEAP_STAGES).stages == CHEAP_STAGES and ctx.stages != CHEAP_STAGES


def test_a_copy_never_costs_the_original_its_acceptance(task):
    """Whoever submits first, a copier is rejected and the original accepted."""
    w1, w2 = addr(1), addr(2)
    data = checkpoint.encode(task["trained"][w1], meta_for(task, w1))
    # the very bytes, front-run: they name worker 1
    rd = Round(task)
    rd.add(w2, data)
    rd.add(w1, data)
    assert [r.verdict for r in rd.verify(stages=None)] == [Verdict.LINEAGE, Verdict.ACCEPTED]
    # relabelled as the copier's own, transcript snapshots included, front-run: the
    # copier's seed and shard do not reproduce them
    relabelled = task["publish"](w2, task["snapshots"][w1])
    rd = Round(task)
    rd.add_params(w2, task["trained"][w1], relabelled)
    rd.add_params(w1, task["trained"][w1])
    reports = rd.verify(stages=None)
    assert [r.verdict for r in reports] == [Verdict.REPLAY, Verdict.ACCEPTED], [r.reason for r in reports]
    # with the transcript check off (benchmarks), the later of two equal tensors is the duplicate
    assert [r.verdict for r in rd.verify(stages={"norm"})] == [Verdict.ACCEPTED, Verdict.DUPLICATE]


def test_inflated_sample_count_is_rejected(task):
    rd = Round(task)
    rd.add(addr(1), checkpoint.encode(task["trained"][addr(1)], meta_for(task, addr(1))), num_samples=10**6)
    rd.add(addr(2), checkpoint.encode(task["trained"][addr(2)], meta_for(task, addr(2))))
    assert [r.verdict for r in rd.verify()] == [Verdict.SAMPLE_COUNT, Verdict.ACCEPTED]


def test_relative_norm_bound_rejects_an_outlier_the_absolute_cap_lets_through(task):
    parent = task["parent"]
    rd = Round(task)
    for i in (1, 2, 3):
        rd.add_params(addr(i), task["trained"][addr(i)])
    rd.add_params(addr(4), scaled(parent, task["trained"][addr(4)], 8.0))
    reports = rd.verify()
    norms = [r.metrics["update_norm"] for r in reports]
    assert norms[3] < task["cfg"].policy.max_update_norm, "the absolute cap alone would accept it"
    assert [r.verdict for r in reports] == [Verdict.ACCEPTED] * 3 + [Verdict.UPDATE_NORM]
    assert "median" in reports[3].reason


def test_relative_norm_bound_needs_three_contributions():
    from ledger.protocol.jobconfig import Policy
    from node.verification.verify import relative_norm_bound

    assert relative_norm_bound(Policy(), [1.0, 2.0]) is None
    assert relative_norm_bound(Policy(), [1.0, 2.0, 4.0]) == 6.0
    assert relative_norm_bound(Policy(), [1.0, 2.0, 4.0, 5.0]) == 9.0
    assert relative_norm_bound(Policy(max_update_norm_ratio=0), [1.0, 2.0, 4.0]) is None


def test_prefetch_gives_the_same_reports_and_raises_each_failure_in_place(task):
    """Fetching ahead in threads changes nothing a verdict depends on: each failure lands
    on its own contribution, an oversized one is never fetched, copies stay in order."""
    import threading

    a, b = task["trained"][addr(1)], task["trained"][addr(2)]
    rd = Round(task)
    rd.add_params(addr(1), a)
    rd.add(addr(2), checkpoint.encode(b, meta_for(task, addr(2))), serve=NotFoundError("gone"))
    rd.add(addr(3), b"x" * 10, size=task["cfg"].policy.max_checkpoint_bytes + 1)   # over the cap
    rd.add(addr(4), checkpoint.encode(b, meta_for(task, addr(4))), serve=IntegrityError("cid-3", "a", "b"))
    rd.add_params(addr(5), a)                                                       # a copy of #0's tensors
    fetched, threads = [], set()

    def fetch(c):
        fetched.append(c.index)
        threads.add(threading.get_ident())
        return rd.fetch(c)

    ahead = verify_round(rd.context(), rd.contributions, fetch, prefetch=4)
    assert 2 not in fetched                       # the size cap is checked before any download
    assert threading.get_ident() not in threads   # fetched by the pool, not the caller
    fetched.clear()
    serial = verify_round(rd.context(), rd.contributions, fetch, prefetch=0)
    assert fetched == [0, 1, 3, 4]
    summary = [(r.index, r.verdict, r.reason) for r in ahead]
    assert summary == [(r.index, r.verdict, r.reason) for r in serial]
    assert [v for _, v, _ in summary] == [Verdict.ACCEPTED, Verdict.UNAVAILABLE, Verdict.FORMAT,
                                          Verdict.INTEGRITY, Verdict.DUPLICATE]
