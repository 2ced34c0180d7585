"""Shared helpers for the benchmarks under bench/.

- ``print_table``: a titled text table (``ledger.tables``), the one output format of every bench.
- ``RssSampler``: the peak of the summed resident memory of a set of process trees,
  sampled with psutil every ~0.2 s; it also remembers every process it has seen so
  that ``stop_processes`` can stop each of them by PID, orphans included.
- ``PlainFedAvg`` / ``plain_fedavg_round``: the same training as a ledger job
  (``node.training.train.train_local`` on the job's shards, ``node.verification.merge.fedavg``) on a pool
  of worker processes, in memory: no chain, no storage.
- ``LedgerJob``: a whole ledger job on a private local chain (temp data dir, anvil on
  a free port), its workers and aggregators as ``python -m ledger_cli ... run`` processes,
  with per-round wall times observed from the chain and the peak memory of all of
  its processes.

The bench scripts put the repository root on ``sys.path`` themselves, so they run as
``.venv/bin/python bench/<name>.py`` from anywhere.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ledger.tables import text_table  # noqa: E402

VENV_BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- output


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence], file=None) -> None:
    """Print ``rows`` under ``headers`` as an aligned text table between a title and rules.
    Numeric-looking columns are right-aligned, the rest left-aligned; floats get two
    decimals (three significant digits when small), anything else prints as given."""
    out = file or sys.stdout
    lines = text_table(headers, [[_cell(c) for c in r] for r in rows])
    rule = "-" * max(*(len(t) for t in title.splitlines()), *(len(line) for line in lines))
    print("\n".join([title, rule, *lines, rule]), file=out)
    out.flush()


def _cell(c) -> str:
    if c is None:
        return ""
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 1e-2 and c else f"{c:.2f}"
    return str(c)


def mib(n_bytes: float) -> float:
    return n_bytes / (1 << 20)


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def mean(xs: Sequence[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


class RssSampler:
    """Samples, every ``interval`` seconds in a background thread, the summed RSS of
    the root processes, all their descendants, and every process seen before that
    is still alive (so a daemon that detached from its parent is still counted).
    ``peak`` is the largest sum seen, ``peak_procs`` the number of processes in that
    sample. Shared pages (the torch libraries mapped by every python) count once per
    process, as RSS does: both sides of a comparison are measured the same way.

    ``seen`` maps pid -> psutil.Process of everything observed (identity checked by
    psutil through the process creation time), which ``stop_processes`` uses.
    """

    def __init__(self, roots: Iterable[int] = (), interval: float = 0.2, pss_every: int = 0):
        self.interval = interval
        # PSS (smaps_rollup, ~3 ms a process) every n-th sample; 0 = never. Off unless asked:
        # reading it costs the measured processes' cores as much as anything they wait on.
        self.pss_every = pss_every
        self._roots: list[psutil.Process] = []
        self.seen: dict[int, psutil.Process] = {}
        self.peak = 0
        self.peak_procs = 0
        self.peak_pss = 0
        self.samples = 0
        self.by_pid: dict[int, tuple[str, int]] = {}   # pid -> (label, its own peak RSS)
        self.loads: list[float] = []                   # 1-minute load average, one per sample
        self._cpu: dict[int, float] = {}               # pid -> its user+system CPU seconds while sampled
        self._cpu0: dict[int, float] = {}
        self._t0: float | None = None
        self._busy0: float | None = None
        self._elapsed = 0.0
        self._busy = 0.0
        self._me = psutil.Process()                     # this script (its polling, this sampler)
        self._mine0 = self._mine = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for pid in roots:
            self.add_root(pid)

    def add_root(self, pid: int) -> None:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self._roots.append(p)
            self.seen.setdefault(p.pid, p)

    def sample(self) -> int:
        procs: dict[int, psutil.Process] = {}
        with self._lock:
            roots = list(self._roots)
            known = list(self.seen.values())
        for r in roots:
            try:
                if r.is_running():
                    procs[r.pid] = r
                    for c in r.children(recursive=True):
                        procs.setdefault(c.pid, c)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for p in known:
            if p.pid not in procs:
                with contextlib.suppress(psutil.Error):
                    if p.is_running():
                        procs[p.pid] = p
        total, pss, count = 0, 0, 0
        want_pss = self.pss_every and self.samples % self.pss_every == 0
        own: dict[int, tuple[str, int]] = {}
        for p in procs.values():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if want_pss:
                    m = p.memory_full_info()
                    pss += getattr(m, "pss", m.rss)
                else:
                    m = p.memory_info()
                total += m.rss
                count += 1
                own[p.pid] = (_label(p), m.rss)
                ct = p.cpu_times()
                if p.pid not in self._cpu0:
                    # CPU spent before the first sample is outside the measured window
                    self._cpu0[p.pid] = ct.user + ct.system if self.samples == 0 else 0.0
                self._cpu[p.pid] = ct.user + ct.system - self._cpu0[p.pid]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        load = None
        with contextlib.suppress(OSError):
            load = os.getloadavg()[0]
        with self._lock:
            for pid, p in procs.items():
                self.seen.setdefault(pid, p)
            for pid, (label, rss) in own.items():
                old = self.by_pid.get(pid)
                if old is None or rss > old[1]:
                    self.by_pid[pid] = (label, rss)
            if total > self.peak:
                self.peak, self.peak_procs = total, count
            if pss > self.peak_pss:
                self.peak_pss = pss
            if load is not None:
                self.loads.append(load)
            self.samples += 1
        return total

    def by_label(self) -> list[tuple[str, int, int, float]]:
        """(label, number of processes, largest single-process peak RSS, CPU seconds of
        all of them) per kind of process."""
        groups: dict[str, list[int]] = {}
        cpu: dict[str, float] = {}
        with self._lock:
            for pid, (label, rss) in self.by_pid.items():
                groups.setdefault(label, []).append(rss)
                cpu[label] = cpu.get(label, 0.0) + self._cpu.get(pid, 0.0)
        return sorted(((k, len(v), max(v), cpu[k]) for k, v in groups.items()), key=lambda t: -t[2])

    @property
    def mean_load(self) -> float | None:
        return mean(self.loads)

    def _mark(self) -> None:
        now, busy = time.monotonic(), _busy_cpu()
        me = self._me.cpu_times()
        mine = me.user + me.system
        if self._t0 is None:
            self._t0, self._busy0, self._mine0 = now, busy, mine
        self._elapsed, self._busy, self._mine = now - self._t0, busy - self._busy0, mine - self._mine0

    @property
    def own_cpu(self) -> float:
        """CPU seconds used by the sampled processes (as last seen; an exiting process
        loses at most one interval)."""
        return sum(self._cpu.values())

    @property
    def foreign_cores(self) -> float | None:
        """Average number of cores busy with work that is *not* ours while sampling
        (system-wide busy CPU time minus ours, over the elapsed time): other programs
        competing for the machine; this script itself (its polling, the sampler) is
        left out too (``script_cores``)."""
        if not self._elapsed:
            return None
        return max(0.0, (self._busy - self.own_cpu - self._mine) / self._elapsed)

    @property
    def script_cores(self) -> float | None:
        return self._mine / self._elapsed if self._elapsed else None

    def _run(self) -> None:
        self._mark()
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a sampler must never kill the bench
                pass
            self._mark()
            self._stop.wait(self.interval)

    def start(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def processes(self) -> list[psutil.Process]:
        """Every process seen (roots, descendants, orphans), for stopping them."""
        with self._lock:
            found = dict(self.seen)
            roots = list(self._roots)
        for r in roots:
            with contextlib.suppress(psutil.Error):
                for c in r.children(recursive=True):
                    found.setdefault(c.pid, c)
        return list(found.values())


def _busy_cpu() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _label(p: psutil.Process) -> str:
    """A short name for a process: the ledger role, the Flower component, or the program."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    if not cmd:
        return "?"
    words = [Path(c).name for c in cmd[:8]]
    if "ledger" in words and ("worker" in words or "aggregator" in words):
        return "ledger " + ("worker" if "worker" in words else "aggregator")
    for w in words:
        if w.startswith(("flower-", "flwr")) or w in ("anvil", "uv"):
            return w
    for c in cmd[:8]:
        if "spawn_main" in c or "forkserver" in c:
            return "python (multiprocessing)"
    return words[0]


def stop_processes(procs: Iterable[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM each still-running process (by PID, identity checked by psutil), wait
    up to ``timeout``, then SIGKILL what is left. Children first is not needed: every
    process of the tree is in ``procs``."""
    alive = []
    for p in procs:
        if p.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.terminate()
                alive.append(p)
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)


def spawn_logged(cmd: list[str], log_path: Path, env: dict, cwd: Path, sampler: "RssSampler") -> subprocess.Popen:
    """Start one measured process in its own session, output to log_path, under sampler's watch."""
    log = open(log_path, "wb")
    try:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=str(cwd), start_new_session=True)
    finally:
        log.close()
    sampler.add_root(p.pid)
    return p


def reap(popens: Iterable[subprocess.Popen]) -> None:
    """Collect the exit status of our direct children (no zombies left behind)."""
    for p in popens:
        with contextlib.suppress(Exception):
            p.wait(timeout=5)


# --------------------------------------------------------------------------- network


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited with code {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what or 'process'} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def busy_cores(window: float = 2.0) -> float:
    """Cores busy system-wide, averaged over ``window`` seconds."""
    return psutil.cpu_percent(interval=window) / 100.0 * (psutil.cpu_count() or 1)


def wait_for_quiet(max_busy: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) until at most ``max_busy`` cores are busy (over 2 s):
    other work on the machine slows one side of a comparison and not the other.
    Returns the busy cores measured last."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        busy = busy_cores()
        if busy <= max_busy or time.monotonic() >= deadline:
            if told:
                say(f"machine {'quiet' if busy <= max_busy else 'still busy'}: {busy:.2f} cores busy")
            return busy
        if not told:
            say(f"waiting for the machine to quieten ({busy:.2f} cores busy > {max_busy:g}; up to {timeout:.0f}s)")
            told = True
        time.sleep(3)


NOISY_CORES = 0.15


def noise_warning(sides: dict) -> str | None:
    """A warning line when other programs used more than NOISY_CORES cores on average
    during a side's measurement: on a 2-core machine that skews wall times by far more
    than the differences being measured."""
    bad = {k: v for k, v in sides.items() if v is not None and v > NOISY_CORES}
    if not bad:
        return None
    what = ", ".join(f"{k} {v:.2f}" for k, v in bad.items())
    return (f"WARNING: other programs kept {what} cores busy during the measurement (> {NOISY_CORES}); "
            f"the wall-time ratios are unreliable: re-run on an idle machine (CPU s/round is less affected).")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- job config


def bench_config(steps: int = 50, replay_segments: int | None = None):
    """The job config every bench trains: the project's default model, training and
    verification policy (``ledger.protocol.jobconfig`` defaults: 4 layers, 128 wide, batch 32,
    1 torch thread, one replayed transcript segment per contribution), with ``steps``
    local steps a round."""
    from ledger.protocol.jobconfig import JobConfig

    cfg = JobConfig(name="bench")
    cfg.train.steps = int(steps)
    if replay_segments is not None:
        cfg.policy.replay_segments = int(replay_segments)
    return cfg


def split_for(cfg, num_workers: int):
    """The shards and validation split a ledger job with ``num_workers`` workers
    cuts (``node.roles.owner.prepare_config`` without throughputs: equal IID shards)."""
    from node.training import data as datamod

    corpus = datamod.load_corpus(expected_sha256=cfg.data.corpus_sha256)
    return datamod.make_split(corpus, num_workers, mode=cfg.data.split, val_fraction=cfg.data.val_fraction)


def genesis_params(cfg):
    from node.models.bytegpt import GPTConfig, init_params

    return init_params(GPTConfig.from_spec(cfg.model), cfg.seed)


def val_loss(cfg, params, validation: bytes) -> float:
    """The validation loss every bench reports for a final model: the policy's batches,
    a fixed seed (0), the job's thread count."""
    from node.training.train import evaluate

    p = cfg.policy
    return evaluate(cfg.model, params, validation, p.val_batches, p.val_batch_size, seed=0, threads=cfg.train.threads)


# --------------------------------------------------------------------------- plain FedAvg

_W: dict = {}


def _plain_init(cfg_bytes: bytes, num_workers: int) -> None:
    import torch

    from ledger.protocol.jobconfig import JobConfig

    torch.set_num_threads(1)
    cfg = JobConfig.from_bytes(cfg_bytes)
    _W["cfg"] = cfg
    _W["shards"] = split_for(cfg, num_workers).shards


def _plain_train(task):
    i, r, params = task
    from node.training.train import derive_seed, train_local

    cfg = _W["cfg"]
    name = f"plain-worker-{i:02d}"
    seed = derive_seed(cfg.seed, 0, r, name)
    res = train_local(cfg.model, cfg.train, params, _W["shards"][i], seed)
    return name, int(res.metrics["samples"]), res.params, float(res.metrics["loss_end"])


class PlainFedAvg:
    """A pool of ``processes`` worker processes (``spawn``: fresh interpreters, one
    torch thread each), each holding the job's shards; ``round`` trains every worker
    on its shard from ``params`` and merges with ``node.verification.merge.fedavg``. Nothing is
    written anywhere: this is the floor the ledger's overhead is measured against."""

    def __init__(self, cfg, num_workers: int, processes: int | None = None, start_method: str = "spawn"):
        self.cfg = cfg
        self.num_workers = int(num_workers)
        self.coordinator_cpu = 0.0
        ctx = mp.get_context(start_method)
        self.pool = ctx.Pool(processes or self.num_workers, initializer=_plain_init,
                             initargs=(cfg.to_bytes(), self.num_workers))

    def pids(self) -> list[int]:
        return [p.pid for p in getattr(self.pool, "_pool", [])]

    def warm(self) -> None:
        """Wait until every pool process has run its initializer (imports, shards)."""
        self.pool.map(_noop, range(len(self.pids()) or self.num_workers), chunksize=1)

    def round(self, params, r: int):
        """One round from ``params``; returns (merged params, seconds, mean final loss).
        ``coordinator_cpu`` accumulates the CPU time this (calling) thread spends on it:
        sending the parameters, receiving the results, merging."""
        t = time.thread_time()
        try:
            return plain_fedavg_round(self.pool, params, r, self.num_workers, self.cfg)
        finally:
            self.coordinator_cpu += time.thread_time() - t

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _noop(_):
    time.sleep(0.05)
    return os.getpid()


def plain_fedavg_round(pool, params, r: int, num_workers: int, cfg=None):
    """One plain in-memory FedAvg round on ``pool`` (see ``PlainFedAvg``): every
    worker trains ``node.training.train.train_local`` on its shard, the parent process merges
    with ``node.verification.merge.fedavg`` (sample-weighted). Returns (merged params, seconds,
    mean last-batch training loss)."""
    from node.verification.merge import fedavg

    t0 = time.perf_counter()
    out = pool.map(_plain_train, [(i, r, params) for i in range(num_workers)], chunksize=1)
    merged = fedavg(params, [(w, n, p) for w, n, p, _ in out], cfg.policy if cfg is not None else None)
    return merged.params, time.perf_counter() - t0, mean([loss for *_, loss in out])


# --------------------------------------------------------------------------- a ledger job


@dataclass(kw_only=True)
class Footprint:
    """What an RssSampler saw of one side of a comparison (kw_only: subclasses keep
    their own positional fields)."""

    peak_rss: int = 0
    peak_procs: int = 0
    peak_pss: int = 0
    mean_load: float | None = None
    foreign_cores: float | None = None
    cpu_seconds: float = 0.0
    memory_by_label: list = field(default_factory=list)

    def record(self, sampler: "RssSampler") -> None:
        self.peak_rss, self.peak_procs, self.peak_pss = sampler.peak, sampler.peak_procs, sampler.peak_pss
        self.mean_load, self.memory_by_label = sampler.mean_load, sampler.by_label()
        self.foreign_cores, self.cpu_seconds = sampler.foreign_cores, sampler.own_cpu


def add_comparison_args(ap) -> None:
    """The arguments the ledger-vs-something benches share."""
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--steps", type=int, default=50, help="local steps per round (default 50, the job default)")
    ap.add_argument("--aggregators", type=int, default=3, help="ledger aggregators (default 3)")
    ap.add_argument("--quorum", type=int, default=2, help="ledger quorum (default 2)")
    ap.add_argument("--poll", type=float, default=1.0,
                    help="ledger roles' chain poll interval in seconds (default 1, the CLI default; shorter polls "
                         "cost CPU the training then lacks)")
    ap.add_argument("--quiet-cores", type=float, default=0.3, metavar="C",
                    help="before each side, wait until at most C cores are busy with other work (default 0.3) ...")
    ap.add_argument("--quiet-wait", type=float, default=120.0, metavar="S",
                    help="... for at most S seconds (default 120; 0 = do not wait)")


@dataclass
class RoundTiming:
    round: int
    opened: float          # time.monotonic() when the round was seen open (round 1: the parties' spawn)
    finalized: float       # time.monotonic() when it was seen finalized
    status: str = ""
    accepted: int = 0
    proposals: int = 0
    block_seconds: int | None = None   # RoundOpened -> RoundFinalized by block timestamps (1 s resolution)

    @property
    def seconds(self) -> float:
        return self.finalized - self.opened


@dataclass
class LedgerJob(Footprint):
    """One ledger job run end to end on a private chain, for measuring.

    ``aggregator_args`` are extra arguments of ``ledger aggregator run`` (e.g.
    ``--skip-stage validation``); ``poll`` is both roles' chain polling interval.
    """

    cfg: object
    workers: int = 4
    aggregators: int = 3
    quorum: int = 2
    rounds: int = 3
    round_duration: int = 900
    poll: float = 1.0                  # the roles' --poll (the CLI default)
    watch_every: float = 0.5           # this script's own chain polling
    aggregator_args: list[str] = field(default_factory=list)
    timeout: float = 1200.0
    keep_dir: bool = False
    pss_every: int = 0                 # the sampler's PSS readings (RssSampler)
    # called as after(job, ledger, store) once the job completed, before the chain stops
    after: Callable | None = None
    # Bring-your-own-data: one text per worker (committed with ledger.protocol.datacommit, each
    # worker run with --data on its own file) and the owner's validation text; every
    # party's public key goes into the job (the drawn windows are sealed to their readers)
    worker_texts: list[bytes] | None = None
    validation_text: bytes | None = None
    proposal_window: int | None = None

    # filled in by run()
    data_dir: Path | None = None
    job_id: int | None = None
    timings: list[RoundTiming] = field(default_factory=list)
    final_digest: bytes | None = None
    final_params: dict | None = None
    total_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    parties: list = field(default_factory=list)      # (role, LocalAccount), workers first

    def run(self, on_round: Callable[[RoundTiming], None] | None = None) -> "LedgerJob":
        from eth_account import Account

        from ledger.services import anvil
        from ledger.ethereum import keys
        from ledger.config import Settings
        from ledger.ethereum.deploy import deploy, open_ledger
        from ledger.store import open_store
        from node.roles.owner import create_job

        tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
        self.data_dir = tmp
        settings = Settings(data_dir=tmp, chain_port=0, state_interval=30)
        sampler = RssSampler(pss_every=self.pss_every)
        popens: list[subprocess.Popen] = []
        chain_started, anvil_pid = False, None
        try:
            up = anvil.chain_up(settings, port=0)
            chain_started, anvil_pid = up.started, up.info.pid
            sampler.add_root(anvil_pid)
            rpc = up.info.url
            settings = settings.replace(rpc_url=rpc)
            deployer = Account.from_key(keys.ANVIL_DEV_KEY_0)
            deploy(settings, deployer, notify=lambda m: None)
            ledger = open_ledger(settings, deployer)
            store = open_store(settings, self.cfg.cid_version)

            parties = [("worker", Account.create()) for _ in range(self.workers)]
            parties += [("aggregator", Account.create()) for _ in range(self.aggregators)]
            for _, acct in parties:
                keys.fund_local(ledger.chain, acct.address, 100 * 10**18)
            logs = tmp / "logs"
            logs.mkdir()
            self.parties = parties
            job = create_job(
                ledger, store, self.cfg,
                workers=[a.address for role, a in parties if role == "worker"],
                aggregators=[a.address for role, a in parties if role == "aggregator"],
                quorum=self.quorum, rounds=self.rounds, round_duration=self.round_duration, min_submissions=1,
                **self._private_data(parties, tmp),
            )
            self.job_id = job.job_id
            base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
            base.update(LEDGER_DATA_DIR=str(tmp), LEDGER_RPC_URL=rpc, PYTHONUNBUFFERED="1",
                        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            sampler.start()
            t_spawn = time.monotonic()
            for n, (role, acct) in enumerate(parties):
                cmd = [sys.executable, "-m", "ledger_cli", role, "run", "--job", str(job.job_id), "--poll", str(self.poll)]
                if role == "worker":
                    cmd.append("--no-progress")
                    if self.worker_texts is not None:
                        cmd += ["--data", str(tmp / f"worker-{n}.txt")]
                else:
                    cmd += list(self.aggregator_args)
                env = dict(base, LEDGER_PRIVATE_KEY=acct.key.to_0x_hex())
                popens.append(spawn_logged(cmd, logs / f"{role}-{n}.log", env, tmp, sampler))
            self._watch(ledger, t_spawn, popens, logs, on_round)
            self.total_seconds = time.monotonic() - t_spawn
            sampler.stop()      # the measurement ends with the job
            self._block_times(ledger)
            info = ledger.job(job.job_id)
            self.final_digest = info.current_parent
            self.final_params = self._final_params(ledger, store)
            if self.after is not None:
                self.after(self, ledger, store)
        finally:
            sampler.stop()
            self.record(sampler)
            # the parties first (by PID), then the chain the way `ledger chain down` does
            # it, then anything of the tree that is somehow still there
            stop_processes([p for p in sampler.processes() if p.pid != anvil_pid])
            reap(popens)
            if chain_started:
                with contextlib.suppress(Exception):
                    anvil.chain_down(settings)
            stop_processes(sampler.processes())
            if not self.keep_dir and sys.exc_info()[0] is None:
                shutil.rmtree(tmp, ignore_errors=True)
        return self

    def _private_data(self, parties, tmp: Path) -> dict:
        """create_job's arguments for a bring-your-own-data job (its texts written under ``tmp``)."""
        from ledger.protocol import datacommit
        from ledger.privacy.sealing import public_key_of

        kw = {} if self.proposal_window is None else {"proposal_window": self.proposal_window}
        if self.worker_texts is None:
            return kw
        if len(self.worker_texts) != self.workers or self.validation_text is None:
            raise ValueError(f"a private-data job needs one text per worker ({self.workers}) and a validation text")
        roots = []
        for n, text in enumerate(self.worker_texts):
            (tmp / f"worker-{n}.txt").write_bytes(text)
            c = datacommit.commit(text)
            roots.append((c.root, c.length))
        return dict(kw, data_roots=roots, validation=self.validation_text,
                    keys={a.address: public_key_of(a) for _, a in parties})

    def _watch(self, ledger, t_spawn: float, popens, logs: Path, on_round) -> None:
        job_id = self.job_id
        opened = {1: t_spawn}
        done: set[int] = set()
        failed: set[int] = set()
        deadline = t_spawn + self.timeout
        while True:
            info = ledger.job(job_id)
            now = time.monotonic()
            top = min(info.current_round, info.num_rounds)
            for r in range(1, top + 1):
                if r in done:
                    continue
                rd = ledger.round(job_id, r)
                if rd.is_done:
                    t = RoundTiming(r, opened.get(r, now), now, rd.status, rd.accepted, rd.proposals)
                    self.timings.append(t)
                    done.add(r)
                    opened.setdefault(r + 1, now)
                    if on_round:
                        on_round(t)
            if info.completed and len(done) >= info.num_rounds:
                return
            self._check_parties(popens, logs, failed)
            if now > deadline:
                raise TimeoutError(f"ledger job {job_id} did not complete within {self.timeout:.0f}s")
            time.sleep(self.watch_every)

    def _check_parties(self, popens, logs: Path, failed: set[int]) -> None:
        """A party that dies is noted (with its last log line); the job is k-of-n, so
        the run goes on while it still can: every worker and a quorum of aggregators."""
        for i, p in enumerate(popens):
            if i in failed or p.poll() in (None, 0):
                continue
            failed.add(i)
            role = "worker" if i < self.workers else "aggregator"
            log = logs / f"{role}-{i}.log"
            last = tail(log, 1).strip()
            self.notes.append(f"{role}-{i} exited with code {p.returncode} ({log.name}): {last}")
            say(f"ledger: {role}-{i} exited with code {p.returncode}: {last}")
            self.keep_dir = True
        dead_workers = sum(1 for i in failed if i < self.workers)
        alive_aggs = self.aggregators - sum(1 for i in failed if i >= self.workers)
        if dead_workers or alive_aggs < self.quorum:
            raise RuntimeError(f"the job cannot complete: {dead_workers} worker(s) died, {alive_aggs} aggregator(s) "
                               f"left for a quorum of {self.quorum}; logs in {logs} (kept)")

    def _block_times(self, ledger) -> None:
        """RoundOpened -> RoundFinalized by block timestamps, as a cross-check."""
        try:
            events = ledger.events(self.job_id)
        except Exception as e:  # noqa: BLE001 - the cross-check is optional
            self.notes.append(f"events unavailable: {type(e).__name__}: {e}")
            return
        opened, closed = {}, {}
        for ev in events:
            r = ev.args.get("round")
            ts = ev.timestamp or ledger.chain.block_timestamp(ev.block)
            if ev.name == "RoundOpened":
                opened[r] = ts
            elif ev.name in ("RoundFinalized", "RoundSkipped"):
                closed[r] = ts
        for t in self.timings:
            if t.round in opened and t.round in closed:
                t.block_seconds = int(closed[t.round] - opened[t.round])

    def _final_params(self, ledger, store):
        from node.context import JobContext

        try:
            ctx = JobContext.load(ledger, store, self.job_id)
            loc = ctx.locate_model(ctx.info.current_parent, before_round=ctx.info.num_rounds + 1)
            params, _ = ctx.load_checkpoint(loc)
            return params
        except Exception as e:  # noqa: BLE001 - only used for a quality column
            self.notes.append(f"final model not loaded: {type(e).__name__}: {e}")
            return None


def round_seconds(timings: Sequence[RoundTiming]) -> list[float]:
    return [t.seconds for t in sorted(timings, key=lambda t: t.round)]
