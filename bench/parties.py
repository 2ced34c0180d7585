"""Many parties: what verification committees leave each aggregator to do, and what a
contribution costs in gas, for jobs of 4, 16 and 64 workers with 3 and 16 aggregators.

    .venv/bin/python bench/parties.py [--workers 4,16,64] [--aggregators 3,16] [--committee 3]

Every worker's round is trained in this process as ``ledger worker run`` trains it (a
tiny model, a transcript, checkpoints into an embedded store; one torch thread) and its
CPU time measured: on 2 cores, 64 worker processes would measure the scheduler, not the
protocol. Then, for each aggregator count, the committees are drawn with the
aggregators' own code (``ledger.protocol.committee``) and the **busiest** aggregator (the round
waits for the slowest) does its whole share with the real pipeline
(``node.verification.verify.verify_round``): its vote (its committees' contributions in
depth: validation and a replayed segment; every other one through the cheap checks),
then the final pass every aggregator runs (the cheap checks on all, the decided verdicts
taken). Without committees (``committee_size`` 0 or at least the aggregators) it judges
everything in depth, as before.

Per job: the contributions the busiest aggregator judges in depth, its verification CPU
as a share of the round's training CPU (all workers: the measure of
``bench/verification.py``) and in round-lengths (one worker's training: the round's wall
time when the workers train in parallel), the same without committees, and the round's
time (one worker's training + the busiest aggregator's verification). Gas per
contribution, batched and the committee votes, comes from ``bench/gas.py`` on anvil.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from common import genesis_params, print_table, say, split_for

JOB = 1
TARGET_RATIO = 1.5
TARGET_GAS = 10_000


def job_config(steps: int, committee: int):
    """The default model and policy (a snapshot every 5 steps, one segment replayed, the
    default validation batches) with ``steps`` steps a round: few, so that 64 workers
    train in minutes here, and enough that a replayed segment is a quarter of them."""
    from common import bench_config

    cfg = bench_config(steps=steps)
    cfg.policy.committee_size = committee
    # 64 shards of the corpus are small: a worker can overfit its own in 20 steps from the
    # random genesis. The bound is not what is measured (the loss still is), and every
    # contribution must go through every stage.
    cfg.policy.max_val_loss_increase = 1e6
    return cfg


def train_all(cfg, store, n: int):
    """(contributions, parent params, parent digest, shards, workers, mean training CPU s per worker)."""
    from ledger.store import checkpoint
    from ledger.digest import sha256_bytes
    from verification import train_round

    split = split_for(cfg, n)
    workers = ["0x" + hashlib.sha256(f"worker {i}".encode()).hexdigest()[:40] for i in range(n)]
    parent = genesis_params(cfg)

    parent_digest = sha256_bytes(checkpoint.encode(parent, {"round": "0"}))
    contribs, cpu, _, _ = train_round(cfg, store, 1, parent, parent_digest, split.shards, workers)
    return contribs, parent, parent_digest, split, workers, cpu / n


def busiest_share(cfg, store, n_aggs: int, contribs, parent, parent_digest, split, workers, seed: bytes):
    """(contributions judged in depth by the busiest aggregator, its verification CPU s)."""
    from ledger.protocol import committee
    from ledger.protocol.settlement import credit_of
    from node.verification.verify import RoundContext, verify_round

    aggs = ["0x" + hashlib.sha256(f"aggregator {i}".encode()).hexdigest()[:40] for i in range(n_aggs)]
    size = committee.effective_size(cfg.policy, n_aggs)
    cap = cfg.policy.max_checkpoint_bytes
    shard_of = {w.lower(): s for w, s in zip(workers, split.shards)}

    def run(**kw):
        ctx = RoundContext(config=cfg, job_id=JOB, round=1, parent_digest=parent_digest, parent_params=parent,
                           validation=split.validation, shard_of=shard_of.__getitem__,
                           fetch_object=lambda cid, d: store.get(cid, d, max_size=cap), replay_seed=seed, **kw)
        t0 = time.process_time()
        reports = verify_round(ctx, contribs, lambda c: store.get(c.cid, c.digest, max_size=cap))
        return reports, time.process_time() - t0

    if not size:
        reports, cpu = run()
        _all_accepted(reports)
        return len(contribs), cpu
    comms = committee.committees(seed, JOB, 1, len(contribs), aggs, size)
    load = {a: [i for i, m in comms.items() if a in m] for a in aggs}
    busiest = max(aggs, key=lambda a: len(load[a]))
    mine = frozenset(load[busiest])
    votes, vote_cpu = run(in_depth=mine, copy_check=False)
    _all_accepted(votes)
    # every committee decided as this honest member voted (each contribution is honest)
    decided = {r.index: (int(r.verdict), credit_of(int(r.verdict), r.metrics, r.contribution.num_samples))
               for r in votes}
    final, final_cpu = run(decided=decided)
    _all_accepted(final)
    return len(mine), vote_cpu + final_cpu


def _all_accepted(reports) -> None:
    bad = [r.reason for r in reports if not r.accepted]
    if bad:
        raise SystemExit(f"error: honest contributions rejected: {bad[:3]}")


def gas_rows(counts: list[int]) -> dict[int, dict]:
    """bench/gas.py's batched submissions and committee votes, per worker count."""
    import gas

    with gas.deployed_ledger() as (chain, ledger, _):
        return {n: gas.measure_batched(chain, ledger, n) for n in counts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="4,16,64", help="comma-separated worker counts (default 4,16,64)")
    ap.add_argument("--aggregators", default="3,16", help="comma-separated aggregator counts (default 3,16)")
    ap.add_argument("--committee", type=int, default=3, help="committee size (default 3)")
    ap.add_argument("--steps", type=int, default=20, help="training steps a round (default 20)")
    args = ap.parse_args(argv)
    counts = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    n_aggs = sorted({int(x) for x in args.aggregators.split(",") if x.strip()})
    if not counts or any(not 2 <= n <= 128 for n in counts) or not n_aggs or any(not 1 <= m <= 16 for m in n_aggs):
        ap.error("workers: 2..128 each; aggregators: 1..16 each")
    from ledger.store.embedded import EmbeddedStore

    rows, per_round_length, per_share = [], {}, {}
    with tempfile.TemporaryDirectory() as d:
        for n in counts:
            store = EmbeddedStore(Path(d) / f"n{n}", durable=False)
            cfg = job_config(args.steps, args.committee)
            say(f"{n} workers: training a round ({args.steps} steps each)")
            contribs, parent, pd, split, workers, train_cpu = train_all(cfg, store, n)
            seed = hashlib.sha256(f"bench parties {n}".encode()).digest()
            say(f"{n} workers: one aggregator judges every contribution (no committees)")
            _, cpu_all = busiest_share(job_config(args.steps, 0), store, 1, contribs, parent, pd, split, workers, seed)
            for m in n_aggs:
                if args.committee < m:
                    say(f"{n} workers, {m} aggregators: the busiest aggregator's share")
                    judged, cpu = busiest_share(cfg, store, m, contribs, parent, pd, split, workers, seed)
                else:       # committees of all the aggregators: everyone judges everything
                    judged, cpu = n, cpu_all
                c = args.committee if args.committee < m else "all"
                per_round_length[(n, m)] = cpu / train_cpu
                per_share[(n, m)] = cpu / (train_cpu * n)
                rows.append([n, m, c, judged, f"{cpu:.2f}", f"{cpu / (train_cpu * n):.3f}",
                             f"{cpu_all / (train_cpu * n):.3f}", f"{cpu / train_cpu:.2f}", f"{cpu_all / train_cpu:.2f}",
                             f"{train_cpu + cpu:.1f}"])
    say("gas: batched submissions and committee votes on anvil")
    g = gas_rows(counts)
    print_table(f"Verification per aggregator and round (the busiest of them; the default model, {args.steps} steps, one "
                f"replayed segment; CPU seconds on this machine)",
                ["workers", "aggregators", "committee", "judged in depth", "verification CPU s",
                 "share of round's training", "share, no committees", "round-lengths", "round-lengths, no committees",
                 "round time s"], rows)
    print_table("Gas per contribution (16 aggregators; bench/gas.py)",
                ["workers", "batched submission", "committee votes", "direct submitUpdate"],
                [[n, f"{g[n]['batch_again']:,.0f}", f"{g[n]['votes']:,.0f}", "~39,750"] for n in counts])
    lo, hi = min(counts), max(counts)
    m_lo, m_hi = min(n_aggs), max(n_aggs)
    x = per_share[(hi, m_hi)] / per_share[(lo, m_lo)]
    x_len = per_round_length[(hi, m_hi)] / per_round_length[(lo, m_lo)]
    print(f"verification per aggregator at {hi} workers / at {lo} workers: {x:.2f} ({hi} workers with {m_hi} "
          f"aggregators over {lo} with {m_lo}, as a share of the round's training; target <= {TARGET_RATIO}: "
          f"{'MET' if x <= TARGET_RATIO else 'NOT MET'})")
    print(f"  in round-lengths (absolute work per aggregator): {x_len:.2f}: it grows as workers x committee / "
          f"aggregators, flat only where aggregators grow with workers")
    y = g[hi]["batch_again"]
    print(f"gas per contribution at {hi} workers: {y:,.0f} (batched submission; target <= {TARGET_GAS:,}: "
          f"{'MET' if y <= TARGET_GAS else 'NOT MET'}); committee votes add {g[hi]['votes']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
