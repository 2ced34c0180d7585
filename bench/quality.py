"""Does federated training cost model quality? FedAvg vs centralised, same compute.

    .venv/bin/python bench/quality.py [--rounds 3 --workers 4 --steps 50]

Three runs from the same genesis parameters, all with the job's TrainSpec (batch size,
learning rate, ...) and the very ``train_local`` the workers run:
- federated IID: ``workers`` shards cut contiguously; each round every worker trains
  ``steps`` steps from the global model, then a sample-weighted FedAvg (float64) of
  their results becomes the next global model;
- federated non-IID: the same on shards that split the play by speaker;
- centralised: one model, one continuous optimiser, ``workers * steps * rounds`` steps
  on all the training text (every shard), at the same batch size.
So every run takes the same number of optimiser steps on the same number of samples.
A fourth, reference row: centralised for only ``rounds * steps`` steps, the number of
steps a federated run takes one after another (its workers run side by side).
Printed: validation loss (nats/byte, fixed windows of the held-out split) after every
round and at the end, and the ratio federated / centralised.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.protocol.jobconfig import JobConfig  # noqa: E402
from node.training.data import load_corpus, make_split  # noqa: E402
from node.models.bytegpt import GPTConfig, init_params  # noqa: E402
from node.training.train import derive_seed, evaluate, train_local  # noqa: E402


def fedavg(results: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of parameter dicts, accumulated in float64."""
    total = sum(n for _, n in results)
    out = {}
    for name in sorted(results[0][0]):
        acc = np.zeros(results[0][0][name].shape, dtype=np.float64)
        for params, n in results:
            acc += params[name].astype(np.float64) * (n / total)
        out[name] = acc.astype(np.float32)
    return out


def main(argv=None) -> int:
    job = JobConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="local steps per worker per round")
    ap.add_argument("--batch-size", type=int, default=job.train.batch_size)
    ap.add_argument("--lr", type=float, default=job.train.learning_rate)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the machine's cores)")
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--seed", type=int, default=job.seed)
    args = ap.parse_args(argv)

    spec = job.model
    train = replace(job.train, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, threads=args.threads)
    corpus = load_corpus()
    genesis = init_params(GPTConfig.from_spec(spec), args.seed)
    splits = {mode: make_split(corpus, args.workers, mode, job.data.val_fraction) for mode in ("iid", "speaker")}
    validation = splits["iid"].validation  # the same held-out text in both modes

    def val(params) -> float:
        return evaluate(spec, params, validation, args.val_batches, train.batch_size, seed=args.seed, threads=args.threads)

    total_steps = args.workers * args.steps * args.rounds
    print(f"model {sum(a.size for a in genesis.values()):,} params; {args.workers} workers x {args.steps} steps x "
          f"{args.rounds} rounds = {total_steps} steps at batch {train.batch_size}, lr {train.learning_rate}, "
          f"{args.threads} threads; genesis val loss {val(genesis):.4f} (ln 256 = {math.log(256):.4f})", flush=True)

    t_all = time.perf_counter()
    curves: dict[str, list[float]] = {}
    for mode, split in splits.items():
        params, curve = genesis, []
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            results = []
            for i, shard in enumerate(split.shards):
                res = train_local(spec, train, params, shard, derive_seed(args.seed, 0, r, f"worker-{i}"))
                results.append((res.params, res.metrics["samples"]))
            params = fedavg(results)
            curve.append(val(params))
            print(f"  federated {mode:7s} round {r}: val {curve[-1]:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
        curves[mode] = curve

    # Centralised: one model, one continuous optimiser, the same total steps and samples.
    t0 = time.perf_counter()
    everything = b"".join(splits["iid"].shards)
    central = train_local(spec, replace(train, steps=total_steps), genesis, everything,
                          derive_seed(args.seed, 0, 0, "central"))
    central_val = val(central.params)
    print(f"  centralised {total_steps} steps: val {central_val:.4f}  ({time.perf_counter() - t0:.0f}s, "
          f"{total_steps / central.metrics['seconds']:.2f} steps/s)", flush=True)
    # Reference: centralised with only as many *sequential* steps as FedAvg takes
    # (rounds * steps). FedAvg's workers run side by side, so a federated run only
    # gets that many steps in a row; this row shows how much of the gap that explains.
    seq_steps = args.rounds * args.steps
    short = train_local(spec, replace(train, steps=seq_steps), genesis, everything,
                        derive_seed(args.seed, 0, 0, "central"))
    short_val = val(short.params)

    print()
    print("| run | steps in a row | samples | final val loss | ratio to central |")
    print("| --- | ---: | ---: | ---: | ---: |")
    samples = total_steps * train.batch_size
    print(f"| centralised | {total_steps} | {samples:,} | {central_val:.4f} | 1.000 |")
    for mode, label in (("iid", "federated IID"), ("speaker", "federated non-IID (speaker)")):
        v = curves[mode][-1]
        print(f"| {label} | {seq_steps} x {args.workers} workers | {samples:,} | {v:.4f} | {v / central_val:.3f} |")
    print(f"| centralised, FedAvg's sequential steps only | {seq_steps} | {seq_steps * train.batch_size:,} | "
          f"{short_val:.4f} | {short_val / central_val:.3f} |")
    ratio = curves["iid"][-1] / central_val
    verdict = "within" if ratio <= 1.05 else "NOT within"
    print(f"\nIID FedAvg / central = {ratio:.3f}: {verdict} 5%; IID FedAvg / central with the same "
          f"sequential steps = {curves['iid'][-1] / short_val:.3f}. total {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
