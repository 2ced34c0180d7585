"""Flower 1.41 (its real deployment runtime, on loopback) vs the ledger, same training.

    .venv/bin/python bench/flower_peer.py [--clients 4 --rounds 3 --steps 50]

1. Flower: ``flower-superlink --insecure --disable-runtime-dependency-installation``
   on a free 127.0.0.1 port, one ``flower-supernode`` per client (own ``--port``,
   ``--node-config "partition-id=i num-partitions=N"``), then ``flwr run
   bench/flower_app <connection> --stream`` (FLWR_HOME and HOME in a temp dir,
   telemetry and update checks off, the connection in $FLWR_HOME/config.toml).
   The app (bench/flower_app) trains the ledger's model with ``node.training.train.train_local``
   on shard i of ``node.training.data.make_split``; the server runs Flower's FedAvg and
   timestamps every round.
2. The ledger: a private anvil chain (temp data dir, free port), the contract
   deployed, a job created with the same model, data and steps, N workers and 3
   aggregators with quorum 2 and full verification (format, integrity, structure,
   finite values, update norm, validation loss; replay at the job default
   fraction), each party a ``python -m ledger_cli worker|aggregator run`` process.
   Round times are observed on chain (RoundOpened -> RoundFinalized).

For both: wall time per round and the peak of the summed RSS of every process of
the system (sampled every 0.2 s). Targets: ledger time per round <= 0.75x Flower's,
peak memory <= 0.5x. Every process started here is stopped by PID on the way out.

Without flwr installed it says how to install it (``.venv/bin/pip install
flwr==1.41.0``) and exits 0 after running the ledger side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    Footprint,
    VENV_BIN,
    LedgerJob,
    RssSampler,
    add_comparison_args,
    bench_config,
    fmt_ratio,
    free_port,
    genesis_params,
    mean,
    mib,
    noise_warning,
    print_table,
    reap,
    round_seconds,
    say,
    spawn_logged,
    split_for,
    stop_processes,
    tail,
    val_loss,
    wait_for_quiet,
    wait_port,
)

APP_DIR = Path(__file__).resolve().parent / "flower_app"
FLWR_VERSION = "1.41.0"
TIME_TARGET = 0.75
MEM_TARGET = 0.5
PSS_EVERY = 5       # PSS beside RSS, every 5th sample (1 s), on both sides alike


def flower_available() -> str | None:
    """The installed flwr version, or None."""
    try:
        import flwr  # noqa: F401
        from importlib.metadata import version

        return version("flwr")
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None


@dataclass
class FlowerRun(Footprint):
    clients: int
    rounds: int
    steps: int
    round_times: list[float] = field(default_factory=list)
    total_seconds: float = 0.0
    final_params: dict | None = None
    processes_seen: int = 0


def _flower_bin(name: str) -> str:
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH; "
                           f"install Flower with `.venv/bin/pip install flwr=={FLWR_VERSION}`")
    return found


def run_flower(cfg, clients: int, rounds: int, keep: bool = False, timeout: float = 1800.0) -> FlowerRun:
    import numpy as np

    out = FlowerRun(clients, rounds, cfg.train.steps)
    tmp = Path(tempfile.mkdtemp(prefix="bench-flower-"))
    flwr_home, home, logs = tmp / "flwr-home", tmp / "home", tmp / "logs"
    for d in (flwr_home, home, logs):
        d.mkdir()
    app = tmp / "app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".flwr"))
    genesis_file, timing_file, final_file = tmp / "genesis.npz", tmp / "timing.jsonl", tmp / "final.npz"
    np.savez(genesis_file, **genesis_params(cfg))

    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home), HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
    )
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n'
        f'[superlink.bench]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )

    sampler = RssSampler(pss_every=PSS_EVERY)
    popens: list[subprocess.Popen] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen:
        p = spawn_logged(cmd, logs / f"{name}.log", env, tmp, sampler)
        popens.append(p)
        return p

    try:
        sampler.start()
        t_start = time.monotonic()
        link = start([_flower_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                      "--host", "127.0.0.1", "--port", str(link_port)], "superlink")
        wait_port(link_port, 60, link, "flower-superlink")
        nodes = []
        for i in range(clients):
            port = free_port()
            nodes.append(start([_flower_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                                "--host", "127.0.0.1", "--port", str(port),
                                "--node-config", f"partition-id={i} num-partitions={clients}"], f"supernode-{i}"))
        run_config = (f"num-server-rounds={rounds} num-clients={clients} steps={cfg.train.steps} "
                      f"genesis-file='{genesis_file}' timing-file='{timing_file}' final-file='{final_file}'")
        runner = start([_flwr_cli(), "run", str(app), "bench", "--stream", "--run-config", run_config], "flwr-run")
        say(f"flower: superlink on 127.0.0.1:{link_port}, {clients} supernodes, run submitted (logs in {logs})")
        deadline = time.monotonic() + timeout
        seen_rounds = 0
        while True:
            stamps = _stamps(timing_file)
            if len(stamps) - 1 > seen_rounds:
                for r in range(seen_rounds + 1, len(stamps)):
                    say(f"flower: round {r} done in {stamps[r] - stamps[r - 1]:.1f}s")
                seen_rounds = len(stamps) - 1
            if seen_rounds >= rounds and final_file.exists():
                break
            if runner.poll() is not None and seen_rounds < rounds:
                raise RuntimeError(f"`flwr run` exited with code {runner.returncode} after {seen_rounds} round(s):\n"
                                   f"{tail(logs / 'flwr-run.log', 30)}\n--- superlink log:\n{tail(logs / 'superlink.log', 20)}")
            for i, p in enumerate(nodes + [link]):
                if p.poll() is not None:
                    raise RuntimeError(f"a Flower daemon exited with code {p.returncode}; logs in {logs}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Flower run did not finish {rounds} rounds within {timeout:.0f}s; logs in {logs}")
            time.sleep(0.2)
        out.total_seconds = time.monotonic() - t_start
        stamps = _stamps(timing_file)
        out.round_times = [stamps[r] - stamps[r - 1] for r in range(1, rounds + 1)]
        with np.load(final_file) as z:
            out.final_params = {k: np.ascontiguousarray(z[k]) for k in z.files}
        # let `flwr run` see the run end, as a user would
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        sampler.stop()
        out.record(sampler)
        procs = sampler.processes()
        out.processes_seen = len(procs)
        stop_processes(procs)
        reap(popens)
        if keep or sys.exc_info()[0] is not None:
            say(f"flower: files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _flwr_cli() -> str:
    return _flower_bin("flwr")


def _stamps(path: Path) -> list[float]:
    """Timestamps by round (index 0 = before round 1), from the server's timing file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    by_round = {}
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        by_round[int(d["round"])] = float(d["t"])
    out = []
    for r in range(len(by_round)):
        if r not in by_round:
            break
        out.append(by_round[r])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4, help="Flower clients = ledger workers (default 4)")
    add_comparison_args(ap)
    ap.add_argument("--replay-segments", type=int, default=None,
                    help="transcript segments each aggregator replays per contribution (default: the job policy's)")
    ap.add_argument("--skip-ledger", action="store_true", help="run the Flower side only")
    ap.add_argument("--skip-flower", action="store_true", help="run the ledger side only")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs) for inspection")
    args = ap.parse_args(argv)

    cfg = bench_config(args.steps, args.replay_segments)
    version = flower_available()
    if version is None:
        print(f"flwr is not installed in this Python ({sys.executable}): the Flower columns are skipped. "
              f"Install it with `.venv/bin/pip install flwr=={FLWR_VERSION}` (or run `make bench`, which does).")
    elif version != FLWR_VERSION:
        print(f"note: flwr {version} is installed; this bench was written for {FLWR_VERSION}")

    flower = None
    if version is not None and not args.skip_flower:
        if args.quiet_wait > 0:
            wait_for_quiet(args.quiet_cores, args.quiet_wait)
        say(f"flower {version}: {args.clients} clients x {args.steps} steps x {args.rounds} rounds")
        flower = run_flower(cfg, args.clients, args.rounds, keep=args.keep)

    ledger = None
    if not args.skip_ledger:
        if args.quiet_wait > 0:
            wait_for_quiet(args.quiet_cores, args.quiet_wait)
        say(f"ledger: {args.clients} workers, {args.aggregators} aggregators (quorum {args.quorum}), "
            f"full verification, {cfg.policy.replay_segments} replayed segment(s) a contribution")
        job = LedgerJob(bench_config(args.steps, args.replay_segments), workers=args.clients, pss_every=PSS_EVERY,
                        aggregators=args.aggregators, quorum=args.quorum, rounds=args.rounds, poll=args.poll,
                        keep_dir=args.keep)
        ledger = job.run(on_round=lambda t: say(f"ledger: round {t.round} {t.status} in {t.seconds:.1f}s "
                                                f"({t.accepted} accepted, {t.proposals} proposals)"))
        if args.keep:
            say(f"ledger: files kept in {job.data_dir}")

    report(args, cfg, version, flower, ledger)
    return 0


def _steady(times) -> str:
    """Mean of rounds 2.. (round 1 of the ledger includes starting its role processes)."""
    return f"{mean(times[1:]):.1f}" if times and len(times) > 1 else "n/a"


def report(args, cfg, version, flower, ledger) -> None:
    validation = split_for(cfg, args.clients).validation
    n = args.rounds
    f_times = flower.round_times if flower else None
    l_times = round_seconds(ledger.timings) if ledger else None

    def row(name, times, side):
        params = side.final_params
        loss = f"{val_loss(cfg, params, validation):.4f}" if params is not None else "n/a"
        per = [f"{t:.1f}" for t in times] if times else ["n/a"] * n
        return [name, *per, f"{mean(times):.1f}" if times else "n/a", _steady(times),
                f"{side.cpu_seconds / n:.0f}", f"{mib(side.peak_rss):.0f}", side.peak_procs, f"{mib(side.peak_pss):.0f}",
                f"{side.foreign_cores:.2f}" if side.foreign_cores is not None else "n/a", loss]

    rows = []
    if flower:
        rows.append(row(f"Flower {version} (superlink + {args.clients} supernodes)", f_times, flower))
    if ledger:
        rows.append(row(f"ledger ({args.clients} workers + {args.aggregators} aggregators, quorum {args.quorum}, anvil)",
                        l_times, ledger))
    if flower and ledger:
        ratios = [fmt_ratio(a, b) for a, b in zip(l_times, f_times)]
        rows.append(["ratio ledger / Flower", *ratios, fmt_ratio(mean(l_times), mean(f_times)),
                     fmt_ratio(mean(l_times[1:]), mean(f_times[1:])), fmt_ratio(ledger.cpu_seconds, flower.cpu_seconds),
                     fmt_ratio(ledger.peak_rss, flower.peak_rss), "", fmt_ratio(ledger.peak_pss, flower.peak_pss), "", ""])
        rows.append(["target", *[""] * n, "", f"<= {TIME_TARGET}x", "", f"<= {MEM_TARGET}x", "", "", "", ""])
    headers = ["system", *[f"round {r} s" for r in range(1, n + 1)], "mean s/round", "rounds 2+ s/round", "CPU s/round", "peak RSS MiB",
               "procs", "peak PSS MiB", "other CPU", "final val loss"]
    n_params = sum(v.size for v in genesis_params(cfg).values())
    title = (f"Flower vs ledger, same training: byte GPT {n_params / 1e6:.2f}M params, {args.clients} clients x "
             f"{args.steps} steps x batch {cfg.train.batch_size}, {n} rounds, 1 torch thread each, {os.cpu_count()} cores"
             + (f" [steps reduced from the job default 50]" if args.steps < 50 else ""))
    print()
    print_table(title, headers, rows)
    if flower and ledger:
        lt, ft = (mean(l_times[1:]), mean(f_times[1:])) if n > 1 else (mean(l_times), mean(f_times))
        t_ok = lt <= TIME_TARGET * ft
        m_ok = ledger.peak_rss <= MEM_TARGET * flower.peak_rss
        print(f"time per round ({'rounds 2+' if n > 1 else 'all rounds'}): {'meets' if t_ok else 'MISSES'} the target "
              f"(<= {TIME_TARGET}x Flower); peak memory: {'meets' if m_ok else 'MISSES'} the target "
              f"(<= {MEM_TARGET}x Flower). The time target is judged on rounds 2+: the ledger's round 1 includes "
              f"starting every role process, Flower's does not include starting its daemons.")
    warn = noise_warning({"Flower": flower.foreign_cores if flower else None,
                          "ledger": ledger.foreign_cores if ledger else None})
    if warn:
        print(warn)
    print("round times: Flower from its server's per-round timestamps; the ledger from the chain as polled "
          "every 0.5 s (round 1 from the spawn of the role processes, round r>1 from round r-1's RoundFinalized).")
    if ledger:
        bs = [t.block_seconds for t in sorted(ledger.timings, key=lambda t: t.round)]
        print(f"ledger rounds by block timestamps (RoundOpened -> RoundFinalized, 1 s resolution): {bs}; "
              f"verification: integrity, format, lineage, structure, finite, duplicate, update norm, validation loss, "
              f"{cfg.policy.replay_segments} replayed segment(s) a contribution")
        for note in ledger.notes:
            print(f"note: {note}")
    print("RSS: summed resident set of every process of the system, sampled every 0.2 s (shared library pages "
          "count once per process); PSS (shared pages split between processes) every 1 s; "
          "other CPU: cores busy on average with other programs (outside the measured processes and this "
          "script); well above 0 means the numbers were taken on a busy machine, and then CPU s/round (all "
          "CPU time of the system's processes, start-up included, per round) is the steadier comparison.")
    mem_rows = []
    for name, side in (("Flower", flower), ("ledger", ledger)):
        if side is None:
            continue
        for label, count, peak, cpu in side.memory_by_label:
            mem_rows.append([name, label, count, f"{mib(peak):.0f}", f"{cpu:.0f}"])
    if mem_rows:
        print()
        print_table("By kind of process, over the whole run: how many, the largest single peak RSS, CPU time of all",
                    ["system", "process", "count", "max peak RSS MiB", "CPU s"], mem_rows)


if __name__ == "__main__":
    sys.exit(main())
