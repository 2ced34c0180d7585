"""The data commitment (ledger.protocol.datacommit): published vectors, proofs, the CLI."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import pytest

from ledger.protocol import datacommit as dc

# Published in README.md ("Bring your own data"): any implementation must reproduce them.
VECTORS = [
    (b"hello world\n", "0xa352d09023c591ac7d268da07571e3c7cd4d66e422a9204a312dcf37b6acd4e6"),
    (bytes(range(256))[:130], "0x466b0a652c5926684c4cf7adf06e54f0e0b7cf5e40f82eb4ff455d98e0cb330f"),
    (b"a" * 64, "0x76b5434f52c1cfdf8c5b8b44a8ddf316f6fd0cadad05d13edca1a3396d6f2d18"),
    (bytes(i % 251 for i in range(1000)), "0xba4dcb6f0c5170ba56701df1b2f03f8d63fea836c1c1e26eecbdb001cb4b26b1"),
]


def sha(*p):
    return hashlib.sha256(b"".join(p)).digest()


@pytest.mark.parametrize("data,root", VECTORS)
def test_vectors(data, root):
    c = dc.commit(data)
    assert "0x" + c.root.hex() == root and c.length == len(data)
    assert str(c) == f"root {root} bytes {len(data)}"


def test_vector_by_hand():
    """Three chunks: the first two paired, the third promoted; then the length bound in."""
    d = bytes(range(256))[:130]
    l0, l1, l2 = (sha(b"\0", d[a:a + 64]) for a in (0, 64, 128))
    mroot = sha(b"\1", sha(b"\1", l0, l1), l2)
    assert dc.commit(d).root == sha(b"\2", mroot, (130).to_bytes(8, "big"))


def test_length_is_committed():
    assert dc.commit(b"x" * 100).root != dc.commit(b"x" * 100 + b"\0").root
    with pytest.raises(ValueError):
        dc.commit(b"")


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200, 1000, 4097])
def test_proofs_round_trip_and_reject_forgeries(n):
    rng = random.Random(n)
    data = bytes(rng.randrange(256) for _ in range(n))
    c = dc.commit(data)
    count = dc.chunk_count(n)
    for picks in ([0], [count - 1], sorted(rng.sample(range(count), min(count, 5)))):
        chunks = {i: data[slice(*dc.chunk_span(i, n))] for i in picks}
        nodes = dc.prove(data, picks)
        assert dc.verify(c.root, n, chunks, nodes) is None
        # a changed byte, a wrong length, a changed proof node, an extra node: each fails
        i = picks[0]
        bad = {**chunks, i: bytes([chunks[i][0] ^ 1]) + chunks[i][1:]}
        assert "root" in dc.verify(c.root, n, bad, nodes)
        assert dc.verify(c.root, n + 1, chunks, nodes) is not None
        if nodes:
            k = next(iter(nodes))
            assert dc.verify(c.root, n, chunks, {**nodes, k: b"\0" * 32}) is not None
            assert "lacks" in dc.verify(c.root, n, chunks, {kk: v for kk, v in nodes.items() if kk != k})
        assert "does not need" in dc.verify(c.root, n, chunks, {**nodes, (0, 10**6): b"\0" * 32})


def test_chunks_covering():
    assert dc.chunks_covering([(0, 1)]) == [0]
    assert dc.chunks_covering([(60, 70), (200, 201)]) == [0, 1, 3]
    assert dc.chunks_covering([(64, 128)]) == [1]


def test_folder_is_sorted_concatenation(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"second ")
    (tmp_path / "a.txt").write_bytes(b"first ")
    (tmp_path / ".hidden").write_bytes(b"never")
    assert dc.read_text_data(tmp_path) == b"first second "
    assert dc.commit_path(tmp_path) == dc.commit(b"first second ")


def test_parse_root():
    r = "0x" + "ab" * 32
    assert dc.parse_root(f"{r}:100") == (bytes.fromhex("ab" * 32), 100)
    for bad in ("0x12:3", f"{r}:x", f"{r}:0", "ab" * 32):
        with pytest.raises(Exception, match="--data-root"):
            dc.parse_root(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_data_commit(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(VECTORS[0][0])
    out = _cli("data", "commit", str(f))
    assert out.returncode == 0 and out.stdout.strip() == f"root {VECTORS[0][1]} bytes 12", out.stderr
    out = _cli("data", "commit", str(tmp_path / "missing.txt"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "no such file" in out.stderr
    (tmp_path / "empty.txt").write_bytes(b"")
    out = _cli("data", "commit", str(tmp_path / "empty.txt"))
    assert out.returncode != 0 and "empty" in out.stderr
    h = _cli("data", "commit", "--help")
    assert "example:" in h.stdout and "ledger data commit" in h.stdout


def test_job_config_private_fields_round_trip_and_corpus_configs_unchanged():
    from ledger.protocol.jobconfig import DataRoot, JobConfig

    plain = JobConfig()
    raw = plain.to_bytes()
    assert b"roots" not in raw and b"validation_cid" not in raw   # corpus jobs hash as before
    assert JobConfig.from_bytes(raw).to_bytes() == raw and not JobConfig.from_bytes(raw).data.private
    cfg = JobConfig()
    cfg.data.roots = [DataRoot("0x" + "ab" * 32, 1000), DataRoot("0x" + "cd" * 32, 2000)]
    cfg.data.validation_cid = "QmTest"
    back = JobConfig.from_bytes(cfg.to_bytes())
    assert back.data.private and back.data.roots == cfg.data.roots and back.data.validation_cid == "QmTest"
    assert back.to_bytes() == cfg.to_bytes()
