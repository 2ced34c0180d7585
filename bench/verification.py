"""What verification costs an aggregator, against what the round's training cost.

    .venv/bin/python bench/verification.py [--workers 4] [--steps 50] [--rounds 2]

Under the default job policy (the default model, 50 steps a round, a snapshot every
``segment_steps``, one replayed segment of every contribution), each worker trains
its round in this process, exactly as ``ledger worker run`` does (transcript,
snapshots and checkpoint into an embedded store), and the CPU time of its training
is measured. Then one aggregator runs the shared verification pipeline
(``node.verification.verify.verify_round``, the very code ``ledger aggregator run`` and
``ledger audit`` run) over the round, and its CPU time is split by stage. Both
sides run with the job's one torch thread, so CPU seconds compare like for like.

Prints, per round and stage, the aggregator's CPU seconds and their share of the
round's training CPU (all workers), the line ``verification/training compute
ratio: X``, and the transcript's storage per contribution as a multiple of one
checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import bench_config, genesis_params, print_table, say, split_for

JOB = 1
STAGES = ("fetch", "decode", "norm", "validation", "replay")


def train_round(cfg, store, r: int, parent: dict, parent_digest: bytes, shards: list[bytes], workers: list[str]):
    """Every worker's round as ``node.roles.worker`` runs it: (contributions, their bytes,
    CPU seconds of training, transcript bytes, checkpoint bytes)."""
    from ledger.store import checkpoint
    from ledger.digest import sha256_bytes
    from node.training import transcript as tx
    from node.context import contribution_meta
    from node.training.train import derive_seed, train_local
    from ledger.ethereum.contract import Submission

    contributions, cpu, transcript_bytes, ckpt_bytes = [], 0.0, 0, 0
    for i, (w, shard) in enumerate(zip(workers, shards)):
        seed = derive_seed(cfg.seed, JOB, r, w)
        t0 = time.process_time()
        res = train_local(cfg.model, cfg.train, parent, shard, seed, segment_steps=cfg.policy.segment_steps)
        cpu += time.process_time() - t0
        snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(JOB, r, w, parent_digest, s.step), parent))
                 for s in res.snapshots]
        for _, blob in snaps:
            store.put(blob)
        manifest = tx.build_manifest(cfg.policy.segment_steps, snaps, store.options)
        data = checkpoint.encode(res.params, contribution_meta(JOB, r, w, parent_digest, seed, res.metrics, manifest))
        obj = store.put(data)
        contributions.append(Submission(JOB, r, i, w, sha256_bytes(data), obj.cid, len(data), res.metrics["samples"]))
        transcript_bytes += sum(len(b) for _, b in snaps)
        ckpt_bytes += len(data)
    return contributions, cpu, transcript_bytes / len(workers), ckpt_bytes / len(workers)


def verify(cfg, store, r: int, parent: dict, parent_digest: bytes, shards, workers, contributions, seed: bytes):
    """One aggregator's verification of the round: (reports, CPU seconds in all)."""
    from node.verification.verify import RoundContext, verify_round

    shard_of = {w.lower(): s for w, s in zip(workers, shards)}
    cap = cfg.policy.max_checkpoint_bytes
    split = split_for(cfg, len(workers))
    ctx = RoundContext(config=cfg, job_id=JOB, round=r, parent_digest=parent_digest, parent_params=parent,
                       validation=split.validation, shard_of=shard_of.__getitem__,
                       fetch_object=lambda cid, d: store.get(cid, d, max_size=cap), replay_seed=seed)
    t0 = time.process_time()
    reports = verify_round(ctx, contributions, lambda c: store.get(c.cid, c.digest, max_size=cap))
    return reports, time.process_time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4, help="workers (default 4)")
    ap.add_argument("--steps", type=int, default=50, help="steps a round (default 50, the job default)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds (default 2: round 1 starts from the random genesis)")
    args = ap.parse_args()
    import hashlib

    from ledger.store import checkpoint
    from ledger.digest import sha256_bytes
    from ledger.store.embedded import EmbeddedStore
    from node.verification.merge import merge
    from node.training.transcript import inner_boundaries
    from node.verification.verify import accepted

    cfg = bench_config(steps=args.steps)
    p = cfg.policy
    split = split_for(cfg, args.workers)
    workers = ["0x" + f"{i + 1:02x}" * 20 for i in range(args.workers)]
    parent = genesis_params(cfg)
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as d:
        store = EmbeddedStore(Path(d), durable=False)
        for r in range(1, args.rounds + 1):
            parent_digest = sha256_bytes(checkpoint.encode(parent, {"round": str(r - 1)}))
            say(f"round {r}: {args.workers} workers x {args.steps} steps")
            contribs, train_cpu, transcript, ckpt = train_round(cfg, store, r, parent, parent_digest,
                                                                split.shards, workers)
            say(f"round {r}: one aggregator verifies")
            seed = hashlib.sha256(f"bench block {r}".encode()).digest()
            reports, verify_cpu = verify(cfg, store, r, parent, parent_digest, split.shards, workers, contribs, seed)
            bad = [rep.reason for rep in reports if not rep.accepted]
            if bad:
                print(f"error: honest contributions rejected: {bad}", file=sys.stderr)
                return 1
            staged = {s: sum(rep.timings.get(s, 0.0) for rep in reports) for s in STAGES}
            staged["other checks"] = max(0.0, verify_cpu - sum(staged.values()))
            for s, secs in staged.items():
                rows.append([r, s, f"{secs:.2f}", f"{secs / train_cpu:.3f}"])
            rows.append([r, "verification, in all", f"{verify_cpu:.2f}", f"{verify_cpu / train_cpu:.3f}"])
            rows.append([r, f"training ({args.workers} workers)", f"{train_cpu:.2f}", "1.000"])
            ratios.append(verify_cpu / train_cpu)
            replayed = sum(len(rep.metrics.get("replay_segments", [])) for rep in reports)
            say(f"round {r}: replayed {replayed} segment(s) of {p.segment_steps} steps, worst distance "
                f"{max(rep.metrics.get('replay_distance', 0.0) for rep in reports):.2e}")
            parent = merge(p.merge_rule, parent, accepted(reports), p).params
    print_table(f"Verification CPU per aggregator and round vs the round's training CPU (default policy: "
                f"snapshot every {p.segment_steps} steps, {p.replay_segments} segment(s) replayed per contribution, "
                f"validation {p.val_batches} x {p.val_batch_size} windows)",
                ["round", "stage", "CPU s", "share of training"], rows)
    print(f"transcript storage per contribution: {transcript / 1e6:.1f} MB = {transcript / ckpt:.1f} checkpoints "
          f"({len(inner_boundaries(args.steps, p.segment_steps))} snapshots of parameters + both AdamW moments; "
          f"checkpoint {ckpt / 1e6:.2f} MB)")
    print(f"verification/training compute ratio: {max(ratios):.3f}  (worst round; target <= 0.25, stretch <= 0.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
