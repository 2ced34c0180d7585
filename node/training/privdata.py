"""Private training data: window bundles, the only part of a worker's text that leaves its machine.

Each training step reads ``batch_size`` windows of ``block_size + 1`` bytes at offsets
that depend only on (seed, step, the data's length) (``node.training.train.step_offsets``), so
anyone who knows the committed length knows exactly which bytes a segment of the
transcript read. A *window bundle* holds the 64-byte chunks (``ledger.protocol.datacommit``)
covering those bytes for one segment, with their Merkle multiproof against the
worker's committed root, bound to (job, round, worker, parent, segment).

The worker builds one bundle per segment while training and commits to each one's
digest and CID in the transcript manifest; it stores (reveals) only the bundles of
the segments the verifiers' lottery draws, after the round closes. A verifier checks
the bundle against the manifest, the chunks against the root, that they are exactly
the chunks the segment needs, and replays on a *sparse shard*: a byte string of the
committed length, zero except at the revealed chunks, which is all the replay reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ledger.protocol import datacommit as dc
from ledger import safejson
from ledger.digest import to_hex
from ledger.protocol.jobconfig import canonical_json

from node.training import train as trainmod
from node.training.transcript import segment_bounds

BUNDLE_KIND = "training-ledger/windows/1"


class BundleError(ValueError):
    """A bundle that is not the committed windows of this segment."""


def segment_chunks(seed: int, start: int, end: int, length: int, block_size: int, batch_size: int,
                   token_bytes: int = 1) -> list[int]:
    """The chunks steps ``start`` .. ``end - 1`` read from a stream of ``length`` bytes:
    windows of ``block_size + 1`` tokens at the step's token offsets, as byte ranges."""
    w = int(token_bytes)
    ranges = []
    for step in range(start, end):
        for o in trainmod.step_offsets(seed, step, length // w, block_size, batch_size).tolist():
            ranges.append((o * w, (o + block_size + 1) * w))
    return dc.chunks_covering(ranges)


def bundle_meta(job: int, round_: int, worker: str, parent: bytes, segment: int) -> dict:
    return {"kind": BUNDLE_KIND, "job": int(job), "round": int(round_), "worker": worker.lower(),
            "parent": to_hex(parent), "segment": int(segment)}


REVEAL_KIND = "training-ledger/reveal/1"


def reveal_binding(job: int, round_: int, worker: str) -> bytes:
    """What a sealed reveal is bound to (``ledger.privacy.sealing``'s associated data): one
    worker's reveal of one round of one job, never passed off as another's."""
    return canonical_json({"kind": REVEAL_KIND, "job": int(job), "round": int(round_), "worker": worker.lower()})


def encode_bundle(data: bytes, chunks: list[int], meta: Mapping) -> bytes:
    nodes = dc.prove(data, chunks)
    return canonical_json({
        **meta, "length": len(data),
        "chunks": [[i, data[slice(*dc.chunk_span(i, len(data)))].hex()] for i in chunks],
        "nodes": [[lvl, i, h.hex()] for (lvl, i), h in sorted(nodes.items())],
    })


def all_bundles(cfg, data: bytes, seed: int, meta_of) -> list[tuple[int, bytes]]:
    """(segment, bundle bytes) for every segment of a round; ``meta_of(segment)`` binds each."""
    out = []
    for i, (a, b) in enumerate(segment_bounds(cfg.train.steps, cfg.policy.segment_steps)):
        chunks = segment_chunks(seed, a, b, len(data), cfg.model.block_size, cfg.train.batch_size,
                                cfg.model.token_bytes)
        out.append((i, encode_bundle(data, chunks, meta_of(i))))
    return out


def open_bundle(blob: bytes, *, expect_meta: Mapping, root: bytes, length: int, want_chunks: list[int]) -> bytes:
    """Check a fetched bundle (its bytes already matched the committed digest) and
    return the sparse shard it reveals. Raises ``BundleError`` saying what is wrong."""
    try:
        d = safejson.loads(blob, what="its JSON", max_bytes=len(blob))
        if not isinstance(d, dict):
            raise TypeError("not an object")
        chunks = {}
        for i, h in d["chunks"]:
            if not isinstance(i, int) or i in chunks:
                raise TypeError("chunk indices must be distinct integers")
            chunks[i] = bytes.fromhex(h)
        nodes = {}
        for lvl, i, h in d["nodes"]:
            if not isinstance(lvl, int) or not isinstance(i, int):
                raise TypeError("node positions must be integers")
            nodes[(lvl, i)] = bytes.fromhex(h)
    except (ValueError, KeyError, TypeError) as e:
        raise BundleError(f"the window bundle is malformed ({e})") from None
    for k, want in {**expect_meta, "length": int(length)}.items():
        if d.get(k) != want:
            raise BundleError(f"the window bundle declares {k} {d.get(k)!r}, expected {want!r}")
    if sorted(chunks) != list(want_chunks):
        raise BundleError(f"the window bundle reveals chunks {_span(sorted(chunks))}, the segment's windows "
                          f"need {_span(want_chunks)}")
    problem = dc.verify(root, length, chunks, nodes)
    if problem:
        raise BundleError(f"the window bundle's Merkle proof fails against the worker's data root "
                          f"{to_hex(root)}: {problem}")
    sparse = bytearray(int(length))
    for i, c in chunks.items():
        a, b = dc.chunk_span(i, length)
        sparse[a:b] = c
    return bytes(sparse)


def _span(xs: list[int]) -> str:
    return f"{len(xs)} chunk(s) {xs[:4]}{'…' if len(xs) > 4 else ''}"
