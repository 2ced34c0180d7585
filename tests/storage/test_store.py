"""The embedded store: Kubo's CIDs, verified reads, tamper detection, crash safety, CLI."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import ledger.store.embedded as embedded
from conftest import cli_env, require_tool
from ledger.store.cid import CHUNK_SIZE, ImportOptions, cid_of_bytes
from ledger_cli import main as cli_main
from ledger.digest import to_hex
from ledger.errors import IntegrityError, NotFoundError, StorageError
from ledger.store import EmbeddedStore, StoredObject, open_store

ROOT = Path(__file__).resolve().parents[2]


def rnd(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture
def store(settings) -> EmbeddedStore:
    s = open_store(settings)
    assert isinstance(s, EmbeddedStore) and s.root == settings.store_dir
    return s


@pytest.fixture(params=["plain", "pipelined"])
def read_path(request, monkeypatch):
    """Run a test through both ways get() reads: plain, and reading overlapped with hashing."""
    monkeypatch.setattr(embedded, "PIPELINE_MIN", 0 if request.param == "pipelined" else 1 << 62)
    return request.param


def leftovers(s: EmbeddedStore) -> list[Path]:
    return list(s.tmp.iterdir())


def objects(s: EmbeddedStore) -> list[Path]:
    return [p for p in s.objects.rglob("*") if p.is_file()]


# ------------------------------------------------------------------ basics


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17])
def test_put_get_round_trip_every_source(read_path, store, tmp_path, size):
    data = rnd(size, seed=size)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    a = store.put(path)
    b = store.put(data)
    c = store.put(io.BytesIO(data))
    d = store.put(str(path))
    assert a == b == c == d
    assert a == StoredObject(cid_of_bytes(data).cid, hashlib.sha256(data).digest(), size)
    assert store.has(a.cid)
    assert store.get(a.cid, a.digest) == data
    assert store.get(a.cid, to_hex(a.digest)) == data  # hex digests are accepted too
    out = store.get_to_file(a.cid, a.digest, tmp_path / "sub" / "out.bin")
    assert out.read_bytes() == data
    assert store.verify(a.cid, a.digest) == size
    assert leftovers(store) == []


def test_cids_match_ipfs_cid(store, tmp_path):
    exe = require_tool("ipfs_cid")
    for size in (0, CHUNK_SIZE + 1, 2_500_000):
        path = tmp_path / f"f{size}"
        path.write_bytes(rnd(size, seed=size))
        expected = json.loads(subprocess.run([exe, str(path)], capture_output=True, text=True, check=True).stdout)
        assert store.put(path).cid == expected["CIDv0"]


def test_cid_v1_raw_leaves(store, tmp_path):
    data = rnd(CHUNK_SIZE * 2 + 3)
    v1 = store.put(data, options=ImportOptions(cid_version=1))
    assert v1.cid.startswith("bafy")
    assert store.get(v1.cid, v1.digest) == data
    small = store.put(b"tiny", options=ImportOptions(cid_version=1))
    assert small.cid.startswith("bafk")  # a single raw block
    assert store.get(small.cid, small.digest) == b"tiny"
    v1_store = open_store(_settings_like(store), cid_version=1)
    assert v1_store.put(data).cid == v1.cid


def _settings_like(store: EmbeddedStore):
    from ledger.config import load_settings

    return load_settings({"data_dir": store.root.parent}, env={}, config_file=None)


def test_stream_without_readinto_and_pipe(store):
    data = rnd(CHUNK_SIZE * 5 + 123)

    class Slow:
        def __init__(self):
            self.f = io.BytesIO(data)

        def read(self, n=-1):  # short reads, no readinto
            return self.f.read(min(n, 70_001) if n and n > 0 else 70_001)

    assert store.put(Slow()).digest == hashlib.sha256(data).digest()
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, data), os.close(w)), daemon=True).start()
    with os.fdopen(r, "rb") as f:
        assert store.put(f).cid == cid_of_bytes(data).cid


# ------------------------------------------------------------------ verification


def test_wrong_expected_digest(read_path, store, tmp_path):
    data = rnd(CHUNK_SIZE + 5)
    obj = store.put(data)
    wrong = hashlib.sha256(b"other").digest()
    for call in (
        lambda: store.get(obj.cid, wrong),
        lambda: store.verify(obj.cid, wrong),
        lambda: store.get_to_file(obj.cid, wrong, tmp_path / "out.bin"),
    ):
        with pytest.raises(IntegrityError) as e:
            call()
        msg = str(e.value)
        assert obj.cid in msg and to_hex(wrong) in msg and to_hex(obj.digest) in msg
    assert not (tmp_path / "out.bin").exists()
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())


@pytest.mark.parametrize("size", [100, CHUNK_SIZE * 3 + 9])
def test_flipped_byte_in_a_block_is_caught(read_path, store, tmp_path, size):
    data = rnd(size)
    obj = store.put(data)
    pack, _ = store.paths_of(obj.cid)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    for call in (
        lambda: store.get(obj.cid, obj.digest),
        lambda: store.verify(obj.cid, obj.digest),
        lambda: store.get_to_file(obj.cid, obj.digest, tmp_path / "out.bin"),
    ):
        with pytest.raises(IntegrityError) as e:
            call()
        assert obj.cid in str(e.value)
    assert not (tmp_path / "out.bin").exists()
    # Adding the file again repairs the object.
    store.put(data)
    assert store.get(obj.cid, obj.digest) == data


def test_flipped_byte_in_a_dag_node_is_caught(store):
    data = rnd(CHUNK_SIZE * 4)
    obj = store.put(data)
    _, idx = store.paths_of(obj.cid)
    raw = bytearray(idx.read_bytes())
    raw[-10] ^= 0x80  # inside the last stored node's block
    idx.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as e:
        store.get(obj.cid, obj.digest)
    assert obj.cid in str(e.value)


def test_a_hostile_index_header_is_one_storage_error(store):
    """Issue 34: the index header is parsed through ledger.safejson, so a header nested
    100,000 deep (which segfaults json.loads once eth_account has raised the recursion
    limit) or one with no end is a StorageError naming the CID, not a crash."""
    import eth_account  # noqa: F401  (py_ecc raises the recursion limit: the segfault's precondition)

    obj = store.put(rnd(CHUNK_SIZE * 2))
    _, idx = store.paths_of(obj.cid)
    for header in (b"[" * 100_000 + b"]" * 100_000 + b"\n", b"{" * 10_000, b"[1, 2]\n", b'{"nodes": 0' + b" " * 9000 + b"}\n"):
        idx.write_bytes(embedded.IDX_MAGIC + header)
        with pytest.raises(StorageError) as e:
            store.get(obj.cid, obj.digest)
        assert obj.cid in str(e.value) and "damaged" in str(e.value), e.value
        assert "\n" not in str(e.value)


def test_missing_or_truncated_blocks(read_path, store):
    data = rnd(CHUNK_SIZE * 3)
    obj = store.put(data)
    pack, idx = store.paths_of(obj.cid)
    with open(pack, "r+b") as f:
        f.truncate(CHUNK_SIZE + 10)
    with pytest.raises(IntegrityError):
        store.get(obj.cid, obj.digest)
    with pytest.raises(IntegrityError):
        store.verify(obj.cid, obj.digest)
    pack.unlink()
    assert not store.has(obj.cid)
    with pytest.raises(NotFoundError):
        store.get(obj.cid, obj.digest)
    store.put(data)
    idx.unlink()
    with pytest.raises(NotFoundError):
        store.get(obj.cid, obj.digest)


def test_large_object_pipelined_read(store, tmp_path):
    data = rnd(40 << 20, seed=9)  # over PIPELINE_MIN: the default path for big checkpoints
    obj = store.put(data)
    assert store.get(obj.cid, obj.digest) == data
    got = store.get(obj.cid, obj.digest)
    assert type(got) is bytes and hash(got) == hash(data)
    pack, _ = store.paths_of(obj.cid)
    with open(pack, "r+b") as f:
        f.seek(30 << 20)
        b = f.read(1)
        f.seek(30 << 20)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(IntegrityError) as e:
        store.get(obj.cid, obj.digest)
    assert "block 120 " in str(e.value)  # 30 MiB / 256 KiB


@pytest.mark.parametrize("direct", [True, False])
def test_large_file_written_direct_or_through_the_page_cache(store, tmp_path, monkeypatch, direct):
    if not direct:
        monkeypatch.setattr(embedded, "_O_DIRECT", 0)
    data = rnd((20 << 20) + 4097, seed=11)  # full batches, then a tail that is not 4 KiB-aligned
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    obj = store.put(src)
    assert obj.cid == cid_of_bytes(data).cid and obj.size == len(data)
    pack, _ = store.paths_of(obj.cid)
    assert pack.read_bytes() == data
    out = store.get_to_file(obj.cid, obj.digest, tmp_path / "back.bin")
    assert out.read_bytes() == data


def test_missing_cid_bad_cid_and_max_size(store):
    absent = cid_of_bytes(b"never stored").cid
    with pytest.raises(NotFoundError) as e:
        store.get(absent, bytes(32))
    assert absent in str(e.value)
    assert not store.has(absent)
    with pytest.raises(NotFoundError):
        store.pin(absent)
    with pytest.raises(StorageError):
        store.get("not-a-cid", bytes(32))
    obj = store.put(rnd(1000))
    with pytest.raises(StorageError) as e:
        store.get(obj.cid, obj.digest, max_size=999)
    assert "999" in str(e.value)
    assert len(store.get(obj.cid, obj.digest, max_size=1000)) == 1000
    store.pin(obj.cid)
    assert obj.cid in store.pinned()


def test_raw_and_dag_pb_objects_do_not_collide(store):
    # The v0 leaf block of x has the same sha256 as a raw v1 block of that leaf's bytes.
    x = b"collide"
    v0 = store.put(x)
    leaf_bytes = b"".join([embedded.leaf_wrapping(len(x))[0], x, embedded.leaf_wrapping(len(x))[1]])
    v1 = store.put(leaf_bytes, options=ImportOptions(cid_version=1))
    assert bytes(embedded.parse_cid(v0.cid).raw_digest) == bytes(embedded.parse_cid(v1.cid).raw_digest)
    assert store.get(v0.cid, v0.digest) == x
    assert store.get(v1.cid, v1.digest) == leaf_bytes


def test_concurrent_puts_of_the_same_bytes(store):
    data = rnd(CHUNK_SIZE * 6 + 1)
    results, errors = [], []

    def go():
        try:
            results.append(store.put(data))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert store.get(results[0].cid, results[0].digest) == data


# ------------------------------------------------------------------ crash safety


@pytest.mark.parametrize("source", ["bytes", "path"])  # page-cache writes, and O_DIRECT from aligned buffers
def test_disk_full_leaves_nothing(store, monkeypatch, tmp_path, source):
    data = rnd(CHUNK_SIZE * 40)
    src = data
    if source == "path":
        src = tmp_path / "in.bin"
        src.write_bytes(data)
    budget = [3 * CHUNK_SIZE]
    real_write = os.pwrite

    def full_disk(fd, buf, offset):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, buf[: min(len(buf), budget[0])], offset)
        budget[0] -= n
        return n

    monkeypatch.setattr(embedded, "_pwrite", full_disk)
    with pytest.raises(StorageError) as e:
        store.put(src)
    assert "disk full" in str(e.value)
    assert leftovers(store) == [] and objects(store) == []
    assert not store.has(cid_of_bytes(data).cid)
    monkeypatch.undo()
    obj = store.put(data)
    assert store.get(obj.cid, obj.digest) == data


def test_failure_between_renames_leaves_no_valid_object(store, monkeypatch):
    data = rnd(CHUNK_SIZE * 2 + 1)
    cid = cid_of_bytes(data).cid
    real_replace = os.replace
    calls = []

    def crash_on_index(src, dst):
        calls.append(dst)
        if str(dst).endswith(".idx"):
            raise OSError(errno.EIO, "simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(embedded.os, "replace", crash_on_index)
    with pytest.raises(StorageError):
        store.put(data)
    monkeypatch.undo()
    pack, idx = store.paths_of(cid)
    assert pack.exists() and not idx.exists()  # the pack landed, the index (commit point) did not
    assert not store.has(cid)
    with pytest.raises(NotFoundError):
        store.get(cid, hashlib.sha256(data).digest())
    assert leftovers(store) == []
    assert store.put(data).cid == cid and store.get(cid, hashlib.sha256(data).digest()) == data


def test_put_is_durable(store, monkeypatch):
    synced = []
    real = embedded._fsync
    monkeypatch.setattr(embedded, "_fsync", lambda fd: (synced.append(fd), real(fd)))
    store.put(rnd(1000))
    assert len(synced) >= 2  # the pack and the index, before they are renamed into place



def test_long_direct_writes_flush_as_they_go_and_a_failed_flush_loses_nothing(store, monkeypatch, tmp_path):
    """A big put flushes the device cache every FLUSH_EVERY bytes of direct writes (so the
    flush overlaps the hashing), and an I/O error from such a flush aborts the put cleanly."""
    if not embedded._O_DIRECT:
        pytest.skip("no O_DIRECT on this platform: the writer goes through the page cache")
    data = rnd(24 << 20)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    monkeypatch.setattr(embedded, "BATCH", 2 << 20)
    monkeypatch.setattr(embedded, "FLUSH_EVERY", 4 << 20)
    flushed = []
    real = embedded._fdatasync
    monkeypatch.setattr(embedded, "_fdatasync", lambda fd: (flushed.append(fd), real(fd)))
    obj = store.put(src)
    if not flushed:  # O_DIRECT refused by this filesystem (EINVAL): nothing was written directly
        pytest.skip(f"{store.root} does not take O_DIRECT writes, so there is nothing to flush early")
    assert len(flushed) == 6  # 24 MiB of direct writes, one flush per 4 MiB
    assert store.get(obj.cid, obj.digest) == data

    other = rnd(24 << 20, seed=2)
    src.write_bytes(other)

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(embedded, "_fdatasync", failing)
    with pytest.raises(StorageError) as e:
        store.put(src)
    assert "Input/output error" in str(e.value)
    assert leftovers(store) == [] and not store.has(cid_of_bytes(other).cid)
    assert store.get(obj.cid, obj.digest) == data  # the object already stored is untouched

KILL_SCRIPT = r"""
import sys, time
sys.path.insert(0, {root!r})
from ledger.store.embedded import EmbeddedStore

class Endless:
    def __init__(self):
        self.n = 0
    def read(self, n=-1):
        if self.n >= (8 << 20):
            print("written", flush=True)
            time.sleep(0.01)
        self.n += 65536
        return b"\x07" * 65536

EmbeddedStore({store!r}).put(Endless())
"""


def test_kill_9_mid_put_leaves_nothing_readable(store):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT.format(root=str(ROOT), store=str(store.root))],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "written"
        assert leftovers(store), "the writer should have a temporary pack by now"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # No index was ever written; reopening the store removes the dead writer's files.
    assert not [p for p in objects(store) if p.suffix == ".idx"]
    reopened = EmbeddedStore(store.root)
    assert leftovers(reopened) == []
    obj = reopened.put(b"after the crash")
    assert reopened.get(obj.cid, obj.digest) == b"after the crash"


# ------------------------------------------------------------------ CLI


def test_cli_put_get_verify(settings, tmp_path, capsys):
    data = rnd(CHUNK_SIZE + 99)
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    base = ["--data-dir", str(settings.data_dir)]
    assert cli_main(base + ["store", "put", str(src), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cid"] == cid_of_bytes(data).cid and out["sha256"] == to_hex(hashlib.sha256(data).digest())
    dest = tmp_path / "back.bin"
    assert cli_main(base + ["store", "get", out["cid"], "--digest", out["sha256"], "-o", str(dest)]) == 0
    assert dest.read_bytes() == data
    assert cli_main(base + ["store", "verify", out["cid"], "--digest", out["sha256"]]) == 0
    capsys.readouterr()
    bad = "0x" + "00" * 32
    assert cli_main(base + ["store", "verify", out["cid"], "--digest", bad]) == 1
    err = capsys.readouterr().err
    assert out["cid"] in err and bad in err and out["sha256"] in err
    assert cli_main(base + ["store", "put", str(src)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["cid", out["cid"]] and lines[1].split() == ["sha256", out["sha256"]]


@pytest.mark.parametrize("cmd", [["store", "put"], ["store", "get"], ["store", "verify"], ["ipfs", "up"],
                                 ["ipfs", "down"], ["ipfs", "status"]])
def test_cli_help_has_an_example(cmd, capsys):
    assert cli_main(cmd + ["--help"]) == 0
    assert "example:" in capsys.readouterr().out


def test_cli_in_a_subprocess(settings, tmp_path):
    src = tmp_path / "x.bin"
    src.write_bytes(b"hello ledger")
    env = cli_env(settings)
    out = subprocess.run([sys.executable, "-m", "ledger_cli", "store", "put", str(src)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert cid_of_bytes(b"hello ledger").cid in out.stdout
