"""DiLoCo outer optimizer, SparseLoCo compressed contributions and a worker of several
processes: the pieces alone (fast), then one job through the real roles (slow).

The job: ``--outer nesterov`` and ``--compress topk=0.02,bits=2``, two rounds, an honest
worker, an honest worker training over two processes (``--nproc 2``), and a worker whose
compressed update is not what its training produced. The aggregator replays on one
process; the audit replays every segment on PyTorch's AVX2 kernels and recomputes every
merge, its outer momentum included, to the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest

from ledger.store import checkpoint
from ledger.protocol.jobconfig import CompressSpec, ConfigValueError, JobConfig, OuterSpec, parse_compress
from ledger.protocol.verdicts import Verdict
from support import address, keys, replay_config, wait_for

from node.training import compress as cz
from node.training.transcript import bf16_bits, from_bf16
from node.verification import merge as mergemod
from node.verification import outer as outermod


# --------------------------------------------------------------------------- config


def test_defaults_leave_the_config_bytes_as_before():
    plain = JobConfig().to_bytes()
    assert b'"outer"' not in plain and b'"compress"' not in plain
    cfg = JobConfig()
    cfg.outer.rule, cfg.compress = "nesterov", parse_compress("topk=0.02,bits=2")
    raw = cfg.to_bytes()
    back = JobConfig.from_bytes(raw)
    assert back.outer == OuterSpec("nesterov", 0.7, 0.9)
    assert back.compress == CompressSpec(topk=0.02, bits=2, chunk=4096)
    assert back.to_bytes() == raw and back.digest != JobConfig().digest


@pytest.mark.parametrize("text, field", [("topk=2,bits=2", "compress.topk"), ("topk=0.1,bits=9", "compress.bits"),
                                         ("bits=2", "compress"), ("topk=0.1,foo=1", "compress"),
                                         ("topk=x", "compress.topk"), ("topk=0", "compress.topk")])
def test_bad_compress_specs_are_one_line_errors(text, field):
    with pytest.raises(ConfigValueError) as e:
        parse_compress(text)
    assert e.value.field == field and "\n" not in str(e.value)


# --------------------------------------------------------------------------- compression


def _model(seed=0):
    rng = np.random.default_rng(seed)
    parent = {"a": rng.standard_normal((50, 90)).astype(np.float32), "b": rng.standard_normal(37).astype(np.float32),
              "n": np.arange(4, dtype=np.int64)}
    end = {k: (v + (0.01 * rng.standard_normal(v.shape)).astype(np.float32) if v.dtype == np.float32 else v)
           for k, v in parent.items()}
    return parent, end


def test_compression_keeps_the_top_fraction_of_each_chunk_and_carries_the_rest():
    parent, end = _model()
    spec = CompressSpec(topk=0.05, bits=2, chunk=256)
    bits = cz.end_bits(end, parent)
    payload, ef = cz.compress(spec, bits, None)
    update = cz.decompress(spec, payload, parent)
    assert set(update) == {"a", "b"}                                    # integers are not compressed
    # 4500 values: 17 full chunks of 256 (13 kept each) and a tail of 148 (8 kept)
    assert np.count_nonzero(update["a"]) == 17 * 13 + 8 == payload["topk/a/index"].size
    assert payload["topk/a/code"].size == (17 * 13 + 8) * 2 // 8 + 1   # 2 bits a code
    delta = from_bf16(bits["a"]).astype(np.float64)
    kept = update["a"] != 0
    # the kept values are the largest of their chunk, with their signs
    first = np.abs(delta.reshape(-1)[:256])
    assert set(np.flatnonzero(kept.reshape(-1)[:256])) == set(np.argsort(-first, kind="stable")[:13])
    assert (np.sign(update["a"][kept]) == np.sign(delta[kept])).all()
    # error feedback: what was not sent, up to its bfloat16 rounding
    np.testing.assert_allclose(from_bf16(ef["a"]), delta - update["a"], rtol=2 ** -8, atol=1e-12)
    # the next round feeds it back: the same state gives the same bytes, another the other
    again, _ = cz.compress(spec, bits, None)
    assert cz.same_payload(payload, again) is None
    fed, _ = cz.compress(spec, bits, ef)
    assert cz.same_payload(payload, fed) is not None


def test_a_payload_of_other_training_does_not_match():
    parent, end = _model()
    spec = CompressSpec(topk=0.02, bits=2, chunk=512)
    bits = cz.end_bits(end, parent)
    honest, _ = cz.compress(spec, bits, None)
    forged, _ = cz.compress(spec, {n: bf16_bits(from_bf16(b) * np.float32(3)) for n, b in bits.items()}, None)
    assert "code" in cz.same_payload(forged, honest) or "scale" in cz.same_payload(forged, honest)


# --------------------------------------------------------------------------- outer step


def test_nesterov_outer_step_is_diloco_and_commits_its_momentum():
    parent, _ = _model(1)
    rng = np.random.default_rng(2)
    contributions = [(f"0x{i:040x}", 10, {k: (v + (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
                                               if v.dtype == np.float32 else v) for k, v in parent.items()})
                     for i in range(3)]
    update, selected, _ = mergemod.rule_update("fedavg", parent, contributions)
    assert mergemod.merge("fedavg", parent, contributions).params["a"].tobytes() == \
        (parent["a"].astype(np.float64) + update["a"]).astype(np.float32).tobytes()
    spec = OuterSpec("nesterov", 0.7, 0.9)
    m0 = outermod.momentum_of(parent, parent)
    assert not m0["a"].any()
    merged, m1 = outermod.step(parent, update, m0, spec)
    g = -update["a"]
    np.testing.assert_allclose(merged["a"], parent["a"] - 0.7 * (g + 0.9 * g), rtol=1e-6, atol=1e-6)
    assert merged["n"].tobytes() == parent["n"].tobytes()
    assert merged[outermod.MOMENTUM + "a"].dtype == np.float32 and outermod.MOMENTUM + "n" not in merged
    # the next round starts from the committed momentum, read back from the checkpoint
    data = checkpoint.encode(merged, {})
    state, _ = checkpoint.decode(data)
    params = outermod.model_tensors(state)
    assert sorted(params) == sorted(parent)
    m = outermod.momentum_of(state, params)
    assert m["a"].tobytes() == m1["a"].astype(np.float64).tobytes()
    again, _ = outermod.step(params, update, m, spec)
    np.testing.assert_allclose(again["a"], params["a"] - 0.7 * (g + 0.9 * (0.9 * m["a"] + g)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="outer momentum"):
        outermod.momentum_of({**state, outermod.MOMENTUM + "a": np.zeros(3, np.float32)}, params)



def test_sgd_without_momentum_commits_no_buffer():
    """SparseLoCo's outer step (sgd, lr 1, momentum 0) reads no momentum, so the merged
    checkpoint carries none: it is the model's size, as a plain average's."""
    parent, _ = _model(1)
    update = {"a": np.full(parent["a"].shape, 0.25)}
    merged, _ = outermod.step(parent, update, outermod.momentum_of(parent, parent), OuterSpec("sgd", 1.0, 0.0))
    assert not [k for k in merged if k.startswith(outermod.PREFIX)]
    assert sorted(merged) == sorted(parent)
    np.testing.assert_allclose(merged["a"], parent["a"] + 0.25, rtol=1e-6)
    with_m, _ = outermod.step(parent, update, outermod.momentum_of(parent, parent), OuterSpec("sgd", 1.0, 0.5))
    assert outermod.MOMENTUM + "a" in with_m

# --------------------------------------------------------------------------- through the roles


OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2"}
HONEST, CLUSTER, CHEAT = keys(3, "diloco")
AGG = keys(1, "diloco-agg")[0]


@pytest.fixture(scope="module")
def diloco_job(tmp_path_factory):
    from support import chain_of_its_own

    cfg = replay_config(publish_snapshots="all")
    cfg.train.batch_size = 8
    cfg.outer.rule = "nesterov"
    cfg.compress = parse_compress("topk=0.02,bits=2")
    with chain_of_its_own(tmp_path_factory, "diloco") as env:
        job = env.create_job([HONEST, CLUSTER, CHEAT], [AGG], quorum=1, rounds=2, config=cfg)
        w = ("worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")
        procs = [env.spawn(HONEST, *w), env.spawn(CLUSTER, *w, "--nproc", "2"),
                 env.spawn_module(CHEAT, "node.simulate.adversary", "--job", str(job), "--attack", "bad-compress"),
                 env.spawn(AGG, "aggregator", "run", "--job", str(job), "--poll", "0.3")]
        wait_for(lambda: env.ledger.job(job).completed, 400, "the DiLoCo job to complete", procs)
        env.stop_all()
        yield env, job


@pytest.mark.slow
def test_diloco_with_compression_audits_on_other_kernels(diloco_job):
    env, job = diloco_job
    out = env.run(None, "audit", "--job", str(job), "--json", "--no-progress", "--replay", "all", timeout=600,
                  **OTHER_KERNELS)
    import json

    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], out.stdout[-3000:] + out.stderr[-3000:]
    verdicts = {}
    for r in report["rounds"]:
        assert r["recomputed_digest"] == r["merged_digest"]
        for c in r["contributions"]:
            verdicts[(r["round"], c["worker"].lower())] = (c["onchain_verdict"], c["audit_verdict"])
    for r in (1, 2):
        assert verdicts[(r, address(HONEST).lower())] == (0, 0)
        assert verdicts[(r, address(CLUSTER).lower())] == (0, 0)     # two processes, replayed on one
        assert verdicts[(r, address(CHEAT).lower())] == (Verdict.COMPRESSION,) * 2


@pytest.mark.slow
def test_the_merge_carries_its_momentum_and_the_error_feedback_registry(diloco_job):
    env, job = diloco_job
    rd = env.ledger.round(job, 2)
    state, meta = checkpoint.decode(env.store.get(rd.merged_cid, rd.merged_digest))
    params = outermod.model_tensors(state)
    momentum = {k for k in state if k.startswith(outermod.MOMENTUM)}
    assert momentum == {outermod.MOMENTUM + k for k in params}
    assert any(state[k].any() for k in momentum)
    reg = cz.registry(meta)
    assert set(reg) == {address(HONEST).lower(), address(CLUSTER).lower()}   # the cheat was never merged
    # a contribution is its compressed pseudo-gradient: a few percent of the checkpoint
    sub = next(s for s in env.ledger.submissions(job, 2) if s.worker == address(HONEST))
    full = sum(v.nbytes for v in params.values())
    assert sub.size * 5 < full


def test_ties_at_the_cut_go_to_the_lower_positions():
    mag = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert cz._top_positions(mag, 2).tolist() == [[1, 2], [0, 1]]
    assert cz._top_positions(mag, 4).tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]
