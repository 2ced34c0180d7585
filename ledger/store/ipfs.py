"""IPFS backend: any node with Kubo's RPC API (a user's Kubo, or `ledger ipfs up`).

Through ``ipfshttpclient``, built with ``Client(multiaddr)`` directly: ``connect()``
refuses daemons newer than 0.9 by a version check. Adds pass Kubo's import options
explicitly (cid-version, raw-leaves, chunker=size-262144) so the node's CID must equal
the one computed locally while the bytes stream out; a node that disagrees is an error,
not a silent fork of identities. Every read is hashed against the expected digest.

Timeouts: a read waits at most ``timeout`` seconds for the node to start answering
(a Kubo daemon would otherwise search the network for a missing CID indefinitely);
then the CID counts as missing.

Peers: a node with peers (``ledger ipfs up --peer``, or a user's Kubo) fetches what it
lacks from them on ``get`` and ``pin``; the project's node answers "not found on this
node or its peers" as soon as every peer has said it lacks a block, or after its
``--fetch-timeout``. ``has`` asks the node alone (``offline``): what this party keeps.
``reachable`` also asks its peers, for a few seconds: whether something published on
another party's node has arrived.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import ipfshttpclient
import ipfshttpclient.exceptions as ipfs_exc

from ledger.store.cid import ImportOptions, Importer
from ledger.errors import NotFoundError, StorageError, StorageUnreachable
from ledger.services.ipfs_node import to_multiaddr
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
    temp_path_for,
    too_large,
)


@contextmanager
def _quiet():
    """ipfshttpclient 0.7 passes urllib3 2.x a deprecated argument on every request: harmless noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The 'strict' parameter", category=FutureWarning)
        yield


def _connection_dropped(e: Exception) -> bool:
    """A node that goes down mid-request closes the socket without an answer: urllib3 reports
    that as a protocol error ("Connection aborted"), but to the caller it is an outage like a
    refused connection, worth waiting out rather than failing the round on."""
    if not isinstance(e, ipfs_exc.ProtocolError):
        return False
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) or \
                type(cause).__name__ == "RemoteDisconnected":
            return True
        args = getattr(cause, "args", ())
        nested = [a for a in args if isinstance(a, BaseException)]
        cause = nested[-1] if nested else (cause.__cause__ or cause.__context__)
    return "Connection aborted" in str(e)


UPLOAD_CHUNK = 1 << 20
ADD_READ_TIMEOUT = 600.0   # the node answers an add only once it has imported (and pinned) everything
REACH_WAIT = 5.0           # how long ``reachable`` lets the node ask its peers (Kubo: the network)
_NOT_FOUND = ("not found", "could not find", "no link named", "not pinned", "does not exist")


class _HashingReader:
    """A read()-able view of the input that hashes (sha256 + local CID) what is read."""

    def __init__(self, stream, view, importer: Importer):
        self.stream, self.view, self.pos = stream, view, 0
        self.importer = importer
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if self.view is not None:
            end = len(self.view) if n is None or n < 0 else min(len(self.view), self.pos + n)
            data = self.view[self.pos:end]
            self.pos = end
        else:
            data = self.stream.read(n)
            if data is None:
                data = b""
        if data:
            self.sha.update(data)
            self.importer.update(data)
            self.size += len(data)
        return bytes(data) if isinstance(data, memoryview) else data


class IpfsStore(Store):
    name = "ipfs"

    def __init__(self, api: str, options: ImportOptions | None = None, timeout: float = 30.0):
        super().__init__(options)
        self.api = to_multiaddr(api)
        self.timeout = float(timeout)
        self.client = ipfshttpclient.Client(self.api, chunk_size=UPLOAD_CHUNK, timeout=self.timeout)

    def __repr__(self) -> str:
        return f"IpfsStore({self.api!r})"

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ errors

    def _unreachable(self, e: Exception) -> StorageUnreachable:
        return StorageUnreachable(
            f"IPFS API at {self.api} does not answer ({type(e).__name__}); "
            "start the local node with `ledger ipfs up` or point --ipfs-api / LEDGER_IPFS_API at a running Kubo"
        )

    def _translate(self, e: Exception, cid: str, action: str) -> Exception:
        if isinstance(e, ipfs_exc.TimeoutError):
            return NotFoundError(
                f"{cid}: the IPFS node at {self.api} did not deliver it within {self.timeout:g}s "
                "(missing, or no peer has it); raise --ipfs-timeout / LEDGER_IPFS_TIMEOUT to wait longer"
            )
        if isinstance(e, ipfs_exc.ConnectionError) or _connection_dropped(e):
            return self._unreachable(e)
        if isinstance(e, ipfs_exc.ErrorResponse):
            msg = str(e)
            if any(s in msg.lower() for s in _NOT_FOUND):
                return NotFoundError(f"{cid} is not on the IPFS node at {self.api}: {msg}")
            return StorageError(f"IPFS node at {self.api}: {action} {cid} failed: {msg}")
        if isinstance(e, ipfs_exc.Error):
            return StorageError(f"IPFS node at {self.api}: {action} {cid} failed: {e}")
        return e

    # ------------------------------------------------------------------ write

    def put(self, data: Source, *, options: ImportOptions | None = None) -> StoredObject:
        opts = options or self.options
        stream, view, close_it = open_source(data)
        importer = Importer(opts)
        reader = _HashingReader(stream, view, importer)
        try:
            try:
                with _quiet():
                    res = self.client.add(
                        reader,
                        cid_version=opts.cid_version,
                        raw_leaves=opts.leaves_raw,
                        chunker=f"size-{opts.chunk_size}",
                        pin=True,
                        timeout=(self.timeout, max(ADD_READ_TIMEOUT, self.timeout)),
                    )
            except ipfs_exc.Error as e:
                raise self._translate(e, "(new file)", "add") from None
        finally:
            if close_it:
                stream.close()
        if isinstance(res, list):
            res = res[-1]
        local = importer.finalize()
        remote = check_cid(str(res["Hash"]))
        if remote != local.cid:
            raise StorageError(
                f"the IPFS node at {self.api} returned CID {remote} but these bytes import to {local.cid} "
                f"with cid-version={opts.cid_version} raw-leaves={opts.leaves_raw} chunker=size-{opts.chunk_size}: "
                "the node does not honour Kubo's import options"
            )
        return StoredObject(local.cid, reader.sha.digest(), reader.size)

    def pin(self, cid: str) -> None:
        """Pin on this node; blocks it lacks are fetched from its peers first, so the
        answer may take as long as a get of the whole object."""
        cid = check_cid(cid)
        try:
            with _quiet():
                self.client.pin.add(cid, timeout=(self.timeout, max(ADD_READ_TIMEOUT, self.timeout)))
        except ipfs_exc.Error as e:
            raise self._translate(e, cid, "pin") from None

    def has(self, cid: str) -> bool:
        """Whether the node holds the root block locally (``offline``: no network search)."""
        cid = check_cid(cid)
        try:
            with _quiet():
                self.client.block.stat(cid, offline=True, timeout=self.timeout)
                return True
        except ipfs_exc.ErrorResponse:
            return False
        except ipfs_exc.Error as e:
            raise self._translate(e, cid, "stat") from None

    def reachable(self, cid: str) -> bool:
        """Whether the node holds the root block or gets it from a peer within
        ``REACH_WAIT`` seconds (Kubo's ``timeout`` option; the block is then kept)."""
        cid = check_cid(cid)
        wait = min(REACH_WAIT, self.timeout)
        try:
            with _quiet():
                self.client.block.stat(cid, opts={"timeout": f"{wait:g}s"}, timeout=self.timeout + wait)
                return True
        except (ipfs_exc.ErrorResponse, ipfs_exc.TimeoutError):
            return False
        except ipfs_exc.Error as e:
            raise self._translate(e, cid, "stat") from None

    # ------------------------------------------------------------------ read

    def _chunks(self, cid: str):
        try:
            with _quiet():  # the request is sent here; the body streams below
                chunks = self.client.cat(cid, stream=True, timeout=self.timeout)
            yield from chunks
        except ipfs_exc.Error as e:
            raise self._translate(e, cid, "cat") from None

    def get(self, cid: str, expected_digest: Digest, max_size: int | None = None) -> bytes:
        expected = as_digest(expected_digest)
        cid = check_cid(cid)
        h = hashlib.sha256()
        parts: list[bytes] = []
        size = 0
        for chunk in self._chunks(cid):
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise too_large(cid, size, max_size)
            h.update(chunk)
            parts.append(chunk)
        check_digest(cid, expected, h.digest())
        return b"".join(parts)

    def get_unverified(self, cid: str, max_size: int | None = None) -> bytes:
        cid = check_cid(cid)
        parts, size = [], 0
        for chunk in self._chunks(cid):
            size += len(chunk)
            if max_size is not None and size > max_size:
                raise too_large(cid, size, max_size)
            parts.append(chunk)
        return b"".join(parts)

    def get_to_file(self, cid: str, expected_digest: Digest, dest: str | os.PathLike) -> Path:
        expected = as_digest(expected_digest)
        cid = check_cid(cid)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(dest)
        ok = False
        try:
            with open(tmp, "wb") as f:
                h = hashlib.sha256()
                for chunk in self._chunks(cid):
                    h.update(chunk)
                    f.write(chunk)
                check_digest(cid, expected, h.digest())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            ok = True
            fsync_dir(dest.parent)
            return dest
        finally:
            if not ok:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass

    def verify(self, cid: str, expected_digest: Digest) -> int:
        expected = as_digest(expected_digest)
        cid = check_cid(cid)
        h = hashlib.sha256()
        size = 0
        for chunk in self._chunks(cid):
            h.update(chunk)
            size += len(chunk)
        check_digest(cid, expected, h.digest())
        return size
