"""Compressed contributions (SparseLoCo, arXiv 2508.15706), recomputable bit for bit.

With ``config.compress`` on, a worker's contribution is not its model but its
pseudo-gradient, compressed. From the round's parent ``P`` and the end of its training
``E`` (committed as an *end object*: ``bf16(E - P)`` bits, the same rounding as a
transcript snapshot) and its error feedback ``e`` (committed in the parent merge's
registry, zero the first time):

  acc   = ef_decay * e + from_bf16(bits)                   (float64, element-wise)
  per tensor, per chunk of ``chunk`` values (the last one shorter):
    keep the k = ceil(topk * n) largest |acc| (ties: lower position first), in position
    order; scale s = float32(the largest |acc|); each kept value as a ``bits``-bit code
    q = rint(((v / s) + 1) * (L - 1) / 2) in 0..L-1 (L = 2**bits), worth s * (2q - L + 1) / (L - 1)
  e'    = bf16(acc - decompressed)                          the next round's error feedback

Every step is a sort with a unique answer or a correctly rounded element-wise operation,
so a verifier holding the end object and ``e`` recomputes the very payload bytes and
``e'``'s digest (``node.verification.verify``: COMPRESSION otherwise), and every
aggregator decompresses the same float32 update (the merge's input: parent + update).

The payload, per floating tensor ``name``: ``topk/<name>/index`` (positions in their
chunk, uint16 for chunks up to 65536, else uint32), ``topk/<name>/code`` (the codes,
``bits`` per code, packed into uint8), ``topk/<name>/scale`` (float32, one per chunk).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ledger.store import checkpoint
from ledger.digest import from_hex, sha256_bytes, to_hex

from node.training.transcript import bf16_bits, from_bf16

META_KEY = "compressed"           # the contribution's metadata: its end object and e' (digest, CID, size)
REGISTRY_KEY = "error_feedback"   # a merge's metadata: each merged worker's committed e'
END_KIND, EF_KIND = "end", "error-feedback"
GROUP = "topk/"


class CompressionError(ValueError):
    """A committed compression object (end, error feedback, payload) that is not well formed."""


@dataclass(frozen=True)
class Ref:
    digest: bytes
    cid: str
    size: int

    def to_json(self) -> dict:
        return {"digest": to_hex(self.digest), "cid": self.cid, "size": self.size}

    @classmethod
    def parse(cls, d) -> "Ref":
        if not isinstance(d, dict) or not isinstance(d.get("cid"), str) or type(d.get("size")) is not int:
            raise CompressionError("a reference needs a digest, a CID and an integer size")
        digest = from_hex(str(d.get("digest", "")))
        if len(digest) != 32 or d["size"] < 1:
            raise CompressionError("a reference's digest must be 32 bytes and its size positive")
        return cls(digest, d["cid"], d["size"])

    @classmethod
    def of(cls, blob: bytes, import_options) -> "Ref":
        from ledger.store.cid import cid_of_bytes

        return cls(sha256_bytes(blob), cid_of_bytes(blob, import_options).cid, len(blob))


def _floats(like: Mapping[str, np.ndarray]) -> list[str]:
    return [n for n in sorted(like) if np.issubdtype(np.asarray(like[n]).dtype, np.floating)]


# --------------------------------------------------------------------------- the objects


def link_meta(kind: str, job: int, round_: int, worker: str, parent: bytes) -> dict[str, str]:
    return {"kind": kind, "job": str(int(job)), "round": str(int(round_)), "worker": worker.lower(),
            "parent": to_hex(parent)}


def end_bits(end: Mapping[str, np.ndarray], parent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """bf16 bits of (end - parent), float32 subtraction: what the end object stores."""
    return {n: bf16_bits(np.asarray(end[n], dtype=np.float32) - np.asarray(parent[n], dtype=np.float32))
            for n in _floats(parent)}


def encode_bits(bits: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> bytes:
    """An end object or an error feedback: bfloat16 bits per floating tensor."""
    return checkpoint.encode({n: np.ascontiguousarray(b, dtype=np.uint16) for n, b in bits.items()},
                             {**meta, "encoding": "bf16/1"})


def decode_bits(data: bytes, *, cid: str, expect_meta: Mapping[str, str], like: Mapping[str, np.ndarray],
                max_size: int) -> dict[str, np.ndarray]:
    """Strictly decode an end object or error feedback already checked against its digest."""
    try:
        tensors, meta = checkpoint.decode(data, cid=cid, max_size=max_size)
    except ValueError as e:
        raise CompressionError(f"{cid} is not a valid checkpoint: {e}") from None
    for key, want in {**expect_meta, "encoding": "bf16/1"}.items():
        if str(meta.get(key, "")).lower() != str(want).lower():
            raise CompressionError(f"{cid} declares {key} {meta.get(key)!r}, expected {want!r}")
    names = _floats(like)
    if sorted(tensors) != names:
        raise CompressionError(f"{cid}: its tensors are not the model's floating tensors")
    for n in names:
        t = tensors[n]
        if t.dtype != np.uint16 or t.shape != np.shape(like[n]):
            raise CompressionError(f"{cid}: {n} is {t.dtype}{list(t.shape)}, expected bfloat16 bits "
                                   f"(uint16){list(np.shape(like[n]))}")
        if not np.isfinite(from_bf16(t)).all():
            raise CompressionError(f"{cid}: {n} has NaN/Inf values")
    return {n: tensors[n] for n in names}


def end_params(bits: Mapping[str, np.ndarray], parent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The end of training an end object stands for: parent + its differences (float32)."""
    out = {n: np.asarray(parent[n]).copy() for n in parent}
    for n, b in bits.items():
        out[n] = (np.asarray(parent[n], dtype=np.float32) + from_bf16(b)).astype(np.float32)
    return out


def meta_refs(meta: Mapping[str, str]) -> tuple[Ref, Ref]:
    """(end object, e') a compressed contribution commits to, from its metadata."""
    raw = meta.get(META_KEY)
    if raw is None:
        raise CompressionError("the contribution commits to no end of training and error feedback")
    try:
        d = json.loads(raw)
        return Ref.parse(d["end"]), Ref.parse(d["error_feedback"])
    except (ValueError, KeyError, TypeError) as e:
        raise CompressionError(f"its compression record is malformed ({e})") from None


def refs_meta(end: Ref, ef: Ref) -> dict[str, str]:
    from ledger.protocol.jobconfig import canonical_json

    return {META_KEY: canonical_json({"end": end.to_json(), "error_feedback": ef.to_json()}).decode()}


def registry(meta: Mapping[str, str]) -> dict[str, Ref]:
    """worker (lower case) -> its committed error feedback, from a merge's metadata (none: {})."""
    raw = meta.get(REGISTRY_KEY)
    if raw is None:
        return {}
    try:
        d = json.loads(raw)
        return {str(w).lower(): Ref.parse(r) for w, r in d.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise CompressionError(f"the parent's error-feedback registry is malformed ({e})") from None


def registry_meta(reg: Mapping[str, Ref]) -> dict[str, str]:
    from ledger.protocol.jobconfig import canonical_json

    return {REGISTRY_KEY: canonical_json({w: r.to_json() for w, r in sorted(reg.items())}).decode()}


# --------------------------------------------------------------------------- compression


def _k(spec, n: int) -> int:
    return min(n, max(1, math.ceil(float(spec.topk) * n)))


def _chunks(size: int, chunk: int):
    full, tail = divmod(size, chunk)
    return full, tail


def compress(spec, delta_bits: Mapping[str, np.ndarray], ef_bits: Mapping[str, np.ndarray] | None
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(payload tensors, e' as bf16 bits) from the end object's bits and e (None: zero)."""
    levels = (1 << int(spec.bits)) - 1
    decay = float(spec.ef_decay)
    payload: dict[str, np.ndarray] = {}
    ef_out: dict[str, np.ndarray] = {}
    for name in sorted(delta_bits):
        acc = from_bf16(delta_bits[name]).astype(np.float64).reshape(-1)
        if ef_bits is not None:
            acc = np.add(np.multiply(from_bf16(ef_bits[name]).astype(np.float64).reshape(-1), decay), acc)
        idx, codes, scales, dense = _compress_flat(spec, acc, levels)
        payload[f"{GROUP}{name}/index"] = idx
        payload[f"{GROUP}{name}/code"] = _pack(codes, int(spec.bits))
        payload[f"{GROUP}{name}/scale"] = scales
        ef_out[name] = bf16_bits(np.subtract(acc, dense).astype(np.float32)).reshape(np.shape(delta_bits[name]))
    return payload, ef_out


def _compress_flat(spec, acc: np.ndarray, levels: int):
    n_chunk = int(spec.chunk)
    full, tail = _chunks(acc.size, n_chunk)
    idx_dtype = np.uint16 if n_chunk <= 1 << 16 else np.uint32
    parts = []
    if full:
        parts.append((acc[:full * n_chunk].reshape(full, n_chunk), _k(spec, n_chunk)))
    if tail:
        parts.append((acc[full * n_chunk:].reshape(1, tail), _k(spec, tail)))
    idxs, codes, scales, dense = [], [], [], []
    for block, k in parts:
        order = _top_positions(np.abs(block), k)
        vals = np.take_along_axis(block, order, axis=1)
        s32 = np.max(np.abs(vals), axis=1).astype(np.float32)
        s = s32.astype(np.float64)[:, None]
        safe = np.where(s > 0, s, 1.0)
        q = np.rint(np.multiply(np.add(np.divide(vals, safe), 1.0), levels / 2))
        q = np.clip(q, 0, levels).astype(np.uint8)
        deq = _dequant(q, s, levels)
        d = np.zeros_like(block)
        np.put_along_axis(d, order, deq, axis=1)
        idxs.append(order.astype(idx_dtype).reshape(-1))
        codes.append(q.reshape(-1))
        scales.append(s32)
        dense.append(d.reshape(-1))
    cat = np.concatenate
    return (cat(idxs) if idxs else np.zeros(0, idx_dtype), cat(codes) if codes else np.zeros(0, np.uint8),
            cat(scales) if scales else np.zeros(0, np.float32), cat(dense) if dense else np.zeros(0))


def _top_positions(mag: np.ndarray, k: int) -> np.ndarray:
    """Per row, the positions (ascending) of the k largest values, ties to the lower
    position: everything above the row's k-th largest value (a value ``np.partition``
    determines uniquely) and, of those equal to it, the first ones. Linear time."""
    n = mag.shape[1]
    kth = np.partition(mag, n - k, axis=1)[:, n - k][:, None]
    above = mag > kth
    tied = mag == kth
    room = k - np.count_nonzero(above, axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(keep)[1].reshape(mag.shape[0], k)


def _dequant(q: np.ndarray, s: np.ndarray, levels: int) -> np.ndarray:
    return np.multiply(s, np.divide(np.subtract(np.multiply(q.astype(np.float64), 2.0), float(levels)), float(levels)))


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    planes = np.unpackbits(codes.astype(np.uint8)[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little")


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[:count * bits]
    planes = np.zeros((count, 8), dtype=np.uint8)
    planes[:, :bits] = flat.reshape(count, bits)
    return np.packbits(planes, axis=1, bitorder="little").reshape(-1)


def decompress(spec, payload: Mapping[str, np.ndarray], like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float64 update a payload stands for, per floating tensor of ``like``. The payload
    must be one ``compress`` gave (a verifier compared its bytes with its own first)."""
    levels = (1 << int(spec.bits)) - 1
    n_chunk = int(spec.chunk)
    out = {}
    for name in _floats(like):
        shape = np.shape(like[name])
        size = int(np.prod(shape, dtype=np.int64))
        idx = np.asarray(payload[f"{GROUP}{name}/index"]).astype(np.int64)
        scales = np.asarray(payload[f"{GROUP}{name}/scale"], dtype=np.float64)
        q = _unpack(payload[f"{GROUP}{name}/code"], int(spec.bits), idx.size)
        full, tail = _chunks(size, n_chunk)
        ks = [_k(spec, n_chunk)] * full + ([_k(spec, tail)] if tail else [])
        starts = np.repeat(np.arange(len(ks), dtype=np.int64) * n_chunk, ks)
        per = np.repeat(scales, ks)
        d = np.zeros(size, dtype=np.float64)
        d[starts + idx] = _dequant(q, per, levels)
        out[name] = d.reshape(shape)
    return out


def with_update(parent: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The contribution a merge sees: parent + update, float64 then the parent's dtype."""
    out = {}
    for n in sorted(parent):
        p = np.asarray(parent[n])
        out[n] = (np.ascontiguousarray(np.add(p.astype(np.float64), update[n]).astype(p.dtype)) if n in update
                  else np.ascontiguousarray(p.copy()))
    return out


def same_payload(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> str | None:
    """Why two payloads differ (names, dtypes, shapes or bytes), or None."""
    if sorted(a) != sorted(b):
        return "its tensors are not the ones the compression gives"
    for n in sorted(a):
        x, y = np.asarray(a[n]), np.asarray(b[n])
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return f"{n} is not what compressing the end of its training with its error feedback gives"
    return None
