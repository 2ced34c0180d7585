"""How far an honest segment replay lands on other kernel paths, and how far cheats land:
the measurement behind the job policy's ``segment_steps`` and ``replay_tolerance``.

    .venv/bin/python bench/replay_drift.py [--lengths 5,10,25] [--steps 50] [--dtype bfloat16] [--nproc N]

A reference worker (this machine's default kernels, 1 thread) trains round 1 from the
random genesis and round 2 from that result, snapshotting its whole state every 5
steps. Each verifier variant runs in its own process (``ATEN_CPU_CAPABILITY`` must be
set before torch loads): it replays every segment of each length from the reference's
snapshot at its start and reports ``replay_distance`` to the reference's snapshot at
its end (the distance divided by the segment's own movement, parameters and both
AdamW moments). The cheats are replayed on the reference kernels: a segment one step
short, a segment trained on another data order (another worker's seed), and the
middle of a straight-line interpolation between two snapshots (a forged transcript).
``--dtype bfloat16`` runs forward and backward passes under bfloat16 autocast, as a
job created with ``--dtype bfloat16`` trains: its default tolerance comes from here.
``--nproc N`` trains the reference as a worker that is a cluster (``ledger worker run
--nproc N``: N data-parallel processes, node.training.distributed), replayed by one
process per verifier, on the reference's kernels too.
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

from common import genesis_params, print_table, say, split_for  # noqa: E402

VARIANTS = [("avx2, 1 thread", {"ATEN_CPU_CAPABILITY": "avx2"}, 1),
            ("default, 2 threads", {}, 2),
            ("avx2, 2 threads", {"ATEN_CPU_CAPABILITY": "avx2"}, 2)]
SEED = 4242
DTYPE = os.environ.get("BENCH_DTYPE", "float32")


def config(steps: int):
    from common import bench_config

    cfg = bench_config(steps=steps)
    cfg.model.dtype = DTYPE
    return cfg


def reference(out: Path, steps: int, every: int, nproc: int = 1) -> None:
    """Two rounds on the reference kernels; every state every ``every`` steps to ``out``:
    the inner boundaries as the compact snapshots a worker publishes (and continues
    from), the round's start and end exactly (the parent, and the checkpoint)."""
    from ledger.store import checkpoint
    from node.training.train import train_local, train_steps
    from node.training.transcript import TrainState, encode_snapshot

    cfg = config(steps)
    shard = split_for(cfg, 4).shards[0]
    params = genesis_params(cfg)
    for rnd in (1, 2):
        if nproc > 1:
            from node.training import distributed

            res = distributed.train_local(cfg, params, shard, SEED + rnd, nproc, segment_steps=every)
        else:
            res = train_local(cfg.model, cfg.train, params, shard, SEED + rnd, segment_steps=every)
        (out / f"r{rnd}-origin.safetensors").write_bytes(checkpoint.encode(params, {}))
        zero = {k: 0 * v for k, v in params.items()}
        _save_exact(out / f"r{rnd}-0.safetensors", TrainState(0, params, zero, zero))
        for s in res.snapshots:
            (out / f"r{rnd}-{s.step}.safetensors").write_bytes(encode_snapshot(s, {"round": str(rnd)}, params))
        # the end state's moments are not in TrainResult: run the last stretch again for them
        if nproc > 1:
            end, _, _ = distributed.train_local(cfg, params, shard, SEED + rnd, nproc, segment_steps=None,
                                                start_at=res.snapshots[-1], end=steps)
        else:
            end, _, _ = train_steps(cfg.model, cfg.train, res.snapshots[-1], shard, SEED + rnd, steps)
        _save_exact(out / f"r{rnd}-{steps}.safetensors", end)
        params = res.params


def _save_exact(path: Path, s) -> None:
    from ledger.store import checkpoint

    tensors = {f"{g}/{k}": v for g, d in (("param", s.params), ("exp_avg", s.exp_avg), ("exp_avg_sq", s.exp_avg_sq))
               for k, v in d.items()}
    path.write_bytes(checkpoint.encode(tensors, {"exact": "1"}))


def load(out: Path, rnd: int, step: int, like):
    from ledger.store import checkpoint
    from node.training.transcript import TrainState, decode_snapshot

    raw = (out / f"r{rnd}-{step}.safetensors").read_bytes()
    tensors, meta = checkpoint.decode(raw)
    if meta.get("exact") != "1":
        origin, _ = checkpoint.decode((out / f"r{rnd}-origin.safetensors").read_bytes())
        return decode_snapshot(raw, cid="-", expect_meta={"round": str(rnd), "step": str(step)}, like=origin,
                               max_size=len(raw))
    g = {grp: {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(grp + "/")}
         for grp in ("param", "exp_avg", "exp_avg_sq")}
    if step == 0:
        return TrainState(0, g["param"])
    return TrainState(step, g["param"], g["exp_avg"], g["exp_avg_sq"])


def replay_all(out: Path, steps: int, lengths: list[int], threads: int) -> dict:
    """In a verifier process: the worst replay_distance per (round, length)."""
    from node.training.train import train_steps
    from node.training.transcript import replay_distance

    cfg = config(steps)
    shard = split_for(cfg, 4).shards[0]
    like = genesis_params(cfg)
    worst = {}
    for rnd in (1, 2):
        for L in lengths:
            d = 0.0
            for a in range(0, steps, L):
                b = min(a + L, steps)
                start = load(out, rnd, a, like)
                got, _, _ = train_steps(cfg.model, cfg.train, start, shard, SEED + rnd, b, threads=threads)
                d = max(d, replay_distance(start, load(out, rnd, b, like), got))
            worst[f"{rnd}/{L}"] = d
    return worst


def cheats(out: Path, steps: int, L: int) -> dict:
    """Distances of three dishonest segments, on the reference kernels (round 2, the
    segment starting at step L)."""
    import numpy as np

    from node.training.train import train_steps
    from node.training.transcript import TrainState, replay_distance

    cfg = config(steps)
    shard = split_for(cfg, 4).shards[0]
    like = genesis_params(cfg)
    a, b = L, min(2 * L, steps)
    start, end = load(out, 2, a, like), load(out, 2, b, like)
    honest, _, _ = train_steps(cfg.model, cfg.train, start, shard, SEED + 2, b)
    short, _, _ = train_steps(cfg.model, cfg.train, start, shard, SEED + 2, b - 1)
    other, _, _ = train_steps(cfg.model, cfg.train, start, shard, SEED + 99, b)
    # a forged midpoint: the straight line between the snapshots around it
    far = load(out, 2, min(a + 2 * L, steps), like) if a + 2 * L <= steps else end
    mid = TrainState(b, *[{k: ((x[k].astype(np.float64) + y[k]) / 2).astype(np.float32) for k in x}
                          for x, y in ((start.params, far.params), (start.exp_avg, far.exp_avg),
                                       (start.exp_avg_sq, far.exp_avg_sq))])
    return {
        "honest (same kernels)": replay_distance(start, end, honest),
        "one step short": replay_distance(start, end, TrainState(b, short.params, short.exp_avg, short.exp_avg_sq)),
        "another data order": replay_distance(start, end, other),
        "forged midpoint (interpolated)": replay_distance(start, mid, honest),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="5,10,25", help="segment lengths to measure (default 5,10,25)")
    ap.add_argument("--steps", type=int, default=50, help="steps per round (default 50, the job default)")
    ap.add_argument("--tolerance", type=float, default=None, help="tolerance to judge (default: the job policy's)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="precision of the forward and backward passes (default float32)")
    ap.add_argument("--nproc", type=int, default=1,
                    help="train the reference over N data-parallel processes (default 1); verifiers replay on one")
    ap.add_argument("--verifier", nargs=2, metavar=("DIR", "THREADS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global DTYPE
    if args.dtype:
        DTYPE = os.environ["BENCH_DTYPE"] = args.dtype
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.verifier:
        print(json.dumps(replay_all(Path(args.verifier[0]), args.steps, lengths, int(args.verifier[1]))))
        return 0
    from ledger.protocol.jobconfig import Policy

    tol = args.tolerance if args.tolerance is not None else Policy().replay_tolerance
    if args.tolerance is None and DTYPE == "bfloat16":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from ledger_cli.job_cmds import BF16_REPLAY_TOLERANCE

        tol = BF16_REPLAY_TOLERANCE
    every = 5 if all(L % 5 == 0 for L in lengths) else 1
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        say(f"reference: 2 rounds x {args.steps} steps, default kernels, 1 thread, {DTYPE}, "
            f"{args.nproc} process(es)")
        reference(out, args.steps, every, args.nproc)
        results = {}
        variants = ([("default, 1 thread, 1 process", {}, 1)] if args.nproc > 1 else []) + VARIANTS
        for name, env, threads in variants:
            say(f"verifier: {name}")
            e = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
            e.update(env)
            p = subprocess.run([sys.executable, __file__, "--lengths", args.lengths, "--steps", str(args.steps),
                                "--verifier", d, str(threads)], env=e, capture_output=True, text=True, check=True)
            results[name] = json.loads(p.stdout.strip().splitlines()[-1])
        bad = cheats(out, args.steps, min(lengths))
    rows = []
    for L in lengths:
        for name, _, _ in variants:
            r = results[name]
            rows.append([L, name, f"{r[f'1/{L}']:.2e}", f"{r[f'2/{L}']:.2e}"])
    print_table(f"Honest segment replay on other kernel paths ({DTYPE}, the worker on {args.nproc} process(es)): "
                "worst replay_distance "
                "(distance to the published end / the segment's own movement)",
                ["segment steps", "verifier", "round 1 (from genesis)", "round 2"], rows)
    print_table(f"Dishonest segments of {min(lengths)} steps (round 2, reference kernels, {DTYPE})",
                ["segment", "replay_distance"], [[k, f"{v:.3g}"] for k, v in bad.items()])
    honest_max = max(v for r in results.values() for k, v in r.items() if int(k.split("/")[1]) <= 10)
    cheat_min = min(v for k, v in bad.items() if not k.startswith("honest"))
    print(f"tolerance {tol:g}: worst honest (segments <= 10 steps) {honest_max:.2e} "
          f"= tolerance / {tol / honest_max:.0f}; closest cheat {cheat_min:.3g} = tolerance x {cheat_min / tol:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
