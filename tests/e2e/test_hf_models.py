"""Real model directories, end to end through the real worker, aggregator and audit processes.

Each test makes its own Hugging Face model directory with ``save_pretrained`` and a
byte-level BPE tokenizer trained here on local text (``tiny_models``), the files a
consortium brings: config.json, model.safetensors, tokenizer.json.

- A tiny GPT-2, fully fine-tuned from its saved weights, on the workers' own committed
  text (``ledger data commit --model DIR``): every honest contribution accepted by
  aggregators replaying on AVX2 kernels, a worker training on text it did not commit
  to rejected with ``replay``, ``ledger audit --replay sample`` AUDIT OK, and
  ``ledger generate`` printing text through the tokenizer.
- A tiny Llama-style model with LoRA: contributions are adapters on a frozen committed
  base; a lazy worker (half the steps) rejected with ``replay``; audit OK; generate;
  ``ledger export`` gives a plain model that transformers loads with the same logits.
- A directory whose weights are pickle-based is refused in one line, nothing loaded.
"""

from __future__ import annotations

import json

import numpy as np
import re

import pytest

from ledger.protocol.verdicts import Verdict
from support import DEV0, address, keys, log_text, public_key, wait_for
from support.models import make_model_dir

pytestmark = pytest.mark.slow

OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2"}
SHAPE = ["--block-size", "32", "--steps", "6", "--batch-size", "8", "--segment-steps", "2",
         "--replay-segments", "1", "--lr", "3e-3", "--rounds", "2", "--round-duration", "120",
         "--proposal-window", "60", "--reveal-window", "20"]


def _words(seed: int, n: int) -> bytes:
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randrange(2, 7))) for _ in range(n // 4)]
    return " ".join(words).encode()[:n]


def _job(out) -> int:
    assert out.returncode == 0, out.stderr[-3000:]
    return int(re.search(r"^job (\d+)$", out.stdout, re.M).group(1))


def _audit(env, job: int) -> tuple[int, dict]:
    out = env.run(None, "audit", "--job", str(job), "--replay", "sample", "--json", "--no-progress", timeout=600)
    assert out.stdout.strip(), out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout)


def _verdicts(report: dict) -> dict[tuple[int, str], int]:
    return {(r["round"], c["worker"].lower()): c["onchain_verdict"] for r in report["rounds"] for c in r["contributions"]}


def _generate(env, job: int) -> str:
    out = env.run(None, "generate", "--job", str(job), "--prompt", "the ", "--max-new-tokens", "12", timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "(audit OK)" in out.stdout
    text = out.stdout.split("\n", 1)[1]
    assert text.startswith("the ") and len(text.strip()) > len("the"), out.stdout
    return text


def test_gpt2_full_fine_tuning_on_private_text(deployed, tmp_path):
    env = deployed
    model = make_model_dir(tmp_path / "gpt2", "gpt2", seed=1)
    honest, cheat, agg = *keys(2, "hf-gpt2-worker"), keys(1, "hf-gpt2-agg")[0]
    workers = [honest, cheat]
    env.fund(*workers, agg)
    roots = []
    for i in range(2):
        p = tmp_path / f"text-{i}.txt"
        p.write_bytes(_words(10 + i, 9000))
        out = env.run(None, "data", "commit", str(p), "--model", str(model))
        m = re.fullmatch(r"root (0x[0-9a-f]{64}) bytes (\d+) tokens (\d+)", out.stdout.strip())
        assert out.returncode == 0 and m, out.stderr
        assert int(m.group(2)) == 2 * int(m.group(3))     # a stream of 2-byte token ids
        roots.append(f"{m.group(1)}:{m.group(2)}")
    val = tmp_path / "validation.txt"
    val.write_bytes(_words(99, 5000))
    out = env.run(DEV0, "job", "create", "--model", str(model), "--worker", address(honest), "--worker",
                  address(cheat), "--aggregator", public_key(agg), "--data-root", roots[0], "--data-root", roots[1],
                  "--validation", str(val), *SHAPE, timeout=300)
    job = _job(out)
    cfg = env.ledger.job(job)
    assert cfg.genesis_size > 0

    procs = [env.spawn(honest, "worker", "run", "--job", str(job), "--data", str(tmp_path / "text-0.txt"),
                       "--no-progress", "--poll", "0.3"),
             env.spawn_module(cheat, "node.simulate.adversary", "--job", str(job), "--attack", "other-data",
                              "--data", str(tmp_path / "text-1.txt"), "--poll", "0.3"),
             env.spawn(agg, "aggregator", "run", "--job", str(job), "--poll", "0.3", "--threads", "2", **OTHER_KERNELS)]
    wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", procs)

    rc, report = _audit(env, job)
    assert rc == 0 and report["ok"], report.get("discrepancies")
    got = _verdicts(report)
    for r in (1, 2):
        assert got[(r, address(honest).lower())] == Verdict.ACCEPTED, got
        assert got[(r, address(cheat).lower())] == Verdict.REPLAY, got
    _generate(env, job)


def _export_matches(env, job: int, folder) -> None:
    """`ledger export` of a finished LoRA job: the folder verifies, its adapter is the final
    checkpoint, and its merged model.safetensors loads with plain transformers and gives
    the ledger model's logits (the export issue's LoRA case, on this test's job)."""
    import torch
    import transformers
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from ledger.trail import provenance
    from node.context import JobContext

    exporter = keys(1, "hf-exporter")[0]
    r = env.run(exporter, "export", "--job", str(job), str(folder), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["adapter.safetensors", "config.json", "model.safetensors", "tokenizer.json", provenance.ENVELOPE_NAME])
    ok = env.run(None, "verify-export", str(folder), "--job", str(job))
    assert ok.returncode == 0 and "EXPORT OK" in ok.stdout, ok.stderr
    assert "weights: adapter.safetensors holds exactly the final checkpoint" in ok.stdout, ok.stdout
    # and the merged model was recomputed from the committed base and that adapter (issue 34)
    assert "model.safetensors holds the committed base with it merged (recomputed" in ok.stdout, ok.stdout
    _tampered_merge_fails(env, job, folder, exporter)

    # the ledger's model with the final adapter, as every party runs it
    ctx = JobContext.load(env.ledger, env.store, job)
    final, _ = ctx.load_checkpoint(ctx.locate_model(ctx.info.current_parent))
    adapter = load_file(str(folder / "adapter.safetensors"))
    assert sorted(adapter) == sorted(final) and all(np.array_equal(adapter[k], final[k]) for k in final)
    x = torch.tensor([[int(i) for i in ctx.model.encode(b"the quick brown fox ")][:16]])
    with torch.no_grad():
        want = ctx.model.logits(ctx.model.module(final), x).float()

    # the export: a plain model (no adapter tensors) the usual libraries load
    weights = load_file(str(folder / "model.safetensors"))
    assert not [k for k in weights if "lora" in k or "base_layer" in k]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        got = loaded(input_ids=x).logits.float()
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.encode("the quick brown fox ").ids[:16] == x[0].tolist()


def _tampered_merge_fails(env, job: int, folder, exporter) -> None:
    """Issue 34: one value of the merged model.safetensors changed, the statement's digests
    updated and re-signed by the exporter's own key: the signature and the adapter hold,
    and verify-export fails naming model.safetensors, since it recomputes the merge."""
    import base64
    import shutil

    from eth_account import Account
    from safetensors.numpy import load_file, save

    from ledger.trail import provenance
    from ledger.digest import sha256_bytes

    bad = folder.parent / "tampered-merge"
    shutil.copytree(folder, bad)
    t = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k in t if k.endswith("q_proj.weight"))[0]   # a weight the adapter touches
    t[name] = t[name].copy()
    t[name].flat[0] *= np.float32(-3)
    (bad / "model.safetensors").write_bytes(save(t, metadata={"format": "pt"}))
    envelope = json.loads((bad / provenance.ENVELOPE_NAME).read_text())
    st = json.loads(base64.b64decode(envelope["payload"]))
    for sub in st["subject"]:
        sub["digest"]["sha256"] = sha256_bytes((bad / sub["name"]).read_bytes()).hex()
    payload = json.dumps(st, sort_keys=True, separators=(",", ":")).encode()
    signed = provenance.sign_envelope(payload, provenance.EthereumSigner(Account.from_key(exporter)))
    (bad / provenance.ENVELOPE_NAME).write_bytes(provenance.envelope_line(signed))
    off = env.run(None, "verify-export", str(bad), "--offline")
    assert off.returncode == 0, off.stderr
    r = env.run(None, "verify-export", str(bad), "--job", str(job))
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert lines == [f"FAILED: model.safetensors: 1 tensor(s) are not the committed base with the final adapter "
                     f"merged (recomputed here), first {name}"], r.stderr


def test_llama_lora_adapters_on_a_frozen_base(deployed, tmp_path):
    env = deployed
    model = make_model_dir(tmp_path / "llama", "llama", seed=2)
    w0, w1, lazy = keys(3, "hf-llama-worker")
    aggs = keys(2, "hf-llama-agg")
    env.fund(w0, w1, lazy, *aggs)
    out = env.run(DEV0, "job", "create", "--model", str(model), "--lora-rank", "4", "--worker", address(w0),
                  "--worker", address(w1), "--worker", address(lazy), *[a for k in aggs for a in ("--aggregator", address(k))],
                  "--quorum", "2", *SHAPE, timeout=300)
    job = _job(out)
    from node.context import JobContext

    ctx = JobContext.load(env.ledger, env.store, job)
    spec = ctx.config.model
    assert spec.kind == "hf" and spec.lora_rank == 4 and spec.base is not None
    genesis, _ = ctx.load_checkpoint(ctx.genesis)
    assert genesis and all(".lora_A." in n or ".lora_B." in n for n in genesis), sorted(genesis)[:4]

    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in (w0, w1)]
    procs.append(env.spawn_module(lazy, "node.simulate.adversary", "--job", str(job), "--attack", "lazy", "--poll", "0.3"))
    procs += [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3", **OTHER_KERNELS) for k in aggs]
    wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", procs)

    rc, report = _audit(env, job)
    assert rc == 0 and report["ok"], report.get("discrepancies")
    got = _verdicts(report)
    for r in (1, 2):
        assert got[(r, address(w0).lower())] == got[(r, address(w1).lower())] == Verdict.ACCEPTED, got
        assert got[(r, address(lazy).lower())] == Verdict.REPLAY, got
    # the merge is of adapters: the finalized model has the genesis's adapter names, and moved
    ctx.refresh()
    final, _ = ctx.load_checkpoint(ctx.locate_model(bytes.fromhex(report["final_digest"][2:])))
    assert sorted(final) == sorted(genesis)
    assert any(not (final[n] == genesis[n]).all() for n in final)
    _generate(env, job)
    _export_matches(env, job, tmp_path / "export")


def test_a_pickle_weights_directory_is_refused_in_one_line(deployed, tmp_path):
    env = deployed
    model = make_model_dir(tmp_path / "pickled", "gpt2")
    (model / "model.safetensors").unlink()
    # what torch.save writes: a pickle; refused by its name, never opened
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 not to be unpickled")
    w, a = keys(1, "pk-worker")[0], keys(1, "pk-agg")[0]
    out = env.run(DEV0, "job", "create", "--model", str(model), "--worker", address(w), "--aggregator", address(a),
                  timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "pickle" in out.stderr and "pytorch_model.bin" in out.stderr and "safetensors" in out.stderr
    # and a directory that is not a model at all
    out = env.run(DEV0, "job", "create", "--model", str(tmp_path), "--worker", address(w), "--aggregator", address(a))
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "config.json" in out.stderr, out.stderr
