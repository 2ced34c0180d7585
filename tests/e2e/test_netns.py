"""Every party on its own host, with its own IPFS node: one network namespace each,
linked by veth pairs to a bridge in a switch namespace, addresses assigned here, no
default route (nothing can leave). The chain host runs anvil on its address (`chain up
--host`). The owner, two workers, two aggregators and the auditor each run their own
IPFS node (`ipfs up --listen ADDR --peer ...`): its RPC API on the namespace's own
loopback, so no party can use another's, and its swarm address on the veth network,
the nodes in a full mesh (each dials those started before it). The job trains on the
workers' private text (`data commit`, `--data-root`): each worker's checkpoint, the
transcript snapshots and window bundles it reveals after the round closes reach the
aggregators' nodes by bitswap; the aggregators pin what they verified and the merge.
Then both workers' nodes are stopped, and the auditor, with nothing but the RPC URL,
the contract address, the job id and its own (empty) node, gets AUDIT OK: everything
comes from the owner's and the aggregators' nodes. Each party has its own data
directory (and keystore or key in its environment); no file is shared between them.
Needs root (namespaces); removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest

from support import address, keys, public_key

PARTIES = ["chain", "owner", "w0", "w1", "a0", "a1", "auditor"]
NODES = ["owner", "w0", "w1", "a0", "a1", "auditor"]     # the parties with an IPFS node, in start order
SWARM_PORT = 4001
API_PORT = 5001


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


def _node_call(hosts: Hosts, party: str, command: str, **params) -> dict:
    """A call to the RPC API of the party's own IPFS node, from inside its namespace (the
    only place it can be reached from)."""
    url = f"http://127.0.0.1:{API_PORT}/api/v0/{command}?{urlencode(params)}"
    code = f"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(urllib.request.Request({url!r}, " \
           "method='POST'), timeout=30).read().decode())"
    r = subprocess.run(hosts.cmd(party, sys.executable, "-c", code), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{party}: {command} {params}: {r.stderr[-2000:]}"
    return json.loads(r.stdout)


def _text(seed: int, n: int) -> bytes:
    """A worker's own text: random lowercase words."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9))) for _ in range(n // 4)]
    return " ".join(words).encode()[:n]


def test_parties_on_separate_hosts(tmp_path):
    reason = _skip_reason()
    if reason:
        print(f"SKIPPED test_parties_on_separate_hosts: {reason}")
        pytest.skip(reason)
    from ledger.services import anvil, ipfs_node
    from ledger.config import load_settings

    dirs = {p: tmp_path / p for p in PARTIES}
    for d in dirs.values():
        d.mkdir()
    settings = {p: load_settings({"data_dir": dirs[p]}, env={}, config_file=None) for p in PARTIES}
    role_keys = dict(zip(["w0", "w1", "a0", "a1"], keys(4, f"netns-{secrets.token_hex(4)}")))
    for i, w in enumerate(["w0", "w1"]):     # each worker's private text, on its own host only
        (dirs[w] / "notes.txt").write_bytes(_text(100 + i, 12_000))
    (dirs["owner"] / "validation.txt").write_bytes(_text(999, 6_000))
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

            # Every party's own IPFS node: the RPC API on its host's loopback (the default), the
            # swarm on its address, dialling every node started before it (a full mesh).
            swarm: dict[str, str] = {}
            for party in NODES:
                peers = [arg for addr in swarm.values() for arg in ("--peer", addr)]
                up = _ledger(hosts, party, _party_env(dirs[party]), "ipfs", "up", "--port", str(API_PORT),
                             "--listen", f"/ip4/{hosts.addr[party]}/tcp/{SWARM_PORT}", *peers)
                assert f"api /ip4/127.0.0.1/tcp/{API_PORT}/http" in up.stdout, up.stdout
                assert "WARNING" in up.stderr and "accepts peers on" in up.stderr and "IPFS RPC API" not in up.stderr
                m = re.search(rf"^swarm\s+(/ip4/{re.escape(hosts.addr[party])}/tcp/{SWARM_PORT}/p2p/(\S+))$", up.stdout, re.M)
                assert m and re.search(rf"^peer_id\s+{m.group(2)}$", up.stdout, re.M), up.stdout
                assert re.search(rf"^peers\s+{len(swarm)} connected$", up.stdout, re.M), up.stdout
                swarm[party] = m.group(1)
            with ThreadPoolExecutor(len(NODES)) as pool:
                status = dict(zip(NODES, pool.map(
                    lambda party: _ledger(hosts, party, _party_env(dirs[party]), "ipfs", "status").stdout, NODES)))
            for party, st in status.items():
                assert re.search(rf"^peers\s+{len(NODES) - 1} connected$", st, re.M), st
                for other in NODES:
                    if other != party:
                        assert f"/ip4/{hosts.addr[other]}/tcp/" in st, (party, other, st)

            # A worker's host reaches neither the chain nor any IPFS API on its own loopback, nor
            # another party's IPFS API: each is on its own host's loopback.
            for target in [("127.0.0.1", 8545), (hosts.addr["a0"], API_PORT), (hosts.addr["owner"], API_PORT)]:
                probe = subprocess.run(hosts.cmd("w0", sys.executable, "-c",
                                                 f"import socket; socket.create_connection({target!r}, 2)"),
                                       capture_output=True, text=True)
                assert probe.returncode != 0 and "refused" in probe.stderr.lower(), (target, probe.stderr)

            # Each worker commits to its own text on its own host; only the root goes to the owner.
            roots = []
            for w in ("w0", "w1"):
                out = _ledger(hosts, w, _party_env(dirs[w]), "data", "commit", str(dirs[w] / "notes.txt")).stdout
                m = re.fullmatch(r"root (0x[0-9a-f]{64}) bytes (\d+)", out.strip())
                assert m, out
                roots.append(f"{m.group(1)}:{m.group(2)}")

            # The owner: a keystore account of its own, funded by the chain host, deploys and creates the job.
            pw = dirs["owner"] / "password"
            pw.write_text(secrets.token_urlsafe(16))
            pw.chmod(0o600)
            owner_env = _party_env(dirs["owner"], LEDGER_RPC_URL=rpc_url, LEDGER_STORAGE="ipfs",
                                   LEDGER_KEY_PASSWORD_FILE=str(pw), LEDGER_ACCOUNT="owner")
            out = _ledger(hosts, "owner", owner_env, "account", "new", "--name", "owner").stdout
            owner_addr = out.split()[1]
            parties = [owner_addr, *(address(k) for k in role_keys.values())]
            with ThreadPoolExecutor(len(parties)) as pool:   # independent balances: funded at once
                list(pool.map(lambda a: _ledger(hosts, "chain", _party_env(dirs["chain"], LEDGER_RPC_URL=rpc_url),
                                                "account", "fund", a, "--eth", "5"), parties))
            out = _ledger(hosts, "owner", owner_env, "deploy").stdout
            contract = re.search(r"deployed at (0x[0-9a-fA-F]{40})", out).group(1)
            owner_env["LEDGER_CONTRACT"] = contract
            out = _ledger(
                hosts, "owner", owner_env, "job", "create",
                "--worker", address(role_keys["w0"]), "--worker", address(role_keys["w1"]),
                "--aggregator", public_key(role_keys["a0"]), "--aggregator", public_key(role_keys["a1"]),
                "--quorum", "2", "--rounds", "1", "--round-duration", "300",
                "--data-root", roots[0], "--data-root", roots[1], "--validation", str(dirs["owner"] / "validation.txt"),
                "--steps", "6", "--segment-steps", "2", "--replay-segments", "1", "--batch-size", "8",
                "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
            ).stdout
            job = re.search(r"^job (\d+)", out, re.M).group(1)

            # Workers and aggregators, each on its own host with its own key, data dir and IPFS node.
            for party, key in role_keys.items():
                role = "worker" if party.startswith("w") else "aggregator"
                env = _party_env(dirs[party], LEDGER_RPC_URL=rpc_url, LEDGER_CONTRACT=contract, LEDGER_STORAGE="ipfs",
                                 LEDGER_PRIVATE_KEY=key)
                extra = ["--no-progress", "--data", str(dirs[party] / "notes.txt")] if role == "worker" else []
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

            # The auditor: an empty data dir, its own empty node, and three facts.
            audit_env = _party_env(dirs["auditor"], LEDGER_RPC_URL=rpc_url, LEDGER_CONTRACT=contract,
                                   LEDGER_STORAGE="ipfs")
            history = json.loads(_ledger(hosts, "auditor", audit_env, "history", "--job", job, "--json").stdout)
            (rnd,) = history["rounds"]
            subs = [s["cid"] for s in rnd["submissions"]]
            assert len(subs) == 2 and rnd["closed_by"] == "RoundFinalized", rnd
            assert all(v == 0 for p in rnd["proposals"] for v in p["verdicts"]), rnd["proposals"]  # both accepted
            merged = rnd["info"]["merged_cid"]
            for w in ("w0", "w1"):   # each revealed what the draw asked of it, on its own node
                log = (dirs[w] / "worker.log").read_text()
                assert re.search(r"revealed the .*windows of drawn segment", log), log[-2000:]

            # The aggregators keep, on their own nodes, each contribution, the drawn snapshots and
            # window bundles they replayed (at least one snapshot and one bundle per worker), and the merge.
            for agg in ("a0", "a1"):
                pins = _node_call(hosts, agg, "pin/ls", type="recursive")["Keys"]
                assert set(subs) | {merged} <= set(pins), (agg, subs, merged, pins)
                assert len(pins) >= 2 * 3 + 1, (agg, pins)

            # The workers' nodes go away; the audit still finds everything on the others.
            for w in ("w0", "w1"):
                assert ipfs_node.ipfs_down(settings[w]) is not None
                assert ipfs_node.service(settings[w]).running() is None
            st = _ledger(hosts, "auditor", _party_env(dirs["auditor"]), "ipfs", "status").stdout
            assert re.search(rf"^peers\s+{len(NODES) - 3} connected; 2 of its --peer not \(yet\) reached", st, re.M), st
            assert not _node_call(hosts, "auditor", "pin/ls", type="recursive")["Keys"]
            out = _ledger(hosts, "auditor", audit_env, "audit", "--job", job, "--no-progress", timeout=300).stdout
            assert "AUDIT OK final model" in out, out[-3000:]
            for cid in subs + [merged]:   # fetched from the aggregators' nodes, not pinned by the auditor
                assert _node_call(hosts, "auditor", "block/stat", arg=cid, offline="true")["Key"] == cid
            assert not _node_call(hosts, "auditor", "pin/ls", type="recursive")["Keys"]
            assert not (dirs["auditor"] / "keystore").exists() and not (dirs["auditor"] / "deployments").exists()
            # No party wrote into another's directory.
            for party in ("w0", "w1", "a0", "a1"):
                assert not (dirs[party] / "keystore").exists() and not (dirs[party] / "deployments").exists()
            assert not (dirs["chain"] / "ipfs").exists()
            assert all(not (dirs[p] / "chain").exists() for p in NODES)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            anvil.chain_down(settings["chain"])
            for party in NODES:
                ipfs_node.ipfs_down(settings[party])
    assert anvil.service(settings["chain"]).running() is None
    assert all(ipfs_node.service(settings[p]).running() is None for p in NODES)
