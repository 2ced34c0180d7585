"""Storage throughput beside the machine's physical limits, measured in the same run.

    .venv/bin/python bench/storage.py [--size-mb 1024] [--repeat 3] [--dir DIR] [--no-ipfs]

Writes SIZE MiB of random bytes, then measures on those same bytes:
  limits   sha256 on one core (hashlib, in memory); sequential write + fsync of a
           new file in 8 MiB writes (what `dd bs=8M conv=fsync` does)
  embedded put (sha256 + CID + durable pack), get (verified bytes), get_to_file,
           verify
  ipfs     put / get through the local Helia node (ipfs-node/) and ipfshttpclient,
           when the node is installed
Each is repeated --repeat times, interleaved with the limits, and the best run is
reported (other processes on a shared machine only ever slow a run down). Targets:
put >= 0.8 x min(sha256, write+fsync); get >= 0.8 x sha256.

Then get() by object size (1 to 64 MiB) through its two read paths, which shows
where the store's switch to the pipelined read belongs; and peak RSS (VmHWM of a fresh subprocess doing one operation) for a 100 MiB
and a SIZE MiB input: streaming operations must not grow with the input. get()
returns the whole object as bytes, so it is shown for reference (it must be about
the size of the object, not a multiple of it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger.store import embedded  # noqa: E402
from ledger.store.embedded import EmbeddedStore  # noqa: E402
from ledger.tables import text_table  # noqa: E402

MiB = 1 << 20


def make_input(path: Path, size: int) -> None:
    import numpy as np

    rng = np.random.default_rng(2024)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.bytes(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


CPU: dict[str, list[tuple[float, float]]] = {}


def timed(fn, name: str | None = None) -> float:
    """Wall seconds of fn(). Its CPU seconds, (all threads, the calling thread alone), user +
    system, go to CPU[name]."""
    c = os.times()
    m = time.thread_time()
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    main = time.thread_time() - m
    c2 = os.times()
    if name:
        CPU.setdefault(name, []).append(((c2.user - c.user) + (c2.system - c.system), main))
    return wall


def sha256_one_core(data: bytes) -> float:
    return timed(lambda: hashlib.sha256(data).digest(), "sha256, one core")


def write_fsync(data: bytes, dest: Path) -> float:
    mv = memoryview(data)

    def run():
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for off in range(0, len(mv), 8 * MiB):
                os.write(fd, mv[off:off + 8 * MiB])
            os.fsync(fd)
        finally:
            os.close(fd)

    t = timed(run, "write + fsync")
    dest.unlink()
    return t


def get_by_size(root: Path, repeat: int) -> list[list[str]]:
    """Best GB/s of get() through each read path, for objects from below the default
    checkpoint's size (3.4 MB) to well above the switch-over: where the pipelined read
    pays, and where its thread costs more than it saves."""
    import numpy as np

    store, rows, switch = EmbeddedStore(root), [], embedded.PIPELINE_MIN
    try:
        for mib in (1, 4, 8, 16, 64):
            data = np.random.default_rng(mib).bytes(mib * MiB)
            obj = store.put(data)
            n = max(3, 256 // mib)  # ~256 MiB a timing, so small objects are not timer noise
            best = {}
            for name, threshold in (("plain", 1 << 62), ("pipelined", 0), ("sha256", None)):
                embedded.PIPELINE_MIN = threshold if threshold is not None else switch
                one = (lambda: hashlib.sha256(data).digest()) if threshold is None else (
                    lambda: store.get(obj.cid, obj.digest))
                secs = min(timed(lambda: [one() for _ in range(n)]) for _ in range(repeat))
                best[name] = n * len(data) / secs / 1e9
            faster = "pipelined" if best["pipelined"] > best["plain"] else "plain"
            rows.append([f"{mib} MiB", f"{best['plain']:.2f}", f"{best['pipelined']:.2f}", f"{best['sha256']:.2f}",
                         faster])
    finally:
        embedded.PIPELINE_MIN = switch
    return rows


# ---------------------------------------------------------------------- RSS children


def rss_child(args) -> None:
    """One operation in a fresh process; prints peak RSS in MiB."""
    if args.backend == "embedded":
        store = EmbeddedStore(args.store)
    else:
        from ledger.store.ipfs import IpfsStore

        store = IpfsStore(args.api, timeout=60)
    if args.op == "put":
        store.put(Path(args.file))
    elif args.op == "get_to_file":
        store.get_to_file(args.cid, bytes.fromhex(args.digest), Path(args.out))
    elif args.op == "get":
        data = store.get(args.cid, bytes.fromhex(args.digest))
        assert len(data) > 0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent.
    peak = float("nan")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    print(json.dumps({"peak_rss_mib": peak}))


def measure_rss(backend: str, op: str, **kw) -> float:
    cmd = [sys.executable, __file__, "--rss-child", "--backend", backend, "--op", op]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


# ---------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    ap.add_argument("--rss-small-mb", type=int, default=100, help="the small input for the RSS comparison")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept")
    ap.add_argument("--dir", help="work directory (default: a temporary one under ./.ledger, on the data dir's disk)")
    ap.add_argument("--no-ipfs", action="store_true", help="skip the IPFS backend")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    for a in ("backend", "op", "file", "store", "api", "cid", "digest", "out"):
        ap.add_argument(f"--{a}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args)
        return 0

    size = args.size_mb * MiB
    base = Path(args.dir) if args.dir else ROOT / ".ledger"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=base))
    node = None
    try:
        src = work / "input.bin"
        print(f"storage bench: {args.size_mb} MiB of random bytes in {work}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; "
              f"best of {args.repeat} interleaved runs")
        make_input(src, size)
        data = src.read_bytes()

        results: dict[str, list[float]] = {}

        def rec(name: str, seconds: float) -> None:
            results.setdefault(name, []).append(size / seconds / 1e9)

        store = EmbeddedStore(work / "store")
        obj = store.put(src)
        ipfs = None
        if not args.no_ipfs:
            ipfs, node = start_ipfs(work)
        for _ in range(args.repeat):
            rec("sha256, one core", sha256_one_core(data))
            rec("write + fsync", write_fsync(data, work / "dd.bin"))
            # A put of new content, as in use: into an empty store each time (putting an object
            # the store already holds also pays for freeing the old copy's blocks).
            fresh = EmbeddedStore(work / "put-store")
            rec("embedded put", timed(lambda: fresh.put(src), "embedded put"))
            shutil.rmtree(work / "put-store")
            got = [None]
            rec("embedded get", timed(lambda: got.__setitem__(0, store.get(obj.cid, obj.digest)), "embedded get"))
            assert got[0] == data
            got[0] = None
            rec("embedded get_to_file",
                timed(lambda: store.get_to_file(obj.cid, obj.digest, work / "out.bin"), "embedded get_to_file"))
            (work / "out.bin").unlink()
            rec("embedded verify", timed(lambda: store.verify(obj.cid, obj.digest), "embedded verify"))
            if ipfs is not None:
                rec("ipfs put", timed(lambda: ipfs.put(src), "ipfs put"))
                rec("ipfs get", timed(lambda: got.__setitem__(0, ipfs.get(obj.cid, obj.digest)), "ipfs get"))
                assert got[0] == data
                got[0] = None
        del data

        best = {k: max(v) for k, v in results.items()}
        sha, disk = best["sha256, one core"], best["write + fsync"]
        put_limit = min(sha, disk)
        print()
        gb = size / 1e9

        def cpu(name: str) -> str:
            if name not in CPU:
                return "-"
            total, main = min(CPU[name])
            return f"{total / gb:.2f} ({main / gb:.2f} + {(total - main) / gb:.2f})"

        def two_core_bound(name: str) -> str:
            """Fastest possible on two idle cores given the work measured: the calling thread's
            CPU time or half of the total, whichever is larger (a bound, not a measurement)."""
            total, main = min(CPU[name])
            return f"{gb / max(main, total / 2):.2f}"

        print("\n".join(text_table(
            ["physical limits (same bytes, this run)", "GB/s", "cpu s/GB"],
            [[label, f"{value:.2f}", f"{min(CPU[key])[0] / gb:.2f}"]
             for label, key, value in (("sha256, one core", "sha256, one core", sha),
                                       ("sequential write + fsync (dd-like)", "write + fsync", disk))])))
        print()
        rows = [
            ("embedded put", put_limit, "min(sha,disk)", 0.8),
            ("embedded get", sha, "sha256", 0.8),
            ("embedded get_to_file", put_limit, "min(sha,disk)", None),
            ("embedded verify", sha, "sha256", None),
            ("ipfs put", put_limit, "min(sha,disk)", None),
            ("ipfs get", sha, "sha256", None),
        ]
        table = []
        for name, limit, limit_name, target in rows:
            if name not in best:
                continue
            ratio = best[name] / limit
            verdict = "" if target is None else f">= {target}  {'ok' if ratio >= target else 'BELOW'}"
            table.append([name, f"{best[name]:.2f}", " ".join(f"{x:.2f}" for x in results[name]),
                          f"{ratio:.2f} x {limit_name}", verdict, cpu(name), two_core_bound(name)])
        print("\n".join(text_table(
            ["operation", "GB/s", "runs (GB/s)", "vs limit", "target", "cpu s/GB (caller + others)",
             "2-core bound GB/s"], table, right={1, 2, 6})))
        print("cpu s/GB: user + system seconds per GB of all threads of this process (the calling thread + the "
              "others), best run; for ipfs the node's own CPU is not counted.\n2-core bound: GB / max(caller's "
              "cpu, total cpu / 2), what two otherwise idle cores allow for the work measured (Linux shares the "
              "CPU between sessions, so with another busy session the threads get one core between them).")

        print()
        print(f"get by object size: one read then sha256, or reading overlapped with hashing "
              f"(the store switches at {embedded.PIPELINE_MIN // MiB} MiB)")
        print("\n".join(text_table(["object", "plain GB/s", "pipelined GB/s", "sha256 GB/s", "faster"],
                                   get_by_size(work / "sizes", args.repeat), right={1, 2, 3})))

        print()
        print("peak RSS of one operation in a fresh process (MiB)")
        small = work / "small.bin"
        make_input(small, args.rss_small_mb * MiB)
        small_obj = store.put(small)
        cases = [
            ("embedded put", "embedded", "put", {"store": work / "store"}),
            ("embedded get_to_file", "embedded", "get_to_file", {"store": work / "store"}),
            ("embedded get (returns bytes)", "embedded", "get", {"store": work / "store"}),
        ]
        if ipfs is not None:
            cases += [
                ("ipfs put (client)", "ipfs", "put", {"api": ipfs.api}),
                ("ipfs get_to_file (client)", "ipfs", "get_to_file", {"api": ipfs.api}),
            ]
        rss_rows = []
        for label, backend, op, extra in cases:
            row = []
            for f, o in ((small, small_obj), (src, obj)):
                kw = dict(extra)
                if op == "put":
                    kw["file"] = f
                else:
                    kw.update(cid=o.cid, digest=o.digest.hex(), out=work / "rss-out.bin")
                row.append(measure_rss(backend, op, **kw))
            rss_rows.append([label, f"{row[0]:.0f}", f"{row[1]:.0f}"])
        if node is not None:
            rss_rows.append(["helia node (whole run, VmHWM)", "", f"{node_hwm(node):.0f}"])
        print("\n".join(text_table(["operation", f"{args.rss_small_mb} MiB", f"{args.size_mb} MiB"], rss_rows,
                                   right={1, 2})))
        return 0
    finally:
        if node is not None:
            from ledger.services import ipfs_node

            ipfs_node.ipfs_down(node)
        shutil.rmtree(work, ignore_errors=True)


def start_ipfs(work: Path):
    from ledger.services import ipfs_node
    from ledger.config import load_settings
    from ledger.store.ipfs import IpfsStore

    settings = load_settings({"data_dir": work / "ledger-data"}, env={}, config_file=None)
    try:
        up = ipfs_node.ipfs_up(settings, port=0)
    except Exception as e:  # not installed: say so, bench the rest
        print(f"(ipfs backend skipped: {e})")
        return None, None
    return IpfsStore(up.info.url, timeout=120), settings


def node_hwm(settings) -> float:
    from ledger.services import ipfs_node

    info = ipfs_node.service(settings).running()
    try:
        for line in Path(f"/proc/{info.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, AttributeError):
        pass
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
