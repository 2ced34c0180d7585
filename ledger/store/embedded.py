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

Speed: a put reads the input once into reused buffers; one thread hashes the whole
file (sha256 of the exact bytes) and writes the pack while the calling thread hashes
the leaf blocks (hashlib and os.write release the GIL), and a third thread starts the
pack's writeback early (fdatasync every few hundred MiB) so the final fsync is short.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..cid import (
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
from ..digest import to_hex
from ..errors import IntegrityError, NotFoundError, StorageError
from ..procs import pid_alive
from .base import (
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

IDX_MAGIC = b"LEDGER-IDX 1\n"
BATCH = 8 << 20          # bytes handed between threads at a time
RING = 4                 # buffers in flight when reading a stream (constant memory: RING * BATCH)
FLUSH_EVERY = 256 << 20  # start writeback of the pack every this many bytes
MAX_LEAF = 1 << 20       # a leaf payload larger than this is not one of ours
MAX_DEPTH = 16

# Indirections the crash/disk-full tests replace.
_write = os.write
_fsync = os.fsync


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
            with _PackWriter(fd, self.durable) as writer:

                def sink(batch) -> None:
                    file_hash.update(batch)
                    writer.write(batch)

                if view is not None:
                    self._put_view(view, builder, opts.chunk_size, writer, sink)
                else:
                    self._put_stream(stream, builder, opts.chunk_size, writer, sink)
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
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(f"disk full while writing to {self.root}; nothing was stored") from None
            raise StorageError(f"cannot write to the store at {self.root}: {e}") from None
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

    def _put_view(self, view, builder, cs, writer, sink) -> None:
        b = self._batch_size(cs)
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-put") as pool:
            pending: list[Future] = []
            for off in range(0, len(view), b):
                batch = view[off:off + b]
                pending.append(pool.submit(sink, batch))
                self._leaves(builder, batch, cs)
                if len(pending) >= RING:
                    pending.pop(0).result()
            for f in pending:
                f.result()

    def _put_stream(self, stream, builder, cs, writer, sink) -> None:
        b = self._batch_size(cs)
        ring: list[memoryview] = []
        futures: list[Future | None] = [None] * RING
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-put") as pool:
            i = 0
            try:
                while True:
                    if futures[i] is not None:
                        futures[i].result()  # that buffer is free again
                    if len(ring) <= i:
                        ring.append(memoryview(bytearray(b)))
                    n = read_into(stream, ring[i])
                    if n == 0:
                        break
                    batch = ring[i][:n]
                    futures[i] = pool.submit(sink, batch)
                    self._leaves(builder, batch, cs)
                    i = (i + 1) % RING
                    if n < b:
                        break
            finally:
                for f in futures:
                    if f is not None:
                        f.result()

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
        expected = as_digest(expected_digest)
        obj = self._load(cid)
        if max_size is not None and obj.size > max_size:
            raise too_large(obj.cid, obj.size, max_size)
        data = _read_exact(obj.pack, obj.size)
        if len(data) < obj.size:
            # Truncated: the leaf hashes say which block is damaged.
            self._check_leaves(obj, memoryview(data), 0, len(obj.leaves))
            raise IntegrityError(obj.cid, f"{obj.size} bytes", f"{len(data)} bytes", "stored size of")
        view = memoryview(data)
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-get") as pool:
            fut = pool.submit(lambda: hashlib.sha256(view).digest())
            try:
                self._check_leaves(obj, view, 0, len(obj.leaves))
            finally:
                actual = fut.result()
        check_digest(obj.cid, expected, actual)
        return data

    def _stream(self, obj: _Object, expected: bytes, sink: Callable[[memoryview], None] | None) -> None:
        """Read the pack in leaf-aligned batches; hash leaves here, the file (and sink) in a thread."""
        file_hash = hashlib.sha256()

        def consume(batch) -> None:
            file_hash.update(batch)
            if sink is not None:
                sink(batch)

        batches: list[tuple[int, int, int]] = []  # (first leaf, last leaf + 1, bytes)
        start, acc = 0, 0
        for i, leaf in enumerate(obj.leaves):
            if acc and acc + leaf.length > BATCH:
                batches.append((start, i, acc))
                start, acc = i, 0
            acc += leaf.length
        batches.append((start, len(obj.leaves), acc))
        ring = [memoryview(bytearray(min(BATCH + MAX_LEAF, max(obj.size, 1)))) for _ in range(2)]
        with open(obj.pack, "rb", buffering=0) as f, ThreadPoolExecutor(1, thread_name_prefix="ledger-read") as pool:
            futures: list[Future | None] = [None, None]
            try:
                for k, (first, last, nbytes) in enumerate(batches):
                    j = k % 2
                    if futures[j] is not None:
                        futures[j].result()
                    buf = ring[j][:nbytes]
                    got = read_into(f, buf)
                    self._check_leaves(obj, buf[:got], first, last)
                    if got < nbytes:
                        raise IntegrityError(obj.cid, f"{obj.size} bytes", "fewer", "stored size of")
                    futures[j] = pool.submit(consume, buf)
            finally:
                for fut in futures:
                    if fut is not None:
                        fut.result()
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
            with _PackWriter(fd, self.durable) as writer:
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
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(f"disk full while writing {dest}; nothing was written") from None
            raise StorageError(f"cannot write {dest}: {e}") from None
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


class _PackWriter:
    """Writes every byte (os.write may write less), and starts writeback early in a thread."""

    def __init__(self, fd: int, durable: bool):
        self.fd = fd
        self.durable = durable
        self.written = 0
        self._next_flush = FLUSH_EVERY
        self._flusher: ThreadPoolExecutor | None = None
        self._flush: Future | None = None
        self._lock = threading.Lock()

    def write(self, buf) -> None:
        mv = memoryview(buf)
        while len(mv):
            n = _write(self.fd, mv)
            mv = mv[n:]
            self.written += n
        if self.durable and self.written >= self._next_flush:
            self._next_flush = self.written + FLUSH_EVERY
            if self._flush is None or self._flush.done():
                if self._flusher is None:
                    self._flusher = ThreadPoolExecutor(1, thread_name_prefix="ledger-flush")
                if self._flush is not None:
                    self._flush.result()
                self._flush = self._flusher.submit(os.fdatasync, self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            if exc[0] is None and self._flush is not None:
                self._flush.result()


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
        pos = raw.index(b"\n", len(IDX_MAGIC)) + 1
        header = json.loads(raw[len(IDX_MAGIC):pos])
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
