"""The UnixFS importer gives exactly Kubo's CIDs (checked against the independent ipfs_cid)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess

import numpy as np
import pytest

from conftest import require_tool
from ledger.store.cid import (
    CHUNK_SIZE,
    DAG_PB,
    MAX_LINKS,
    RAW,
    DagBuilder,
    ImportOptions,
    Importer,
    cid_from_chain,
    cid_of_bytes,
    cid_of_file,
    cid_of_stream,
    cid_to_chain,
    decode_node,
    encode_node,
    leaf_wrapping,
    link_bytes,
    make_cid,
    normalize_cid,
    parse_cid,
)

EMPTY_V0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
EMPTY_V1_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"

SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, MAX_LINKS * CHUNK_SIZE, MAX_LINKS * CHUNK_SIZE + 1]


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def oracle(path) -> dict:
    exe = require_tool("ipfs_cid")
    out = subprocess.run([exe, str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[0])


@pytest.mark.parametrize("size", SIZES + [50_000_000])
def test_cid_matches_ipfs_cid(tmp_path, size):
    data = random_bytes(size, seed=size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = oracle(path)
    got = cid_of_file(path)
    assert got.cid == expected["CIDv0"]
    assert got.size == size
    # ipfs_cid's CIDv1 is the same DAG's root named as CIDv1.
    assert make_cid(got.root_digest, 1, DAG_PB).encode("base32") == expected["CIDv1"]
    # Every entry point agrees: bytes, stream, and updates of odd sizes.
    assert cid_of_bytes(data).cid == got.cid
    assert cid_of_stream(io.BytesIO(data)).cid == got.cid
    imp = Importer()
    for off in range(0, size, 100_003):
        imp.update(data[off:off + 100_003])
    assert imp.finalize().cid == got.cid


def test_known_empty_file_cids():
    assert cid_of_bytes(b"").cid == EMPTY_V0
    assert cid_of_bytes(b"", ImportOptions(cid_version=1)).cid == EMPTY_V1_RAW


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5])
def test_v1_raw_leaves_shape(size):
    data = random_bytes(size, seed=7)
    r = cid_of_bytes(data, ImportOptions(cid_version=1))
    c = parse_cid(r.cid)
    assert r.cid.startswith("b") and c.version == 1
    if size <= CHUNK_SIZE:
        # One chunk: the file is a single raw block, its CID the sha256 of the bytes.
        assert c.codec.name == RAW and bytes(c.raw_digest) == hashlib.sha256(data).digest()
    else:
        assert c.codec.name == DAG_PB


def _reference_balanced(chunks: list[bytes], opts: ImportOptions) -> str:
    """Kubo's top-down balanced builder, transcribed literally (go-unixfs importer/balanced)."""
    b = DagBuilder(opts)
    raw = opts.leaves_raw

    def leaf(chunk):
        digest, tsize = b.leaf_digest(chunk)
        return link_bytes(digest, opts.cid_version, RAW if raw else DAG_PB), tsize, len(chunk), digest

    def node(children):
        block = encode_node([(h, t) for h, t, _, _ in children], sum(s for _, _, s, _ in children),
                            [s for _, _, s, _ in children])
        d = hashlib.sha256(block).digest()
        return link_bytes(d, opts.cid_version, DAG_PB), len(block) + sum(t for _, t, _, _ in children), \
            sum(s for _, _, s, _ in children), d

    it = iter(chunks or [b""])
    pending = [next(it, None)]

    def done():
        if pending[0] is None:
            pending[0] = next(it, None)
        return pending[0] is None

    def take():
        c = pending[0]
        pending[0] = None
        return c

    def fill(children, depth):
        while len(children) < opts.max_links and not done():
            children.append(leaf(take()) if depth == 1 else fill([], depth - 1))
        return node(children)

    root = leaf(take())
    is_leaf = True
    depth = 1
    while not done():
        root = fill([root], depth)
        is_leaf = False
        depth += 1
    codec = (RAW if raw else DAG_PB) if is_leaf else DAG_PB
    c = make_cid(root[3], opts.cid_version, codec)
    return str(c) if opts.cid_version == 0 else c.encode("base32")


@pytest.mark.parametrize("version", [0, 1])
def test_bottom_up_equals_kubo_top_down_on_deep_trees(version):
    # Tiny chunks and fan-out make trees of 4-5 levels cheap: every shape up to 3^4 leaves.
    opts = ImportOptions(cid_version=version, chunk_size=4, max_links=3)
    for nbytes in list(range(0, 60)) + [4 * 27, 4 * 27 + 1, 4 * 81, 4 * 81 + 3, 4 * 100]:
        data = random_bytes(nbytes, seed=nbytes)
        chunks = [data[i:i + 4] for i in range(0, nbytes, 4)]
        assert cid_of_bytes(data, opts).cid == _reference_balanced(chunks, opts), nbytes


def test_leaf_and_node_encoding_decode_back():
    prefix, suffix = leaf_wrapping(5)
    node = decode_node(prefix + b"hello" + suffix)
    assert (node.type, node.data, node.filesize, node.links) == (2, b"hello", 5, [])
    empty = decode_node(b"".join(leaf_wrapping(0)))
    assert empty.data == b"" and empty.filesize == 0
    links = [(link_bytes(bytes(32), 0, DAG_PB), 10), (link_bytes(b"\x01" * 32, 1, RAW), 3)]
    inner = decode_node(encode_node(links, 300000, [262144, 37856]))
    assert [l.hash for l in inner.links] == [h for h, _ in links]
    assert [l.tsize for l in inner.links] == [10, 3]
    assert inner.blocksizes == [262144, 37856] and inner.filesize == 300000
    with pytest.raises(ValueError):
        decode_node(b"\x0a\x10abc")  # truncated


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2_000_000])
@pytest.mark.parametrize("version", [0, 1])
def test_chain_form_round_trips(size, version):
    r = cid_of_bytes(random_bytes(size, seed=3), ImportOptions.for_version(version))
    b32 = cid_to_chain(r.cid)
    assert b32 == r.root_digest and len(b32) == 32
    assert cid_from_chain(b32, size, version) == r.cid


def test_cid_parsing_rejects_what_we_cannot_hold():
    with pytest.raises(ValueError):
        cid_to_chain("not-a-cid")
    # identity-hash CID: not sha2-256
    with pytest.raises(ValueError):
        cid_to_chain("bafkqaaa")
    with pytest.raises(ValueError):
        cid_from_chain(b"\x00" * 31, 1, 0)
    with pytest.raises(ValueError):
        cid_from_chain(b"\x00" * 32, 1, 2)
    with pytest.raises(ValueError):
        ImportOptions(cid_version=0, raw_leaves=True)
    # v1 text normalizes to base32, whatever base it came in
    v1 = cid_of_bytes(b"x" * 10, ImportOptions(1)).cid
    b58 = parse_cid(v1).encode("base58btc")
    assert normalize_cid(b58) == v1


def test_builder_refuses_short_chunks_in_the_middle():
    b = DagBuilder()
    b.add_leaf(b"short")
    with pytest.raises(ValueError):
        b.add_leaf(b"x" * CHUNK_SIZE)
