"""`ledger export` and `ledger verify-export`: a real job run end to end by worker and
aggregator processes, its audited final model exported with a signed in-toto statement,
and every kind of tampering with the folder found in one line per problem.

- byte GPT: model.safetensors holds the final checkpoint's tensors; a flipped byte, a
  statement moved to another job (re-signed by another key, or not re-signed), a missing
  or an added file all fail (exit 1); refusals (a job not completed, an audit that
  fails, a non-empty folder, no folder, no chain) are one line each, no traceback.
- a tiny Llama with LoRA: in ``tests/e2e/test_hf_models.py`` (``_export_matches``, on that
  file's LoRA job): the export is a plain model, LoRA merged, that
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads and whose logits match the
  ledger model's; the tokenizer loads with ``tokenizers``; the adapter is exported as is.
"""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from ledger.trail import provenance
from ledger.digest import sha256_bytes
from support import DEV0, address, chain_of_its_own, keys, wait_for

W = keys(2, "export-worker")
A = keys(2, "export-agg")
EXPORTER, OTHER = keys(2, "exporter")


def _run_job(env, job: int, workers, aggs) -> list:
    procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3") for k in workers]
    procs += [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3") for k in aggs]
    return procs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One chain: a clean one-round byte-GPT job (run to completion), a job nobody runs,
    and a job whose single aggregator finalized a merge that is not the merge."""
    with chain_of_its_own(tmp_path_factory, "export") as env:
        clean = env.create_job(W[:1], A[:1], quorum=1, rounds=1)
        idle = env.create_job(W[1:], A[1:], quorum=1, rounds=1)
        bad = env.create_job(W[1:], A[1:], quorum=1, rounds=1)
        procs = _run_job(env, clean, W[:1], A[:1])
        procs.append(env.spawn(W[1], "worker", "run", "--job", str(bad), "--no-progress", "--poll", "0.3"))
        wait_for(lambda: env.ledger.round(bad, 1).submissions == 1, 240, "the bad job's submission", procs)
        bogus = sha256_bytes(b"not the merge")
        env.reveal_as(A[1], bad, 1, env.commit_as(A[1], bad, 1, [0], bogus, bogus, 4242))
        for j in (clean, bad):
            wait_for(lambda: env.ledger.job(j).completed, 300, f"job {j} to complete", procs)
        env.stop_all()
        yield env, {"clean": clean, "idle": idle, "bad": bad}


def _one_line(out, code: int, *words: str) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in lines if not re.match(r"^\d\d:\d\d:\d\d ", ln)]  # log lines of the audit, if any
    assert len(lines) == 1, out.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _failures(out) -> list[str]:
    assert out.returncode == 1 and "Traceback" not in out.stderr, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert lines and all(ln.startswith("FAILED: ") for ln in lines), out.stderr
    return lines


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory):
    env, jobs = world
    out = tmp_path_factory.mktemp("exports") / "clean"
    r = env.run(EXPORTER, "export", "--job", str(jobs["clean"]), str(out), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "EXPORTED job" in r.stdout and address(EXPORTER) in r.stdout
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _envelope(folder) -> dict:
    return json.loads((folder / provenance.ENVELOPE_NAME).read_text())


def _write_envelope(folder, env: dict) -> None:
    (folder / provenance.ENVELOPE_NAME).write_bytes(provenance.envelope_line(env))


def test_export_writes_the_final_model_and_verifies(world, exported):
    env, jobs = world
    job = jobs["clean"]
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["config.json", "model.safetensors", provenance.ENVELOPE_NAME]

    # the tensors are the final checkpoint's, in a plain safetensors file (no pickle)
    from safetensors.numpy import load_file

    from ledger.store import checkpoint

    info = env.ledger.job(job)
    final, _ = checkpoint.decode(env.store.get(info.current_parent_cid, info.current_parent))
    got = load_file(str(exported / "model.safetensors"))
    assert sorted(got) == sorted(final) and all(np.array_equal(got[k], final[k]) for k in final)
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["model_type"] == "training-ledger-byte-gpt" and cfg["n_layer"] == 1 and cfg["n_embd"] == 32

    # the statement: in-toto v1, subjects with sha256, the chain's record and the audit, signed by the exporter
    envelope = _envelope(exported)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert [s["keyid"] for s in envelope["signatures"]] == [address(EXPORTER)]
    st = json.loads(base64.b64decode(envelope["payload"]))
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == provenance.PREDICATE_TYPE
    assert {s["name"] for s in st["subject"]} == {"config.json", "model.safetensors"}
    for s in st["subject"]:
        assert s["digest"]["sha256"] == sha256_bytes((exported / s["name"]).read_bytes()).hex()
    p = st["predicate"]
    assert p["ledger"] == {"chainId": env.ledger.chain_id, "contract": env.ledger.address}
    assert p["job"]["id"] == str(job) and p["job"]["configDigest"] == "0x" + info.config_digest.hex()
    assert p["job"]["genesisDigest"] == "0x" + info.genesis_digest.hex()
    assert p["finalModel"]["digest"] == "0x" + info.current_parent.hex()
    (r1,) = p["rounds"]
    sub = env.ledger.submissions(job, 1)[0]
    assert r1["status"] == "finalized" and r1["mergedDigest"] == "0x" + info.current_parent.hex()
    assert r1["contributors"] == [{"worker": address(W[0]), "digest": "0x" + sub.digest.hex(), "cid": sub.cid,
                                   "numSamples": sub.num_samples}]
    assert p["audit"]["status"] == "OK" and p["export"]["exporter"] == address(EXPORTER)
    assert DEV0[2:] not in json.dumps(envelope) and EXPORTER[2:] not in json.dumps(envelope)  # never a key

    ok = env.run(None, "verify-export", str(exported), "--job", str(job), "--signer", address(EXPORTER))
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert ok.stdout.startswith(f"EXPORT OK job {job} ") and address(EXPORTER) in ok.stdout, ok.stdout
    assert "weights: model.safetensors holds exactly the final checkpoint" in ok.stdout, ok.stdout
    off = env.run(None, "verify-export", str(exported), "--offline", LEDGER_RPC_URL="http://127.0.0.1:9")
    assert off.returncode == 0 and "offline" in off.stdout, off.stderr


def test_a_flipped_byte_fails_in_one_line_naming_the_file(world, exported, tmp_path):
    env, _ = world
    folder = _copy(exported, tmp_path)
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-5] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(raw))
    (line,) = _failures(env.run(None, "verify-export", str(folder)))
    assert "model.safetensors" in line and "changed" in line


def test_a_statement_moved_to_another_job_fails(world, exported, tmp_path):
    env, jobs = world
    from eth_account import Account

    folder = _copy(exported, tmp_path)
    envelope = _envelope(folder)
    st = json.loads(base64.b64decode(envelope["payload"]))
    st["predicate"]["job"]["id"] = str(jobs["bad"])
    payload = json.dumps(st, sort_keys=True, separators=(",", ":")).encode()

    # not re-signed: the signature no longer matches
    _write_envelope(folder, {**envelope, "payload": base64.b64encode(payload).decode()})
    lines = _failures(env.run(None, "verify-export", str(folder)))
    assert any("bad signature" in ln and address(EXPORTER) in ln for ln in lines), lines

    # re-signed by another key: the signature holds, the chain does not
    _write_envelope(folder, provenance.sign_envelope(payload, provenance.EthereumSigner(Account.from_key(OTHER))))
    lines = _failures(env.run(None, "verify-export", str(folder), "--job", str(jobs["clean"])))
    assert any(f"for job {jobs['bad']}, not job {jobs['clean']}" in ln for ln in lines), lines
    assert any(ln.startswith("FAILED: job.workers") for ln in lines), lines
    assert any("round 1.contributors" in ln or "round 1.mergedDigest" in ln for ln in lines), lines
    assert not any("signature" in ln for ln in lines), lines
    # and a signer other than the one required
    lines = _failures(env.run(None, "verify-export", str(folder), "--offline", "--signer", address(EXPORTER)))
    assert lines == [f"FAILED: {provenance.ENVELOPE_NAME}: signed by {address(OTHER)}, not by the required signer "
                     f"{address(EXPORTER)}"]


def test_other_weights_under_a_valid_signature_fail_on_the_chain_check(world, exported, tmp_path):
    """A dishonest exporter: other tensors, the statement's digests updated and signed by
    the same key. Offline all holds; the chain's final checkpoint, fetched from storage, does not."""
    env, jobs = world
    from eth_account import Account
    from safetensors.numpy import load_file, save

    folder = _copy(exported, tmp_path)
    t = load_file(str(folder / "model.safetensors"))
    name = sorted(t)[0]
    t[name] = t[name] + np.float32(1e-3)
    (folder / "model.safetensors").write_bytes(save(t, metadata={"format": "pt"}))
    envelope = _envelope(folder)
    st = json.loads(base64.b64decode(envelope["payload"]))
    for s in st["subject"]:
        s["digest"]["sha256"] = sha256_bytes((folder / s["name"]).read_bytes()).hex()
    payload = json.dumps(st, sort_keys=True, separators=(",", ":")).encode()
    _write_envelope(folder, provenance.sign_envelope(payload, provenance.EthereumSigner(Account.from_key(EXPORTER))))
    off = env.run(None, "verify-export", str(folder), "--offline")
    assert off.returncode == 0, off.stderr
    (line,) = _failures(env.run(None, "verify-export", str(folder)))
    assert "model.safetensors: 1 tensor(s) differ from the chain's final checkpoint" in line and name in line


def test_missing_and_unlisted_files_fail(world, exported, tmp_path):
    env, _ = world
    folder = _copy(exported, tmp_path)
    (folder / "config.json").unlink()
    (line,) = _failures(env.run(None, "verify-export", str(folder)))
    assert "config.json: missing" in line
    shutil.copy(exported / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 an extra file")
    (line,) = _failures(env.run(None, "verify-export", str(folder)))
    assert "pytorch_model.bin" in line and "not in the signed statement" in line
    (folder / "pytorch_model.bin").unlink()
    (folder / provenance.ENVELOPE_NAME).unlink()
    (line,) = _failures(env.run(None, "verify-export", str(folder)))
    assert provenance.ENVELOPE_NAME in line and "missing" in line


def test_refusals_are_one_line(world, exported, tmp_path):
    env, jobs = world
    _one_line(env.run(EXPORTER, "export", "--job", str(jobs["idle"]), str(tmp_path / "idle")), 2, "not completed")
    assert not (tmp_path / "idle").exists()
    line = _one_line(env.run(EXPORTER, "export", "--job", str(jobs["bad"]), str(tmp_path / "bad"), timeout=300), 1,
                     "refusing to export", "audit failed")
    assert "merge" in line and not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no partial folder left behind"
    _one_line(env.run(EXPORTER, "export", "--job", str(jobs["clean"]), str(exported)), 2, "not an empty folder")
    _one_line(env.run(None, "verify-export", str(tmp_path / "nowhere")), 2, "is not a folder")
    _one_line(env.run(None, "verify-export", str(exported), LEDGER_RPC_URL="http://127.0.0.1:9"), 2,
              "cannot check the export against the chain", "--offline")


def test_a_changed_config_and_added_code_fail_even_re_signed(world, exported, tmp_path):
    """Issue 34: config.json changed and a modeling file with an auto_map added, all listed
    in a statement re-signed by the exporter's key: offline the code is refused, and on
    the chain config.json is not the job's committed config."""
    env, jobs = world
    from eth_account import Account

    folder = _copy(exported, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(n_layer=cfg["n_layer"] + 1, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("import os\nos.system('echo pwned')\n")
    envelope = _envelope(folder)
    st = json.loads(base64.b64decode(envelope["payload"]))
    st["subject"] = [{"name": n, "digest": {"sha256": sha256_bytes((folder / n).read_bytes()).hex()}}
                     for n in ("config.json", "model.safetensors", "modeling_evil.py")]
    payload = json.dumps(st, sort_keys=True, separators=(",", ":")).encode()
    _write_envelope(folder, provenance.sign_envelope(payload, provenance.EthereumSigner(Account.from_key(EXPORTER))))
    lines = _failures(env.run(None, "verify-export", str(folder), "--offline"))
    assert any(ln.startswith("FAILED: modeling_evil.py: not a file any export holds") for ln in lines), lines
    assert any("config.json: names code to run (auto_map)" in ln for ln in lines), lines
    lines = _failures(env.run(None, "verify-export", str(folder), "--job", str(jobs["clean"])))
    assert any("config.json: differs from the job's committed model config in auto_map, n_layer" in ln
               for ln in lines), lines


# ---------------------------------------------------------------------------- a Hugging Face model with LoRA


# ---------------------------------------------------------------------------- a LoRA job's merged model


@pytest.mark.parametrize("change, fails", [
    (lambda w: w, None),                                       # the merge as recomputed
    (lambda w: w * np.float32(1 + 2e-7), None),                # another CPU's rounding: within 1e-6
    (lambda w: w * np.float32(1 + 1e-4), "not the committed base with the final adapter merged"),
    (lambda w: np.where(np.arange(w.size).reshape(w.shape) == 0, np.float32("nan"), w),
     "not the committed base with the final adapter merged"),
    (lambda w: w[:1], "not the committed base with the final adapter merged"),   # another shape
])
def test_verify_merged_compares_within_float32_rounding_only(tmp_path, change, fails):
    """``verify_merged`` (torch-free) against a recomputed merge: equal or float32 rounding
    passes and says which; a change of 1e-4, a NaN or another shape fails naming the file
    and the tensor; a merge that cannot be recomputed is said, and fails nothing."""
    from safetensors.numpy import save

    rng = np.random.default_rng(3)
    want = {"a.weight": rng.standard_normal((4, 8)).astype(np.float32), "b.weight": np.ones(3, np.float32)}
    got = {**want, "a.weight": change(want["a.weight"]).astype(np.float32)}
    (tmp_path / "model.safetensors").write_bytes(save(got, metadata={"format": "pt"}))
    check = provenance.ExportCheck(tmp_path, files={"model.safetensors": "x"}, weights="adapter ok")
    provenance.verify_merged(check, lambda adapter: want, {})
    if fails:
        assert check.failures == [f"model.safetensors: 1 tensor(s) are {fails} (recomputed here), first a.weight"]
    else:
        assert check.ok and "holds the committed base with it merged (recomputed" in check.weights, check.weights
        assert ("bit for bit" in check.weights) == (got["a.weight"].tobytes() == want["a.weight"].tobytes())

    unmergeable = provenance.ExportCheck(tmp_path, files={"model.safetensors": "x"}, weights="adapter ok")
    provenance.verify_merged(unmergeable, provenance._no_merge, {})
    assert unmergeable.ok and "model.safetensors not compared" in unmergeable.weights and "torch" in unmergeable.weights
