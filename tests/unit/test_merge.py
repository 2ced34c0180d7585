"""Merge rules (node/verification/merge.py): exact values, robustness, determinism, streaming."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from ledger.protocol.jobconfig import Policy
from node.verification.merge import (
    MergeResult,
    exact_sum_of_squares,
    fedavg,
    krum_scores,
    merge,
    tensor_digest,
    update_norm,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ("fedavg", "median", "trimmed_mean", "krum")


def addr(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


def shifted(parent: dict, delta: float) -> dict:
    return {k: (v.astype(np.float64) + delta).astype(v.dtype) for k, v in parent.items()}


@pytest.fixture
def parent():
    return {
        "a": np.array([0.0, 1.0, -2.0, 8.0], dtype=np.float32),
        "b": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
    }


def assert_params_equal(x: dict, y: dict):
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
        assert x[k].tobytes() == y[k].tobytes(), k


# ---------------------------------------------------------------- exact values


def test_fedavg_exact_sample_weighted(parent):
    cs = [(addr(2), 1, shifted(parent, 1.0)), (addr(1), 3, shifted(parent, 5.0))]
    res = merge("fedavg", parent, cs, Policy())
    assert isinstance(res, MergeResult)
    # (1*1 + 3*5) / 4 = 4
    assert_params_equal(res.params, shifted(parent, 4.0))
    assert res.selected == [addr(1), addr(2)]
    assert res.info["total_samples"] == 4


def test_fedavg_all_zero_samples_uses_equal_weights(parent):
    cs = [(addr(1), 0, shifted(parent, 1.0)), (addr(2), 0, shifted(parent, 3.0))]
    res = merge("fedavg", parent, cs)
    assert_params_equal(res.params, shifted(parent, 2.0))
    assert res.info["weights"] == "equal"


def test_median_exact_odd_and_even(parent):
    cs = [(addr(i), 1, shifted(parent, d)) for i, d in enumerate([2.0, 100.0, 1.0])]
    assert_params_equal(merge("median", parent, cs).params, shifted(parent, 2.0))
    cs.append((addr(9), 1, shifted(parent, 3.0)))
    assert_params_equal(merge("median", parent, cs).params, shifted(parent, 2.5))


def test_trimmed_mean_exact(parent):
    cs = [(addr(i), 1, shifted(parent, d)) for i, d in enumerate([1.0, 100.0, 3.0, 2.0])]
    res = merge("trimmed_mean", parent, cs, Policy(trim_ratio=0.25))
    assert res.info["trimmed_each_end"] == 1
    assert_params_equal(res.params, shifted(parent, 2.5))
    cs.append((addr(9), 1, shifted(parent, -50.0)))
    res = merge("trimmed_mean", parent, cs, Policy(trim_ratio=0.2))
    assert res.info["trimmed_each_end"] == 1
    assert_params_equal(res.params, shifted(parent, 2.0))


def test_trimmed_mean_ratio_read_as_decimal_and_capped(parent):
    cs = [(addr(i), 1, shifted(parent, float(i))) for i in range(100)]
    # 0.29 * 100 is 28.999999999999996 in floating point; the rule trims 29
    assert merge("trimmed_mean", parent, cs, Policy(trim_ratio=0.29)).info["trimmed_each_end"] == 29
    # a ratio of 0.5 would leave nothing: capped so one value (the median) remains
    res = merge("trimmed_mean", parent, cs[:5], Policy(trim_ratio=0.5))
    assert res.info["kept"] == 1
    assert_params_equal(res.params, shifted(parent, 2.0))


def test_trimmed_mean_zero_ratio_is_plain_mean(parent):
    cs = [(addr(i), 7 * i + 1, shifted(parent, d)) for i, d in enumerate([1.0, 2.0, 6.0])]
    res = merge("trimmed_mean", parent, cs, Policy(trim_ratio=0.0))
    assert_params_equal(res.params, shifted(parent, 3.0))


def test_krum_exact_scores_and_selection(parent):
    # one float, deltas 0, 1, 2, 3, 100 on every coordinate (8 coordinates)
    deltas = [0.0, 1.0, 2.0, 3.0, 100.0]
    cs = [(addr(i), 1, shifted(parent, d)) for i, d in enumerate(deltas)]
    items = sorted(cs, key=lambda c: c[0])
    scores, nb, dist = krum_scores(parent, items, f=1)
    assert nb == 2                       # n - f - 2
    assert dist[0][1] == 8.0 and dist[0][4] == 8 * 100.0 ** 2
    # worker 0: nearest 1 and 2 -> 8*(1 + 4) = 40 ; worker 1: 0 and 2 -> 16 ; worker 4: 97^2 + 98^2
    assert scores[:4] == [40.0, 16.0, 16.0, 40.0]
    assert scores[4] == 8.0 * (97.0 ** 2 + 98.0 ** 2)
    res = merge("krum", parent, cs, Policy(merge_rule="krum", krum_f=1, krum_m=0))
    assert res.selected == [addr(i) for i in range(4)]        # m = n - f = 4
    assert_params_equal(res.params, shifted(parent, 1.5))        # FedAvg of the selected
    res = merge("krum", parent, cs, Policy(merge_rule="krum", krum_f=1, krum_m=2))
    assert res.selected == [addr(1), addr(2)]                 # the two best scores
    assert_params_equal(res.params, shifted(parent, 1.5))


def test_krum_degenerate_small_n(parent):
    one = merge("krum", parent, [(addr(1), 5, shifted(parent, 1.0))], Policy(krum_f=1))
    assert one.selected == [addr(1)]
    assert_params_equal(one.params, shifted(parent, 1.0))
    two = merge("krum", parent, [(addr(1), 1, shifted(parent, 1.0)), (addr(2), 1, shifted(parent, 3.0))],
                Policy(krum_f=1))
    assert two.info["degenerate"] and len(two.selected) == 1


def test_empty_round_returns_parent(parent):
    for rule in RULES:
        res = merge(rule, parent, [], Policy())
        assert res.selected == []
        assert_params_equal(res.params, parent)
        assert res.params["a"] is not parent["a"]


def test_single_contribution_is_reproduced(parent):
    rng = np.random.default_rng(3)
    c = {k: (v + rng.standard_normal(v.shape).astype(np.float32)) for k, v in parent.items()}
    for rule in RULES:
        assert_params_equal(merge(rule, parent, [(addr(1), 17, c)], Policy()).params, c)


def test_dtype_kept_and_non_float_from_parent():
    parent = {"h": np.array([1.0, 2.0], dtype=np.float16), "steps": np.array([7], dtype=np.int64)}
    c1 = {"h": np.array([2.0, 2.0], dtype=np.float16), "steps": np.array([9], dtype=np.int64)}
    c2 = {"h": np.array([4.0, 2.0], dtype=np.float16), "steps": np.array([11], dtype=np.int64)}
    for rule in RULES:
        out = merge(rule, parent, [(addr(1), 1, c1), (addr(2), 1, c2)], Policy()).params
        assert out["h"].dtype == np.float16 and out["steps"].dtype == np.int64
        assert out["steps"].tolist() == [7]
    assert merge("fedavg", parent, [(addr(1), 1, c1), (addr(2), 1, c2)]).params["h"].tolist() == [3.0, 2.0]


def test_rejects_bad_input(parent):
    bad_shape = dict(parent, b=np.zeros((4,), np.float32))
    bad_dtype = dict(parent, a=parent["a"].astype(np.float64))
    extra = dict(parent, c=np.zeros(1, np.float32))
    nan = dict(parent, a=np.array([np.nan, 0, 0, 0], np.float32))
    for rule in RULES:
        for bad in (bad_shape, bad_dtype, extra, nan):
            with pytest.raises(ValueError):
                merge(rule, parent, [(addr(1), 1, parent), (addr(2), 1, bad)], Policy())
        with pytest.raises(ValueError):      # the same worker twice
            merge(rule, parent, [(addr(0xab), 1, parent), ("0x" + addr(0xab)[2:].upper(), 1, parent)])
    with pytest.raises(ValueError):
        merge("mean", parent, [], Policy())
    with pytest.raises(ValueError):
        merge("fedavg", parent, [(addr(1), -1, parent)])


# ---------------------------------------------------------------- order and streaming


def random_round(seed: int, n: int = 7, shape=(33, 17)):
    rng = np.random.default_rng(seed)
    parent = {
        "w": rng.standard_normal(shape).astype(np.float32),
        "bias": (rng.standard_normal(shape[1]) * 1e-3).astype(np.float32),
        "emb": (rng.standard_normal((5, 3)) * 1e4).astype(np.float32),
    }
    cs = []
    for i in range(n):
        scale = 10.0 ** rng.integers(-6, 0)
        params = {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in parent.items()}
        params["emb"][0, 0] = parent["emb"][0, 0]           # a zero update on some coordinate
        # mixed-case addresses: sorting is by the lowercase hex
        worker = "0x" + "".join(c.upper() if j % 3 == 0 else c for j, c in enumerate(rng.bytes(20).hex()))
        cs.append((worker, int(rng.integers(1, 1000)), params))
    return parent, cs


@pytest.mark.parametrize("rule", RULES)
def test_input_order_does_not_matter(rule):
    parent, cs = random_round(11)
    ref = merge(rule, parent, cs, Policy(krum_f=2))
    for seed in range(3):
        shuffled = cs[:]
        random.Random(seed).shuffle(shuffled)
        res = merge(rule, parent, shuffled, Policy(krum_f=2))
        assert_params_equal(res.params, ref.params)
        assert res.selected == ref.selected
    assert ref.selected == sorted(ref.selected, key=str.lower)


def test_fedavg_streaming_equals_list_and_holds_one_contribution():
    parent, cs = random_round(5, n=9)
    ordered = sorted(cs, key=lambda c: c[0].lower())
    ref = merge("fedavg", parent, cs)
    refs: list[weakref.ref] = []

    def stream():
        for w, n, p in ordered:
            if len(refs) >= 2:
                gc.collect()
                # only the contribution being merged may still be alive
                assert refs[-2]() is None, "fedavg kept an earlier contribution alive"
            params = {k: v.copy() for k, v in p.items()}
            holder = _Params(params)
            refs.append(weakref.ref(holder))
            yield w, n, holder
            del params, holder

    res = merge("fedavg", parent, stream())
    assert_params_equal(res.params, ref.params)
    assert res.selected == ref.selected


class _Params(dict):
    """A dict that can be weak-referenced (to prove the stream is not retained)."""


def test_fedavg_stream_must_be_sorted():
    parent, cs = random_round(6, n=3)
    backwards = sorted(cs, key=lambda c: c[0].lower(), reverse=True)
    with pytest.raises(ValueError, match="increasing worker order"):
        fedavg(parent, iter(backwards))


# ---------------------------------------------------------------- robustness


def honest_round(seed: int, n_honest: int = 6):
    rng = np.random.default_rng(seed)
    parent = {"w": rng.standard_normal((40, 30)).astype(np.float32),
              "b": rng.standard_normal(30).astype(np.float32)}
    direction = {k: rng.standard_normal(v.shape) * 0.01 for k, v in parent.items()}
    cs = []
    for i in range(n_honest):
        p = {k: (v + direction[k] + 0.001 * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in parent.items()}
        cs.append((addr(i + 1), 100, p))
    honest_mean = merge("fedavg", parent, cs).params
    return rng, parent, cs, honest_mean


def attack(kind: str, rng, parent, honest):
    base = honest[0][2]
    if kind == "scaled":
        return {k: (parent[k] + 100.0 * (base[k].astype(np.float64) - parent[k])).astype(np.float32) for k in parent}
    if kind == "sign_flip":
        return {k: (parent[k] - 10.0 * (base[k].astype(np.float64) - parent[k])).astype(np.float32) for k in parent}
    if kind == "noise":
        return {k: (parent[k] + rng.standard_normal(parent[k].shape)).astype(np.float32) for k in parent}
    raise AssertionError(kind)


def distance(x: dict, y: dict) -> float:
    return float(np.sqrt(sum(((x[k].astype(np.float64) - y[k]) ** 2).sum() for k in x)))


@pytest.mark.parametrize("kind", ["scaled", "sign_flip", "noise"])
def test_robust_rules_drop_an_outlier(kind):
    rng, parent, honest, honest_mean = honest_round(21)
    bad_worker = addr(0xEE)
    cs = honest + [(bad_worker, 10_000, attack(kind, rng, parent, honest))]
    policy = Policy(trim_ratio=0.2, krum_f=1)
    honest_step = distance(honest_mean, parent)
    poisoned = distance(merge("fedavg", parent, cs, policy).params, honest_mean)
    assert poisoned > 2 * honest_step           # fedavg is dragged away
    for rule in ("median", "trimmed_mean", "krum"):
        res = merge(rule, parent, cs, policy)
        err = distance(res.params, honest_mean)
        assert err < 0.25 * honest_step, (rule, err, honest_step)
    assert bad_worker not in merge("krum", parent, cs, policy).selected


# ---------------------------------------------------------------- digests and norms


def test_tensor_digest():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones(2, np.float32)}
    same = {"y": np.ones(2, np.float32), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert tensor_digest(a) == tensor_digest(same) and len(tensor_digest(a)) == 32
    big_endian = {"x": a["x"].astype(">f4"), "y": a["y"].astype(">f4")}
    assert tensor_digest(big_endian) == tensor_digest(a)
    fortran = {"x": np.asfortranarray(a["x"]), "y": a["y"]}
    assert tensor_digest(fortran) == tensor_digest(a)
    variants = [
        {"x": a["x"].reshape(3, 2), "y": a["y"]},
        {"x": a["x"].astype(np.float64), "y": a["y"]},
        {"x2": a["x"], "y": a["y"]},
        {"x": a["x"], "y": np.array([1.0, -0.0 + 1.0000001], np.float32)},
        {"x": a["x"]},
    ]
    assert len({tensor_digest(v) for v in variants} | {tensor_digest(a)}) == len(variants) + 1


def test_update_norm_and_exact_sum():
    parent = {"a": np.zeros(4, np.float32), "b": np.zeros((2, 2), np.float32)}
    params = {"a": np.array([3, 0, 0, 0], np.float32), "b": np.array([[0, 4], [0, 0]], np.float32)}
    assert update_norm(params, parent) == 5.0
    # fsum is exact: 1e16 + 1 + ... - 1e16 would lose the ones in naive order
    assert exact_sum_of_squares([np.array([1e8, 1.0, 1.0, 1.0]), np.array([-0.0])]) == 1e16 + 3.0


def _fsum_of_squares(arrays) -> float:
    """The definition: every square rounded to float64, the sum exactly rounded."""
    import math
    try:
        return math.fsum(x * x for a in arrays for x in np.asarray(a, np.float64).reshape(-1).tolist())
    except OverflowError:
        return math.inf


@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_exact_sum_is_fsum_bit_for_bit_on_hard_inputs(chunk):
    """The vectorised exact sum must give fsum's value exactly, on inputs where any
    float accumulation would not: magnitudes 300 decades apart, subnormal squares,
    sums landing on rounding ties, chunk boundaries, empty arrays, zeros of both signs."""
    import math

    rng = np.random.default_rng(7)
    cases = [
        [], [np.array([])], [np.array([0.0, -0.0])],
        [np.array([1e150, 1e-150, 3.0, 1e-160, 5e-324, 2.2e-308, 1e154])],
        [rng.normal(size=5000) * 10.0 ** rng.integers(-160, 150, size=5000)],
        [rng.normal(size=(300, 7)).astype(np.float32), rng.normal(size=5) * 1e-3],
        [np.array([2.0 ** 27 + 1, 2.0 ** 26 - 1, 1.0 + 2.0 ** -52])],    # mantissas across the 27-bit split
    ]
    for _ in range(300):   # values on a coarse grid: many exact halfway cases for the final rounding
        n = int(rng.integers(1, 40))
        v = rng.normal(size=n) * 2.0 ** rng.integers(-30, 30, size=n)
        cases.append([np.round(v * 2 ** 20) / 2 ** 20])
    for arrays in cases:
        got, want = exact_sum_of_squares(arrays, chunk=chunk), _fsum_of_squares(arrays)
        assert got == want and math.copysign(1, got) == 1, (arrays, got.hex(), want.hex())
    # non-finite squares: inf (also by overflow) and nan, as fsum would say
    assert exact_sum_of_squares([np.array([1e200, 1.0])], chunk=chunk) == math.inf
    assert math.isnan(exact_sum_of_squares([np.array([1.0, np.nan, np.inf])], chunk=chunk))
    with pytest.raises(ValueError):
        exact_sum_of_squares([np.ones(3)], chunk=(1 << 20) + 1)   # would no longer be exact


# ---------------------------------------------------------------- bit-exact across processes

_CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
if {import_torch}:
    import torch
    torch.set_num_threads(1)
from ledger.protocol.jobconfig import Policy
from node.verification.merge import merge, tensor_digest
sys.path.insert(0, {tests!r})
from test_merge import random_round
out = {{}}
for seed in (1, 2):
    parent, cs = random_round(seed, n=8, shape=(64, 48))
    for rule in {rules!r}:
        res = merge(rule, parent, cs[::-1], Policy(trim_ratio=0.25, krum_f=2, krum_m=0))
        out[f"{{seed}}:{{rule}}"] = [tensor_digest(res.params).hex(), res.selected]
print(json.dumps(out, sort_keys=True))
"""


def _child_digests(env_extra: dict, import_torch: bool) -> dict:
    code = _CHILD.format(root=str(ROOT), tests=str(Path(__file__).resolve().parent), rules=RULES, import_torch=import_torch)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPY_", "OMP_", "OPENBLAS_", "MKL_"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _local_digests() -> dict:
    out = {}
    for seed in (1, 2):
        parent, cs = random_round(seed, n=8, shape=(64, 48))
        for rule in RULES:
            res = merge(rule, parent, cs, Policy(trim_ratio=0.25, krum_f=2, krum_m=0))
            out[f"{seed}:{rule}"] = [tensor_digest(res.params).hex(), res.selected]
    return out


def test_bit_exact_in_separate_processes():
    local = _local_digests()
    # another process, another hash seed, many threads
    assert _child_digests({"PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "2"}, import_torch=False) == local
    # another process whose numpy may not use its AVX2/AVX-512 kernels (sort, add, multiply,
    # casts take the baseline SSE paths), with torch loaded first
    assert _child_digests({"PYTHONHASHSEED": "7", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
                          import_torch=True) == local
