"""Checkpoints: safetensors files (numpy only), deterministic bytes, strict loading.

``encode`` writes with the official ``safetensors`` library. safetensors stores the
``__metadata__`` map in Rust ``HashMap`` order, which differs from one process to the
next, so every piece of metadata lives under ONE key, ``ledger``, as canonical JSON
(sorted keys, no spaces): the same tensors and metadata give the same bytes in any
process, hence the same sha256 on chain.

``decode`` never trusts the file: it parses the header itself (size bounds, JSON,
dtypes, shapes, offsets in range, contiguous, non-overlapping, covering the buffer,
the ``ledger`` metadata key) before building arrays from the buffer. Pickles and
torch zip archives are recognised and refused; nothing is ever unpickled. Every
failure is a ``CheckpointFormatError`` naming the CID.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import safetensors.numpy

from ledger import safejson
from ledger.errors import CheckpointFormatError

META_KEY = "ledger"
MAX_HEADER = 16 << 20  # a header larger than this is not a checkpoint of ours
# A valid header nests three deep ({name: {"shape": [..]}}), the ledger metadata one
# ({key: str}). Deeper JSON is refused before json.loads sees it: CPython's parser
# recurses per level, so a few thousand brackets raise RecursionError.
HEADER_DEPTH = 3
META_DEPTH = 1

# safetensors dtype tag -> numpy dtype (little-endian). BF16 and FP8 have no numpy type.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_TAG_OF = {(dt.kind, dt.itemsize): tag for tag, dt in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str                   # safetensors tag, e.g. "F32"
    shape: tuple[int, ...]
    begin: int                   # offsets into the data section
    end: int

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Header:
    meta: dict[str, str]
    tensors: dict[str, TensorInfo]   # in file order
    data_start: int                  # 8 + header length


def canonical_meta(meta: Mapping[str, str]) -> str:
    """The one metadata string: sorted keys, no whitespace, ASCII only."""
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping of str to str, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"meta must map str to str; {k!r}: {type(v).__name__}")
    return json.dumps(dict(meta), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _prepare(name: str, a: np.ndarray) -> np.ndarray:
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise TypeError(f"tensor names must be non-empty strings other than __metadata__, got {name!r}")
    if isinstance(a, np.generic):
        a = np.asarray(a)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"tensor {name!r} must be a numpy array, got {type(a).__name__}")
    tag = _TAG_OF.get((a.dtype.kind, a.dtype.itemsize)) if a.dtype.kind in "biuf" else None
    if tag is None:
        raise TypeError(f"tensor {name!r}: dtype {a.dtype} cannot be stored (allowed: {sorted(DTYPES)})")
    return np.require(a, dtype=DTYPES[tag], requirements="C")  # keeps 0-d shapes (ascontiguousarray would not)


def encode(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> bytes:
    """Serialize to safetensors bytes; identical inputs give identical bytes in any process."""
    prepared = {name: _prepare(name, a) for name, a in sorted(tensors.items())}
    return safetensors.numpy.save(prepared, metadata={META_KEY: canonical_meta(meta)})


# --------------------------------------------------------------------------- loading


def _fail(cid: str | None, reason: str) -> CheckpointFormatError:
    what = f"checkpoint {cid}" if cid else "checkpoint"
    return CheckpointFormatError(f"{what} is not a valid ledger checkpoint: {reason}")


def _sniff(data: bytes) -> str | None:
    head = bytes(data[:8])
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):
        return "it is a Python pickle (refused: pickles are never loaded)"
    if head[:4] == b"PK\x03\x04":
        return "it is a zip archive (a torch.save file?); refused: only safetensors are accepted"
    return None


def _loads(raw: bytes | str, limit: int):
    """A header part as JSON: duplicate keys and nesting deeper than ``limit`` refused first."""
    return safejson.loads(raw, what="header", max_bytes=MAX_HEADER, max_depth=limit, unique_keys=True)


def _frame(data, fail, max_size: int | None) -> tuple[dict, int]:
    """(header object, header length) of safetensors bytes: sizes bounded before parsing."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise fail(f"expected bytes, got {type(data).__name__}")
    size = len(data)
    if max_size is not None and size > max_size:
        raise fail(f"{size} bytes is over the limit of {max_size}")
    sniffed = _sniff(data)
    if sniffed:
        raise fail(sniffed)
    if size < 8:
        raise fail(f"{size} bytes is too short for a safetensors file (truncated?)")
    (hlen,) = struct.unpack("<Q", bytes(data[:8]))
    if hlen > MAX_HEADER or hlen < 2:
        raise fail(f"header length {hlen} is out of bounds")
    if 8 + hlen > size:
        raise fail(f"header length {hlen} runs past the end of the {size}-byte file (truncated?)")
    raw = bytes(data[8:8 + hlen])
    try:
        raw.decode("utf-8")          # UTF-8 first: a clear error before any JSON parsing
        header = _loads(raw, HEADER_DEPTH)
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    return header, hlen


def _tensor_infos(header: dict, data_len: int, fail, dtypes) -> dict[str, TensorInfo]:
    """Every tensor entry checked: a known dtype, its shape's byte length, offsets in
    range, and the data section covered exactly once (sorted, no overlap, no slack)."""
    infos: list[tuple[str, TensorInfo]] = []
    for name, entry in header.items():
        if not name:
            raise fail("empty tensor name")
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise fail(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in dtypes:
            raise fail(f"tensor {name!r}: unsupported dtype {str(dtype)[:20]!r} (allowed: {', '.join(sorted(dtypes))})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise fail(f"tensor {name!r}: bad shape {str(shape)[:60]}")
        if (
            not isinstance(offs, list) or len(offs) != 2
            or not all(type(o) is int for o in offs) or not 0 <= offs[0] <= offs[1] <= data_len
        ):
            raise fail(f"tensor {name!r}: offsets {str(offs)[:60]} out of range (data is {data_len} bytes; truncated?)")
        nbytes = math.prod(shape) * dtypes[dtype]
        if offs[1] - offs[0] != nbytes:
            raise fail(f"tensor {name!r}: offsets span {offs[1] - offs[0]} bytes, shape {shape} of {dtype} needs {nbytes}")
        infos.append((name, TensorInfo(dtype, tuple(shape), offs[0], offs[1])))
    pos = 0
    for name, info in sorted(infos, key=lambda t: (t[1].begin, t[1].end)):
        if info.begin != pos:
            kind = "overlaps the previous tensor" if info.begin < pos else "leaves a gap before it"
            raise fail(f"tensor {name!r} at offset {info.begin} {kind} (expected {pos})")
        pos = info.end
    if pos != data_len:
        raise fail(f"tensors cover {pos} bytes but the data section is {data_len} bytes")
    return dict(infos)


def read_header(data: bytes, *, cid: str | None = None, max_size: int | None = None) -> Header:
    """Parse and validate the header without building any array."""
    fail = lambda reason: _fail(cid, reason)  # noqa: E731
    header, hlen = _frame(data, fail, max_size)
    md = header.pop("__metadata__", None)
    if not isinstance(md, dict) or set(md) != {META_KEY} or not isinstance(md[META_KEY], str):
        raise _fail(cid, f"no ledger metadata (expected __metadata__ with exactly one key {META_KEY!r})")
    try:
        meta = _loads(md[META_KEY], META_DEPTH)
    except ValueError as e:
        raise _fail(cid, f"ledger metadata is not JSON ({e})") from None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(cid, "ledger metadata must be a JSON object of strings")
    if canonical_meta(meta) != md[META_KEY]:
        raise _fail(cid, "ledger metadata is not in canonical form (sorted keys, compact)")
    sizes = {tag: dt.itemsize for tag, dt in DTYPES.items()}
    tensors = _tensor_infos(header, len(data) - 8 - hlen, fail, sizes)
    return Header(meta=meta, tensors=tensors, data_start=8 + hlen)


# Weights a model directory may hold: floating point only (an integer tag over float
# bytes would read them as huge integers), BF16 widened to float32 by its bit pattern.
WEIGHT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def read_weights(data: bytes, *, what: str, max_size: int | None = None,
                 dtypes: Mapping[str, int] = WEIGHT_DTYPES) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file that is not the ledger's own (a model directory's
    weights), as float32: the same strict layout checks as ``decode`` (header length
    bounded, offsets inside the file, no overlap), any ``__metadata__`` of strings,
    floating-point dtypes only. ``CheckpointFormatError`` naming ``what`` otherwise."""
    def fail(reason: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{what} is not a valid safetensors weights file: {reason}")

    header, hlen = _frame(data, fail, max_size)
    md = header.pop("__metadata__", {})
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise fail("__metadata__ must be an object of strings")
    infos = _tensor_infos(header, len(data) - 8 - hlen, fail, dtypes)
    buf, start = memoryview(data).cast("B"), 8 + hlen
    out: dict[str, np.ndarray] = {}
    for name, info in infos.items():
        raw = buf[start + info.begin:start + info.end]
        if info.dtype == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, dtype={"F16": "<f2", "F32": "<f4", "F64": "<f8"}[info.dtype]).astype(np.float32)
        out[name] = a.reshape(info.shape)
    return out


def read_meta(data: bytes, *, cid: str | None = None, max_size: int | None = None) -> dict[str, str]:
    """The ledger metadata of a checkpoint (validates the whole header)."""
    return read_header(data, cid=cid, max_size=max_size).meta


def decode(
    data: bytes, *, cid: str | None = None, max_size: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Strictly load a checkpoint: (tensors, meta). Arrays are writable copies."""
    h = read_header(data, cid=cid, max_size=max_size)
    buf = memoryview(data).cast("B")
    tensors: dict[str, np.ndarray] = {}
    for name, info in h.tensors.items():
        a = np.frombuffer(buf[h.data_start + info.begin:h.data_start + info.end], dtype=info.numpy_dtype)
        tensors[name] = a.reshape(info.shape).copy()
    return tensors, h.meta
