"""The command line from outside: `ledger` as a subprocess, its one-line errors, the local chain
service's files and processes, a port nothing listens on, and a job whose creator chose hostile bytes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from eth_account import Account
from web3 import HTTPProvider, Web3

from conftest import DEV_KEYS
from ledger.ethereum.artifacts import load_artifact
from ledger.ethereum.contract import JobParams
from ledger.services import anvil
from support import address, keys

STATE_INTERVAL = 1


def ledger(args, env, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ledger_cli", *args], env=env, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout,
    )


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """``ledger_cli.main(argv)`` in this process: (exit code, stdout, stderr). The settings come
    from this process's environment, as a subprocess's would from its own."""
    import contextlib
    import io

    import ledger_cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ledger_cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def one_line_error(r) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if not l.startswith(("note: ", "warning: "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pid_of(settings) -> int:
    return json.loads((settings.chain_dir / "service.json").read_text())["pid"]


def url_of(settings) -> str:
    return json.loads((settings.chain_dir / "service.json").read_text())["url"]


def anvil_pids_for(settings) -> list[int]:
    """anvil processes whose command line names this test's state file."""
    state = str((settings.chain_dir / anvil.STATE_FILE).resolve())
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat.split(") ", 1)[-1].startswith("Z"):
            continue
        if cmd and cmd[0].endswith(b"anvil") and state.encode() in cmd:
            pids.append(int(d.name))
    return pids


def create_job(url: str, address: str) -> str:
    """A JobCreated event on chain, sent straight through web3; returns the tx hash."""
    w3 = Web3(HTTPProvider(url))
    acct = Account.from_key(DEV_KEYS[0])
    c = w3.eth.contract(address=address, abi=load_artifact()["abi"])
    workers = [Account.from_key(k).address for k in DEV_KEYS[1:3]]
    aggs = [Account.from_key(DEV_KEYS[3]).address]
    given = dict(configDigest=b"\x01" * 32, configCid=b"\x02" * 32, configSize=100, genesisDigest=b"\x03" * 32,
                 genesisCid=b"\x04" * 32, genesisSize=200, workers=workers, aggregators=aggs, quorum=1,
                 roundDuration=3600, proposalWindow=300, numRounds=2, minSubmissions=1)
    # every other field of JobParams zero, in the ABI's order (the struct grows; this helper need not)
    (fn,) = [f for f in load_artifact()["abi"] if f.get("name") == "createJob"]
    params = tuple(given.get(comp["name"], 0) for comp in fn["inputs"][0]["components"])
    tx = c.functions.createJob(params).build_transaction(
        {"from": acct.address, "nonce": w3.eth.get_transaction_count(acct.address), "chainId": w3.eth.chain_id}
    )
    h = w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    assert w3.eth.wait_for_transaction_receipt(h)["status"] == 1
    return h.to_0x_hex()


def job_events(url: str, address: str) -> list:
    w3 = Web3(HTTPProvider(url))
    c = w3.eth.contract(address=address, abi=load_artifact()["abi"])
    return list(c.events.JobCreated.get_logs(from_block=0))


# a job whose creator chose the config and genesis bytes (tests/cli/test_hostile_*)
HOSTILE_WORKER, HOSTILE_AGG = keys(1, "hostile-w")[0], keys(1, "hostile-a")[0]


def _put(store, data: bytes):
    obj = store.put(data)
    store.pin(obj.cid)
    return obj


def job_with(env, config_bytes: bytes, genesis: bytes) -> int:
    """A job on chain whose creator chose the config and genesis bytes (both hostile here)."""
    env.fund(HOSTILE_WORKER, HOSTILE_AGG)
    cfg, gen = _put(env.store, config_bytes), _put(env.store, genesis)
    return env.ledger.create_job(JobParams(
        config_digest=cfg.digest, config_cid=cfg.cid, config_size=cfg.size,
        genesis_digest=gen.digest, genesis_cid=gen.cid, genesis_size=gen.size,
        workers=[address(HOSTILE_WORKER)], aggregators=[address(HOSTILE_AGG)], quorum=1, round_duration=60,
        num_rounds=1, min_submissions=1))
