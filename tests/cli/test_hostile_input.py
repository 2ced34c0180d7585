"""Hostile input gets a one-line error, never a traceback: deeply nested safetensors
headers, job configs with fields of the wrong type, job ids outside uint256, and
ledger.toml files that are not UTF-8, not files, or hold a key of the wrong type."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from conftest import cli_env
from ledger.store import checkpoint
from ledger.ethereum.contract import JobParams
from ledger.errors import CheckpointFormatError
from ledger.protocol.jobconfig import JobConfig
from support import address, keys, tiny_config
from support.cli import HOSTILE_AGG as AGG, HOSTILE_WORKER as WORKER, job_with, one_line_error

TOO_BIG = str(2**256)


def _nested_header(depth: int = 100_000) -> bytes:
    hdr = b"[" * depth + b"]" * depth
    return struct.pack("<Q", len(hdr)) + hdr


def _nested_meta(depth: int = 100_000) -> bytes:
    hdr = json.dumps({"__metadata__": {"ledger": "[" * depth + "]" * depth}}).encode()
    return struct.pack("<Q", len(hdr)) + hdr


def _valid_config() -> bytes:
    from node.roles.owner import prepare_config

    return prepare_config(tiny_config(), 1).to_bytes()


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("data", [_nested_header(), _nested_meta(), _nested_header(4)])
def test_deeply_nested_header_is_a_format_error(data):
    with pytest.raises(CheckpointFormatError, match="nested deeper"):
        checkpoint.decode(data, cid="QmHostile")


def test_flat_headers_still_load():
    good = checkpoint.encode({"a.b": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"k": "[{]}"})
    tensors, meta = checkpoint.decode(good)
    assert meta == {"k": "[{]}"} and tensors["a.b"].shape == (2, 3)


def test_hostile_genesis_gives_one_line_errors_and_a_failed_audit(deployed):
    env = deployed
    job = job_with(env, _valid_config(), _nested_header())
    r = env.run(WORKER, "worker", "run", "--job", str(job), "--no-progress", timeout=180)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "nested deeper" in r.stderr
    a = env.run(None, "audit", "--job", str(job), "--no-progress", timeout=180)
    assert a.returncode == 1 and "Traceback" not in a.stderr + a.stdout, a.stderr[-3000:]
    assert "AUDIT FAILED" in a.stdout and "genesis" in a.stdout and "nested deeper" in a.stdout


# ---------------------------------------------------------------------------- job configs


@pytest.mark.parametrize("section, key, value, says", [
    ("policy", "max_update_norm", "big", "policy.max_update_norm must be a number"),
    ("model", "n_layer", 1.5, "model.n_layer must be an integer"),
    ("model", "bias", 1, "model.bias must be a boolean"),
    (None, "seed", "7", "seed must be an integer"),
    ("data", "shards", {}, "data.shards must be an array"),
    (None, "train", [], "train must be an object"),
])
def test_config_field_types_are_checked(section, key, value, says):
    d = json.loads(_valid_config())
    (d[section] if section else d)[key] = value
    with pytest.raises(ValueError, match=says.replace(".", r"\.")):
        JobConfig.from_bytes(json.dumps(d).encode())


def test_every_field_of_a_valid_config_round_trips():
    raw = _valid_config()
    assert JobConfig.from_bytes(raw).to_bytes() == raw


def test_worker_on_a_config_with_a_wrong_type_says_which_field(deployed):
    env = deployed
    d = json.loads(_valid_config())
    d["model"]["n_embd"] = "32"
    genesis = checkpoint.encode({"w": np.zeros(2, np.float32)}, {"kind": "genesis"})
    job = job_with(env, json.dumps(d).encode(), genesis)
    line = one_line_error(env.run(WORKER, "worker", "run", "--job", str(job), "--no-progress", timeout=180))
    assert "model.n_embd must be an integer" in line and f"job {job}" in line


# ---------------------------------------------------------------------------- job ids


@pytest.mark.parametrize("cmd", [["history"], ["audit"], ["generate", "--prompt", "hi"]])
@pytest.mark.parametrize("job", ["-1", TOO_BIG])
def test_job_id_outside_uint256_is_one_line(deployed, cmd, job):
    env = deployed
    line = one_line_error(env.run(None, cmd[0], "--job", job, *cmd[1:], timeout=120))
    assert f"--job {job} is not a job id" in line


# ---------------------------------------------------------------------------- ledger.toml


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_bytes(b'rpc_url = "http://127.0.0.1:\xff"\n'), "is not UTF-8"),
    (lambda p: p.mkdir(), "is not a regular file"),
    (lambda p: p.write_text("rpc_url = 8545\n"), "rpc_url must be a string, got 8545"),
    (lambda p: p.write_text('chain_port = "8545"\n'), "chain_port must be an integer"),
])
def test_bad_ledger_toml_is_one_line_naming_file_and_key(tmp_path, settings, make, says):
    work = tmp_path / "cwd"
    work.mkdir()
    make(work / "ledger.toml")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ledger_cli", "chain", "status"], cwd=work, env=cli_env(settings),
                       capture_output=True, text=True, timeout=60)
    line = one_line_error(r)
    assert "config file ledger.toml" in line and says in line
