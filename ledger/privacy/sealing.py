"""Sealed bytes: what only named accounts may read, and artifacts encrypted at rest.

Two tools, both on the parties' own Ethereum keys (secp256k1), so nobody manages a
second key pair:

- an **envelope** (``seal`` / ``unseal``): items encrypted once under a fresh content
  key (AES-256-GCM), that key wrapped to each recipient's public key by ECIES
  (``eciespy``: ephemeral secp256k1 ECDH, HKDF, AES-256-GCM). A worker's drawn window
  bundles and DP seeds travel this way to the verifiers the draw named. The binding
  (job, round, worker, ...) is the AEAD's associated data, so an envelope cannot be
  passed off as another's. A recipient whose slot does not open cannot tell the others'
  apart from garbage: each verifier judges its own slot (``SealBroken``).
- a **job key** (``wrap_key`` / ``unwrap_key``, ``encrypt_artifact`` /
  ``decrypt_artifact``): a private job's artifacts at rest under AES-256-GCM-SIV with a
  nonce derived from the key and the plaintext's digest. Deterministic on purpose:
  aggregators that merge the same bytes store the same ciphertext, so they agree on
  its CID as they agree on the digest; equal plaintexts are the only thing it reveals,
  and those have equal on-chain digests anyway.

Formats are length-prefixed binary, never JSON: a hostile envelope is parsed by
slicing bytes, with every length bounded by what is left.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping

from eth_utils import keccak, to_checksum_address

from ledger.errors import LedgerError

ENVELOPE_MAGIC = b"TLENV1\0"
ARTIFACT_MAGIC = b"TLSEAL1\0"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_RECIPIENTS = 255 + 64          # every aggregator of a job and its named auditors


class SealError(LedgerError):
    """Sealed bytes that cannot be opened: malformed, not ours, or failing authentication."""


class NotARecipient(SealError):
    """This account holds no slot of the envelope (it was not named as a reader)."""


class SealBroken(SealError):
    """The slot or ciphertext does not decrypt: garbage, a wrong key, or tampering."""


# --------------------------------------------------------------------------- public keys


def public_key_of(account) -> bytes:
    """The 64-byte uncompressed secp256k1 public key (no 0x04 prefix) of a LocalAccount."""
    return bytes(account._key_obj.public_key.to_bytes())


def address_of(public_key: bytes) -> str:
    """The address a public key controls: the last 20 bytes of its keccak256."""
    return to_checksum_address(keccak(bytes(public_key))[-20:])


def parse_public_key(text: str, what: str = "public key") -> bytes:
    """``0x`` + 128 hex digits (or 130 with the ``04`` prefix) as 64 bytes, checked to be a
    point of secp256k1; a one-line ``SealError`` otherwise."""
    from coincurve import PublicKey

    s = text[2:] if text[:2].lower() == "0x" else text
    try:
        raw = bytes.fromhex(s)
    except ValueError:
        raise SealError(f"{what} {text[:20]!r}…: not hex") from None
    if len(raw) == 65 and raw[0] == 4:
        raw = raw[1:]
    if len(raw) != 64:
        raise SealError(f"{what} has {len(raw)} bytes; a secp256k1 public key has 64 (or 65 starting with 04)")
    try:
        PublicKey(b"\x04" + raw)
    except ValueError:
        raise SealError(f"{what} 0x{raw.hex()[:16]}…: not a point of secp256k1") from None
    return raw


def public_key_hex(public_key: bytes) -> str:
    return "0x" + bytes(public_key).hex()


# --------------------------------------------------------------------------- envelopes


def _ecies_wrap(public_key: bytes, secret: bytes) -> bytes:
    import ecies

    return ecies.encrypt(b"\x04" + bytes(public_key), secret)


def _ecies_unwrap(account, blob: bytes) -> bytes:
    import ecies

    try:
        return ecies.decrypt(bytes(account.key), blob)
    except Exception:  # noqa: BLE001 - eciespy raises ValueError, coincurve's or AES errors on garbage
        raise SealBroken("the key slot does not decrypt with this account's key") from None


def encode_items(items: Mapping[str, bytes]) -> bytes:
    out = [struct.pack(">H", len(items))]
    for name in sorted(items):
        n, data = name.encode(), bytes(items[name])
        out += [struct.pack(">H", len(n)), n, struct.pack(">I", len(data)), data]
    return b"".join(out)


def decode_items(raw: bytes) -> dict[str, bytes]:
    r = _Reader(raw, "the sealed items")
    items = {}
    for _ in range(r.u16()):
        name = r.take(r.u16()).decode("utf-8", "replace")
        if name in items:
            raise SealBroken(f"the sealed items name {name!r} twice")
        items[name] = r.take(r.u32())
    r.end()
    return items


def seal(items: Mapping[str, bytes], recipients: Mapping[str, bytes], binding: bytes) -> bytes:
    """``items`` readable by ``recipients`` (address -> 64-byte public key) alone, bound to
    ``binding`` (canonical bytes naming what this is: job, round, worker...)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not 0 < len(recipients) <= MAX_RECIPIENTS:
        raise SealError(f"an envelope needs 1 to {MAX_RECIPIENTS} recipients, got {len(recipients)}")
    key, nonce = os.urandom(KEY_BYTES), os.urandom(NONCE_BYTES)
    body = AESGCM(key).encrypt(nonce, encode_items(items), bytes(binding))
    out = [ENVELOPE_MAGIC, struct.pack(">I", len(binding)), bytes(binding), struct.pack(">H", len(recipients))]
    for addr in sorted(recipients, key=str.lower):
        slot = _ecies_wrap(recipients[addr], key)
        out += [bytes.fromhex(addr[2:].lower()), struct.pack(">H", len(slot)), slot]
    out += [nonce, body]
    return b"".join(out)


def recipients_of(blob: bytes) -> list[str]:
    """The checksummed addresses an envelope names (public: anyone can list them)."""
    return [a for a, _ in _parse(blob)[1]]


def unseal(blob: bytes, account, binding: bytes) -> dict[str, bytes]:
    """The items of an envelope, opened with ``account``'s key; raises ``NotARecipient``,
    ``SealBroken`` (a slot or body that does not decrypt, a binding that is not ``binding``)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    bound, slots, nonce, body = _parse(blob)
    if bound != bytes(binding):
        raise SealBroken("the envelope is bound to another artifact (job, round, worker or segment)")
    mine = [s for a, s in slots if a.lower() == account.address.lower()]
    if not mine:
        raise NotARecipient(f"the envelope is sealed to {len(slots)} account(s), not to {account.address}")
    key = _ecies_unwrap(account, mine[0])
    if len(key) != KEY_BYTES:
        raise SealBroken("the key slot holds no AES-256 key")
    try:
        plain = AESGCM(key).decrypt(nonce, body, bytes(binding))
    except InvalidTag:
        raise SealBroken("the envelope's body does not decrypt with the key in this account's slot") from None
    return decode_items(plain)


def _parse(blob: bytes) -> tuple[bytes, list[tuple[str, bytes]], bytes, bytes]:
    r = _Reader(blob, "the envelope")
    if r.take(len(ENVELOPE_MAGIC)) != ENVELOPE_MAGIC:
        raise SealBroken("not a sealed envelope (bad magic)")
    binding = r.take(r.u32())
    n = r.u16()
    if not 0 < n <= MAX_RECIPIENTS:
        raise SealBroken(f"the envelope names {n} recipients")
    slots, seen = [], set()
    for _ in range(n):
        addr = to_checksum_address(r.take(20))
        if addr in seen:
            raise SealBroken(f"the envelope names {addr} twice")
        seen.add(addr)
        slots.append((addr, r.take(r.u16())))
    nonce = r.take(NONCE_BYTES)
    return binding, slots, nonce, r.rest()


class _Reader:
    """Slices of untrusted bytes, every length checked against what is left."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = memoryview(bytes(data)), 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SealBroken(f"{self.what} is truncated (wants {n} byte(s) at offset {self.pos}, "
                             f"has {len(self.data) - self.pos})")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def rest(self) -> bytes:
        out = bytes(self.data[self.pos:])
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SealBroken(f"{self.what} has {len(self.data) - self.pos} byte(s) past its end")


# --------------------------------------------------------------------------- a job's key


def new_job_key() -> bytes:
    return os.urandom(KEY_BYTES)


def wrap_key(job_key: bytes, public_key: bytes) -> bytes:
    """The job key, readable by the holder of ``public_key`` alone."""
    return _ecies_wrap(public_key, job_key)


def unwrap_key(wrapped: bytes, account) -> bytes:
    key = _ecies_unwrap(account, bytes(wrapped))
    if len(key) != KEY_BYTES:
        raise SealBroken("the wrapped job key is not 32 bytes")
    return key


def key_id(job_key: bytes) -> str:
    """A public name of a job key (so a member can tell which key a slot holds), not the key."""
    return "0x" + hmac.new(job_key, b"training-ledger/job-key-id", hashlib.sha256).hexdigest()[:16]


def encrypt_artifact(job_key: bytes, plaintext: bytes) -> bytes:
    """Deterministic: the same key and bytes always give the same ciphertext (see the module)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    digest = hashlib.sha256(plaintext).digest()
    nonce = hmac.new(job_key, b"nonce" + digest, hashlib.sha256).digest()[:NONCE_BYTES]
    return ARTIFACT_MAGIC + nonce + AESGCMSIV(job_key).encrypt(nonce, bytes(plaintext), ARTIFACT_MAGIC)


def is_sealed_artifact(blob: bytes) -> bool:
    return bytes(blob[:len(ARTIFACT_MAGIC)]) == ARTIFACT_MAGIC


def decrypt_artifact(job_key: bytes, blob: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

    if not is_sealed_artifact(blob) or len(blob) < len(ARTIFACT_MAGIC) + NONCE_BYTES + 16:
        raise SealBroken("not an artifact sealed with a job key")
    head = len(ARTIFACT_MAGIC)
    try:
        return AESGCMSIV(job_key).decrypt(bytes(blob[head:head + NONCE_BYTES]), bytes(blob[head + NONCE_BYTES:]),
                                          ARTIFACT_MAGIC)
    except InvalidTag:
        raise SealBroken("the artifact does not decrypt with the job key (tampered, or another job's)") from None
