"""``ledger ipfs up|down|status`` and ``ledger store put|get|verify``."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_command, add_group, add_listen_args, add_object_args, float_in


def _addr_type(check_name: str, name: str):
    """An argparse type from a ``ledger.services.ipfs_node`` address check (one-line usage error)."""
    def parse(text: str) -> str:
        from ledger.services import ipfs_node
        from ledger.errors import ConfigError

        try:
            return getattr(ipfs_node, check_name)(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    parse.__name__ = name
    return parse


def register(sub) -> None:
    # ---------------------------------------------------------------- ipfs
    g = add_group(sub, "ipfs", "this party's IPFS node (Helia; blocks in <data-dir>/ipfs; explicit peers): up, down, "
                  "status",
                  ["ledger ipfs up && ledger --storage ipfs store put model.safetensors",
                   "ledger ipfs up --listen /ip4/10.0.0.5/tcp/4001 --peer /ip4/10.0.0.6/tcp/4001/p2p/12D3KooW...",
                   "ledger ipfs status", "ledger ipfs down"])
    p = add_command(
        g,
        "up",
        "start this party's IPFS node (idempotent); prints its API address, pid, peer id and peers",
        _ipfs_up,
        example="ledger ipfs up --listen /ip4/10.0.0.5/tcp/4001 --peer /ip4/10.0.0.6/tcp/4001/p2p/12D3KooW...",
        description=(
            "Start ipfs-node/server.mjs (Helia on node 22, filesystem blockstore in <data-dir>/ipfs/repo) in the "
            "background, its RPC API on 127.0.0.1 (or --host). It serves the part of Kubo's RPC API the IPFS "
            "backend uses (add, cat, pin/add, pin/ls, block/stat, id, version, swarm/connect, swarm/peers), so "
            "`--storage ipfs` works without Kubo; with Kubo installed, pass --ipfs-api instead. Each party of a "
            "consortium runs its own node: --listen opens its peer-to-peer port (libp2p over TCP, noise, yamux), "
            "--peer dials other parties' nodes (kept connected), and a CID this node lacks is fetched from its "
            "peers by bitswap; no DHT, bootstrap list or mDNS, so it talks to no one it was not told of. On a "
            "running node, --peer connects it to more peers."
        ),
    )
    add_listen_args(p, "LEDGER_IPFS_PORT or 5001",
                    "another address exposes the unauthenticated RPC API, every stored artifact, to the network")
    p.add_argument("--listen", action="append", default=None, metavar="/ip4/ADDR/tcp/PORT",
                   type=_addr_type("check_listen", "listen address"),
                   help="swarm address other parties' nodes dial (repeat; default none: this node only dials out); "
                        "its peer id is printed on start")
    p.add_argument("--peer", action="append", default=None, metavar="/ip4/ADDR/tcp/PORT/p2p/PEERID",
                   type=_addr_type("check_peer", "peer address"),
                   help="another party's node to connect to and keep connected (repeat): its swarm address as its "
                        "`ledger ipfs status` prints it")
    p.add_argument("--fetch-timeout", type=float_in(0, 3600, lo_open=True), default=None, metavar="S",
                   help="seconds to wait for a peer to deliver a block this node lacks before answering "
                        "'not found on this node or its peers' (default 20; sooner when every peer says it lacks it)")
    add_command(g, "down", "stop the local IPFS node by PID", _ipfs_down, example="ledger ipfs down")
    add_command(
        g,
        "status",
        "is the local IPFS node running and answering? its peer id, swarm addresses and peers; exits 2 when it "
        "is down",
        _ipfs_status,
        example="ledger ipfs status || ledger ipfs up",
    )

    # ---------------------------------------------------------------- store
    g = add_group(sub, "store", "content-addressed storage (embedded, or IPFS with --storage ipfs): put, get, verify",
                  ["ledger store put model.safetensors", "ledger store get QmX... --digest 0xabc... -o model.safetensors",
                   "ledger store verify QmX... --digest 0xabc..."])
    p = add_command(
        g,
        "put",
        "store a file; prints its CID, sha256 and size",
        _put,
        example="ledger store put model.safetensors            # cid Qm..., sha256 0x..., size N",
        description=(
            "Store FILE in the configured backend and print its CID (the same CID `ipfs add` gives "
            "with Kubo's defaults: CIDv0, 256 KiB chunks, balanced DAG; --cid-version 1 gives raw "
            "leaves like `ipfs add --cid-version=1`) and the sha256 of its exact bytes, the identity "
            "recorded on chain."
        ),
    )
    p.add_argument("file", metavar="FILE", help="file to store ('-' for standard input)")
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=0, help="0 (default, Kubo's default) or 1 (raw leaves)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")

    p = add_command(
        g,
        "get",
        "fetch a CID into a file, verified against its sha256 before it appears",
        _get,
        example="ledger store get QmX... --digest 0x5f2a... -o model.safetensors",
        description=(
            "Stream CID into FILE through a temporary file; the bytes must hash to --digest (and, in the "
            "embedded store, every block to its CID) or nothing is written and the command fails."
        ),
    )
    add_object_args(p, "expected sha256 of the bytes (from the chain)")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write the verified bytes ('-' for standard output, written only once verified)")

    p = add_command(
        g,
        "verify",
        "check that a stored CID is intact and hashes to the expected sha256",
        _verify,
        example="ledger store verify QmX... --digest 0x5f2a...",
        description=(
            "Read CID from the configured backend and check it against --digest without writing it "
            "anywhere; exits 1 (naming the CID and both digests) when it does not match, 3 when the "
            "store does not have it."
        ),
    )
    add_object_args(p, "expected sha256 of the bytes")


# ------------------------------------------------------------------------ handlers


def _ipfs_up(args, settings) -> int:
    from ledger.services import listen
    from ledger.errors import StorageUnreachable
    from ledger.services.ipfs_node import ipfs_up, swarm_exposure, swarm_info

    up = ipfs_up(settings, port=args.port, host=args.host, listen_on=args.listen, peers=args.peer,
                 fetch_timeout=args.fetch_timeout)
    host = up.info.extra.get("host", listen.DEFAULT_HOST)
    for warning in (listen.exposure("ipfs", host, up.info.port), swarm_exposure(up.info.extra.get("listen", []))):
        if warning:
            print(warning, file=sys.stderr)
    if up.note:
        print(f"note: {up.note}", file=sys.stderr)
    state = "started" if up.started else "already running"
    print(f"ipfs node {state}: api {up.info.url} (pid {up.info.pid}), blocks in {up.info.extra.get('repo')}")
    if not up.started and args.host and listen.check_host(args.host) != host:
        print(f"note: it listens on {host}, not --host {args.host}; `ledger ipfs down` first to move it", file=sys.stderr)
    try:
        _print_swarm(swarm_info(up.info.url), up.info.extra.get("peers", []))
    except StorageUnreachable as e:
        print(f"note: no peer information from the node: {e}", file=sys.stderr)
    print("use it with: ledger --storage ipfs ...  (or LEDGER_STORAGE=ipfs); stop with: ledger ipfs down")
    return 0


def _print_swarm(sw: dict, dials: list[str]) -> None:
    """The node's peer id, swarm addresses (what other nodes pass to --peer) and peers."""
    print(f"{'peer_id':10} {sw['peer_id']}")
    for i, a in enumerate(sw["swarm"] or ["(none: no --listen; this node only dials out)"]):
        print(f"{'swarm' if i == 0 else '':10} {a}")
    connected = {p["peer"] for p in sw["peers"]}
    missing = [d for d in dials if d.rsplit("/p2p/", 1)[-1] not in connected]
    print(f"{'peers':10} {len(sw['peers'])} connected" + (f"; {len(missing)} of its --peer not (yet) reached, "
                                                        "retried every 5 s" if missing else ""))
    for p in sw["peers"]:
        print(f"{'':10} {p['addr']}/p2p/{p['peer']} ({p['direction']})")
    for d in missing:
        print(f"{'':10} {d} (not connected)")


def _ipfs_down(args, settings) -> int:
    from ledger.services.ipfs_node import ipfs_down

    info = ipfs_down(settings)
    print(f"ipfs node stopped (pid {info.pid})" if info else "ipfs node was not running")
    return 0


def _ipfs_status(args, settings) -> int:
    from ledger.services.ipfs_node import ipfs_status

    st = ipfs_status(settings)
    swarm = {k: st.pop(k) for k in ("peer_id", "swarm", "peers") if k in st}
    dials = st.pop("dials", [])
    for k, v in st.items():
        print(f"{k:10} {v}")
    if "peer_id" in swarm:
        _print_swarm(swarm, dials)
    if not st.get("running"):
        print("error: the local IPFS node is not running: run `ledger ipfs up`", file=sys.stderr)
        return 2
    if not st.get("answering", True):
        print("error: the local IPFS node runs but its API does not answer; `ledger ipfs down && ledger ipfs up`",
              file=sys.stderr)
        return 2
    return 0


def _store(settings, cid_version: int = 0):
    from ledger.store import open_store

    return open_store(settings, cid_version=cid_version)


def _parse_digest(text: str) -> bytes:
    from ledger.digest import from_hex
    from ledger.errors import LedgerError

    try:
        return from_hex(text)
    except ValueError as e:
        raise LedgerError(f"--digest: {e}") from None


def _put(args, settings) -> int:
    from ledger.digest import to_hex

    with _store(settings, args.cid_version) as store:
        obj = store.put(sys.stdin.buffer if args.file == "-" else args.file)
    if args.json:
        print(json.dumps({"cid": obj.cid, "sha256": to_hex(obj.digest), "size": obj.size, "backend": store.name}))
    else:
        print(f"cid     {obj.cid}")
        print(f"sha256  {to_hex(obj.digest)}")
        print(f"size    {obj.size}")
    return 0


def _get(args, settings) -> int:
    digest = _parse_digest(args.digest)
    if args.output == "-":
        # Verified in memory first: nothing reaches standard output unless every byte checks out.
        with _store(settings) as store:
            data = store.get(args.cid, digest)
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        print(f"wrote {len(data)} bytes to standard output (sha256 verified)", file=sys.stderr)
        return 0
    _check_output(args.output)
    with _store(settings) as store:
        dest = store.get_to_file(args.cid, digest, args.output)
    print(f"wrote {dest} ({dest.stat().st_size} bytes, sha256 verified)")
    return 0


def _check_output(path: str) -> None:
    """-o FILE: refused before anything is fetched when it cannot be a file."""
    from pathlib import Path

    from ledger.errors import LedgerError

    p = Path(path)
    if not path:
        raise LedgerError("-o: an empty path; give a file name, or '-' for standard output")
    if p.is_dir():
        raise LedgerError(f"-o {path}: is a folder; give a file name inside it")
    if p.exists() and not p.is_file():
        raise LedgerError(f"-o {path}: exists and is not a regular file (a device?); give a file name, or '-'")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LedgerError(f"-o {path}: {parent} is a file, not a folder")
            break


def _verify(args, settings) -> int:
    digest = _parse_digest(args.digest)
    with _store(settings) as store:
        size = store.verify(args.cid, digest)
    print(f"ok: {args.cid} ({size} bytes) matches sha256 {args.digest}")
    return 0
