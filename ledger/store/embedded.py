"""The embedded content-addressed store (default backend): Kubo's CIDs, no daemon.

Layout under ``store_dir``::

    objects/<xx>/<codec>-<root digest hex>.pack   the leaves' payloads, in DAG order
    objects/<xx>/<codec>-<root digest hex>.idx    the inner dag-pb nodes, keyed by multihash
    pins/<codec>-<root digest hex>                pin markers
    tmp/<pid>-<random>.{pack,idx}                 writes in progress

One pack per object keeps a 1 GB file to one sequential write and one sequential read
(4096 files of 256 KiB would cost a create, fsync and open each). The payload of a leaf
is its chunk; the leaf *block* (dag-pb ``PBNode{UnixFS File}`` around the chunk, or the
chunk itself for raw leaves) is rebuilt when read, so the pack is the file itself.
Reading by CID walks the DAG from the root: every inner node is hashed against the
link that names it, every leaf block is hashed against its link, and the whole file
against the caller's expected sha256. The index is never trusted: a lying index only
produces hash mismatches.

Writes are crash-safe: both files are written under temporary names, fsynced and
renamed, the pack first and the index last, so an object exists exactly when its index
does, and only after its pack is durable. A failed write (disk full, kill -9) leaves
no index, so nothing that reads as valid; temporary files of dead writers are removed
when a store is opened.

Speed: a put reads the input once into reused, page-aligned buffers (constant
memory); the calling thread hashes the leaf blocks while one stage thread hashes the
whole file (the sha256 of the exact bytes) and another writes the pack: with O_DIRECT
from those buffers where the filesystem allows (no CPU copy into the page cache,
nothing left for the final fsync to flush), else through the page cache with its
writeback started at once (sync_file_range). hashlib and os.pwrite release the GIL, so
the three overlap. A get checks the bytes against the digest its caller trusts in one
sha256 pass (the leaf blocks only when they do not match, to name the damaged one);
from PIPELINE_MIN bytes up it reads into the buffer of the ``BytesIO`` whose bytes it
returns, through BytesIO's own writable view (``getbuffer``), while the caller hashes
behind the reader. Nothing writes into a ``bytes`` object that Python code can see:
ctypes only calls two libc hints (madvise, sync_file_range).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import mmap
import os
import secrets
import struct
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ledger.store.cid import (
    DAG_PB,
    RAW,
    DagBuilder,
    ImportOptions,
    decode_node,
    leaf_wrapping,
    make_cid,
    parse_cid,
    parse_link,
)
from ledger import safejson
from ledger.digest import to_hex
from ledger.errors import IntegrityError, NotFoundError, StorageError
from ledger.services.procs import pid_alive
from ledger.store.base import (
    Digest,
    Source,
    Store,
    StoredObject,
    as_digest,
    check_cid,
    check_digest,
    fsync_dir,
    open_source,
    read_into,
    temp_path_for,
    too_large,
)

def _write_error(e: OSError, target: str) -> StorageError:
    """A failed write, said the same way everywhere; the temp file is removed by the caller."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full while writing {target}; nothing was stored")
    return StorageError(f"cannot write {target}: {e}")


IDX_MAGIC = b"LEDGER-IDX 1\n"
IDX_HEADER_MAX = 4096  # an index header is about 200 bytes of flat JSON
BATCH = 8 << 20          # bytes handed between threads at a time
RING = 8                 # buffers in flight when reading a stream (constant memory: RING * BATCH)
MAX_LEAF = 1 << 20       # a leaf payload larger than this is not one of ours
MAX_DEPTH = 16
PIPELINE_MIN = 8 << 20   # objects at least this big are read with reading and hashing overlapped (bench/storage.py)
READ_STEP = 2 << 20      # how far the reader of a pipelined get advances at a time

ALIGN = 4096             # O_DIRECT alignment of buffers, offsets and lengths
DIRECT_MIN = 1 << 20     # smaller writes go through the page cache (small objects stay cached)
FLUSH_EVERY = 64 << 20   # durable writes flush the device's cache this often, not all at the end
_O_DIRECT = getattr(os, "O_DIRECT", 0)

# Indirections the crash/disk-full tests replace.
_pwrite = os.pwrite
_fsync = os.fsync
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _key(codec: str, digest: bytes) -> str:
    return f"{'raw' if codec == RAW else 'pb'}-{digest.hex()}"


@dataclass
class _Leaf:
    digest: bytes
    length: int
    raw: bool


@dataclass
class _Object:
    cid: str
    pack: Path
    size: int
    leaves: list[_Leaf]


class EmbeddedStore(Store):
    name = "embedded"

    def __init__(self, root: str | os.PathLike, options: ImportOptions | None = None, *, durable: bool = True):
        super().__init__(options)
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.pins = self.root / "pins"
        self.durable = durable
        for d in (self.objects, self.tmp, self.pins):
            d.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

    def _paths(self, codec: str, digest: bytes) -> tuple[Path, Path]:
        k = _key(codec, digest)
        d = self.objects / digest.hex()[:2]
        return d / f"{k}.pack", d / f"{k}.idx"

    def paths_of(self, cid: str) -> tuple[Path, Path]:
        """(pack, index) files of a CID (they may not exist)."""
        c = parse_cid(check_cid(cid))
        return self._paths(c.codec.name, bytes(c.raw_digest))

    def _clean_stale_tmp(self) -> None:
        for p in self.tmp.iterdir():
            try:
                pid = int(p.name.split("-", 1)[0])
            except ValueError:
                continue
            if not pid_alive(pid):
                try:
                    p.unlink()
                except OSError:
                    pass

    def _tmp(self, suffix: str) -> Path:
        return self.tmp / f"{os.getpid()}-{secrets.token_hex(6)}{suffix}"

    # ------------------------------------------------------------------ put

    def put(self, data: Source, *, options: ImportOptions | None = None) -> StoredObject:
        opts = options or self.options
        stream, view, close_it = open_source(data)
        nodes: list[tuple[bytes, bytes]] = []
        builder = DagBuilder(opts, on_node=lambda d, b: nodes.append((d, b)))
        file_hash = hashlib.sha256()
        tmp_pack, tmp_idx = self._tmp(".pack"), self._tmp(".idx")
        fd = -1
        try:
            fd = os.open(tmp_pack, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with _PackWriter(tmp_pack, fd, self.durable) as writer, \
                    _Stages(file_hash.update, writer.write) as stages:
                if view is not None:
                    self._feed_view(view, builder, opts.chunk_size, stages)
                else:
                    self._feed_stream(stream, builder, opts.chunk_size, stages)
            result = builder.finish()
            if self.durable:
                _fsync(fd)
            os.close(fd)
            fd = -1
            with open(tmp_idx, "wb") as f:
                f.write(_encode_index(result, opts, nodes))
                f.flush()
                if self.durable:
                    _fsync(f.fileno())
            pack, idx = self._paths(result.codec, result.root_digest)
            pack.parent.mkdir(parents=True, exist_ok=True)
            # The pack becomes durable under its name before the index names it.
            os.replace(tmp_pack, pack)
            if self.durable:
                fsync_dir(pack.parent)
            os.replace(tmp_idx, idx)
            if self.durable:
                fsync_dir(pack.parent)
            return StoredObject(result.cid, file_hash.digest(), result.size)
        except OSError as e:
            raise _write_error(e, f"to the store at {self.root}") from None
        finally:
            if fd >= 0:
                os.close(fd)
            for p in (tmp_pack, tmp_idx):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            if close_it:
                stream.close()

    @staticmethod
    def _leaves(builder: DagBuilder, batch, cs: int) -> None:
        for off in range(0, len(batch), cs):
            builder.add_leaf(batch[off:off + cs])

    def _batch_size(self, cs: int) -> int:
        return cs * max(1, BATCH // cs)

    def _feed_view(self, view, builder, cs, stages: "_Stages") -> None:
        """Bytes in memory: zero-copy batches; leaves hashed here, the rest in the stage threads."""
        b = self._batch_size(cs)
        pending: list[list[Future]] = []
        for off in range(0, len(view), b):
            batch = view[off:off + b]
            pending.append(stages.submit(batch))
            self._leaves(builder, batch, cs)
            if len(pending) >= RING:
                _wait(pending.pop(0))
        for futs in pending:
            _wait(futs)

    def _feed_stream(self, stream, builder, cs, stages: "_Stages") -> None:
        """A file or stream: read into a ring of reused buffers (constant memory)."""
        b = self._batch_size(cs)
        ring: list[memoryview] = []
        busy: list[list[Future]] = [[] for _ in range(RING)]
        i = 0
        try:
            while True:
                _wait(busy[i])  # that buffer is free again
                if len(ring) <= i:
                    ring.append(_aligned_buffer(b))
                n = read_into(stream, ring[i])
                if n == 0:
                    break
                batch = ring[i][:n]
                busy[i] = stages.submit(batch)
                self._leaves(builder, batch, cs)
                i = (i + 1) % RING
                if n < b:
                    break
        finally:
            for futs in busy:
                _wait(futs)

    # ------------------------------------------------------------------ read

    def has(self, cid: str) -> bool:
        pack, idx = self.paths_of(cid)
        return idx.is_file() and pack.is_file()

    def pin(self, cid: str) -> None:
        cid = check_cid(cid)
        if not self.has(cid):
            raise NotFoundError(f"{cid} is not in the embedded store at {self.root}")
        c = parse_cid(cid)
        marker = self.pins / _key(c.codec.name, bytes(c.raw_digest))
        marker.write_text(cid + "\n")

    def pinned(self) -> list[str]:
        return sorted(p.read_text().strip() for p in self.pins.iterdir() if not p.name.startswith("."))

    def _load(self, cid: str) -> _Object:
        """Find the object and derive, from hash-verified nodes only, its leaves and size."""
        text = check_cid(cid)
        c = parse_cid(text)
        codec, root = c.codec.name, bytes(c.raw_digest)
        pack, idx = self._paths(codec, root)
        try:
            raw_idx = idx.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{text} is not in the embedded store at {self.root}") from None
        try:
            pack_size = pack.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(
                f"{text}: its data ({pack.name}) is missing from the embedded store at {self.root}; "
                "add the file again"
            ) from None
        nodes = _decode_index(text, raw_idx)
        if codec == RAW:
            return _Object(text, pack, pack_size, [_Leaf(root, pack_size, True)])
        if root not in nodes:  # a file of one chunk: the root is the leaf
            return _Object(text, pack, pack_size, [_Leaf(root, pack_size, False)])
        leaves: list[_Leaf] = []
        size = self._walk(text, root, nodes, leaves, 0)
        return _Object(text, pack, size, leaves)

    def _walk(self, cid: str, digest: bytes, nodes: dict[bytes, bytes], leaves: list[_Leaf], depth: int) -> int:
        block = nodes[digest]
        actual = hashlib.sha256(block).digest()
        if actual != digest:
            name = make_cid(digest, 0, DAG_PB)
            raise IntegrityError(cid, to_hex(digest), to_hex(actual), f"DAG node {name} of")
        if depth > MAX_DEPTH:
            raise StorageError(f"{cid}: DAG deeper than {MAX_DEPTH} levels; not a file of ours")
        try:
            node = decode_node(block)
            if node.type != 2 or node.data or len(node.blocksizes) != len(node.links) or not node.links:
                raise ValueError("not a UnixFS file node")
            if node.filesize != sum(node.blocksizes):
                raise ValueError("filesize is not the sum of blocksizes")
            children = [parse_link(l.hash) for l in node.links]
        except ValueError as e:
            raise StorageError(f"{cid} is not a UnixFS file this store can read ({e})") from None
        for (child, codec, _), bs in zip(children, node.blocksizes):
            if codec == RAW or child not in nodes:
                if bs > MAX_LEAF:
                    raise StorageError(f"{cid}: a leaf of {bs} bytes; not a file of ours")
                leaves.append(_Leaf(child, bs, codec == RAW))
            elif self._walk(cid, child, nodes, leaves, depth + 1) != bs:
                raise StorageError(f"{cid}: a node's size disagrees with its parent's")
        return node.filesize

    def _check_leaves(self, obj: _Object, view, first: int, last: int) -> None:
        """Hash leaf blocks first..last-1, laid out from the start of ``view``, against their links.

        A short view (truncated pack) makes the first missing leaf hash wrong.
        """
        off = 0
        for i in range(first, last):
            leaf = obj.leaves[i]
            chunk = view[off:off + leaf.length]
            if leaf.raw:
                actual = hashlib.sha256(chunk).digest()
            else:
                prefix, suffix = leaf_wrapping(len(chunk))
                h = hashlib.sha256(prefix)
                h.update(chunk)
                h.update(suffix)
                actual = h.digest()
            if actual != leaf.digest:
                name = make_cid(leaf.digest, 1, RAW) if leaf.raw else make_cid(leaf.digest, 0, DAG_PB)
                raise IntegrityError(obj.cid, to_hex(leaf.digest), to_hex(actual), f"block {i} ({name}) of")
            off += leaf.length

    def get(self, cid: str, expected_digest: Digest, max_size: int | None = None) -> bytes:
        """The object's bytes, checked against ``expected_digest``: the sha256 the caller
        trusts (the on-chain digest), as the IPFS store checks them. The DAG's nodes were
        checked against the CID when the object was loaded; its leaf blocks are hashed
        only when the bytes do not match, to say which block is damaged (``verify`` and
        ``get_to_file`` check every block). One pass of sha256 instead of two is what
        lets a get run at the speed of sha256."""
        expected = as_digest(expected_digest)
        obj = self._load(cid)
        if max_size is not None and obj.size > max_size:
            raise too_large(obj.cid, obj.size, max_size)
        # The bytes live in the helper's frame only: parsing the CID above may leave this
        # frame referenced from a caught exception's traceback (a cycle inside the CID
        # library), which would keep a local holding the object alive until a gc pass.
        return self._read_checked(obj, expected)

    def get_unverified(self, cid: str, max_size: int | None = None) -> bytes:
        """Checked all the same: the DAG against the CID when loaded, each leaf block here."""
        obj = self._load(cid)
        if max_size is not None and obj.size > max_size:
            raise too_large(obj.cid, obj.size, max_size)
        data = _read_exact(obj.pack, obj.size)
        self._check_leaves(obj, memoryview(data), 0, len(obj.leaves))
        return data

    def _read_checked(self, obj: _Object, expected: bytes) -> bytes:
        if obj.size < PIPELINE_MIN:
            data = _read_exact(obj.pack, obj.size)
            actual = hashlib.sha256(data).digest()
        else:
            data, actual = self._pipelined_read(obj)
        if len(data) != obj.size or actual != expected:
            self._explain_mismatch(obj, data, expected, actual)
        return data

    def _explain_mismatch(self, obj: _Object, data: bytes, expected: bytes, actual: bytes) -> None:
        """Raise the IntegrityError that says what is wrong: a damaged or missing block of
        the stored object (its leaf hashes say which), or bytes intact but not the ones
        the caller expects."""
        self._check_leaves(obj, memoryview(data), 0, len(obj.leaves))
        if len(data) < obj.size:
            raise IntegrityError(obj.cid, f"{obj.size} bytes", f"{len(data)} bytes", "stored size of")
        check_digest(obj.cid, expected, actual)

    def _pipelined_read(self, obj: _Object) -> tuple[bytes, bytes]:
        """(the pack's bytes, their sha256), read in one thread while this one hashes
        behind it, so the read (and its page faults) overlaps the hashing.

        The bytes are read into the buffer of a ``BytesIO`` made from a zeroed ``bytes``
        of the object's size, through ``getbuffer()``, BytesIO's documented writable view;
        once the view is released, ``getvalue()`` hands that buffer over as ``bytes``
        without a copy. The buffer asks for transparent huge pages: with 4 KiB pages,
        faulting in 1 GiB cost more CPU than reading it (0.68 s against 0.15 s here)."""
        n = obj.size
        out = io.BytesIO(bytes(n))
        view = out.getbuffer()
        _advise_hugepages(_address(view), n)
        progress = _Progress()

        def reader() -> None:
            off = 0
            try:
                with open(obj.pack, "rb", buffering=0) as f:
                    while off < n and not progress.cancelled:
                        k = f.readinto(view[off:off + READ_STEP])
                        if not k:
                            break
                        off += k
                        progress.advance(off)
            finally:
                progress.finish(off)

        h, done = hashlib.sha256(), 0
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="ledger-get") as pool:
                read_f = pool.submit(reader)
                try:
                    while (upto := progress.wait_beyond(done)) > done:
                        h.update(view[done:upto])
                        done = upto
                except BaseException:
                    progress.cancel()
                    raise
                finally:
                    read_f.result()
        finally:
            view.release()
        data = out.getvalue()
        return (data if done == n else data[:done]), h.digest()

    def _stream(self, obj: _Object, expected: bytes, sink: Callable[[memoryview], None] | None) -> None:
        """Read the pack in leaf-aligned batches into reused buffers; hash the leaves here,
        the whole file (and write it to ``sink``) in stage threads."""
        file_hash = hashlib.sha256()
        batches: list[tuple[int, int, int]] = []  # (first leaf, last leaf + 1, bytes)
        start, acc = 0, 0
        for i, leaf in enumerate(obj.leaves):
            if acc and acc + leaf.length > BATCH:
                batches.append((start, i, acc))
                start, acc = i, 0
            acc += leaf.length
        batches.append((start, len(obj.leaves), acc))
        cap = min(BATCH + MAX_LEAF, max(obj.size, 1))
        ring: list[memoryview] = []
        busy: list[list[Future]] = [[] for _ in range(RING)]
        fns = (file_hash.update,) if sink is None else (file_hash.update, sink)
        with open(obj.pack, "rb", buffering=0) as f, _Stages(*fns) as stages:
            try:
                for k, (first, last, nbytes) in enumerate(batches):
                    j = k % RING
                    _wait(busy[j])
                    if len(ring) <= j:
                        ring.append(_aligned_buffer(cap))
                    buf = ring[j][:nbytes]
                    got = read_into(f, buf)
                    # a short pack makes the first incomplete leaf fail its hash here
                    self._check_leaves(obj, buf[:got], first, last)
                    if got < nbytes:
                        raise IntegrityError(obj.cid, f"{obj.size} bytes", "fewer", "stored size of")
                    busy[j] = stages.submit(buf)
            finally:
                for futs in busy:
                    _wait(futs, quiet=True)
        for futs in busy:
            _wait(futs)
        check_digest(obj.cid, expected, file_hash.digest())

    def get_to_file(self, cid: str, expected_digest: Digest, dest: str | os.PathLike) -> Path:
        expected = as_digest(expected_digest)
        obj = self._load(cid)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(dest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        ok = False
        try:
            with _PackWriter(tmp, fd, self.durable) as writer:
                self._stream(obj, expected, writer.write)
            if self.durable:
                _fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
            ok = True
            if self.durable:
                fsync_dir(dest.parent)
            return dest
        except OSError as e:
            raise _write_error(e, str(dest)) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if not ok:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass

    def verify(self, cid: str, expected_digest: Digest) -> int:
        expected = as_digest(expected_digest)
        obj = self._load(cid)
        self._stream(obj, expected, None)
        return obj.size


# ---------------------------------------------------------------------- helpers


class _Stages:
    """Side work on each batch, in order, each stage in a thread of its own.

    hashlib (on buffers over 2 KiB) and os.write release the GIL, so the stages run
    in parallel with each other and with the caller, which hashes the leaf blocks.
    """

    def __init__(self, *fns: Callable[[memoryview], object]):
        self._fns = fns
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="ledger-io") for _ in fns]

    def submit(self, batch) -> list[Future]:
        return [pool.submit(fn, batch) for pool, fn in zip(self._pools, self._fns)]

    def __enter__(self) -> "_Stages":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def _wait(futures: list[Future], quiet: bool = False) -> None:
    """Wait for a batch's stages; re-raise the first failure (unless quiet)."""
    for f in futures:
        if quiet:
            try:
                f.exception()
            except BaseException:  # cancelled
                pass
        else:
            f.result()


class _PackWriter:
    """Writes a new file from batches, durably and cheaply.

    Batches that sit in page-aligned memory (the reused read buffers) go out with
    O_DIRECT: the device reads them straight from our buffer, so no CPU copies them into
    the page cache and the final fsync has nothing left to flush but a cache barrier.
    Anything else (bytes given by the caller, a short tail, a filesystem without
    O_DIRECT) is written through the page cache, its writeback started at once
    (sync_file_range) so the final fsync waits only for the last batches.

    A direct write can still sit in the device's volatile cache (a virtual disk's host
    cache holds gigabytes), and flushing that costs as much again as the write. So the
    writer flushes every FLUSH_EVERY bytes itself: the flushes overlap the caller's
    hashing instead of all landing in the final fsync, after the hashing is done.
    """

    def __init__(self, path: Path, fd: int, durable: bool):
        self.fd = fd
        self.durable = durable
        self.written = 0
        self.unflushed = 0
        self.direct_fd = -1
        if durable and _O_DIRECT:
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | _O_DIRECT)
            except OSError:
                pass

    def write(self, buf) -> None:
        mv = memoryview(buf).cast("B")
        if self.direct_fd >= 0 and self.written % ALIGN == 0 and len(mv) >= DIRECT_MIN and _aligned(mv):
            k = len(mv) - len(mv) % ALIGN
            try:
                self._write_all(self.direct_fd, mv[:k])
                mv = mv[k:]
                self.unflushed += k
                if self.unflushed >= FLUSH_EVERY:
                    _fdatasync(self.direct_fd)
                    self.unflushed = 0
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.close()  # this filesystem wants something else: the page cache from now on
        if len(mv):
            start = self.written
            self._write_all(self.fd, mv)
            if self.durable and _SYNC_RANGE is not None:
                _SYNC_RANGE(self.fd, start, len(mv), 2)  # SYNC_FILE_RANGE_WRITE: start, don't wait

    def _write_all(self, fd: int, mv: memoryview) -> None:
        while len(mv):
            n = _pwrite(fd, mv, self.written)
            mv = mv[n:]
            self.written += n

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    def __enter__(self) -> "_PackWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Progress:
    """How far a reader got, for threads following behind it."""

    def __init__(self):
        self.total = 0
        self.done = False
        self.cancelled = False
        self._cv = threading.Condition()

    def cancel(self) -> None:
        with self._cv:
            self.cancelled = self.done = True
            self._cv.notify_all()

    def advance(self, total: int) -> None:
        with self._cv:
            self.total = total
            self._cv.notify_all()

    def finish(self, total: int) -> None:
        with self._cv:
            self.total = total
            self.done = True
            self._cv.notify_all()

    def wait_beyond(self, pos: int) -> int:
        """Block until more than ``pos`` bytes arrived or the reader finished; returns the total
        (or ``pos`` once cancelled)."""
        with self._cv:
            while self.total <= pos and not self.done:
                self._cv.wait()
            return pos if self.cancelled else self.total



def _address(mv: memoryview) -> int:
    """Where a buffer's memory starts (read through numpy's array interface; nothing is written).
    numpy is imported here, not with the module, so ``ledger.store`` loads without it."""
    import numpy as np

    return np.frombuffer(mv, dtype=np.uint8).__array_interface__["data"][0] if len(mv) else 0


def _aligned(mv: memoryview) -> bool:
    """Whether a writable buffer (ours are mmaps) starts on a page boundary."""
    return not mv.readonly and len(mv) > 0 and _address(mv) % ALIGN == 0


def _aligned_buffer(n: int) -> memoryview:
    """A page-aligned, writable buffer (anonymous mmap), for reads that O_DIRECT can write out."""
    return memoryview(mmap.mmap(-1, max(n, 1))).cast("B")[:n]


def _advise_hugepages(addr: int, n: int) -> None:
    if _MADVISE is None or n < (4 << 20):
        return
    huge = 2 << 20
    start = (addr + huge - 1) & ~(huge - 1)
    end = (addr + n) & ~(huge - 1)
    if end > start:
        _MADVISE(start, end - start, 14)  # MADV_HUGEPAGE; a failure only costs speed


def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.madvise
        f.argtypes, f.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
        return f if sys.platform.startswith("linux") else None
    except (AttributeError, OSError):
        return None


def _sync_range():
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
        f.argtypes, f.restype = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint), ctypes.c_int
        return f if sys.platform.startswith("linux") else None
    except (AttributeError, OSError):
        return None


try:
    import ctypes

    _MADVISE = _madvise()
    _SYNC_RANGE = _sync_range()  # a hint: failures (e.g. unsupported filesystem) are ignored
except ImportError:  # pragma: no cover
    _MADVISE = _SYNC_RANGE = None


def _read_exact(path: Path, size: int) -> bytes:
    """Up to ``size`` bytes of a file in as few copies as possible (one read for < 2 GiB)."""
    with open(path, "rb", buffering=0) as f:
        first = f.read(size)
        if len(first) == size or not first:
            return first
        parts = [first]
        got = len(first)
        while got < size:
            more = f.read(size - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)


def _encode_index(result, opts: ImportOptions, nodes: list[tuple[bytes, bytes]]) -> bytes:
    header = {
        "cid": result.cid,
        "codec": result.codec,
        "cid_version": opts.cid_version,
        "raw_leaves": opts.leaves_raw,
        "chunk_size": opts.chunk_size,
        "size": result.size,
        "leaves": result.leaves,
        "nodes": len(nodes),
    }
    out = bytearray(IDX_MAGIC)
    out += json.dumps(header, sort_keys=True).encode() + b"\n"
    for digest, block in nodes:
        out += digest + struct.pack(">I", len(block)) + block
    return bytes(out)


def _decode_index(cid: str, raw: bytes) -> dict[bytes, bytes]:
    """The index's node table. Structure only: every node is hashed before use."""
    try:
        if not raw.startswith(IDX_MAGIC):
            raise ValueError("bad magic")
        # the header is a few hundred bytes of flat JSON: bounded before it is parsed (ledger.safejson)
        pos = raw.index(b"\n", len(IDX_MAGIC), len(IDX_MAGIC) + IDX_HEADER_MAX) + 1
        header = safejson.loads(raw[len(IDX_MAGIC):pos], what="the header", max_bytes=IDX_HEADER_MAX, max_depth=2)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        count = int(header["nodes"])
        nodes: dict[bytes, bytes] = {}
        for _ in range(count):
            digest = raw[pos:pos + 32]
            (n,) = struct.unpack(">I", raw[pos + 32:pos + 36])
            block = raw[pos + 36:pos + 36 + n]
            if len(digest) != 32 or len(block) != n:
                raise ValueError("truncated")
            nodes[digest] = block
            pos += 36 + n
        if pos != len(raw):
            raise ValueError("trailing bytes")
        return nodes
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise StorageError(f"the index of {cid} in the embedded store is damaged ({e}); add the file again") from None
