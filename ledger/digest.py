"""sha256 digests: the identity of every artifact on chain (``bytes32``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_stream(f: BinaryIO, chunk: int = CHUNK) -> bytes:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.digest()


def sha256_file(path: str | Path) -> bytes:
    with open(path, "rb") as f:
        return sha256_stream(f)


def to_hex(digest: bytes) -> str:
    """``0x``-prefixed lowercase hex, the form shown to users and used in JSON."""
    return "0x" + bytes(digest).hex()


def from_hex(text: str) -> bytes:
    """Parse a 32-byte digest written as hex, with or without ``0x``."""
    s = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        raw = bytes.fromhex(s)
    except ValueError:
        raise ValueError(f"not a hex digest: {text!r}") from None
    if len(raw) != 32:
        raise ValueError(f"a digest is 32 bytes, got {len(raw)}: {text!r}")
    return raw


def short(digest: bytes) -> str:
    """First 10 hex characters, for tables."""
    return to_hex(digest)[:12]
