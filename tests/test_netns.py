"""Every party on its own host: one network namespace each, linked by veth pairs to a
bridge in a switch namespace, addresses assigned here, no default route (nothing can
leave). The chain host runs anvil on its address (`chain up --host`), the storage host
the IPFS node (`ipfs up --host`); the owner deploys and creates the job; two workers and
two aggregators run as processes in their own namespaces; an auditor with nothing but
the RPC URL, the contract address, the job id and the IPFS API address gets AUDIT OK.
Each party has its own data directory (and keystore or key in its environment); no
file is shared between them. Needs root (namespaces); removed at the end, also on failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import address, keys

PARTIES = ["chain", "storage", "owner", "w0", "w1", "a0", "a1", "auditor"]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`); CI runs as root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Hosts:
    """The namespaces, created on entry and deleted on exit (whatever happened)."""

    def __init__(self, parties: list[str]):
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.{200 + int(self.tag[:2], 16) % 50}.{int(self.tag[2:], 16)}"
        self.switch = f"lt{self.tag}-switch"
        self.ns = {p: f"lt{self.tag}-{p}" for p in parties}
        self.addr = {p: f"{self.subnet}.{i + 1}" for i, p in enumerate(parties)}
        self.created: list[str] = []

    def __enter__(self) -> "Hosts":
        try:
            for name in [self.switch, *self.ns.values()]:
                _ip("netns", "add", name)
                self.created.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, (party, ns) in enumerate(self.ns.items()):
                host_end, switch_end = f"h{self.tag}{i}", f"s{self.tag}{i}"
                _ip("link", "add", host_end, "type", "veth", "peer", "name", switch_end)
                _ip("link", "set", host_end, "netns", ns)
                _ip("link", "set", switch_end, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", switch_end, "master", "br0")
                _ip("-n", self.switch, "link", "set", switch_end, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[party]}/24", "dev", host_end)
                _ip("-n", ns, "link", "set", host_end, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name in reversed(self.created):  # deleting a namespace deletes its veth ends too
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.created = []

    def cmd(self, party: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[party], *argv]


def _party_env(data_dir: Path, **ledger_env: str) -> dict:
    """Nothing of the test's LEDGER_* settings: only what this party was given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env.update(LEDGER_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **ledger_env)
    return env


def _ledger(hosts: Hosts, party: str, env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    r = subprocess.run(hosts.cmd(party, sys.executable, "-m", "ledger_cli", *args), capture_output=True, text=True,
                       timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{party}: ledger {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_parties_on_separate_hosts(tmp_path):
    reason = _skip_reason()
    if reason:
        print(f"SKIPPED test_parties_on_separate_hosts: {reason}")
        pytest.skip(reason)
    from ledger import anvil, ipfs_node
    from ledger.config import load_settings

    dirs = {p: tmp_path / p for p in PARTIES}
    for d in dirs.values():
        d.mkdir()
    chain_settings = load_settings({"data_dir": dirs["chain"]}, env={}, config_file=None)
    storage_settings = load_settings({"data_dir": dirs["storage"]}, env={}, config_file=None)
    role_keys = dict(zip(["w0", "w1", "a0", "a1"], keys(4, f"netns-{secrets.token_hex(4)}")))
    procs: list[subprocess.Popen] = []
    with Hosts(PARTIES) as hosts:
        try:
            for ns in hosts.ns:  # separate hosts: no way out, and no other host's loopback
                routes = subprocess.run(hosts.cmd(ns, "ip", "route"), capture_output=True, text=True).stdout
                assert "default" not in routes and routes.count("\n") == 1, routes

            # The chain host: anvil on its own address, loudly not loopback.
            chain_env = _party_env(dirs["chain"])
            up = _ledger(hosts, "chain", chain_env, "chain", "up", "--host", hosts.addr["chain"], "--port", "8545")
            assert "WARNING" in up.stderr and "not on loopback" in up.stderr and "JSON-RPC" in up.stderr, up.stderr
            rpc_url = f"http://{hosts.addr['chain']}:8545"
            assert rpc_url in up.stdout, up.stdout

            # The storage host: the IPFS node on its own address.
            up = _ledger(hosts, "storage", _party_env(dirs["storage"]), "ipfs", "up", "--host", hosts.addr["storage"],
                         "--port", "5001")
            assert "WARNING" in up.stderr and "IPFS RPC API" in up.stderr, up.stderr
            ipfs_api = f"/ip4/{hosts.addr['storage']}/tcp/5001/http"
            assert ipfs_api in up.stdout, up.stdout

            # A worker's host reaches neither server on its own loopback: they are elsewhere.
            probe = subprocess.run(hosts.cmd("w0", sys.executable, "-c",
                                             "import socket; socket.create_connection(('127.0.0.1', 8545), 2)"),
                                   capture_output=True, text=True)
            assert probe.returncode != 0 and "refused" in probe.stderr.lower(), probe.stderr

            # The owner: a keystore account of its own, funded by the chain host, deploys and creates the job.
            pw = dirs["owner"] / "password"
            pw.write_text(secrets.token_urlsafe(16))
            pw.chmod(0o600)
            owner_env = _party_env(dirs["owner"], LEDGER_RPC_URL=rpc_url, LEDGER_STORAGE="ipfs",
                                   LEDGER_IPFS_API=ipfs_api, LEDGER_KEY_PASSWORD_FILE=str(pw), LEDGER_ACCOUNT="owner")
            out = _ledger(hosts, "owner", owner_env, "account", "new", "--name", "owner").stdout
            owner_addr = out.split()[1]
            parties = [owner_addr, *(address(k) for k in role_keys.values())]
            for a in parties:
                _ledger(hosts, "chain", _party_env(dirs["chain"], LEDGER_RPC_URL=rpc_url), "account", "fund", a, "--eth", "5")
            out = _ledger(hosts, "owner", owner_env, "deploy").stdout
            contract = re.search(r"deployed at (0x[0-9a-fA-F]{40})", out).group(1)
            owner_env["LEDGER_CONTRACT"] = contract
            out = _ledger(
                hosts, "owner", owner_env, "job", "create",
                "--worker", address(role_keys["w0"]), "--worker", address(role_keys["w1"]),
                "--aggregator", address(role_keys["a0"]), "--aggregator", address(role_keys["a1"]),
                "--quorum", "2", "--rounds", "1", "--round-duration", "300",
                "--steps", "5", "--batch-size", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            ).stdout
            job = re.search(r"^job (\d+)", out, re.M).group(1)

            # Workers and aggregators, each on its own host with its own key and data dir.
            for party, key in role_keys.items():
                role = "worker" if party.startswith("w") else "aggregator"
                env = _party_env(dirs[party], LEDGER_RPC_URL=rpc_url, LEDGER_CONTRACT=contract, LEDGER_STORAGE="ipfs",
                                 LEDGER_IPFS_API=ipfs_api, LEDGER_PRIVATE_KEY=key)
                extra = ["--no-progress"] if role == "worker" else []
                log = open(dirs[party] / f"{role}.log", "wb")
                p = subprocess.Popen(hosts.cmd(party, sys.executable, "-m", "ledger_cli", role, "run", "--job", job,
                                               "--poll", "0.3", *extra),
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
                p.log = dirs[party] / f"{role}.log"
                procs.append(p)
            for p in procs:
                try:
                    rc = p.wait(timeout=400)
                except subprocess.TimeoutExpired:
                    rc = None
                assert rc == 0, f"{p.args[3]} exited {rc}:\n{p.log.read_text()[-3000:]}"

            # The auditor: an empty data dir and four facts.
            audit_env = _party_env(dirs["auditor"], LEDGER_RPC_URL=rpc_url, LEDGER_CONTRACT=contract,
                                   LEDGER_STORAGE="ipfs", LEDGER_IPFS_API=ipfs_api)
            out = _ledger(hosts, "auditor", audit_env, "audit", "--job", job, "--no-progress", timeout=300).stdout
            assert "AUDIT OK final model" in out, out[-3000:]
            assert not (dirs["auditor"] / "keystore").exists() and not (dirs["auditor"] / "deployments").exists()
            # No party wrote into another's directory.
            for party in ("w0", "w1", "a0", "a1"):
                assert not (dirs[party] / "keystore").exists() and not (dirs[party] / "deployments").exists()
            assert not (dirs["storage"] / "chain").exists() and not (dirs["chain"] / "ipfs").exists()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            anvil.chain_down(chain_settings)
            ipfs_node.ipfs_down(storage_settings)
    assert anvil.service(chain_settings).running() is None and ipfs_node.service(storage_settings).running() is None
