"""A private job's store: every object encrypted at rest under the job key.

``SealedStore(inner, job_key)`` is the ``Store`` interface over another store: ``put``
stores ``ledger.privacy.sealing.encrypt_artifact(key, bytes)`` and returns the *plaintext's*
sha256 and size (what goes on chain: every member still checks every byte) with the
ciphertext's CID (where it is); ``get`` fetches the ciphertext checked against its
CID, decrypts it (AES-GCM-SIV authenticates it) and checks the plaintext against the
digest the caller trusts. Outsiders see CIDs, sizes and digests, never a byte of
content. Sealing is deterministic, so two aggregators storing the same merge agree
on its CID as they agree on its digest.

A private job stores CIDv0 only: the chain keeps a CID as its multihash plus the
plaintext's size, and a CIDv1's codec (raw or dag-pb) would depend on the
ciphertext's size, which the chain does not hold.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ledger import atomic
from ledger.errors import IntegrityError
from ledger.privacy.sealing import ARTIFACT_MAGIC, NONCE_BYTES, decrypt_artifact, encrypt_artifact
from ledger.store.base import Digest, Source, Store, StoredObject, as_digest, open_source

OVERHEAD = len(ARTIFACT_MAGIC) + NONCE_BYTES + 16     # magic, nonce, AES-GCM-SIV tag


class SealedStore(Store):
    name = "sealed"

    def __init__(self, inner: Store, job_key: bytes):
        super().__init__(inner.options)
        self.inner = inner
        self._key = bytes(job_key)

    def __repr__(self) -> str:
        return f"SealedStore({self.inner!r})"       # never the key

    def put(self, data: Source, *, options=None) -> StoredObject:
        plain = _read_all(data)
        obj = self.inner.put(encrypt_artifact(self._key, plain), options=options)
        return StoredObject(obj.cid, hashlib.sha256(plain).digest(), len(plain))

    def seal(self, data: bytes) -> bytes:
        """``data`` as this store keeps it at rest (a private job's export files)."""
        return encrypt_artifact(self._key, bytes(data))

    def cid_of(self, data: bytes) -> str:
        return self.inner.cid_of(encrypt_artifact(self._key, bytes(data)))

    def get(self, cid: str, expected_digest: Digest, max_size: int | None = None) -> bytes:
        expected = as_digest(expected_digest)
        plain = self.get_by_cid(cid, max_size)
        actual = hashlib.sha256(plain).digest()
        if actual != expected:
            raise IntegrityError(cid, expected.hex(), actual.hex(), "the decrypted content of")
        return plain

    def get_by_cid(self, cid: str, max_size: int | None = None) -> bytes:
        from ledger.privacy.sealing import SealBroken

        blob = self.inner.get_by_cid(cid, None if max_size is None else max_size + OVERHEAD)
        try:
            return decrypt_artifact(self._key, blob)
        except SealBroken as e:
            raise IntegrityError(cid, "a ciphertext under the job key", "other bytes", f"({e}) the object") from None

    def get_unverified(self, cid: str, max_size: int | None = None) -> bytes:
        return self.get_by_cid(cid, max_size)

    def get_to_file(self, cid: str, expected_digest: Digest, dest: str | os.PathLike) -> Path:
        return atomic.write_bytes(dest, self.get(cid, expected_digest))

    def verify(self, cid: str, expected_digest: Digest) -> int:
        return len(self.get(cid, expected_digest))

    def has(self, cid: str) -> bool:
        return self.inner.has(cid)

    def reachable(self, cid: str) -> bool:
        return self.inner.reachable(cid)

    def pin(self, cid: str) -> None:
        self.inner.pin(cid)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):
        # what a wrapped store adds beside the interface (the audit's record of what it hashed)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _read_all(data: Source) -> bytes:
    stream, view, owned = open_source(data)
    try:
        return bytes(view) if stream is None else stream.read()
    finally:
        if owned and stream is not None:
            stream.close()
