"""The storage interface shared by every backend.

A store keeps bytes under their CID. Writing returns the CID, the sha256 of the exact
bytes (the identity on chain) and the size. Reading always takes the expected digest
and verifies the bytes before handing them over: ``IntegrityError`` (naming the CID
and both digests) if they differ, ``NotFoundError`` if the store has no such CID.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from ledger.store.cid import ImportOptions, cid_of_bytes, normalize_cid, parse_cid
from ledger.digest import from_hex, to_hex
from ledger.errors import IntegrityError, StorageError

# What put() accepts: a path, bytes, or a binary stream (anything with read()).
Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]
Digest = Union[bytes, str]  # 32 bytes, or hex with/without 0x


@dataclass(frozen=True)
class StoredObject:
    cid: str
    digest: bytes      # sha256 of the exact bytes (32 bytes)
    size: int

    @property
    def digest_hex(self) -> str:
        return to_hex(self.digest)


class Store(ABC):
    """put / get / get_to_file / has / pin. Every read is verified against a digest."""

    name = "store"

    def __init__(self, options: ImportOptions | None = None):
        self.options = options or ImportOptions()

    @abstractmethod
    def put(self, data: Source, *, options: ImportOptions | None = None) -> StoredObject:
        """Store a file (path), bytes or a binary stream; returns its CID, sha256 and size."""

    @abstractmethod
    def get(self, cid: str, expected_digest: Digest, max_size: int | None = None) -> bytes:
        """The verified bytes of ``cid``. ``max_size`` refuses larger objects before reading them."""

    @abstractmethod
    def get_to_file(self, cid: str, expected_digest: Digest, dest: str | os.PathLike) -> Path:
        """Stream ``cid`` into ``dest``: verified before it appears there (atomic rename)."""

    @abstractmethod
    def has(self, cid: str) -> bool:
        """Whether the store holds ``cid`` (no verification)."""

    def reachable(self, cid: str) -> bool:
        """Whether the store can serve ``cid`` now: it holds it or, for an IPFS node with
        peers, one of them does (a short wait; see ``IpfsStore.reachable``). Unlike ``has``
        it says whether something published elsewhere has arrived, not who keeps it."""
        return self.has(cid)

    @abstractmethod
    def pin(self, cid: str) -> None:
        """Keep ``cid`` here (NotFoundError if neither here nor, for an IPFS node, on a peer)."""

    def cid_of(self, data: bytes) -> str:
        """The CID ``put(data)`` would give, without storing anything."""
        return cid_of_bytes(bytes(data), self.options).cid

    def get_by_cid(self, cid: str, max_size: int | None = None) -> bytes:
        """The bytes of ``cid`` checked against the CID alone, for objects the chain names by
        CID and no digest (a sealed reveal: its contents are authenticated again inside).
        Refused for a CID this store's import options could not have made."""
        data = self.get_unverified(cid, max_size)
        version = parse_cid(cid).version
        opts = self.options if version == self.options.cid_version else ImportOptions.for_version(version)
        got = cid_of_bytes(data, opts).cid
        if normalize_cid(got) != normalize_cid(cid):
            raise IntegrityError(cid, cid, got, "the CID of")
        return data

    def get_unverified(self, cid: str, max_size: int | None = None) -> bytes:
        """Raw bytes of ``cid`` (callers check them: ``get``, ``get_by_cid``)."""
        raise NotImplementedError

    def verify(self, cid: str, expected_digest: Digest) -> int:
        """Read and verify ``cid`` without keeping it; returns its size."""
        return len(self.get(cid, expected_digest))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- helpers


def as_digest(d: Digest) -> bytes:
    """A digest given as 32 bytes or hex text, as 32 bytes (ValueError otherwise)."""
    if isinstance(d, str):
        return from_hex(d)
    d = bytes(d)
    if len(d) != 32:
        raise ValueError(f"a digest is 32 bytes, got {len(d)}")
    return d


def check_cid(cid: str) -> str:
    """The canonical text of a CID, or StorageError saying why it is not one we can hold."""
    try:
        return normalize_cid(cid)
    except ValueError as e:
        raise StorageError(str(e)) from None


def check_digest(cid: str, expected: bytes, actual: bytes, what: str = "content") -> None:
    if expected != actual:
        raise IntegrityError(cid, to_hex(expected), to_hex(actual), what)


def too_large(cid: str, size: int, max_size: int) -> StorageError:
    return StorageError(f"{cid} is {size} bytes, over the limit of {max_size} bytes; refusing to read it")


def temp_path_for(dest: Path) -> Path:
    """A unique temporary name beside ``dest`` (same filesystem, so rename is atomic)."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_source(data: Source) -> tuple[BinaryIO | None, memoryview | None, bool]:
    """(stream, view, close_it): bytes-like input gives a zero-copy view, a path an open file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return None, memoryview(data).cast("B"), False
    if isinstance(data, (str, os.PathLike)):
        try:
            f = open(data, "rb", buffering=0)
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
                f.close()         # /dev/zero would be stored until the disk is full
                raise StorageError(f"{data} is a device or a socket, not a file; only files (or a pipe) can be stored")
            return f, None, True
        except FileNotFoundError:
            raise StorageError(f"no such file: {data}") from None
        except IsADirectoryError:
            raise StorageError(f"{data} is a directory; only files can be stored") from None
        except OSError as e:
            raise StorageError(f"cannot read {data}: {e.strerror or e}") from None
    if hasattr(data, "read"):
        return data, None, False
    raise TypeError(f"put() takes a path, bytes or a binary stream, got {type(data).__name__}")


def read_into(stream: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``stream`` as far as it goes; returns bytes read (< len only at EOF)."""
    n, total = len(buf), 0
    readinto = getattr(stream, "readinto", None)
    while total < n:
        if readinto is not None:
            k = readinto(buf[total:])
        else:
            chunk = stream.read(n - total)
            k = len(chunk) if chunk else 0
            buf[total:total + k] = chunk
        if not k:
            break
        total += k
    return total


def is_text_stream(stream) -> bool:
    return isinstance(stream, io.TextIOBase)
