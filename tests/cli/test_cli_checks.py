"""Issue 28: every parameter checked before anything is written, every mistake one line,
exit codes a script can tell apart (0 OK, 1 FAILED, 2 usage/environment, 3 INCOMPLETE).

In-process through ``ledger_cli.main`` where no chain is needed; one real anvil for the
exit codes of an unknown job, a wrong contract, a missing and a damaged object.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

import ledger_cli
from conftest import cli_env
from support.cli import closed_port
from ledger.protocol import datacommit as dc
from ledger import errors
from ledger.config import load_settings
from ledger.errors import ConfigError
from ledger.protocol.jobconfig import ConfigValueError, DataSpec, JobConfig, ModelSpec, Policy, TrainSpec, limits


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``ledger`` in-process against a temp data dir and a closed RPC port: (code, stdout, stderr)."""
    for k in [k for k in os.environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(k)
    data = tmp_path / "data"
    monkeypatch.setenv("LEDGER_DATA_DIR", str(data))
    monkeypatch.setenv("LEDGER_RPC_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.chdir(tmp_path)

    def run(*argv: str, stdout_bytes: bool = False):
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = ledger_cli.main(list(argv))
        out.flush(), err.flush()
        o = out.buffer.getvalue()
        return code, (o if stdout_bytes else o.decode()), err.buffer.getvalue().decode()

    run.data = data
    return run


def one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("note: ", "warning: "))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def argparse_error(err: str, option: str) -> str:
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert ": error: argument " in last and option in last, err
    return last


W0, W1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
A0, A1, A2 = ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
              "0x9965507D1a55bcC2695C58ba7b2e1E0e1B4C3Ca5")
JOB = ["job", "create", "--worker", W0, "--aggregator", A0]


# ---------------------------------------------------------------------------- 1. ranges


@pytest.mark.parametrize("argv, option", [
    (JOB + ["--steps", "0"], "--steps"),
    (JOB + ["--batch-size", "0"], "--batch-size"),
    (JOB + ["--lr", "-1"], "--lr"),
    (JOB + ["--lr", "nan"], "--lr"),
    (JOB + ["--quorum", "0"], "--quorum"),
    (JOB + ["--rounds", "0"], "--rounds"),
    (JOB + ["--rounds", str(2**32)], "--rounds"),
    (JOB + ["--round-duration", "-5"], "--round-duration"),
    (JOB + ["--proposal-window", "0"], "--proposal-window"),
    (JOB + ["--min-submissions", "0"], "--min-submissions"),
    (JOB + ["--krum-f", "-1"], "--krum-f"),
    (JOB + ["--max-update-norm", "0"], "--max-update-norm"),
    (JOB + ["--max-update-norm", "inf"], "--max-update-norm"),
    (JOB + ["--segment-steps", "0"], "--segment-steps"),
    (JOB + ["--replay-segments", "-1"], "--replay-segments"),
    (JOB + ["--replay-tolerance", "0"], "--replay-tolerance"),
    (JOB + ["--reveal-window", "0"], "--reveal-window"),
    (JOB + ["--seed", "-1"], "--seed"),
    (JOB + ["--threads", "0"], "--threads"),
    (JOB + ["--throughput", "-1"], "--throughput"),
    (JOB + ["--name", ""], "--name"),
    (["demo", "--workers", "0"], "--workers"),
    (["demo", "--workers", "-1"], "--workers"),
    (["demo", "--aggregators", "0"], "--aggregators"),
    (["demo", "--round-duration", "0"], "--round-duration"),
    (["generate", "--job", "1", "--top-k", "-3"], "--top-k"),
    (["generate", "--job", "1", "--tokens", "-5"], "--tokens"),
    (["generate", "--job", "1", "--temperature", "-1"], "--temperature"),
    (["generate", "--job", "1", "--seed", "-1"], "--seed"),
    (["audit", "--job", "1", "--threads", "-2"], "--threads"),
    (["aggregator", "run", "--job", "1", "--poll", "0"], "--poll"),
    (["worker", "run", "--job", "1", "--poll", "-1"], "--poll"),
    (["worker", "run", "--job", "1", "--rounds", "0"], "--rounds"),
    (["worker", "run", "--job", "1", "--device", "gpu"], "--device"),
    (["chain", "up", "--port", "65536"], "--port"),
    (["chain", "fund", W0, "--eth", "-1"], "--eth"),
    (JOB + ["--reward", "-1"], "--reward"),
    (JOB + ["--reward", "0.0000000000000000001"], "--reward"),   # below a wei
    (JOB + ["--reward", "ten"], "--reward"),
    (JOB + ["--worker-stake", "nan"], "--worker-stake"),
    (JOB + ["--slash", "1.5"], "--slash"),
    (JOB + ["--aggregator-share", "-0.1"], "--aggregator-share"),
    (JOB + ["--open", "--max-workers", "129"], "--max-workers"),
])
def test_out_of_range_is_refused_before_anything(cli, argv, option):
    code, _, err = cli(*argv)
    assert code == 2
    argparse_error(err, option)
    assert not cli.data.exists(), "nothing may be written before the arguments are checked"


@pytest.mark.parametrize("argv, says", [
    (JOB + ["--quorum", "2"], "strict majority, 1..1"),
    (["job", "create", "--worker", W0, "--aggregator", A0, "--aggregator", A1, "--aggregator", A2, "--quorum", "1"],
     "strict majority, 2..3"),
    (JOB + ["--min-submissions", "2"], "at most 1"),
    (JOB + ["--n-embd", "100", "--n-head", "3"], "not a multiple"),
    (JOB + ["--throughput", "1", "--throughput", "2"], "one per worker"),
    (JOB + ["--reveal-window", "200", "--proposal-window", "300"], "more than half the proposal window"),
    (JOB + ["--max-workers", "4"], "add --open"),
    (["job", "create", "--aggregator", A0], "give at least one --worker (or make the job --open)"),
    (JOB + ["--open", "--max-workers", "1", "--worker", A1], "below the 2 --worker given"),
    (["job", "create", "--open", "--max-workers", "2", "--aggregator", A0, "--min-submissions", "3"], "at most 2"),
    (["demo", "--quorum", "1", "--aggregators", "3"], "strict majority"),
    (["demo", "--model", "/no/such/model"], "not a folder and not a built-in model (smollm2)"),
])
def test_cross_checks_are_one_line_before_anything(cli, argv, says):
    code, _, err = cli(*argv)
    assert code == 2 and says in one_error(err), err
    assert not cli.data.exists()


def test_ranges_are_in_help(cli):
    code, out, _ = cli("job", "create", "--help")
    flat = " ".join(out.split())
    assert code == 0
    for shown in ["--steps STEPS local training steps per round (default 50); range 1..1000000",
                  "--lr LR learning rate (default 0.003); range (0, 10]",
                  "--quorum QUORUM", "range 1..255", "--seed SEED", "range 0..2**63-1"]:
        assert shown in flat, shown
    code, out, _ = cli("generate", "--help")
    assert "0 = all of them" in out and "range >= 0" in " ".join(out.split())


def test_top_k_zero_means_no_top_k():
    import torch

    from node.models import language_model
    from node.commands.generate import sample

    lm = language_model(ModelSpec(n_layer=1, n_head=2, n_embd=32, block_size=32))
    params = lm.genesis(0)
    # all tokens: the same as no top-k at all, and not an error
    assert sample(lm, params, "ab", 8, top_k=0, seed=3) == sample(lm, params, "ab", 8, top_k=None, seed=3)
    assert sample(lm, params, "ab", 8, top_k=1, seed=3) == sample(lm, params, "ab", 8, temperature=0, seed=3)
    m = lm.module(params)
    out = m.generate(torch.zeros((1, 1), dtype=torch.long), 3, top_k=0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4)


def test_generate_prompt_of_non_utf8_bytes():
    """argv holds non-UTF-8 bytes as surrogate escapes: they are the prompt's bytes."""
    from node.models import language_model
    from node.commands.generate import sample

    lm = language_model(ModelSpec(n_layer=1, n_head=2, n_embd=32, block_size=32))
    text = sample(lm, lm.genesis(0), "caf\udce9 \udcff", 4, temperature=0)
    assert text.startswith("caf\ufffd \ufffd") and len(text.encode()) > 8


# ---------------------------------------------------------------------------- 1. the job config


def _numeric_fields():
    for cls in (ModelSpec, TrainSpec, Policy, DataSpec, JobConfig):
        for f in dataclasses.fields(cls):
            ann = cls.__pydantic_fields__[f.name].annotation
            if ann in (int, float):
                yield cls, f.name


@pytest.mark.parametrize("cls, name", list(_numeric_fields()), ids=lambda x: getattr(x, "__name__", x))
def test_every_config_number_has_a_range(cls, name):
    kind, lo, hi, _ = limits(cls, name)
    assert lo is not None and hi is not None, f"{cls.__name__}.{name} has no range"
    instance = cls()
    for bad in ([lo - 1, hi + 1] if kind is int else [float("nan"), float("inf"), hi * 2 + 1]):
        with pytest.raises(ConfigValueError) as e:
            setattr(instance, name, bad)
        assert name in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(ConfigValueError):
            cls(**{name: bad})


@pytest.mark.parametrize("path, value, says", [
    (("train", "steps"), 0, "job config field train.steps must be greater than or equal to 1, got 0"),
    (("train", "batch_size"), 0, "train.batch_size"),
    (("train", "learning_rate"), -1, "train.learning_rate must be greater than 0"),
    (("policy", "replay_tolerance"), 0, "policy.replay_tolerance"),
    (("policy", "krum_f"), 1000, "policy.krum_f"),
    (("seed",), -1, "field seed"),
    (("cid_version",), 2, "cid_version"),
    (("model", "n_head"), 3, "model.n_embd must be a multiple of n_head (3)"),
    (("model", "block_size"), 0, "model.block_size must be >= 1"),
    (("data", "split"), "sideways", "data split must be one of"),
    (("policy", "merge_rule"), "best", "merge_rule must be one of"),
])
def test_config_from_storage_out_of_range_is_one_line_naming_the_field(path, value, says):
    d = json.loads(JobConfig().to_bytes())
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ValueError) as e:
        JobConfig.from_bytes(json.dumps(d).encode())
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_config_is_checked_when_written():
    cfg = JobConfig()
    cfg.model.n_head = 3                       # each field in range, the whole not
    with pytest.raises(ConfigValueError, match="multiple of n_head"):
        cfg.to_bytes()
    assert JobConfig.from_bytes(JobConfig().to_bytes()).to_bytes() == JobConfig().to_bytes()


# ---------------------------------------------------------------------------- 2. one line, not a traceback


@pytest.mark.parametrize("kind", ["file", "under_file"])
@pytest.mark.parametrize("cmd", [["chain", "up"], ["account", "new", "--name", "x"], ["store", "put", "FILE"],
                                 ["ipfs", "up"], ["demo"], ["chain", "down"], ["ipfs", "down"]])
def test_data_dir_that_is_a_file(cli, tmp_path, monkeypatch, cmd, kind):
    f = tmp_path / "afile"
    f.write_text("x")
    d = f if kind == "file" else f / "sub"
    monkeypatch.setenv("LEDGER_DATA_DIR", str(d))
    monkeypatch.setenv("LEDGER_KEY_PASSWORD", "pw")
    code, _, err = cli(*[str(f) if a == "FILE" else a for a in cmd])
    line = one_error(err)
    assert code == 2 and line.startswith(f"error: LEDGER_DATA_DIR {d}: ") and "is a file, not a folder" in line


def test_data_dir_flag_and_unwritable_are_named(cli, tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = cli("--data-dir", str(f / "d"), "account", "list")
    assert code == 2 and one_error(err).startswith(f"error: --data-dir {f / 'd'}: {f} is a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    import ledger.config as config

    real = os.access
    monkeypatch.setattr(config.os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    code, _, err = cli("--data-dir", str(ro), "store", "put", str(f))
    assert code == 2 and "the folder is not writable by this user" in one_error(err)
    code, _, err = cli("--data-dir", str(ro / "new"), "store", "put", str(f))
    assert code == 2 and f"cannot be created, {ro} is not writable" in one_error(err)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root to drop to nobody")
def test_unwritable_data_dir_for_another_user(tmp_path):
    """A real permission check: the data dir belongs to root (0755), the command runs as nobody."""
    d = tmp_path / "root-owned"
    d.mkdir()
    for p in (tmp_path, tmp_path.parent):
        p.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "LEDGER_DATA_DIR": str(d), "HOME": str(tmp_path), "LEDGER_KEY_PASSWORD": "pw"}
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "ledger_cli", "account", "new", "--name", "x"], env=env, cwd=str(Path(__file__).resolve().parents[2]),
                       capture_output=True, text=True, timeout=60)
    if "Permission denied" in r.stderr and "ledger_cli" in r.stderr:
        pytest.skip("the checkout is not readable by nobody")
    assert r.returncode == 2 and one_error(r.stderr).endswith("not writable by this user; point LEDGER_DATA_DIR at "
                                                               "a folder you can write to"), r.stderr


def test_down_creates_nothing(cli):
    for cmd in (["chain", "down"], ["ipfs", "down"]):
        code, out, _ = cli(*cmd)
        assert code == 0 and "not running" in out
    assert not cli.data.exists()


def test_audit_html_refused_before_the_audit(cli, tmp_path):
    for target, says in [(tmp_path / "missing" / "r.html", "does not exist"), (tmp_path, "is a folder"),
                         (Path("/dev/null"), "not a regular file")]:
        code, _, err = cli("audit", "--job", "1", "--html", str(target))
        assert code == 2 and says in argparse_error(err, "--html") and "cannot reach" not in err


def test_data_commit_of_a_device_says_what_it_is(cli, tmp_path):
    code, _, err = cli("data", "commit", "/dev/null")
    assert code == 2 and "/dev/null is a character device" in one_error(err)
    code, _, err = cli("data", "commit", str(tmp_path / "nope.txt"))
    assert code == 2 and "no such file or folder" in one_error(err)
    (tmp_path / "empty").mkdir()
    code, _, err = cli("data", "commit", str(tmp_path / "empty"))
    assert code == 2 and "no data" in one_error(err)


def test_store_put_refuses_a_device(cli):
    code, _, err = cli("store", "put", "/dev/zero")
    assert code == 2 and "is a device" in one_error(err)


def test_store_get_to_standard_output(cli, tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\x00\xffhello\n")
    code, out, _ = cli("store", "put", str(f), "--json")
    obj = json.loads(out)
    code, out, err = cli("store", "get", obj["cid"], "--digest", obj["sha256"], "-o", "-", stdout_bytes=True)
    assert code == 0 and out == f.read_bytes() and "standard output" in err
    assert not Path("-").exists()
    code, out, err = cli("store", "get", obj["cid"], "--digest", "0x" + "00" * 32, "-o", "-", stdout_bytes=True)
    assert code == 1 and out == b"" and "integrity check failed" in one_error(err)
    for target, says in [("/dev/null", "not a regular file"), (str(f / "x"), "is a file, not a folder")]:
        code, _, err = cli("store", "get", obj["cid"], "--digest", obj["sha256"], "-o", target)
        assert code == 2 and says in one_error(err)


def test_bad_contract_names_its_source(cli, tmp_path, monkeypatch):
    code, _, err = cli("--contract", "0x1234", "history", "--job", "1")
    assert code == 2 and one_error(err).startswith("error: --contract: '0x1234' is not an address")
    monkeypatch.setenv("LEDGER_CONTRACT", "nope")
    code, _, err = cli("history", "--job", "1")
    assert code == 2 and one_error(err).startswith("error: LEDGER_CONTRACT: 'nope' is not an address")
    monkeypatch.delenv("LEDGER_CONTRACT")
    (tmp_path / "ledger.toml").write_text('contract = "0xabc"\n')
    code, _, err = cli("history", "--job", "1")
    assert code == 2 and one_error(err).startswith("error: contract in config file ledger.toml: '0xabc'")


def test_settings_numbers_are_ranged():
    with pytest.raises(ConfigError, match="LEDGER_CHAIN_PORT: chain_port must be in 0..65535"):
        load_settings({}, env={"LEDGER_CHAIN_PORT": "70000"})
    with pytest.raises(ConfigError, match="LEDGER_IPFS_TIMEOUT"):
        load_settings({}, env={"LEDGER_IPFS_TIMEOUT": "nan"})
    s = load_settings({"contract": "0x" + "ab" * 20}, env={"LEDGER_RPC_URL": "http://x"})
    assert s.source_of("contract") == "--contract" and s.source_of("rpc_url") == "LEDGER_RPC_URL"
    assert s.replace(rpc_url=None).source_of("contract") == "--contract"


def test_an_option_value_of_double_dash_is_a_value(cli):
    """`--opt=--`: Python 3.11's argparse would hand the command an empty list (found by test_cli_fuzz)."""
    code, _, err = cli("account", "new", "--password-file=--")
    assert code == 2 and "cannot read password file --" in one_error(err)


def test_password_file_that_is_not_text(cli, tmp_path):
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\xfe")
    code, _, err = cli("account", "new", "--name", "x", "--password-file", str(pw))
    assert code == 2 and "is not UTF-8 text" in one_error(err)


# ---------------------------------------------------------------------------- 2. data commit streams


@hsettings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), cuts=st.lists(st.integers(1, 400), max_size=20))
def test_streamed_commitment_is_the_commitment(data, cuts):
    blocks, i = [], 0
    for c in cuts + [len(data)]:
        blocks.append(data[i:i + c])
        i += c
    assert dc.commit_stream(blocks) == dc.commit(data)


def test_data_commit_memory_does_not_grow_with_the_file(tmp_path):
    f = tmp_path / "big.txt"
    with open(f, "wb") as fh:
        for i in range(20):
            fh.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        c = dc.commit_path(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.length == 20 << 20 and c == dc.commit(f.read_bytes())
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB for a 20 MiB file"


# ---------------------------------------------------------------------------- 3. exit codes


def test_exit_codes_of_the_errors():
    assert errors.LedgerError("x").exit_code == 2
    assert errors.ChainUnreachable("x").exit_code == 2 and errors.ConfigError("x").exit_code == 2
    assert errors.ContractReverted("UnknownJob", {"jobId": 9}).exit_code == 2
    assert errors.IntegrityError("Qm", "0x1", "0x2").exit_code == 1
    assert errors.CheckpointFormatError("x").exit_code == 1
    assert errors.NotFoundError("x").exit_code == 3
    assert "check --job" in str(errors.ContractReverted("UnknownJob", {"jobId": 9}))


def test_exit_codes_are_documented(cli):
    code, out, _ = cli("--help")
    flat = " ".join(out.split())
    assert code == 0 and "exit codes: 0 OK; 1 FAILED" in flat and "2 usage or environment error" in flat
    assert "3 INCOMPLETE" in flat
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "exit 0 OK, 1 FAILED, 2 usage or environment, 3 INCOMPLETE" in readme


def test_usage_errors_come_back_as_2(cli):
    assert cli("no-such-command")[0] == 2
    assert cli("job", "create")[0] == 2           # required options missing
    assert cli("--help")[0] == 0


def test_unreachable_chain_is_2_in_one_line(cli):
    code, _, err = cli("history", "--job", "1")
    assert code == 2 and "cannot reach the chain" in one_error(err)
    code, _, err = cli("chain", "status")
    assert code == 2 and "does not answer" in one_error(err)


def _ledger(args, env):
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180)


def test_exit_codes_on_a_chain(settings, rpc_url, tmp_path):
    """Unknown job and a wrong contract are not a wrong record; a damaged object is; a missing one is incomplete."""
    env = cli_env(settings)
    assert _ledger(["deploy"], env).returncode == 0
    for cmd in (["history", "--job", "99"], ["audit", "--job", "99", "--no-progress"], ["generate", "--job", "99"]):
        r = _ledger(cmd, env)
        assert r.returncode == 2 and "UnknownJob" in one_error(r.stderr) and "check --job" in r.stderr, r.stderr
    eoa = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    r = _ledger(["--contract", eoa, "history", "--job", "1"], env)
    assert r.returncode == 2 and one_error(r.stderr).startswith("error: --contract: there is no contract code")
    r = _ledger(["verify-deployment"], {**env, "LEDGER_CONTRACT": eoa})
    assert r.returncode == 1 and one_error(r.stderr).startswith("error: LEDGER_CONTRACT: there is no contract code")
    f = tmp_path / "x.bin"
    f.write_bytes(b"some bytes")
    obj = json.loads(_ledger(["store", "put", str(f), "--json"], env).stdout)
    r = _ledger(["store", "verify", obj["cid"], "--digest", "0x" + "11" * 32], env)
    assert r.returncode == 1 and "integrity check failed" in one_error(r.stderr)
    r = _ledger(["store", "verify", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "--digest", obj["sha256"]], env)
    assert r.returncode == 3 and "is not in the embedded store" in one_error(r.stderr)
