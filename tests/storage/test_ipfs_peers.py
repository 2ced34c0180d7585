"""The project's IPFS node with peers: libp2p (TCP, noise, yamux) and bitswap between
nodes that were told of each other, on loopback. What a party's node lacks comes from
its peers, checked against the CID and kept; a CID no peer has is "not found on this
node or its peers" at once; a pin fetches first; the peer id survives a restart and a
node that comes back is dialled again. (Separate hosts: tests/e2e/test_netns.py.)"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ledger.services import ipfs_node
from ledger.store.cid import CHUNK_SIZE, cid_of_bytes
from ledger.config import load_settings
from ledger.errors import ConfigError, NotFoundError
from ledger.services.procs import pid_alive
from ledger.store.ipfs import IpfsStore

pytestmark = pytest.mark.filterwarnings("ignore:The .strict. parameter:FutureWarning")  # ipfshttpclient vs urllib3 2


def rnd(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(n)


@pytest.fixture
def nodes(tmp_path):
    """Start nodes on demand (``start(name, **ipfs_up args)``); every one is stopped by PID after the test."""
    try:
        ipfs_node.node_binary()
    except Exception as e:
        pytest.skip(f"the local IPFS node is not installed ({e})")
    started: dict[str, object] = {}

    def settings(name: str):
        return load_settings({"data_dir": tmp_path / name}, env={}, config_file=None)

    def start(name: str, **kw):
        up = ipfs_node.ipfs_up(settings(name), port=0, **kw)
        started[name] = settings(name)
        return up

    start.settings = settings
    try:
        yield start
    finally:
        for s in started.values():
            ipfs_node.ipfs_down(s)


def _store(up) -> IpfsStore:
    return IpfsStore(up.info.url, timeout=10)


def _wait(cond, seconds: float = 15.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def test_a_node_fetches_from_its_peers_and_keeps_what_it_pins(nodes):
    a = nodes("a", listen_on=["/ip4/127.0.0.1/tcp/0"])
    sw_a = ipfs_node.swarm_info(a.info.url)
    (addr_a,) = sw_a["swarm"]
    assert addr_a.startswith("/ip4/127.0.0.1/tcp/") and addr_a.endswith(f"/p2p/{sw_a['peer_id']}")
    b = nodes("b", peers=[addr_a], fetch_timeout=3)
    sw_b = ipfs_node.swarm_info(b.info.url)
    assert sw_b["swarm"] == [] and [p["peer"] for p in sw_b["peers"]] == [sw_a["peer_id"]]
    assert sw_b["peers"][0]["direction"] == "outbound"
    assert [p["peer"] for p in ipfs_node.swarm_info(a.info.url)["peers"]] == [sw_b["peer_id"]]
    st = ipfs_node.ipfs_status(nodes.settings("b"))
    assert st["peer_id"] == sw_b["peer_id"] and st["dials"] == [addr_a]

    sa, sb = _store(a), _store(b)
    data = rnd(3 * CHUNK_SIZE + 17, seed=1)            # a DAG: a root and four leaves
    obj = sa.put(data)
    assert not sb.has(obj.cid)                          # has: this node alone
    assert sb.reachable(obj.cid)                        # reachable: or one of its peers
    assert sb.get(obj.cid, obj.digest) == data          # fetched from a, verified
    assert sb.has(obj.cid)

    kept = sa.put(rnd(2 * CHUNK_SIZE, seed=2))
    sb.pin(kept.cid)                                    # fetches every block, then pins on b
    assert kept.cid in ipfs_node.api_call(b.info.url, "pin/ls")["Keys"]

    absent = cid_of_bytes(b"no node has this").cid
    t = time.monotonic()
    with pytest.raises(NotFoundError) as e:
        sb.get(absent, bytes(32))
    assert time.monotonic() - t < 2.5                   # a said it lacks it: no wait for the timeout
    assert "not found on this node or its peers" in str(e.value) and "1 connected peer" in str(e.value)
    assert not sb.reachable(absent)
    with pytest.raises(NotFoundError):
        sb.pin(absent)

    # a goes away: b still serves what it fetched and pinned; the rest is not found, at once.
    only_on_a = sa.put(b"never fetched by b")
    ipfs_node.ipfs_down(nodes.settings("a"))
    assert not pid_alive(a.info.pid)
    assert _wait(lambda: not ipfs_node.swarm_info(b.info.url)["peers"])
    assert sb.get(kept.cid, kept.digest) and sb.get(obj.cid, obj.digest) == data
    t = time.monotonic()
    with pytest.raises(NotFoundError) as e:
        sb.get(only_on_a.cid, only_on_a.digest)
    assert time.monotonic() - t < 2.5 and "no connected peers" in str(e.value)

    # a comes back with the same peer id (kept in its repo); b dials it again by itself.
    a2 = nodes("a", listen_on=[addr_a.split("/p2p/")[0]])
    assert ipfs_node.swarm_info(a2.info.url)["peer_id"] == sw_a["peer_id"]
    assert _wait(lambda: [p["peer"] for p in ipfs_node.swarm_info(b.info.url)["peers"]] == [sw_a["peer_id"]])
    assert sb.get(only_on_a.cid, only_on_a.digest) == b"never fetched by b"


def test_a_running_node_connects_to_more_peers(nodes):
    a = nodes("a", listen_on=["/ip4/127.0.0.1/tcp/0"])
    (addr_a,) = ipfs_node.swarm_info(a.info.url)["swarm"]
    c = nodes("c")
    assert ipfs_node.swarm_info(c.info.url)["peers"] == []
    again = nodes("c", peers=[addr_a])
    assert not again.started and "connected the running node" in again.note
    assert len(ipfs_node.swarm_info(c.info.url)["peers"]) == 1
    obj = _store(a).put(b"over swarm/connect")
    assert _store(c).get(obj.cid, obj.digest) == b"over swarm/connect"


def test_address_checks():
    assert ipfs_node.check_listen("/ip4/10.0.0.5/tcp/4001") == "/ip4/10.0.0.5/tcp/4001"
    assert ipfs_node.check_listen("/ip6/::1/tcp/0/") == "/ip6/::1/tcp/0"
    peer = "/ip4/10.0.0.6/tcp/4001/p2p/12D3KooWBbewY3M7qfKmseeYfU7tricxjjwWFDzTt1LcR843rTpz"
    assert ipfs_node.check_peer(peer) == peer
    for bad in ["/ip4/10.0.0.5/udp/4001", "/ip4/10.0.0/tcp/4001", "/ip6/10.0.0.5/tcp/4001", "/ip4/1.2.3.4/tcp/70000",
                "10.0.0.5:4001", ""]:
        with pytest.raises(ConfigError):
            ipfs_node.check_listen(bad)
    for bad in ["/ip4/10.0.0.6/tcp/4001", "/ip4/10.0.0.6/tcp/0/p2p/12D3KooWBbewY3M7qfKmseeYfU7tricxjjwWFDzTt1LcR843rTpz",
                "/ip4/10.0.0.6/tcp/4001/p2p/notapeer"]:
        with pytest.raises(ConfigError):
            ipfs_node.check_peer(bad)
    assert ipfs_node.swarm_exposure(["/ip4/127.0.0.1/tcp/4001"]) is None
    assert "10.0.0.5" in ipfs_node.swarm_exposure(["/ip4/10.0.0.5/tcp/4001"])
