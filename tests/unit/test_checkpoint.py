"""Checkpoint codec: deterministic bytes across processes, strict loading, never unpickle."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import io
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from ledger.store.checkpoint import DTYPES, META_KEY, decode, encode, read_header, read_meta
from ledger.errors import CheckpointFormatError

ROOT = Path(__file__).resolve().parents[2]
CID = "QmTestCheckpointCid1111111111111111111111111111"

META = {f"key{i:02d}": f"value {i}" for i in range(12)} | {"job": "7", "round": "3", "parent": "0x" + "ab" * 32}


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "wte.weight": rng.standard_normal((64, 32)).astype(np.float32),
        "blocks.0.attn.bias": rng.standard_normal(32).astype(np.float16),
        "step": np.array(12, dtype=np.int64),
        "mask": rng.integers(0, 2, size=(4, 4)).astype(bool),
        "empty": np.zeros((0, 5), dtype=np.float64),
        "ids": np.arange(10, dtype=np.int32),
        "bytes": np.arange(7, dtype=np.uint8),
    }


def test_round_trip_exact():
    t = tensors()
    data = encode(t, META)
    got, meta = decode(data, cid=CID)
    assert meta == META
    assert set(got) == set(t)
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert np.array_equal(got[k], v)
        assert got[k].flags.writeable
    assert read_meta(data) == META
    # It is a genuine safetensors file for other tools too.
    other = safetensors.numpy.load(data)
    assert np.array_equal(other["wte.weight"], t["wte.weight"])


def test_same_input_same_bytes_regardless_of_order_and_layout():
    t = tensors()
    a = encode(t, META)
    shuffled = {k: t[k] for k in reversed(list(t))}
    meta2 = {k: META[k] for k in reversed(list(META))}
    fortran = dict(shuffled, **{"wte.weight": np.asfortranarray(t["wte.weight"])})
    big_endian = dict(shuffled, **{"wte.weight": t["wte.weight"].astype(">f4")})
    assert encode(shuffled, meta2) == a
    assert encode(fortran, META) == a
    assert encode(big_endian, META) == a


CROSS_PROCESS = r"""
import sys, hashlib
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_checkpoint import tensors, META
from ledger.store.checkpoint import encode
sys.stdout.write(encode(tensors(), META).hex())
"""


def test_bytes_identical_across_processes():
    script = CROSS_PROCESS.format(root=str(ROOT), tests=str(Path(__file__).resolve().parent))
    outs = []
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        outs.append(bytes.fromhex(r.stdout))
    assert outs[0] == outs[1] == outs[2] == encode(tensors(), META)


def test_metadata_lives_under_one_canonical_key():
    data = encode({"x": np.ones(2, np.float32)}, {"b": "2", "a": "1"})
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    assert header["__metadata__"] == {META_KEY: '{"a":"1","b":"2"}'}


def test_encode_rejects_what_it_cannot_store():
    with pytest.raises(TypeError):
        encode({"x": np.ones(2)}, {"n": 1})  # meta values must be str
    with pytest.raises(TypeError):
        encode({"x": np.array([1 + 2j])}, {})
    with pytest.raises(TypeError):
        encode({"x": np.array(["a"], dtype=object)}, {})
    with pytest.raises(TypeError):
        encode({"x": [1.0, 2.0]}, {})
    with pytest.raises(TypeError):
        encode({"__metadata__": np.ones(1)}, {})


# ------------------------------------------------------------------ strict loading


def _with_header(header: dict, data: bytes, pad: bool = True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


LEDGER_MD = {"__metadata__": {META_KEY: "{}"}}


def _bad(data, match: str, **kw):
    with pytest.raises(CheckpointFormatError) as e:
        decode(data, cid=CID, **kw)
    msg = str(e.value)
    assert CID in msg, msg
    assert match in msg, msg
    return msg


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ledger-test-unpickled",))


def test_pickle_is_refused_and_never_loaded(tmp_path):
    marker = Path("/tmp/ledger-test-unpickled")
    marker.unlink(missing_ok=True)
    for proto in (2, 3, 4, 5):
        _bad(pickle.dumps({"w": Boom()}, protocol=proto), "pickle")
    assert not marker.exists()


def test_torch_style_zip_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    _bad(buf.getvalue(), "zip")


def test_garbage_and_truncation():
    good = encode(tensors(), META)
    _bad(b"", "too short")
    _bad(b"\x01\x02\x03", "too short")
    _bad(os.urandom(4096), "header")
    _bad(good[:4], "too short")
    _bad(good[:50], "runs past the end")          # cut inside the header
    _bad(good[:-1], "truncated?")                 # cut inside the data
    _bad(good + b"\x00", "cover")                 # trailing bytes
    _bad(struct.pack("<Q", 10) + b"not json!!", "not valid JSON")
    _bad(struct.pack("<Q", 2) + b"[]", "not a JSON object")


def test_header_lying_about_offsets():
    data = np.arange(4, dtype=np.float32).tobytes()  # 16 bytes
    t = lambda offs, shape=(4,), dtype="F32": {"dtype": dtype, "shape": list(shape), "data_offsets": offs}
    _bad(_with_header(LEDGER_MD | {"a": t([0, 32])}, data), "out of range")
    _bad(_with_header(LEDGER_MD | {"a": t([-4, 12])}, data), "out of range")
    _bad(_with_header(LEDGER_MD | {"a": t([8, 4])}, data), "out of range")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 12])}, data), "needs 16")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 16]), "b": t([8, 16], (2,))}, data), "overlaps")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 8], (2,)), "b": t([12, 16], (1,))}, data), "gap")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 8], (2,))}, data), "cover")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 16], (4,), "BF16")}, data), "unsupported dtype")
    _bad(_with_header(LEDGER_MD | {"a": t([0, 16], (-4,))}, data), "bad shape")
    _bad(_with_header(LEDGER_MD | {"a": {"dtype": "F32", "shape": [4]}}, data), "exactly dtype")
    hlen_huge = struct.pack("<Q", 1 << 40) + b"{}"
    _bad(hlen_huge, "out of bounds")
    # the same name twice in the header
    raw = b'{"__metadata__":{"ledger":"{}"},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},' \
          b'"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    _bad(struct.pack("<Q", len(raw)) + raw + data, "duplicate")
    # and a well-formed one passes
    got, meta = decode(_with_header(LEDGER_MD | {"a": t([0, 16])}, data), cid=CID)
    assert meta == {} and got["a"].tolist() == [0, 1, 2, 3]


def test_size_limit():
    good = encode(tensors(), META)
    msg = _bad(good, "over the limit", max_size=len(good) - 1)
    assert str(len(good) - 1) in msg
    decode(good, cid=CID, max_size=len(good))


def test_non_ledger_safetensors_are_refused():
    plain = safetensors.numpy.save({"x": np.ones(3, np.float32)})
    _bad(plain, "no ledger metadata")
    other_md = safetensors.numpy.save({"x": np.ones(3, np.float32)}, metadata={"format": "pt"})
    _bad(other_md, "no ledger metadata")
    extra = safetensors.numpy.save({"x": np.ones(3, np.float32)}, metadata={"ledger": "{}", "format": "pt"})
    _bad(extra, "no ledger metadata")
    not_json = safetensors.numpy.save({"x": np.ones(3, np.float32)}, metadata={"ledger": "nope"})
    _bad(not_json, "not JSON")
    not_canonical = safetensors.numpy.save({"x": np.ones(3, np.float32)}, metadata={"ledger": '{"b": "1", "a": "2"}'})
    _bad(not_canonical, "canonical")
    not_strings = safetensors.numpy.save({"x": np.ones(3, np.float32)}, metadata={"ledger": '{"a":1}'})
    _bad(not_strings, "strings")


def test_read_header_describes_tensors_without_loading():
    data = encode(tensors(), META)
    h = read_header(data, cid=CID)
    assert h.meta == META
    assert h.tensors["wte.weight"].dtype == "F32" and h.tensors["wte.weight"].shape == (64, 32)
    assert h.tensors["step"].shape == ()
    assert set(DTYPES) >= {i.dtype for i in h.tensors.values()}
    assert hashlib.sha256(data).digest() == hashlib.sha256(encode(tensors(), META)).digest()
