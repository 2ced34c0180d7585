"""Hostile files never crash a party or slip through (issue 34), each through the command
an attacker's victim runs:

- JSON nested 100,000 deep after ``import eth_account`` (which raises the recursion
  limit to 100,000, so CPython's parser would run out of C stack): a model directory's
  config.json (``job create``, ``data commit``), a stored job config (``worker run`` and
  ``audit``: one line, exit 2: a record that cannot be read is no finding), an export's statement (``verify-export --offline``), a window bundle
  (``open_bundle``): one line each, never a segfault (exit 139);
- model directories: an index naming a pickle or a path outside the directory, lying
  dtypes, safetensors headers that lie about their length or offsets, a pickle named
  model.safetensors, configs transformers would choke on, a sparse 8 GB tokenizer:
  ``job create`` refuses each in one line naming what is wrong, nothing loaded;
- the same config values inside a stored job config: every party says one line;
- the minor items: ``--relay notaurl``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import cli_env
from support import DEV0, address, keys
from support.cli import HOSTILE_WORKER as WORKER, job_with, one_line_error, run_in_process
from support.models import make_model_dir

NESTED = b"[" * 100_000 + b"]" * 100_000
SEGFAULT = -11


def _ledger(settings, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], env=cli_env(settings), capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------- nested JSON


def test_the_reader_refuses_deep_nesting_after_eth_account():
    """In a child: a segfault there fails this test instead of killing pytest."""
    code = ("import eth_account, sys; from ledger import safejson\n"
            "assert sys.getrecursionlimit() >= 100000\n"
            "n = '[' * 100000 + ']' * 100000\n"
            "try:\n    safejson.loads(n)\nexcept safejson.UnsafeJSON as e:\n    print(e)\n"
            "print(safejson.loads('[[1, {\"a\": \"[[[[\"}]]'))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "nested deeper than" in r.stdout and "[[1, {'a': '[[[['}]]" in r.stdout


def test_a_nested_window_bundle_is_a_bundle_error_not_a_segfault():
    code = ("import eth_account; from node.training.privdata import open_bundle, BundleError\n"
            "try:\n    open_bundle(b'[' * 100000 + b']' * 100000, expect_meta={}, root=bytes(32), length=64,"
            " want_chunks=[0])\nexcept BundleError as e:\n    print('BundleError', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "BundleError" in r.stdout and "nested deeper" in r.stdout, (r.returncode, r.stderr)


def test_verify_export_of_a_nested_statement_is_one_line(settings, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "provenance.intoto.jsonl").write_bytes(NESTED)
    r = _ledger(settings, "verify-export", str(folder), "--offline")
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip().splitlines() == [
        "FAILED: provenance.intoto.jsonl: not a DSSE envelope (its line is JSON nested deeper than 32 levels "
        "(refused before parsing))"]


def test_data_commit_with_a_nested_model_config_is_one_line(settings, tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_bytes(NESTED)
    (d / "tokenizer.json").write_text("{}")
    text = tmp_path / "t.txt"
    text.write_text("hello")
    line = one_line_error(_ledger(settings, "data", "commit", str(text), "--model", str(d)))
    assert "nested deeper than" in line and "config.json" in line


@pytest.mark.parametrize("what", ["nested", "hidden_act", "rope", "heads"])
def test_audit_and_worker_on_a_hostile_stored_config_say_one_line(deployed, what):
    from node.roles.owner import prepare_config
    from support import tiny_config

    env = deployed
    if what == "nested":
        raw = NESTED
        says = "nested deeper than"
    else:
        d = json.loads(prepare_config(tiny_config(), 1).to_bytes())
        hf = {"model_type": "llama", "vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64}
        hf.update({"hidden_act": {"hidden_act": "os.system"}, "rope": {"rope_scaling": {"rope_type": "nonsense"}},
                   "heads": {"num_attention_heads": 3}}[what])
        says = {"hidden_act": "model.hf_config.hidden_act must be one of",
                "rope": "model.hf_config.rope_scaling.rope_type must be one of",
                "heads": "model.hf_config.hidden_size must be a multiple of num_attention_heads"}[what]
        d["model"].update(kind="hf", hf_config=json.dumps(hf), vocab_size=256,
                          tokenizer={"sha256": "0x" + "00" * 32, "cid": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
                                     "num_bytes": 2})
        raw = json.dumps(d).encode()
    from ledger.store import checkpoint

    job = job_with(env, raw, checkpoint.encode({"w": np.zeros(2, np.float32)}, {"kind": "genesis"}))
    r = env.run(WORKER, "worker", "run", "--job", str(job), "--no-progress", timeout=180)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert says in one_line_error(r), r.stderr
    # the audit: nothing of the job can be checked against a config no party can read,
    # so it is one line and exit 2 (an input problem), not a crash nor a report
    a = env.run(None, "audit", "--job", str(job), "--no-progress", timeout=180)
    assert a.returncode == 2 and a.stdout == "", (a.returncode, a.stdout, a.stderr[-2000:])
    line = one_line_error(a)
    assert says in line and "cannot be audited" in line, line


# ---------------------------------------------------------------------------- model directories


def _header(entries: dict, data: bytes, hlen: int | None = None) -> bytes:
    h = json.dumps(entries).encode()
    return struct.pack("<Q", len(h) if hlen is None else hlen) + h + data


def _float_bits_as_i32(d):
    """model.safetensors whose header says I32 over the float32 bytes."""
    from safetensors.numpy import load_file

    t = load_file(str(d / "model.safetensors"))
    entries, data = {}, b""
    for n, a in sorted(t.items()):
        b = a.astype(np.float32).tobytes()
        entries[n] = {"dtype": "I32", "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    (d / "model.safetensors").write_bytes(_header(entries, data))


def _index_naming(target):
    def make(d):
        import torch
        from safetensors.numpy import load_file

        t = load_file(str(d / "model.safetensors"))
        (d / "model.safetensors").unlink()
        (d / "model-00001.safetensors").write_bytes(b"")
        if target == "pytorch_model.bin":
            torch.save({n: torch.from_numpy(a) for n, a in t.items()}, d / target)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: target for n in t}}))
    return make


def _config(**change):
    def make(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(change)
        (d / "config.json").write_text(json.dumps(cfg))
    return make


def _write(name, data):
    return lambda d: (d / name).write_bytes(data)


def _sparse_tokenizer(d):
    with open(d / "tokenizer.json", "r+b") as f:
        f.truncate(8 << 30)


HOSTILE_DIRS = {
    "nested config": (_write("config.json", NESTED), "nested deeper than"),
    "index names a pickle": (_index_naming("pytorch_model.bin"), "not a safetensors file"),
    "index names a path outside": (_index_naming("../other/model.safetensors"), "a path outside the model directory"),
    "lying dtype": (_float_bits_as_i32, "unsupported dtype 'I32'"),
    "header length 2^60": (_write("model.safetensors", struct.pack("<Q", 1 << 60) + b"{}"), "header length"),
    "offsets past the end": (_write("model.safetensors", _header(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)), "out of range"),
    "overlapping offsets": (_write("model.safetensors", _header(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)), "overlaps"),
    "pickle named model.safetensors": (_write("model.safetensors", b"\x80\x04\x95 a pickle"), "pickle"),
    "3 heads for 32": (_config(n_head=3), "n_embd must be a multiple of n_head"),
    "rope_type nonsense": (_config(rope_scaling={"rope_type": "nonsense"}), "rope_scaling.rope_type must be one of"),
    "string rope factor": (_config(rope_scaling={"rope_type": "linear", "factor": "2"}),
                           "rope_scaling.factor must be a number"),
    "activation os.system": (_config(activation_function="os.system"), "activation_function must be one of"),
    "sparse 8 GB tokenizer": (_sparse_tokenizer, "over the limit"),
}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("hostile-model") / "gpt2", "gpt2")


def test_hostile_model_directories_are_refused_in_one_line(deployed, gpt2_dir, tmp_path, monkeypatch):
    """The first directory through `ledger job create` as its own process, the rest through
    the same ``main`` in this process (the same code and output, without a torch import each)."""
    import shutil

    env = deployed
    w, a = keys(1, "hostile-dir-w")[0], keys(1, "hostile-dir-a")[0]
    for k, v in env.env(DEV0).items():
        if k.startswith("LEDGER_"):
            monkeypatch.setenv(k, v)
    failed = []
    for i, (name, (make, says)) in enumerate(HOSTILE_DIRS.items()):
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(gpt2_dir, d)
        make(d)
        argv = ["job", "create", "--model", str(d), "--worker", address(w), "--aggregator", address(a), "--block-size", "16"]
        if i == 0:
            r = env.run(DEV0, *argv, timeout=300)
            code, out, err = r.returncode, r.stdout, r.stderr
        else:
            code, out, err = run_in_process(argv)
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("note: ", "warning: "))]
        ok = (code == 2 and "Traceback" not in err + out and len(lines) == 1
              and lines[0].startswith("error: ") and says in lines[0])
        if not ok:
            failed.append((name, code, err[-600:]))
    assert not failed, failed


def test_a_float32_file_still_imports(gpt2_dir):
    from node.models.importer import import_model
    from safetensors.numpy import load_file

    imp = import_model(str(gpt2_dir), gpt2_dir.parent / "cache")
    f = load_file(str(gpt2_dir / "model.safetensors"))
    assert sorted(imp.params) == sorted(f) and all(np.array_equal(imp.params[n], f[n]) for n in f)


# ---------------------------------------------------------------------------- minor items


def test_worker_run_relay_must_be_a_url(settings):
    r = _ledger(settings, "worker", "run", "--job", "1", "--relay", "notaurl")
    assert r.returncode == 2 and "'notaurl' is not an http:// or https:// URL" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
