"""The byte-level GPT: shapes, size, the tied head, deterministic init and sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ledger.protocol.jobconfig import ModelSpec
from node.models.bytegpt import GPT, GPTConfig, init_params
from node.models.params import load_into, param_bytes, to_numpy, to_state_dict


def test_config_from_spec():
    assert GPTConfig.from_spec(ModelSpec()) == GPTConfig()
    cfg = GPTConfig.from_spec(ModelSpec(n_layer=2, n_embd=64, bias=False))
    assert (cfg.n_layer, cfg.n_embd, cfg.bias) == (2, 64, False)


def test_shapes_and_param_count():
    cfg = GPTConfig()
    m = GPT(cfg)
    # wte 256*128 + wpe 128*128 + 4 blocks * (2 LN + qkv + proj + fc + proj) + ln_f
    block = 2 * 2 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
    assert m.num_params() == 256 * 128 + 128 * 128 + 4 * block + 2 * 128 == 842_496
    idx = torch.randint(0, 256, (3, 17))
    logits, loss = m(idx)
    assert logits.shape == (3, 17, 256) and loss is None
    logits, loss = m(idx, torch.randint(0, 256, (3, 17)))
    assert loss.ndim == 0
    # untrained: close to uniform over 256 bytes
    assert abs(loss.item() - math.log(256)) < 0.1


def test_tied_head_stored_once():
    m = GPT(GPTConfig())
    params = to_numpy(m)
    assert "wte.weight" in params
    assert not any("lm_head" in k for k in params)
    assert list(params) == sorted(params)
    assert set(params) == set(m.state_dict())  # no aliased or derived entries (the mask is not persistent)
    assert sum(a.size for a in params.values()) == m.num_params()
    assert all(a.dtype == np.float32 and a.flags["C_CONTIGUOUS"] and a.flags["OWNDATA"] for a in params.values())
    # the head really is the embedding: changing wte changes the logits' projection
    x = torch.randint(0, 256, (1, 5))
    before = m(x)[0]
    with torch.no_grad():
        m.wte.weight[:, 0] += 1.0
    assert not torch.equal(before, m(x)[0])


def test_aliased_state_dict_deduplicated():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(4, 3)
            self.head = torch.nn.Linear(3, 4, bias=False)
            self.head.weight = self.emb.weight

    t = Tied()
    assert set(t.state_dict()) == {"emb.weight", "head.weight"}  # torch keeps both names
    assert set(to_numpy(t.state_dict())) == {"emb.weight"}
    assert set(to_numpy(t)) == {"emb.weight"}


def test_init_deterministic_and_roundtrip():
    cfg = GPTConfig()
    a, b, c = init_params(cfg, 7), init_params(cfg, 7), init_params(cfg, 8)
    assert param_bytes(a) == param_bytes(b) != param_bytes(c)
    assert list(a) == sorted(a)
    m = load_into(GPT(cfg, seed=None), a)
    assert param_bytes(to_numpy(m)) == param_bytes(a)
    assert param_bytes(to_numpy(GPT(cfg, seed=7))) == param_bytes(a)
    assert param_bytes(to_numpy(to_state_dict(a))) == param_bytes(a)
    # nanoGPT init: layer norms at identity, biases zero, residual projections scaled down
    assert np.all(a["h.0.ln_1.weight"] == 1) and np.all(a["h.0.attn.c_attn.bias"] == 0)
    assert a["h.0.mlp.c_proj.weight"].std() < a["h.0.mlp.c_fc.weight"].std()


def test_load_into_is_strict():
    cfg = GPTConfig()
    p = init_params(cfg, 1)
    m = GPT(cfg, seed=None)
    bad = dict(p)
    del bad["wpe.weight"]
    try:
        load_into(m, bad)
        raise AssertionError("missing tensor accepted")
    except ValueError as e:
        assert "wpe.weight" in str(e)
    bad = dict(p, **{"wpe.weight": np.zeros((3, 3), np.float32)})
    try:
        load_into(m, bad)
        raise AssertionError("wrong shape accepted")
    except ValueError as e:
        assert "shape" in str(e)


@pytest.fixture
def one_thread():
    # batch-1 sampling is a chain of tiny ops: a second thread only adds barrier waits,
    # which on a loaded machine makes it many times slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generate_deterministic(one_thread):
    m = GPT(GPTConfig(), seed=3)
    m.eval()
    prompt = torch.tensor([list(b"ROMEO:\n")])

    def sample(seed, **kw):
        return m.generate(prompt, 24, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = sample(1, temperature=0.8, top_k=20), sample(1, temperature=0.8, top_k=20)
    assert a.shape == (1, 7 + 24) and torch.equal(a, b)
    assert torch.equal(a[:, :7], prompt)
    assert not torch.equal(a, sample(2, temperature=0.8, top_k=20))
    assert torch.equal(sample(1, temperature=0), sample(2, temperature=0))  # greedy ignores the generator
    # longer than the context: crops to block_size and keeps going
    long = m.generate(torch.zeros((1, 130), dtype=torch.long), 3, generator=torch.Generator().manual_seed(0))
    assert long.shape == (1, 133)
