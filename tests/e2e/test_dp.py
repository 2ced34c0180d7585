"""DP-SGD whose noise verifiers replay (node/training/dp.py), in process, on real models:
the verification pipeline (node/verification/verify.py) accepts an honest DP worker's
drawn segment, rejects one that skipped clipping or halved its noise (replay), and one
whose revealed seeds are wrong or missing (dp-seeds); a verifier holding no key to the
seeds reports the segment not rerun. Honest replays on other kernel paths and thread
counts stay within the tolerance; LoRA and full fine-tuning of Hugging Face models too."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ledger.store import checkpoint
from ledger.ethereum.contract import Submission
from ledger.digest import sha256_bytes, to_hex
from ledger.protocol.jobconfig import ConfigValueError, DPSpec, JobConfig, ModelSpec, Policy, TrainSpec, num_samples
from ledger.protocol.verdicts import Verdict
from node.training import dp as dpmod
from node.training import transcript as tx
from node.verification.verify import RoundContext, verify_round

ROOT = Path(__file__).resolve().parents[2]
JOB, ROUND = 5, 2
SEED_BYTES = hashlib.sha256(b"block that closed the DP round").digest()
STAGES = {"norm", "replay"}       # replay decides here, not the validation loss


def addr(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


def _dp_config(**model) -> JobConfig:
    """Big enough that kernel paths and thread counts change the low bits."""
    cfg = JobConfig(
        seed=11,
        model=ModelSpec(**{"block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64, **model}),
        train=TrainSpec(steps=4, batch_size=6, learning_rate=3e-3, threads=1),
        policy=Policy(max_update_norm=1e6, segment_steps=2, replay_segments=1, max_checkpoint_bytes=16 << 20,
                      publish_snapshots="all"),
        dp=DPSpec(epsilon=8.0, delta=1e-5, max_grad_norm=0.5),
    )
    dpmod.commit(cfg.dp, rounds=3, steps=cfg.train.steps, batch_size=cfg.train.batch_size, tokens=[20_000],
                 block_size=cfg.model.block_size)
    return cfg


def _cheat(kind: str, honest: dpmod.DPStep) -> dpmod.DPStep:
    if kind == "no-clip":
        return dpmod.DPStep(None, honest.noise_std, honest.seed_of)
    if kind == "half-noise":
        return dpmod.DPStep(honest.clip_norm, honest.noise_std / 2, honest.seed_of)
    return honest


class DPRound:
    """A DP job's round in process: workers train (honestly or not), commit their
    transcripts and seed items; the verifier gets the items through ``unsealed``."""

    def __init__(self, cfg: JobConfig, lm, parent: dict, store, shards: dict[str, bytes]):
        self.cfg, self.lm, self.parent, self.store, self.shards = cfg, lm, parent, store, shards
        self.parent_digest = sha256_bytes(checkpoint.encode(parent, {"kind": "genesis"}))
        self.contributions: list[Submission] = []
        self.served: dict[int, bytes] = {}
        self.items: dict[str, dict[str, bytes]] = {}
        self.runs: dict[str, object] = {}

    def train(self, worker: str, cheat: str = "honest", secret: bytes | None = None):
        from node.training.train import derive_seed, train_local

        cfg = self.cfg
        secret = secret or dpmod.new_secret()
        honest = dpmod.DPStep.for_worker(cfg.dp, secret, JOB, ROUND, worker)
        seed = derive_seed(cfg.seed, JOB, ROUND, worker)
        res = train_local(self.lm, cfg.train, self.parent, self.shards[worker], seed,
                          segment_steps=cfg.policy.segment_steps, dp=_cheat(cheat, honest))
        snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(JOB, ROUND, worker, self.parent_digest, s.step),
                                             self.parent)) for s in res.snapshots]
        for _, blob in snaps:
            self.store.put(blob)
        items = dpmod.seed_items(secret, JOB, ROUND, worker, tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps))
        manifest = tx.build_manifest(cfg.policy.segment_steps, snaps, self.store.options, dp_seeds=items)
        meta = {"job": str(JOB), "round": str(ROUND), "worker": worker, "parent": to_hex(self.parent_digest),
                "kind": "contribution", "transcript": manifest.to_json()}
        data = checkpoint.encode(res.params, meta)
        i = len(self.contributions)
        self.contributions.append(Submission(job_id=JOB, round=ROUND, index=i, worker=worker, digest=sha256_bytes(data),
                                             cid=f"cid-{i}", size=len(data), num_samples=num_samples(cfg.train)))
        self.served[i] = data
        self.items[worker] = {dpmod.item_name(s): blob for s, blob in items}
        self.runs[worker] = (res, secret)
        return i

    def verify(self, unsealed="items", **over):
        from node.verification.verify import Unsealed

        hook = ((lambda w: Unsealed(self.items.get(w, self.items.get(w.lower(), {})), "open", "")) if unsealed == "items"
                else unsealed)
        ctx = RoundContext(config=self.cfg, job_id=JOB, round=ROUND, parent_digest=self.parent_digest,
                           parent_params=self.parent, model=self.lm, shard_of=lambda w: self.shards[w],
                           fetch_object=self.store.get, replay_seed=SEED_BYTES, stages=STAGES, unsealed=hook, **over)
        return verify_round(ctx, self.contributions, lambda c: self.served[c.index])


@pytest.fixture(scope="module")
def byte_round(tmp_path_factory):
    from ledger.store.embedded import EmbeddedStore
    from node.models import language_model

    cfg = _dp_config()
    lm = language_model(cfg.model)
    corpus = (ROOT / "data" / "tinyshakespeare.txt").read_bytes()
    shards = {addr(i): corpus[i * 20_000:(i + 1) * 20_000] for i in range(1, 6)}
    return DPRound(cfg, lm, lm.genesis(cfg.seed), EmbeddedStore(tmp_path_factory.mktemp("store")), shards)


# ---------------------------------------------------------------- seeds and the config


def test_step_seeds_are_keyed_by_the_secret_and_bound_to_their_step():
    s1, s2 = bytes(32), b"\x01" * 32
    base = dpmod.step_seed(s1, 1, 2, "0xAbC", 3)
    assert base == dpmod.step_seed(s1, 1, 2, "0xabc", 3) and len(base) == 32
    others = {dpmod.step_seed(s2, 1, 2, "0xabc", 3), dpmod.step_seed(s1, 9, 2, "0xabc", 3),
              dpmod.step_seed(s1, 1, 9, "0xabc", 3), dpmod.step_seed(s1, 1, 2, "0xdef", 3),
              dpmod.step_seed(s1, 1, 2, "0xabc", 4)}
    assert base not in others and len(others) == 5
    with pytest.raises(ValueError):
        dpmod.step_seed(b"short", 1, 2, "0xabc", 3)
    [(_, item)] = dpmod.seed_items(s1, 1, 2, "0xabc", [(2, 4)])
    digest = hashlib.sha256(item).digest()
    seeds = dpmod.open_seed_item(item, digest, (2, 4))
    assert seeds == {2: dpmod.step_seed(s1, 1, 2, "0xabc", 2), 3: dpmod.step_seed(s1, 1, 2, "0xabc", 3)}
    with pytest.raises(dpmod.SeedError, match="do not hash"):
        dpmod.open_seed_item(item.replace(b"0", b"1", 1), digest, (2, 4))
    with pytest.raises(dpmod.SeedError, match="steps 2-4"):
        dpmod.open_seed_item(item, digest, (2, 5))
    # the noise is numpy's, a pure function of the seed
    a, = dpmod.noise(base, [(3, 4)], 2.0)
    b, = dpmod.noise(base, [(3, 4)], 2.0)
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, dpmod.noise(s2, [(3, 4)], 2.0)[0])


def test_the_dp_section_is_ranged_committed_and_left_out_when_off():
    plain = JobConfig()
    assert b'"dp"' not in plain.to_bytes()
    cfg = _dp_config()
    raw = cfg.to_bytes()
    assert b'"dp"' in raw and JobConfig.from_bytes(raw).dp == cfg.dp and cfg.digest != plain.digest
    for field, bad in (("epsilon", 0.0), ("delta", 1.0), ("max_grad_norm", -1.0), ("sample_rate", 1.5)):
        with pytest.raises(ConfigValueError, match=field):
            setattr(DPSpec(), field, bad)
    with pytest.raises(ValueError, match="accountant"):
        DPSpec(accountant="moments")
    with pytest.raises(ValueError, match="dp.delta"):
        JobConfig.from_bytes(raw.replace(b'"delta":1e-05', b'"delta":2'))
    # the accountant's noise reaches the target epsilon over the committed steps, not before
    spent = dpmod.epsilon_spent(cfg.dp, cfg.dp.rounds * cfg.train.steps)
    assert spent <= cfg.dp.epsilon and spent > 0.9 * cfg.dp.epsilon
    assert dpmod.epsilon_spent(cfg.dp, cfg.train.steps) < spent and dpmod.epsilon_spent(cfg.dp, 0) == 0.0
    assert dpmod.sample_rate(8, [40, 20_000], 32) == 1.0    # 8 windows of the smallest data: all of them
    with pytest.raises(ValueError, match="too short"):
        dpmod.sample_rate(8, [32, 20_000], 32)


# ---------------------------------------------------------------- the pipeline


def test_an_honest_dp_segment_replays_and_each_cheat_is_caught(byte_round):
    rd = byte_round
    honest = rd.train(addr(1))
    no_clip = rd.train(addr(2), "no-clip")
    half = rd.train(addr(3), "half-noise")
    wrong = rd.train(addr(4))
    rd.items[addr(4)] = dpmod_items(rd, addr(4), dpmod.new_secret())     # another secret's seeds
    missing = rd.train(addr(5))
    rd.items[addr(5)] = {}
    reports = rd.verify()
    got = {r.index: r for r in reports}
    assert got[honest].verdict == Verdict.ACCEPTED, got[honest].reason
    assert got[honest].metrics["replay_distance"] <= rd.cfg.policy.replay_tolerance
    assert "replayed within" in got[honest].reason
    for i in (no_clip, half):
        assert got[i].verdict == Verdict.REPLAY, got[i].reason
        # measured: no clipping 0.08 of the segment's movement, half the noise further; honest
        # replays on other kernels and thread counts at 1.2e-3 (the next test)
        assert got[i].metrics["replay_distance"] > 3 * rd.cfg.policy.replay_tolerance
    assert got[wrong].verdict == Verdict.DP_SEEDS and "do not hash" in got[wrong].reason
    assert got[missing].verdict == Verdict.DP_SEEDS and "holds no 'dp-seeds-" in got[missing].reason


def dpmod_items(rd: DPRound, worker: str, secret: bytes) -> dict[str, bytes]:
    cfg = rd.cfg
    return {dpmod.item_name(s): b for s, b in
            dpmod.seed_items(secret, JOB, ROUND, worker, tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps))}


def test_a_verifier_without_the_key_reports_dp_segments_not_rerun(byte_round):
    rd = byte_round
    if not rd.contributions:
        rd.train(addr(1))
    from node.verification.verify import Unsealed

    for hook in (None, lambda w: Unsealed(None, "no-key", "this verifier holds no key")):
        for r in rd.verify(unsealed=hook):
            # neither accepted on a replay nor failed: the segment was not rerun
            assert r.verdict == Verdict.ACCEPTED, r.reason
            assert r.metrics["replay_not_rerun"] == r.metrics["replay_segments"] and "not rerun" in r.reason
            assert "replay_distance" not in r.metrics


def test_dp_replay_stays_within_tolerance_on_other_kernels_and_thread_counts(byte_round, tmp_path):
    rd = byte_round
    w = addr(1)
    if w not in rd.runs:
        rd.train(w)
    res, secret = rd.runs[w]
    start, end = res.snapshots[0], res.snapshots[1] if len(res.snapshots) > 1 else None
    start = tx.TrainState.fresh(rd.parent) if end is None else start
    end = end or tx.TrainState(rd.cfg.train.steps, res.params)
    from node.training.train import derive_seed

    blob = tmp_path / "segment.pkl"     # this test's own data, written and read by this test
    with open(blob, "wb") as f:
        pickle.dump({"cfg": rd.cfg.to_bytes(), "start": start, "end": end, "shard": rd.shards[w],
                     "seed": derive_seed(rd.cfg.seed, JOB, ROUND, w), "secret": secret, "worker": w}, f)
    code = f"""
import pickle, sys
sys.path.insert(0, {str(ROOT)!r})
from ledger.protocol.jobconfig import JobConfig
from node.models import language_model
from node.training import dp, transcript as tx
from node.training.train import train_steps
d = pickle.load(open({str(blob)!r}, "rb"))
cfg = JobConfig.from_bytes(d["cfg"])
step = dp.DPStep.for_worker(cfg.dp, d["secret"], {JOB}, {ROUND}, d["worker"])
out, _, _ = train_steps(language_model(cfg.model), cfg.train, d["start"], d["shard"], d["seed"], d["end"].step,
                        threads=2, dp=step)
print(tx.replay_distance(d["start"], d["end"], out))
"""
    distances = []
    for env in ({"ATEN_CPU_CAPABILITY": "avx2"}, {}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env={**os.environ, **env})
        assert out.returncode == 0, out.stderr[-3000:]
        distances.append(float(out.stdout.strip().splitlines()[-1]))
    # measured 1.2e-3 here (tolerance 1e-2, the no-clip cheat at 8e-2)
    assert all(d <= rd.cfg.policy.replay_tolerance for d in distances), distances
    assert max(distances) > 0, "the replays reproduced training bit for bit: nothing was tested"


# ---------------------------------------------------------------- Hugging Face models


@pytest.mark.parametrize("kind,lora", [("gpt2", 0), ("llama", 4)])
def test_dp_replay_on_hugging_face_models_full_and_lora(tmp_path, kind, lora):
    from ledger.store.embedded import EmbeddedStore
    from node.models.importer import import_model
    from node.roles.owner import ModelChoice, attach_model
    from support.models import make_model_dir

    cfg = _dp_config()
    # a LoRA adapter starts with small per-window gradients: a bound they exceed, so that
    # skipping the clipping changes something (when no gradient reaches the bound, it does not)
    cfg.dp.max_grad_norm = 1e-3
    imp = import_model(str(make_model_dir(tmp_path / "model", kind)), tmp_path / "cache")
    store = EmbeddedStore(tmp_path / "store")
    cfg.model.block_size = 32
    lm, genesis = attach_model(cfg, store, ModelChoice(imp, lora_rank=lora))
    text = (ROOT / "data" / "tinyshakespeare.txt").read_bytes()
    shards = {addr(i): lm.stream(text[i * 8_000:(i + 1) * 8_000]) for i in (1, 2, 3)}
    rd = DPRound(cfg, lm, genesis, store, shards)
    honest, no_clip, half = rd.train(addr(1)), rd.train(addr(2), "no-clip"), rd.train(addr(3), "half-noise")
    got = {r.index: r for r in rd.verify()}
    assert got[honest].verdict == Verdict.ACCEPTED, got[honest].reason
    assert got[no_clip].verdict == got[half].verdict == Verdict.REPLAY, (got[no_clip].reason, got[half].reason)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_clips_each_window_from_one_batched_backward_as_the_loop_does(tmp_path, kind):
    """LoRA's adapters are Linear layers: their per-window gradients come from one forward
    and one backward of the batch (the replay's cost is then a plain step's, not batch-size
    times it). The clipped sum equals one backward per window, windows above and below the
    bound alike; a model with any other trainable tensor (the byte GPT's tied head) loops."""
    import torch

    from ledger.store.embedded import EmbeddedStore
    from node.models import language_model
    from node.models.importer import import_model
    from node.roles.owner import ModelChoice, attach_model
    from node.training.train import as_tensor, step_offsets, windows
    from support.models import make_model_dir

    cfg = _dp_config()
    imp = import_model(str(make_model_dir(tmp_path / "model", kind)), tmp_path / "cache")
    lm, genesis = attach_model(cfg, EmbeddedStore(tmp_path / "store"), ModelChoice(imp, lora_rank=4))
    rng = np.random.default_rng(0)      # adapters away from zero: every tensor gets a gradient
    model = lm.module({k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32) for k, v in genesis.items()})
    named = lm.trainable(model)
    params = [p for _, p in named]
    owners = dpmod.linear_owners(model, params)
    assert owners is not None and len(owners) == len(params)
    data = as_tensor(lm.stream((ROOT / "data" / "tinyshakespeare.txt").read_bytes()[:8_000]), lm.token_bytes)
    x, y = windows(data, step_offsets(3, 0, len(data), cfg.model.block_size, 6), cfg.model.block_size)
    _, free = dpmod._batched_clipped_sum(lm, model, params, owners, x, y, None)
    norms = []
    for i in range(x.size(0)):       # the windows' own gradient norms, to place the bound between them
        g = torch.autograd.grad(lm.loss(model, x[i:i + 1], y[i:i + 1]), params)
        norms.append(float(torch.linalg.vector_norm(torch.stack([t.norm() for t in g]))))
    bound = float(np.median(norms))
    assert min(norms) < bound < max(norms)
    for clip in (bound, None):
        fast, losses = dpmod._batched_clipped_sum(lm, model, params, owners, x, y, clip)
        slow, want = dpmod._looped_clipped_sum(lm, model, params, x, y, clip)
        np.testing.assert_allclose(losses, want, rtol=1e-5)
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert free == pytest.approx(losses)

    byte = language_model(_dp_config().model)
    m = byte.module(byte.genesis(0))
    assert dpmod.linear_owners(m, [p for _, p in byte.trainable(m)]) is None


# ---------------------------------------------------------------- end to end, real roles


@pytest.mark.slow
def test_dp_job_end_to_end_honest_accepted_cheats_rejected_with_replay(deployed):
    """A DP job through the real worker, adversary, aggregator and audit processes; the
    drawn seeds reach the verifiers only sealed to them (``Worker.secret_items``,
    ``RoundContext.unsealed``); an outsider's audit does not rerun them."""
    from support import address, keys, replay_config, wait_for

    env = deployed
    honest, no_clip, half, agg, auditor = keys(5, "dp-e2e")
    cfg = replay_config(replay_segments=3)            # every segment drawn: detection is certain
    cfg.dp = DPSpec(epsilon=8.0, delta=1e-5, max_grad_norm=0.05)   # a bound the tiny GPT's windows exceed
    job = env.create_job([honest, no_clip, half], [agg], quorum=1, rounds=1, config=cfg, auditors=[auditor])
    procs = [env.spawn(honest, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")]
    procs += [env.spawn_module(k, "node.simulate.adversary", "--job", str(job), "--attack", a, "--poll", "0.3")
              for a, k in (("dp-no-clip", no_clip), ("dp-half-noise", half))]
    procs.append(env.spawn(agg, "aggregator", "run", "--job", str(job), "--poll", "0.3"))
    wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", procs)

    # an outsider checks what is public; the seeds are sealed to the verifier and the named auditor
    out = env.run(None, "audit", "--job", str(job), "--replay", "sample", "--no-progress", timeout=600)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and lines[-1].startswith("AUDIT OK"), out.stdout[-2000:] + out.stderr[-2000:]
    assert any(ln.startswith("NOT RERUN: the replays of 3 contributions") for ln in lines), lines[-4:]
    out = env.run(auditor, "audit", "--job", str(job), "--replay", "sample", "--json", "--no-progress", timeout=600)
    report = json.loads(out.stdout)
    assert not report["not_rerun"], report["not_rerun"]
    got = {c["worker"].lower(): (c["onchain_verdict"], c["audit_verdict"], c["reason"])
           for r in report["rounds"] for c in r["contributions"]}
    assert got[address(honest).lower()][:2] == (Verdict.ACCEPTED, Verdict.ACCEPTED), got
    for k in (no_clip, half):
        assert got[address(k).lower()][:2] == (Verdict.REPLAY, Verdict.REPLAY), got
    assert out.returncode == 0 and report["ok"], report["discrepancies"]
    spent = {w["address"].lower(): w["epsilon"] for w in report["contributors"] if not w["aggregator"]}
    assert all(0 < e < 8.0 for e in spent.values()) and len(spent) == 3, spent
    hist = env.run(None, "history", "--job", str(job))
    assert hist.returncode == 0 and "epsilon spent" in hist.stdout, hist.stderr[-2000:]
