"""How much honest verifiers' validation losses differ across kernel paths, and what that
means for the credit they reveal (``ledger.protocol.settlement``): the measurement behind
``CREDIT_QUANTUM`` and the audit's ``AUDIT_LOSS_SLACK``.

    .venv/bin/python bench/credit_noise.py [--workers 4] [--steps 20]

A reference process trains one round of ``--workers`` contributions from the genesis (the
default job config, IID shards) and saves them. Each verifier variant then runs in its own
process (``ATEN_CPU_CAPABILITY`` must be set before torch loads) and measures, on the
job's validation batches, the parent's loss and each contribution's, as an aggregator
does. The table shows each contribution's gain (parent loss - its loss), how far apart the
variants measured it, and the credit each variant gives. The last lines: the worst gain
difference, the chance that it straddles a multiple of the quantum (two honest aggregators
then reveal different credits and the round needs the rest of the quorum), and whether
every variant gave every contribution the same credit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import bench_config, genesis_params, print_table, say, split_for  # noqa: E402

VARIANTS = [("native, 1 thread", {}, 1),
            ("scalar, 1 thread", {"ATEN_CPU_CAPABILITY": "default"}, 1),
            ("avx2, 2 threads", {"ATEN_CPU_CAPABILITY": "avx2"}, 2),
            ("native, 2 threads", {}, 2)]
SEED = 777


def reference(out: Path, workers: int, steps: int) -> None:
    from ledger.store import checkpoint
    from node.training.train import train_local

    cfg = bench_config(steps=steps)
    split = split_for(cfg, workers)
    parent = genesis_params(cfg)
    (out / "parent.safetensors").write_bytes(checkpoint.encode(parent, {}))
    for i, shard in enumerate(split.shards):
        res = train_local(cfg.model, cfg.train, parent, shard, SEED + i)
        (out / f"c{i}.safetensors").write_bytes(checkpoint.encode(res.params, {}))


def measure(out: Path, workers: int, steps: int, threads: int) -> dict:
    from ledger.store import checkpoint
    from node.models import language_model
    from node.training.train import evaluate

    cfg = bench_config(steps=steps)
    validation = split_for(cfg, workers).validation
    lm = language_model(cfg.model)
    p = cfg.policy

    def loss(name: str) -> float:
        params, _ = checkpoint.decode((out / name).read_bytes())
        return evaluate(lm, params, validation, p.val_batches, p.val_batch_size, SEED, threads=threads)

    import torch

    return {"parent": loss("parent.safetensors"), "contributions": [loss(f"c{i}.safetensors") for i in range(workers)],
            "capability": torch.backends.cpu.get_cpu_capability()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.workers, args.steps, args.threads)))
        return 0
    from ledger.protocol.settlement import CREDIT_QUANTUM, credit_of

    with tempfile.TemporaryDirectory(prefix="credit-noise-") as d:
        out = Path(d)
        say(f"training {args.workers} contributions of {args.steps} steps on the reference kernels")
        reference(out, args.workers, args.steps)
        results = {}
        for name, extra, threads in VARIANTS:
            say(f"measuring on {name}")
            env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
            env.update(extra)
            run = subprocess.run([sys.executable, __file__, "--measure", str(out), "--workers", str(args.workers),
                                  "--steps", str(args.steps), "--threads", str(threads)],
                                 env=env, capture_output=True, text=True, check=True)
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
    rows, worst_loss, worst_gain, same = [], 0.0, 0.0, True
    for i in range(args.workers):
        gains = {n: r["parent"] - r["contributions"][i] for n, r in results.items()}
        losses = [r["contributions"][i] for r in results.values()]
        credits = {n: credit_of(0, {"val_loss": r["contributions"][i], "parent_val_loss": r["parent"]}, 0)
                   for n, r in results.items()}
        spread_loss = max(losses) - min(losses)
        spread_gain = max(gains.values()) - min(gains.values())
        worst_loss, worst_gain = max(worst_loss, spread_loss), max(worst_gain, spread_gain)
        same &= len(set(credits.values())) == 1
        rows.append([f"contribution {i}", f"{gains[VARIANTS[0][0]]:.7f}", f"{spread_loss:.2e}", f"{spread_gain:.2e}",
                     " / ".join(str(c) for c in credits.values())])
    parents = [r["parent"] for r in results.values()]
    print_table(f"credit across kernel paths ({', '.join(n for n, _, _ in VARIANTS)}); quantum {CREDIT_QUANTUM:g} nats",
                ["", "gain (nats)", "loss spread", "gain spread", "credit per variant"], rows)
    print("kernels: " + ", ".join(f"{n} = {r['capability']}" for n, r in results.items()))
    print(f"parent loss spread across variants: {max(parents) - min(parents):.2e}")
    print(f"worst gain spread: {worst_gain:.2e} nats; chance an honest pair straddles a credit step: "
          f"{worst_gain / CREDIT_QUANTUM:.1e} per contribution")
    print(f"every variant gave every contribution the same credit: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
