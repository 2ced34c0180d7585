"""Window bundles (node.training.privdata): what a verifier accepts, and every way it refuses."""

from __future__ import annotations

import json

import pytest

from ledger.protocol import datacommit as dc
from ledger.protocol.jobconfig import canonical_json
from node.training import privdata
from node.training import train

DATA = bytes((i * 7 + i // 13) % 256 for i in range(5000))
ROOT = dc.commit(DATA).root
META = privdata.bundle_meta(3, 2, "0xAbC", b"\1" * 32, 1)


def _want():
    return privdata.segment_chunks(11, 2, 4, len(DATA), 32, 8)


def test_chunks_cover_exactly_the_windows_the_steps_read():
    want = set(_want())
    read = set()
    for step in (2, 3):
        for o in train.step_offsets(11, step, len(DATA), 32, 8).tolist():
            read.update(range(o, o + 33))
    covered = {b for i in want for b in range(*dc.chunk_span(i, len(DATA)))}
    assert read <= covered
    assert all(any(b in read for b in range(*dc.chunk_span(i, len(DATA)))) for i in want)   # no chunk needlessly


def test_open_bundle_gives_the_sparse_shard():
    blob = privdata.encode_bundle(DATA, _want(), META)
    sparse = privdata.open_bundle(blob, expect_meta=META, root=ROOT, length=len(DATA), want_chunks=_want())
    assert len(sparse) == len(DATA)
    for i in range(dc.chunk_count(len(DATA))):
        a, b = dc.chunk_span(i, len(DATA))
        assert sparse[a:b] == (DATA[a:b] if i in _want() else bytes(b - a))


def _tampered(fn):
    d = json.loads(privdata.encode_bundle(DATA, _want(), META))
    fn(d)
    return canonical_json(d)


@pytest.mark.parametrize("name,fn,match", [
    ("byte", lambda d: d["chunks"][0].__setitem__(1, "ff" + d["chunks"][0][1][2:]), "Merkle proof"),
    ("node", lambda d: d["nodes"][0].__setitem__(2, "00" * 32), "Merkle proof"),
    ("missing chunk", lambda d: d["chunks"].pop(), "reveals chunks"),
    ("other segment", lambda d: d.__setitem__("segment", 2), "segment"),
    ("other worker", lambda d: d.__setitem__("worker", "0xdef"), "worker"),
    ("length", lambda d: d.__setitem__("length", 4999), "length"),
    ("garbage", lambda d: d.__setitem__("chunks", [["x", "zz"]]), "malformed"),
])
def test_open_bundle_refuses(name, fn, match):
    with pytest.raises(privdata.BundleError, match=match):
        privdata.open_bundle(_tampered(fn), expect_meta=META, root=ROOT, length=len(DATA), want_chunks=_want())


def test_other_data_cannot_prove_against_the_root():
    other = DATA[::-1]
    blob = privdata.encode_bundle(other, _want(), META)
    with pytest.raises(privdata.BundleError, match="Merkle proof"):
        privdata.open_bundle(blob, expect_meta=META, root=ROOT, length=len(DATA), want_chunks=_want())
