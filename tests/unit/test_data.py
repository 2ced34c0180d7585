"""Corpus, shards (IID and by speaker), validation split, throughput balancing, windows."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ledger.protocol.jobconfig import DataSpec
from node.training.data import (CorpusError, as_tensor, balance_sizes, load_corpus, windows, make_split, shard_specs,
                       speeches, split_point)


@pytest.fixture(scope="module")
def corpus() -> bytes:
    return load_corpus()


def test_load_corpus_checks_sha256(corpus, tmp_path):
    assert len(corpus) == 1_115_394
    assert "0x" + hashlib.sha256(corpus).hexdigest() == DataSpec().corpus_sha256
    bad = tmp_path / "tampered.txt"
    bad.write_bytes(corpus[:-1] + b"!")
    with pytest.raises(CorpusError, match="sha256"):
        load_corpus(bad)
    assert load_corpus(bad, expected_sha256=None).endswith(b"!")
    with pytest.raises(CorpusError, match="cannot read"):
        load_corpus(tmp_path / "missing.txt")


@pytest.mark.parametrize("mode", ["iid", "speaker"])
def test_split_deterministic_disjoint_covering(corpus, mode):
    s = make_split(corpus, 4, mode, 0.1)
    assert s == make_split(corpus, 4, mode, 0.1)
    cut = split_point(corpus, 0.1)
    assert s.validation == corpus[cut:]
    assert abs(len(s.validation) - 0.1 * len(corpus)) < 1000
    assert corpus[cut - 2:cut] == b"\n\n"  # validation starts at a speech
    assert len(s.shards) == 4
    assert sum(map(len, s.shards)) == cut
    if mode == "iid":
        assert b"".join(s.shards) == corpus[:cut]
    else:
        # every speech of the training text lands in exactly one shard
        train = speeches(corpus[:cut])
        got = sorted(p for sh in s.shards for _, p in speeches(sh))
        assert got == sorted(p for _, p in train)
    sizes = [len(x) for x in s.shards]
    assert max(sizes) - min(sizes) < 0.02 * cut / 4  # balanced in bytes


def test_speaker_split_is_non_iid(corpus):
    s = make_split(corpus, 4, "speaker")
    who = [{name for name, _ in speeches(sh)} for sh in s.shards]
    for i in range(4):
        assert len(who[i]) > 10
        for j in range(i + 1, 4):
            assert not (who[i] & who[j]), "a speaker appears in two shards"
    # IID contiguous shards, by contrast, share speakers across plays' recurring roles
    iid = [{name for name, _ in speeches(sh)} for sh in make_split(corpus, 4, "iid").shards]
    assert any(iid[i] & iid[j] for i in range(4) for j in range(i + 1, 4))


def test_sized_split(corpus):
    cut = split_point(corpus, 0.1)
    sizes = balance_sizes([1.0, 2.0, 3.0, 4.0], cut, 1000)
    s = make_split(corpus, 4, "iid", sizes=sizes)
    assert [len(x) for x in s.shards] == sizes
    w = make_split(corpus, 4, "iid", sizes=[1, 2, 3, 4])  # weights, rescaled exactly
    assert sum(map(len, w.shards)) == cut
    assert [round(len(x) / cut, 3) for x in w.shards] == [0.1, 0.2, 0.3, 0.4]
    sp = make_split(corpus, 4, "speaker", sizes=[1, 1, 1, 5])
    assert abs(len(sp.shards[3]) / cut - 5 / 8) < 0.02


def test_shard_specs(corpus):
    s = make_split(corpus, 3, "speaker")
    specs, val = shard_specs(s)
    assert [x.index for x in specs] == [0, 1, 2] and val.index == -1
    for spec, data in zip(specs, s.shards):
        assert spec.sha256 == "0x" + hashlib.sha256(data).hexdigest() and spec.num_bytes == len(data)
    assert val.sha256 == "0x" + hashlib.sha256(s.validation).hexdigest()
    assert len({x.sha256 for x in specs}) == 3


def test_bad_arguments(corpus):
    with pytest.raises(ValueError):
        make_split(corpus, 4, "random")
    with pytest.raises(ValueError):
        make_split(corpus, 0)
    with pytest.raises(ValueError):
        make_split(corpus, 2, val_fraction=1.5)
    with pytest.raises(ValueError):
        balance_sizes([1.0, 0.0], 100)
    with pytest.raises(ValueError):
        balance_sizes([1.0, 1.0], 100, min_size=60)


def _round_time(sizes, tps):
    return max(s / t for s, t in zip(sizes, tps))


@pytest.mark.parametrize("tps", [[1.0, 2.0, 3.0, 4.0], [5.0, 1.0], [0.3, 0.3, 7.0], [1.0, 1.0, 1.0]])
def test_balance_sizes_beats_equal_shards(tps):
    total = 1_003_901
    sizes = balance_sizes(tps, total)
    assert sum(sizes) == total and all(isinstance(s, int) for s in sizes)
    equal = [total // len(tps) + (i < total % len(tps)) for i in range(len(tps))]
    if len(set(tps)) > 1:
        assert _round_time(sizes, tps) < 0.9 * _round_time(equal, tps)
    else:
        assert sorted(sizes) == sorted(equal)
    # optimal among integer assignments: moving one unit anywhere never helps
    best = _round_time(sizes, tps)
    for i in range(len(tps)):
        for j in range(len(tps)):
            if i != j and sizes[i] > 0:
                moved = list(sizes)
                moved[i] -= 1
                moved[j] += 1
                assert _round_time(moved, tps) >= best


def test_balance_sizes_min_size():
    sizes = balance_sizes([0.01, 1.0, 1.0], 1000, min_size=100)
    assert sizes[0] == 100 and sum(sizes) == 1000 and sizes[1] + sizes[2] == 900
    assert balance_sizes([1.0], 17) == [17]
    assert sum(balance_sizes([1e-9, 1e9, 3.3], 10, 2)) == 10


def test_windows_are_x_and_y_shifted_by_one(corpus):
    data = as_tensor(corpus[:10_000])
    x, y = windows(data, torch.tensor([0, 17, 9_000]), 64)
    assert x.shape == y.shape == (3, 64) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one byte
    assert bytes(x[1].tolist()) + bytes([y[1, -1].item()]) == corpus[17:17 + 65]
