"""Robustness benchmark: Byzantine workers vs merge rules, with and without verification.

An in-memory simulation of federated rounds. There is no chain and no storage; the
benchmark measures the rules and the verification, and those are the same code the
aggregators run:

- every worker trains with ``node.training.train.train_local`` on its IID shard
  (``node.training.data.make_split``), from the round's parent, with the seed
  ``node.training.train.derive_seed`` gives it;
- the Byzantine workers train honestly too, then replace their result with
  ``node.simulate.adversary.attack_params(attack, parent, honest, seed)`` (or, for
  ``collude``, one shared vector: parent - 10 x the mean of their honest updates);
- verification on: each contribution is encoded with ``ledger.store.checkpoint.encode``
  (with the lineage metadata a worker writes) and goes through
  ``node.verification.verify.verify_round`` with a fetch function that returns those bytes,
  the norm bounds and the validation loss on (segment replay off: these attacks
  are on the tensors, measured without transcripts); only the accepted ones are merged;
- verification off: every contribution goes straight to ``node.verification.merge.merge``;
  NaN / wrong-shape tensors make the merge refuse (``ValueError``), which is shown
  as "merge failed (...)" and ends that run;
- the final model of each run is scored with ``node.training.train.evaluate`` on the
  validation split (fixed batches, seed 0) and compared with the all-honest run of
  the same rule and the same verification setting.

Training results are cached by (parent tensors, round, worker): runs whose models
are still bit-identical (e.g. every attack that verification rejects outright) share
their training. Work runs on a process pool (one torch thread per process).

    .venv/bin/python bench/robustness.py [--workers 8 --byzantine 2 --rounds 3 --steps 30]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from ledger.store import checkpoint  # noqa: E402
from ledger.ethereum.contract import Submission  # noqa: E402
from ledger.digest import sha256_bytes, to_hex  # noqa: E402
from ledger.protocol.jobconfig import MERGE_RULES, JobConfig, ModelSpec, Policy, TrainSpec  # noqa: E402
from ledger.protocol.verdicts import Verdict  # noqa: E402

from bench.common import print_table  # noqa: E402

ATTACKS = ("none", "scale", "sign-flip", "noise", "nan", "shape", "collude")
COLLUDE_FACTOR = 10.0
JOB_ID = 1
FINAL_EVAL_BATCHES = 16
FINAL_EVAL_BATCH_SIZE = 32
BAND = 1.05            # "within 5%"


# --------------------------------------------------------------------------- pool side

_W: dict = {}


def _init_worker(num_workers: int) -> None:
    from node.training.data import load_corpus, make_split

    split = make_split(load_corpus(), num_workers, "iid")
    _W["shards"], _W["validation"] = split.shards, split.validation


def _train_task(task):
    """Honest local training of one worker from one parent."""
    from node.verification.merge import update_norm
    from node.training.train import train_local

    key, model, train, parent, shard_index, seed = task
    res = train_local(model, train, parent, _W["shards"][shard_index], seed)
    norm = update_norm(res.params, parent) if _finite(res.params) else math.inf
    return key, res.params, norm


def _eval_task(task):
    from node.training.train import evaluate

    key, model, params = task
    if not _finite(params):
        return key, math.nan
    return key, evaluate(model, params, _W["validation"], FINAL_EVAL_BATCHES, FINAL_EVAL_BATCH_SIZE,
                         seed=0, threads=1)


def _finite(params) -> bool:
    return all(np.isfinite(v).all() for v in params.values() if np.issubdtype(v.dtype, np.floating))


def _judge_task(task):
    """One round of one run: build the contributions, verify (or not), merge."""
    from node.verification import verify as V
    from node.simulate.adversary import attack_params
    from node.verification.merge import merge, update_norm
    from node.context import CHECKPOINT_FORMAT

    (run_key, attack, rule, verify_on, r, cfg, parent, parent_digest, honest, addresses, byz,
     samples, seeds) = task
    n = len(addresses)
    contrib = []
    for i in range(n):
        if i not in byz or attack == "none":
            contrib.append(honest[i])
        elif attack == "collude":
            contrib.append(_collude(parent, [honest[j] for j in sorted(byz)]))
        else:
            contrib.append(attack_params(attack, parent, honest[i], seed=seeds[i]))
    # the Byzantine contributions' update norms (where they have the parent's structure)
    byz_norms = []
    for i in sorted(byz):
        p = contrib[i]
        if attack != "none" and set(p) == set(parent) and all(p[k].shape == parent[k].shape for k in parent) \
                and _finite(p):
            byz_norms.append(update_norm(p, parent))

    out = {"run": run_key, "byz_norms": byz_norms, "verdicts": [0] * n, "reasons": [""] * n}
    if verify_on:
        blobs, contributions = [], []
        for i in range(n):
            meta = {"format": CHECKPOINT_FORMAT, "kind": "contribution", "job": str(JOB_ID), "round": str(r),
                    "worker": addresses[i], "parent": to_hex(parent_digest), "seed": str(seeds[i]),
                    "steps": str(cfg.train.steps), "threads": str(cfg.train.threads)}
            blob = checkpoint.encode(contrib[i], meta)
            blobs.append(blob)
            contributions.append(Submission(job_id=JOB_ID, round=r, index=i, worker=addresses[i],
                                            digest=sha256_bytes(blob),
                                                cid=f"bench-r{r}-w{i}", size=len(blob), num_samples=samples))
        ctx = V.RoundContext(
            config=cfg, job_id=JOB_ID, round=r, parent_digest=parent_digest, parent_params=parent,
            validation=_W["validation"], shard_of=lambda w: _W["shards"][addresses.index(w.lower())],
            replay_seed=hashlib.sha256(f"bench round {r}".encode()).digest(), replay_mode="policy",
        )
        reports = V.verify_round(ctx, contributions, lambda c: blobs[c.index])
        out["verdicts"] = [int(rep.verdict) for rep in reports]
        out["reasons"] = [rep.reason for rep in reports]
        good = V.accepted(reports)
    else:
        good = [(addresses[i], samples, contrib[i]) for i in range(n)]
    try:
        res = merge(rule, parent, good, cfg.policy)
    except ValueError as e:
        kind = "non-finite" if "NaN or Inf" in str(e) else "structure"
        out.update(failed=f"merge failed ({kind})", error=str(e))
        return out
    selected = {w.lower() for w in res.selected}
    out["merged"] = [addresses[i] in selected for i in range(n)]
    out["params"] = res.params
    meta = {"format": CHECKPOINT_FORMAT, "kind": "merge", "job": str(JOB_ID), "round": str(r),
            "parent": to_hex(parent_digest), "rule": rule, "accepted": ",".join(sorted(selected))}
    out["digest"] = sha256_bytes(checkpoint.encode(res.params, meta))
    if rule == "krum":
        out["krum"] = {k: res.info.get(k) for k in ("n", "f", "m", "neighbours", "degenerate")}
    return out


def _collude(parent, honests):
    """Both Byzantine workers send the same vector: parent - 10 x their mean honest update."""
    out = {}
    for k in sorted(parent):
        p = parent[k].astype(np.float64)
        d = sum(h[k].astype(np.float64) - p for h in honests) / len(honests)
        out[k] = (p - COLLUDE_FACTOR * d).astype(parent[k].dtype)
    return out


# --------------------------------------------------------------------------- driver


@dataclass
class Run:
    attack: str
    rule: str
    verify: bool
    params: dict
    digest: bytes
    failed: str | None = None
    failed_round: int = 0
    accepted_h: int = 0
    accepted_b: int = 0
    merged_h: int = 0
    merged_b: int = 0
    rounds_done: int = 0          # rounds merged
    rounds_judged: int = 0        # rounds verified / attempted (a failed merge counts here)
    rejections: Counter = field(default_factory=Counter)
    byz_norms: list = field(default_factory=list)
    krum: dict | None = None
    byz_passed: list = field(default_factory=list)   # (round, reason) of Byzantine contributions accepted
    honest_norms: dict = field(default_factory=dict)  # round -> update norms of its workers' honest training
    loss: float | None = None

    @property
    def key(self):
        return (self.attack, self.rule, self.verify)


def tensor_key(params) -> bytes:
    from node.verification.merge import tensor_digest

    return tensor_digest(params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--byzantine", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="local steps per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--rules", default=",".join(MERGE_RULES))
    ap.add_argument("--max-update-norm", type=float, default=Policy.max_update_norm,
                    help="policy override (default: the Policy default)")
    ap.add_argument("--krum-m", type=int, default=Policy.krum_m, help="policy override (default: 0 = n - f)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--probe-default", type=int, default=2, metavar="N",
                    help="also train N workers one round with the DEFAULT ModelSpec/TrainSpec to measure "
                         "honest update norms against Policy.max_update_norm (0: skip)")
    args = ap.parse_args(argv)

    attacks = [a for a in args.attacks.split(",") if a]
    rules = [r for r in args.rules.split(",") if r]
    for a in attacks:
        if a not in ATTACKS:
            ap.error(f"unknown attack {a!r}; one of {ATTACKS}")
    for r in rules:
        if r not in MERGE_RULES:
            ap.error(f"unknown rule {r!r}; one of {MERGE_RULES}")
    if "none" not in attacks:
        attacks.insert(0, "none")
    if not 0 <= args.byzantine < args.workers:
        ap.error("--byzantine must be in [0, workers)")

    from node.models.bytegpt import GPTConfig, init_params
    from node.training.train import derive_seed, num_samples

    model = ModelSpec(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size)
    train = TrainSpec(steps=args.steps, batch_size=args.batch_size)
    base = JobConfig(model=model, train=train)
    # Segment replay off: these are tensor attacks on the merge rules and the norm and
    # validation bounds; with it on, every forged update here would also fail its
    # transcript (bench/verification.py and tests/e2e/test_segment_replay.py cover that).
    policies = {rule: Policy(merge_rule=rule, krum_f=args.byzantine, krum_m=args.krum_m,
                             max_update_norm=args.max_update_norm, replay_segments=0) for rule in rules}
    configs = {rule: JobConfig(name=base.name, seed=base.seed, model=model, train=train, policy=policies[rule])
               for rule in rules}
    n, nb = args.workers, args.byzantine
    addresses = ["0x" + hashlib.sha256(f"bench-worker-{i}".encode()).hexdigest()[:40] for i in range(n)]
    byz = set(range(n - nb, n))
    samples = num_samples(train)

    genesis = init_params(GPTConfig.from_spec(model), base.seed)
    genesis_digest = sha256_bytes(checkpoint.encode(genesis, {"kind": "genesis", "seed": str(base.seed)}))
    nparams = sum(v.size for v in genesis.values())

    runs = [Run(a, rule, v, genesis, genesis_digest) for a in attacks for rule in rules for v in (True, False)]
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    norms: dict = {}                         # training key -> honest update norm
    trainings = 0
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(n,)) as pool:
        cache: dict = {}                     # (parent tensor digest, round, worker) -> params
        for r in range(1, args.rounds + 1):
            live = [run for run in runs if run.failed is None]
            pkeys = {id(run): tensor_key(run.params) for run in live}
            seeds = [derive_seed(base.seed, JOB_ID, r, a) for a in addresses]
            todo = {}
            for run in live:
                for i in range(n):
                    k = (pkeys[id(run)], r, i)
                    if k not in cache and k not in todo:
                        todo[k] = (k, model, train, run.params, i, seeds[i])
            for k, params, norm in pool.imap_unordered(_train_task, list(todo.values())):
                cache[k] = params
                norms[k] = norm
            trainings += len(todo)
            tasks = []
            for idx, run in enumerate(runs):
                if run.failed is not None:
                    continue
                honest = [cache[(pkeys[id(run)], r, i)] for i in range(n)]
                run.honest_norms[r] = [norms[(pkeys[id(run)], r, i)] for i in range(n)]
                tasks.append((idx, run.attack, run.rule, run.verify, r, configs[run.rule], run.params,
                              run.digest, honest, addresses, byz, samples, seeds))
            for out in pool.imap_unordered(_judge_task, tasks):
                _absorb(runs[out["run"]], out, r, byz)
            done = sum(run.failed is None for run in runs)
            print(f"round {r}/{args.rounds}: {len(todo)} trainings, {len(tasks)} merges, {done} runs alive, "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
            # keep only this round's entries (older rounds can never be hit again)
            cache = {k: v for k, v in cache.items() if k[1] == r}
        finals = [(idx, model, run.params) for idx, run in enumerate(runs) if run.failed is None]
        finals.append((-1, model, genesis))
        genesis_loss = math.nan
        for idx, loss in pool.imap_unordered(_eval_task, finals):
            if idx < 0:
                genesis_loss = loss
            else:
                runs[idx].loss = loss
        probe = []
        if args.probe_default > 0:
            dm, dt = ModelSpec(), TrainSpec()
            dgen = init_params(GPTConfig.from_spec(dm), base.seed)
            ptasks = [((None, 1, i), dm, dt, dgen, i, derive_seed(base.seed, JOB_ID, 1, addresses[i]))
                      for i in range(min(args.probe_default, n))]
            probe = sorted(norm for _, _, norm in pool.imap_unordered(_train_task, ptasks))
    elapsed = time.perf_counter() - t0
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))

    # ------------------------------------------------------------------ report
    baseline = {(run.rule, run.verify): run.loss for run in runs if run.attack == "none"}
    nh = n - nb
    policy_s = ("default Policy" if (args.max_update_norm, args.krum_m) == (Policy.max_update_norm, Policy.krum_m)
                else "Policy OVERRIDDEN") + \
        (f" (max_update_norm {args.max_update_norm:g}, max_val_loss_increase {Policy.max_val_loss_increase:g}, "
         f"trim_ratio {Policy.trim_ratio:g}, krum_m {args.krum_m or 'n-f'}) + krum_f {nb}")
    title = (f"Robustness: {n} workers ({nb} Byzantine), IID shards, {args.rounds} rounds x {args.steps} steps x "
             f"batch {args.batch_size}, GPT {args.n_layer}L/{args.n_embd}d/block {args.block_size} "
             f"({nparams:,} params), {policy_s}")
    headers = ["attack", "rule", "verify", "accepted h", "accepted b", "merged h", "merged b",
               "rejected as", "final val loss", "vs all-honest"]
    rows = []
    for run in runs:
        h, b, k = (n, 0, run.rounds_judged) if run.attack == "none" else (nh, nb, run.rounds_judged)
        acc_h = f"{run.accepted_h}/{h * k}" if run.verify else "-"
        acc_b = (f"{run.accepted_b}/{b * k}" if b else "-") if run.verify else "-"
        m_h = f"{run.merged_h}/{h * k}"
        m_b = f"{run.merged_b}/{b * k}" if b else "-"
        rej = ", ".join(f"{k} x{v}" for k, v in sorted(run.rejections.items())) or "-"
        if run.failed:
            loss_s, ratio_s = f"{run.failed} in round {run.failed_round}", "-"
        elif run.loss is None or not math.isfinite(run.loss):
            loss_s, ratio_s = "non-finite model", "-"
        else:
            loss_s = f"{run.loss:.4f}"
            b = baseline.get((run.rule, run.verify))
            ratio_s = f"x{run.loss / b:.3f}" if b and math.isfinite(b) else "-"
        rows.append([run.attack, run.rule, "on" if run.verify else "off", acc_h, acc_b, m_h, m_b, rej,
                     loss_s, ratio_s])
    print()
    print_table(title, headers, rows)
    print(f"final val loss: node.training.train.evaluate, {FINAL_EVAL_BATCHES} x {FINAL_EVAL_BATCH_SIZE} fixed validation "
          f"windows (seed 0), genesis {genesis_loss:.4f}; h/b = honest/Byzantine contributions, summed over "
          f"rounds; merged = went into the model (krum: selected); ratio vs the all-honest run of the same "
          f"rule and verification setting")

    # norms
    print()
    print(f"Honest update norms (L2 of trained - parent over all {nparams:,} params; bound "
          f"{args.max_update_norm:g}), per round:")
    for r in range(1, args.rounds + 1):
        clean = sorted({x for run in runs if run.attack == "none" for x in run.honest_norms.get(r, [])})
        every = [x for run in runs for x in run.honest_norms.get(r, [])]
        worst = max(every, default=math.nan)
        src = next((run for run in runs if worst in run.honest_norms.get(r, [])), None)
        where = "" if src is None or src.attack == "none" else \
            f" ({src.attack}/{src.rule}/{'on' if src.verify else 'off'}: a parent the attack moved)"
        if clean:
            print(f"  round {r}: all-honest runs min {clean[0]:.3f} median {statistics.median(clean):.3f} "
                  f"max {clean[-1]:.3f}; max over every run {worst:.3f}{where}")
    byz_by_attack: dict[str, list[float]] = {}
    for run in runs:
        byz_by_attack.setdefault(run.attack, []).extend(x for x in run.byz_norms if math.isfinite(x))
    print("Byzantine update norms, all runs and rounds:")
    for a in attacks:
        v = sorted(byz_by_attack.get(a, []))
        if a != "none":
            print(f"  {a:9s} " + (f"min {v[0]:.3g} median {statistics.median(v):.3g} max {v[-1]:.3g}"
                                  if v else "n/a (not the parent's structure / non-finite)"))
    passed = [(run, r, why) for run in runs for r, why in run.byz_passed]
    if passed:
        print("Byzantine contributions that passed verification:")
        for run, r, why in passed:
            print(f"  {run.attack}/{run.rule} round {r}: {why}")
    if probe:
        print(f"Default config probe (ModelSpec() {sum(v.size for v in dgen.values()):,} params, "
              f"TrainSpec() {dt.steps} steps x batch {dt.batch_size}, round 1 from genesis, {len(probe)} workers): "
              f"honest update norms {', '.join(f'{x:.3f}' for x in probe)} vs max_update_norm "
              f"{Policy.max_update_norm:g}")

    # the claim
    print()
    print(_claim(runs, baseline, rules, attacks, n, nb))
    print(f"({trainings} local trainings, {len(runs)} runs: {elapsed:.0f}s wall, {cpu:.0f}s CPU, "
          f"{args.jobs} processes)")
    return 0


def _absorb(run: Run, out: dict, r: int, byz: set) -> None:
    run.byz_norms.extend(out["byz_norms"])
    run.rounds_judged = r
    n = len(out["verdicts"])
    if run.verify:
        for i, v in enumerate(out["verdicts"]):
            if v == 0:
                if i in byz and run.attack != "none":
                    run.accepted_b += 1
                    run.byz_passed.append((r, out["reasons"][i]))
                else:
                    run.accepted_h += 1
            else:
                who = "b" if i in byz and run.attack != "none" else "h"
                run.rejections[f"{who}:{Verdict(v).label}"] += 1
    if "failed" in out:
        run.failed, run.failed_round = out["failed"], r
        return
    for i in range(n):
        if out["merged"][i]:
            if i in byz and run.attack != "none":
                run.merged_b += 1
            else:
                run.merged_h += 1
    run.params, run.digest = out["params"], out["digest"]
    run.krum = out.get("krum")
    run.rounds_done = r


def _claim(runs, baseline, rules, attacks, n, nb) -> str:
    """Multi-Krum and median within 5% of their all-honest loss under every attack; FedAvg
    without verification visibly (> 5%) worse under at least one attack."""
    needed = {"krum", "median", "fedavg"}
    if not needed <= set(rules) or len([a for a in attacks if a != "none"]) == 0:
        return "CLAIM: not evaluated (needs rules fedavg, median, krum and at least one attack)"
    problems, worst = [], {}
    for run in runs:
        if run.attack == "none" or run.rule not in ("krum", "median"):
            continue
        tag = f"{run.rule}/{run.attack}/{'on' if run.verify else 'off'}"
        if run.failed:
            if run.verify:
                problems.append(f"{tag}: {run.failed}")
            continue     # verification off: no rule merges NaN / wrong shapes (the merge refuses)
        b = baseline.get((run.rule, run.verify))
        if run.loss is None or not math.isfinite(run.loss) or not b:
            problems.append(f"{tag}: no finite loss")
            continue
        ratio = run.loss / b
        if run.rule not in worst or ratio > worst[run.rule][0]:
            worst[run.rule] = (ratio, tag)
        if ratio > BAND:
            problems.append(f"{tag}: x{ratio:.3f}")
    fed = []
    for run in runs:
        if run.rule == "fedavg" and not run.verify and run.attack != "none":
            b = baseline.get(("fedavg", False))
            if run.failed:
                fed.append((math.inf, f"{run.attack}: {run.failed}"))
            elif run.loss is None or not math.isfinite(run.loss):
                fed.append((math.inf, f"{run.attack}: non-finite model"))
            else:
                fed.append((run.loss / b, f"{run.attack}: x{run.loss / b:.3f}"))
    degraded = [t for x, t in fed if x > BAND and "merge failed" not in t]
    ok_robust = not problems
    ok_fed = bool(degraded)
    verdict = "PASS" if ok_robust and ok_fed else "FAIL"
    w = "; ".join(f"worst {rule} x{worst[rule][0]:.3f} ({worst[rule][1]})" for rule in ("median", "krum") if rule in worst)
    return (f"{verdict}: with {nb} of {n} Byzantine, median and Multi-Krum end within 5% of their all-honest "
            f"loss while FedAvg without verification degrades\n"
            f"  median / krum within 5% under every attack, verification on and off: "
            f"{'yes' if ok_robust else 'NO: ' + '; '.join(problems)} ({w})\n"
            f"  FedAvg (verification off) worse by > 5%: {'yes: ' + ', '.join(degraded) if ok_fed else 'NO'} "
            f"(all: {', '.join(t for _, t in fed)})\n"
            f"  not counted: nan / shape without verification, which every rule's merge refuses (no model)")


if __name__ == "__main__":
    sys.exit(main())
