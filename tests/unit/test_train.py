"""Deterministic local training: seeds, bit-identical replay across processes, evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ledger.protocol.jobconfig import ModelSpec, TrainSpec
from node.training.data import load_corpus, make_split
from node.models.bytegpt import GPTConfig, init_params
from node.models.params import param_bytes
from ledger.errors import LedgerError
from node.training.train import derive_seed, evaluate, num_samples, step_offsets, train_local

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: train from a genesis on a shard, print the sha256 of the result.
REPLAY = r"""
import hashlib, json, sys
from ledger.protocol.jobconfig import ModelSpec, TrainSpec
from node.training.data import load_corpus, make_split
from node.models.bytegpt import GPTConfig, init_params
from node.models.params import param_bytes
from node.training.train import train_local
steps, threads = int(sys.argv[1]), int(sys.argv[2])
shard = make_split(load_corpus(), 4, "speaker").shards[2]
small = dict(n_layer=2, n_head=2, n_embd=64, block_size=64)
params = init_params(GPTConfig(**small), 11)
r = train_local(ModelSpec(**small), TrainSpec(steps=steps, threads=threads), params, shard, seed=424242)
print(json.dumps({"sha": hashlib.sha256(param_bytes(r.params)).hexdigest(), "loss_end": r.metrics["loss_end"]}))
"""


@pytest.fixture(scope="module")
def split():
    return make_split(load_corpus(), 4, "speaker")


def test_derive_seed():
    a = derive_seed(1337, 1, 2, "0xAbCd000000000000000000000000000000000001")
    assert a == derive_seed(1337, 1, 2, "0xabcd000000000000000000000000000000000001")  # checksum case ignored
    assert 0 <= a < 2**63
    others = {derive_seed(1337, 1, 3, "0xabcd000000000000000000000000000000000001"),
              derive_seed(1337, 2, 2, "0xabcd000000000000000000000000000000000001"),
              derive_seed(1338, 1, 2, "0xabcd000000000000000000000000000000000001"),
              derive_seed(1337, 1, 2, "0xabcd000000000000000000000000000000000002")}
    assert a not in others and len(others) == 4
    assert num_samples(TrainSpec(steps=7, batch_size=5)) == 35


@pytest.mark.parametrize("threads", [1, 2])
def test_train_bit_identical_across_processes(split, threads):
    # two fresh processes at once (the same bytes whichever finishes first)
    procs = [subprocess.Popen([sys.executable, "-c", REPLAY, "6", str(threads)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    first, second = outs
    assert first == second
    # and this process agrees with both
    # a smaller model than the default: bit-identity does not depend on the size, the test's time does
    small = dict(n_layer=2, n_head=2, n_embd=64, block_size=64)
    r = train_local(ModelSpec(**small), TrainSpec(steps=6, threads=threads), init_params(GPTConfig(**small), 11),
                    split.shards[2], seed=424242)
    assert hashlib.sha256(param_bytes(r.params)).hexdigest() == first["sha"]


def test_train_local_learns_and_reports(split):
    genesis = init_params(GPTConfig(), 1)
    calls = []
    spec = TrainSpec(steps=30, threads=1)
    threads_before, det_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    r = train_local(ModelSpec(), spec, genesis, split.shards[0], seed=9, progress=lambda *a: calls.append(a))
    m = r.metrics
    assert set(m) == {"loss_start", "loss_end", "steps", "samples", "seconds", "threads", "device", "torch_version"}
    assert m["device"] == "cpu" and r.snapshots == []
    assert m["steps"] == 30 and m["samples"] == 30 * 32 == num_samples(spec) and m["threads"] == 1
    assert m["torch_version"] == torch.__version__ and m["seconds"] > 0
    assert abs(m["loss_start"] - math.log(256)) < 0.15
    assert m["loss_end"] < math.log(256) - 1.5
    assert [c[:2] for c in calls] == [(i, 30) for i in range(1, 31)]
    assert calls[0][2] == m["loss_start"] and calls[-1][2] == m["loss_end"]
    # process-wide torch settings are put back
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads_before, det_before)
    # the result is a new canonical dict; the input is untouched
    assert list(r.params) == sorted(genesis) and param_bytes(genesis) == param_bytes(init_params(GPTConfig(), 1))
    v0 = evaluate(ModelSpec(), genesis, split.validation, 4, 16, seed=0)
    v1 = evaluate(ModelSpec(), r.params, split.validation, 4, 16, seed=0)
    assert abs(v0 - math.log(256)) < 0.15 and v1 < math.log(256) - 1.5


def test_same_inputs_same_params_different_seed_differs(split):
    p = init_params(GPTConfig(), 2)
    spec = TrainSpec(steps=3, threads=1)
    a = train_local(ModelSpec(), spec, p, split.shards[1], seed=5).params
    b = train_local(ModelSpec(), spec, p, split.shards[1], seed=5).params
    c = train_local(ModelSpec(), spec, p, split.shards[1], seed=6).params
    assert param_bytes(a) == param_bytes(b) != param_bytes(c)


def test_evaluate_deterministic(split):
    p = init_params(GPTConfig(), 3)
    ms = ModelSpec()
    a = evaluate(ms, p, split.validation, 3, 8, seed=1)
    assert a == evaluate(ms, p, split.validation, 3, 8, seed=1)
    assert a != evaluate(ms, p, split.validation, 3, 8, seed=2)
    assert isinstance(a, float) and math.isfinite(a)
    small = replace(ms, n_layer=1, n_embd=32, n_head=2, block_size=16)
    ps = init_params(GPTConfig.from_spec(small), 0)
    assert evaluate(small, ps, split.validation, 2, 4, seed=0) == evaluate(small, ps, split.validation, 2, 4, seed=0)
    with pytest.raises(ValueError):
        evaluate(ms, p, b"too short", 1, 1)


def test_step_offsets_depend_on_seed_step_and_length_only():
    a = step_offsets(5, 3, 10_000, 64, 8)
    assert torch.equal(a, step_offsets(5, 3, 10_000, 64, 8))
    assert not torch.equal(a, step_offsets(5, 4, 10_000, 64, 8))
    assert not torch.equal(a, step_offsets(6, 3, 10_000, 64, 8))
    assert a.shape == (8,) and int(a.min()) >= 0 and int(a.max()) < 10_000 - 64
    with pytest.raises(ValueError):
        step_offsets(5, 3, 64, 64, 8)


def test_transcript_snapshots_every_segment_and_threads_are_the_callers(split):
    spec = TrainSpec(steps=7, threads=1)
    small = ModelSpec(n_layer=1, n_embd=32, n_head=2, block_size=32)
    p = init_params(GPTConfig.from_spec(small), 4)
    r = train_local(small, spec, p, split.shards[0], seed=5, segment_steps=3)
    assert [s.step for s in r.snapshots] == [3, 6]
    assert all(set(s.exp_avg) == set(s.exp_avg_sq) == set(p) for s in r.snapshots)
    # a verifier's own thread count is honoured (the job's is only the default)
    assert train_local(small, spec, p, split.shards[0], seed=5, threads=2).metrics["threads"] == 2


def test_a_missing_gpu_is_a_one_line_error(split):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    spec, small = TrainSpec(steps=1), ModelSpec(n_layer=1, n_embd=32, n_head=2, block_size=32)
    with pytest.raises(LedgerError, match="no CUDA GPU"):
        train_local(small, spec, init_params(GPTConfig.from_spec(small), 4), split.shards[0], seed=5, device="cuda")
    with pytest.raises(LedgerError, match="cpu or cuda"):
        train_local(small, spec, init_params(GPTConfig.from_spec(small), 4), split.shards[0], seed=5, device="tpu")
