"""What a contribution costs at real model sizes: training, storage, verification, memory.

    .venv/bin/python bench/scale.py [--sizes byte,gpt2-10m,gpt2-124m,smollm2-lora] [--threads 2]

Per model size, under the default job policy (batch 32 x 128 tokens, 50 steps a
round, a snapshot every 5 steps, one segment of every contribution replayed, 8 x 32
validation windows, snapshots published only for the drawn segment):

- seconds per training step (the real loop, ``node.training.train``, median of the
  steps after the first);
- checkpoint bytes, compact snapshot bytes, and the transcript bytes a contribution
  stores a round: expected over the uniform draw of its 10 segments (the first and
  the last need one snapshot, the others two) and at worst (a middle segment);
- the verification/training compute ratio: one contribution is trained for 15 steps
  (3 segments) and judged by the real pipeline (``verify_round``: fetch, integrity,
  decode, norms, the validation loss, and the replay of the middle segment from its
  revealed snapshots), its seconds plus a quarter of the parent's validation (4
  contributions share it) against 50 training steps. Verification does not depend on
  the round's length, only on the segment it replays;
- an aggregator's peak RSS judging and merging 4 and 16 contributions (the parent
  plus noise, cheap checks and the norm bound, then FedAvg, in a fresh process: the
  validation and the replay take one contribution at a time, measured above).

Sizes: ``byte`` the default byte-level GPT (0.84M); ``gpt2-10m`` a GPT-2 of 4 layers
x 192 with GPT-2's vocabulary size (11M); ``gpt2-124m`` GPT-2 small's shape (random
weights); ``smollm2-lora`` the pretrained SmolLM2-135M with LoRA rank 8 on q/v. The
GPT-2 shapes tokenize with a 50,257-token BPE trained here on the corpus.

Prints ``transcript/checkpoint storage ratio: X`` (full fine-tuning at 124M, expected
over the draw; target <= 3) and ``verification/training compute ratio at 124M: Y``
(target <= 0.25).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, say  # noqa: E402

SIZES = ("byte", "gpt2-10m", "gpt2-124m", "smollm2-lora")
JOB, ROUND = 1, 1
WORKER = "0x" + "ab" * 20
MEASURED_STEPS = 15          # 3 segments of 5: a middle one to replay
ROUND_STEPS = 50             # the default round the ratio is for


def _tokenizer_json(tmp: Path) -> bytes:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import CORPUS, train_tokenizer

    return train_tokenizer(tmp, vocab_size=50257, text=CORPUS.read_bytes()).read_bytes()


def build(size: str, tmp: Path, threads: int):
    """(LanguageModel, JobConfig, genesis params, a worker's token stream, the validation stream)."""
    from ledger.protocol.jobconfig import JobConfig
    from ledger.store.embedded import EmbeddedStore
    from node.models.importer import Imported, import_model
    from node.roles.owner import ModelChoice, attach_model
    from node.training.data import load_corpus, make_split

    cfg = JobConfig()
    cfg.train.threads = threads
    store = EmbeddedStore(tmp / "owner-store")
    if size == "byte":
        lm, genesis = attach_model(cfg, store, None)
    elif size.startswith("gpt2"):
        import transformers

        from node.models.hf import check_config

        shape = dict(n_layer=4, n_embd=192, n_head=4) if size == "gpt2-10m" else {}
        hf = check_config(transformers.GPT2Config(vocab_size=50257, n_positions=1024, **shape).to_dict())
        imp = Imported(hf, {}, _tokenizer_json(tmp / "tok"), size, tmp)
        lm, genesis = attach_model(cfg, store, ModelChoice(imp, init="random"))
    elif size == "smollm2-lora":
        imp = import_model("smollm2", tmp.parent / "models", say=say)
        lm, genesis = attach_model(cfg, store, ModelChoice(imp, lora_rank=8))
    else:
        raise SystemExit(f"unknown size {size!r}; one of {SIZES}")
    split = make_split(load_corpus(), 4)
    # as `ledger job create` does: a contribution is the size of the genesis, with room to spare
    nbytes = sum(v.nbytes for v in genesis.values())
    cfg.policy.max_checkpoint_bytes = max(cfg.policy.max_checkpoint_bytes, nbytes + nbytes // 4 + (1 << 20))
    # the default absolute norm cap is the byte GPT's; a 124M model moves further (its
    # cost is one pass over the tensors either way)
    cfg.policy.max_update_norm = 1000.0
    return lm, cfg, genesis, lm.stream(split.shards[0]), lm.stream(split.validation)


def measure(size: str, tmp: Path, threads: int) -> dict:
    """Training, storage and verification of one contribution (in this process)."""
    import numpy as np

    from ledger.store import checkpoint
    from ledger.digest import sha256_bytes
    from ledger.ethereum.contract import Submission
    from ledger.protocol.jobconfig import num_samples
    from ledger.store.embedded import EmbeddedStore
    from node.context import contribution_meta
    from node.training import train as trainmod
    from node.training import transcript as tx
    from node.verification.verify import RoundContext, verify_round

    lm, cfg, genesis, shard, validation = build(size, tmp, threads)
    cfg.train.steps = MEASURED_STEPS
    store = EmbeddedStore(tmp / "store")
    parent_bytes = checkpoint.encode(genesis, {"kind": "genesis"})
    parent_digest = sha256_bytes(parent_bytes)
    seed = trainmod.derive_seed(cfg.seed, JOB, ROUND, WORKER)
    stamps = []
    say(f"{size}: {lm.describe}; training {MEASURED_STEPS} steps of {cfg.train.batch_size} x {lm.block_size} tokens")
    res = trainmod.train_local(lm, cfg.train, genesis, shard, seed, segment_steps=cfg.policy.segment_steps,
                               threads=threads, progress=lambda *a: stamps.append(time.perf_counter()))
    step_s = float(np.median(np.diff(stamps)))
    snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(JOB, ROUND, WORKER, parent_digest, s.step), genesis))
             for s in res.snapshots]
    for _, blob in snaps:
        store.put(blob)
    manifest = tx.build_manifest(cfg.policy.segment_steps, snaps, store.options)
    data = checkpoint.encode(res.params, contribution_meta(JOB, ROUND, WORKER, parent_digest, seed,
                                                           res.metrics, manifest))
    obj = store.put(data)
    sub = Submission(job_id=JOB, round=ROUND, index=0, worker=WORKER, digest=obj.digest, cid=obj.cid,
                     size=obj.size, num_samples=num_samples(cfg.train))
    # a round seed whose draw is the middle segment: two snapshots, the costliest replay
    seed_bytes = next(bytes([i]) * 32 for i in range(256)
                      if tx.draw_segments(bytes([i]) * 32, JOB, ROUND, WORKER, 3, 1) == [1])
    ctx = RoundContext(config=cfg, job_id=JOB, round=ROUND, parent_digest=parent_digest, parent_params=genesis,
                       validation=validation, shard_of=lambda w: shard, fetch_object=store.get,
                       replay_seed=seed_bytes, replay_threads=threads, model=lm)
    say(f"{size}: the parent's validation loss, then verifying the contribution")
    t0 = time.perf_counter()
    ctx.parent_loss()
    parent_val = time.perf_counter() - t0
    t0 = time.perf_counter()
    (rep,) = verify_round(ctx, [sub], lambda c: store.get(c.cid, c.digest))
    verify_s = time.perf_counter() - t0
    assert rep.accepted, rep.reason
    snap = max(len(b) for _, b in snaps)
    n_seg = ROUND_STEPS // cfg.policy.segment_steps
    trainable = sum(int(np.prod(v.shape)) for v in genesis.values())
    return {
        "size": size, "params": trainable, "step_s": step_s, "checkpoint": len(data), "snapshot": snap,
        "transcript_expected": snap * (2 * n_seg - 2) / n_seg, "transcript_worst": 2 * snap,
        "verify_s": verify_s, "parent_val_s": parent_val, "replay_distance": rep.metrics.get("replay_distance"),
        "ratio": (verify_s + parent_val / 4) / (ROUND_STEPS * step_s), "peak_verify_mb": _peak_mb(),
    }


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(size: str, tmp: Path, n: int, threads: int) -> dict:
    """n contributions (the genesis plus noise) in a store under ``tmp``, for ``memory``."""
    import numpy as np

    from ledger.store import checkpoint
    from ledger.digest import sha256_bytes
    from ledger.store.embedded import EmbeddedStore

    _, cfg, genesis, _, _ = build(size, tmp, threads)
    store = EmbeddedStore(tmp / "mem-store")
    parent = checkpoint.encode(genesis, {"kind": "genesis"})
    (tmp / "parent.safetensors").write_bytes(parent)
    (tmp / "config.json").write_bytes(cfg.to_bytes())
    parent_digest = sha256_bytes(parent)
    rng = np.random.default_rng(0)
    subs = []
    for i in range(n):
        w = "0x" + f"{i + 1:040x}"
        p = {k: (v + 1e-4 * rng.standard_normal(v.shape, dtype=np.float32)).astype(np.float32) for k, v in genesis.items()}
        obj = store.put(checkpoint.encode(p, {"job": str(JOB), "round": str(ROUND), "worker": w,
                                              "parent": "0x" + parent_digest.hex()}))
        subs.append([w, obj.digest.hex(), obj.cid, obj.size])
    return {"subs": subs}


def memory(tmp: Path, subs: list) -> dict:
    """An aggregator's peak RSS for the prepared contributions, in a fresh process:
    cheap checks, the norm bound, FedAvg, the merged checkpoint's bytes."""
    from ledger.store import checkpoint
    from ledger.ethereum.contract import Submission
    from ledger.digest import sha256_bytes
    from ledger.protocol.jobconfig import JobConfig, num_samples
    from ledger.store.embedded import EmbeddedStore
    from node.verification import merge as mergemod
    from node.verification.verify import RoundContext, accepted, verify_round

    cfg = JobConfig.from_bytes((tmp / "config.json").read_bytes())
    raw = (tmp / "parent.safetensors").read_bytes()
    genesis, _ = checkpoint.decode(raw)
    store = EmbeddedStore(tmp / "mem-store")
    subs = [Submission(job_id=JOB, round=ROUND, index=i, worker=w, digest=bytes.fromhex(d), cid=cid, size=size,
                       num_samples=num_samples(cfg.train)) for i, (w, d, cid, size) in enumerate(subs)]
    base = _peak_mb()
    ctx = RoundContext(config=cfg, job_id=JOB, round=ROUND, parent_digest=sha256_bytes(raw), parent_params=genesis,
                       stages={"norm"})
    reports = verify_round(ctx, subs, lambda c: store.get(c.cid, c.digest))
    result = mergemod.merge("fedavg", genesis, accepted(reports), cfg.policy)
    merged = checkpoint.encode(result.params, {"kind": "merge"})
    assert all(r.accepted for r in reports) and len(merged) > 0
    return {"n": len(subs), "peak_mb": _peak_mb(), "before_mb": base}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sys.stderr.write(out.stderr[-4000:] if out.returncode else "")
    if out.returncode:
        raise SystemExit(f"bench/scale.py {' '.join(args)} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {','.join(SIZES)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and verification (default 2)")
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "SIZE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, size, n = args.child
        if what == "memory":
            print(json.dumps(memory(Path(size), json.loads(Path(n).read_text())["subs"])))
            return 0
        with tempfile.TemporaryDirectory(prefix="ledger-scale-") as d:
            tmp = Path(d) / "work"
            tmp.mkdir()
            if what == "cost":
                r = measure(size, tmp, args.threads)
            else:       # prepare, then measure in a fresh process that only judges and merges
                (tmp / "subs.json").write_text(json.dumps(prepare(size, tmp, int(n), args.threads)))
                r = _child(["--child", "memory", str(tmp), str(tmp / "subs.json")])
        print(json.dumps(r))
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    rows, ratio_124m, storage_124m = [], None, None
    for size in sizes:
        cost = _child(["--threads", str(args.threads), "--child", "cost", size, "0"])
        mem = {n: _child(["--threads", str(args.threads), "--child", "prepare", size, str(n)]) for n in (4, 16)}
        ck = cost["checkpoint"]
        rows.append([size, f"{cost['params'] / 1e6:.2f}M", f"{cost['step_s']:.2f}", f"{ck / 2**20:.1f}",
                     f"{cost['snapshot'] / 2**20:.1f}",
                     f"{cost['transcript_expected'] / 2**20:.1f} ({cost['transcript_expected'] / ck:.2f}x)",
                     f"{cost['transcript_worst'] / 2**20:.1f} ({cost['transcript_worst'] / ck:.2f}x)",
                     f"{cost['ratio']:.3f}", f"{cost['replay_distance']:.1e}",
                     f"{mem[4]['peak_mb']:.0f}", f"{mem[16]['peak_mb']:.0f}"])
        if size == "gpt2-124m":
            ratio_124m, storage_124m = cost["ratio"], cost["transcript_expected"] / ck
    print_table("Cost of a contribution by model size, default policy (trainable parameters; MiB; seconds with "
                f"{args.threads} threads)",
                ["model", "trainable", "s/step", "checkpoint", "snapshot", "transcript/round expected",
                 "worst", "verify/train", "replay dist", "peak RSS 4 (MiB)", "peak RSS 16"], rows)
    if storage_124m is not None:
        print(f"transcript/checkpoint storage ratio: {storage_124m:.2f}")
        print(f"verification/training compute ratio at 124M: {ratio_124m:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
