"""Listen addresses for the servers the CLI starts (the chain, the IPFS node).

Both listen on 127.0.0.1 unless told otherwise, because neither has any
authentication: a chain's JSON-RPC answers anyone who reaches it, and on a local
dev chain that includes methods that rewrite balances and time; the IPFS node's
RPC API lets anyone read every stored artifact and add blocks. A party that must
serve other hosts (separate machines, containers) passes ``--host``; ``exposure``
then says in words what that makes reachable, so the CLI can say it loudly.
"""

from __future__ import annotations

import ipaddress

from ledger.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"

EXPOSES = {
    "chain": (
        "its JSON-RPC API: anyone who reaches it can read every job and send transactions, and "
        "on this dev chain also set balances, move its clock and reset it (anvil_*, evm_* methods)"
    ),
    "ipfs": (
        "its IPFS RPC API, which has no authentication: anyone who reaches it can read every "
        "stored artifact, add blocks and pin them"
    ),
    "metrics endpoint": (
        "this party's Prometheus metrics (its address, rounds, verdicts, timings, outages) to anyone who "
        "reaches it"
    ),
    "watch page": (
        "the job's live page and its /metrics to anyone who reaches it (only public chain and storage data, "
        "but served and polled on this machine's behalf)"
    ),
}


def check_host(host: str | None) -> str:
    """The address to listen on: an IP address (v4 or v6); a name is refused, since what
    it resolves to is not what a reader of the warning sees."""
    host = (host or DEFAULT_HOST).strip().strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"--host {host!r} is not an IP address; give the address of the interface to listen on "
            "(127.0.0.1 = this machine only, 0.0.0.0 = every interface)"
        ) from None
    return host


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server listening on ``host`` from this
    machine: a wildcard address (0.0.0.0, ::) is reached on loopback."""
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{host}]" if ip.version == 6 else host


def exposure(service: str, host: str, port: int) -> str | None:
    """None on loopback; else a loud warning naming what is exposed and to whom."""
    if is_loopback(host):
        return None
    ip = ipaddress.ip_address(host)
    where = "EVERY network interface of this machine" if ip.is_unspecified else f"{host} (reachable from its network)"
    return (
        f"WARNING: the {service} listens on {where}, port {port}, not on loopback. That exposes "
        f"{EXPOSES[service]}. Only do this on a network you control (a firewall, a VPN, a private "
        "subnet); the default --host 127.0.0.1 keeps it on this machine."
    )
