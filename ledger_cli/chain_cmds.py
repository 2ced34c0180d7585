"""``ledger chain up|down|status|fund``, ``ledger deploy``, ``ledger verify-deployment``."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

from ledger import safejson

from .common import add_command, add_group, add_listen_args, float_in

ETH = float_in(0, 1e9, lo_open=True)     # a dev chain's balance, in ETH


DEFAULT_FUND_ETH = 100.0


def add_fund_command(group, group_name: str) -> None:
    """``ledger <group_name> fund``: the one command, offered under ``chain`` and ``account``."""
    p = add_command(
        group,
        "fund",
        "give an account ETH on a local dev chain (anvil or Hardhat: sets its balance)",
        _fund,
        example=f"ledger {group_name} fund w0 --eth 50",
        description=(
            "Add ETH to an address (or keystore account name) on a local dev chain (chain id 31337) only: "
            "anvil_setBalance on anvil, hardhat_setBalance on Hardhat's node (asked with web3_clientVersion)."
        ),
    )
    p.add_argument("address", metavar="NAME|ADDR", help="keystore account name or address")
    p.add_argument("--eth", type=ETH, default=DEFAULT_FUND_ETH, help=f"amount in ETH (default {DEFAULT_FUND_ETH:g})")


def register(sub) -> None:
    g = add_group(sub, "chain", "the local chain (anvil, state persisted in <data-dir>/chain): up, down, status, fund",
                  ["ledger chain up && ledger deploy", "ledger chain status", "ledger chain down"])

    p = add_command(
        g,
        "up",
        "start the local chain (idempotent); prints its URL, pid and state file",
        _up,
        example="ledger chain up --port 8545 --fund 0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        description=(
            "Start anvil in the background on 127.0.0.1 (or --host), its state loaded from and saved to "
            "<data-dir>/chain/state.json (every LEDGER_STATE_INTERVAL seconds and on `chain down`), "
            "so history survives a restart. Running it again reports the running chain; a second "
            "chain on the same data dir is refused."
        ),
    )
    add_listen_args(p, "LEDGER_CHAIN_PORT or 8545",
                    "0.0.0.0 = every interface: exposes the chain's JSON-RPC, dev methods included, to the network")
    p.add_argument("--fund", nargs="+", metavar="ADDR", default=[], help="addresses or keystore names to give ETH")
    p.add_argument("--fund-eth", type=ETH, default=DEFAULT_FUND_ETH, metavar="N",
                   help=f"ETH each --fund account gets (default {DEFAULT_FUND_ETH:g})")

    add_command(
        g,
        "down",
        "stop the local chain (SIGTERM, so it saves its state)",
        _down,
        example="ledger chain down",
    )

    add_command(
        g,
        "status",
        "is the chain running? block number, state age; exits 2 when it is down or does not answer",
        _status,
        example="ledger chain status || ledger chain up",
    )

    add_fund_command(g, "chain")

    p = add_command(
        sub,
        "deploy",
        "deploy TrainingLedger from the committed artifact and record where",
        _deploy,
        example="ledger chain up && ledger deploy",
        description=(
            "Deploy the committed contracts/build/TrainingLedger.json (no compiler needed) and write "
            "<data-dir>/deployments/<chain-id>.json. Refuses to replace an existing record unless --force. "
            "Signs with --account / LEDGER_ACCOUNT / LEDGER_PRIVATE_KEY; on a local anvil chain with none "
            "configured, with anvil's dev account 0 (and says so)."
        ),
    )
    p.add_argument("--force", action="store_true", help="deploy again and replace the existing record (kept as a backup)")

    add_command(
        sub,
        "verify-deployment",
        "check that the recorded address holds the TrainingLedger artifact's code",
        _verify,
        example="ledger verify-deployment",
        description=(
            "Compare the code at the recorded (or LEDGER_CONTRACT) address with the committed artifact's "
            "runtime bytecode; warn when the artifact changed since the deployment."
        ),
    )


# ---------------------------------------------------------------------------- helpers


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _resolve_address(settings, name_or_address: str) -> str:
    from ledger.errors import AccountError
    from ledger.ethereum.keys import find_account, is_address

    if is_address(name_or_address):
        return name_or_address
    entry = find_account(settings, name_or_address)
    if entry is None:
        raise AccountError(f"{name_or_address!r} is neither an address nor a keystore account (see `ledger account list`)")
    return entry.address


def _rpc(url: str, method: str, params: list | None = None, timeout: float = 3.0):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = safejson.loads(resp.read(), what="the node's answer")
    if "error" in out:
        raise RuntimeError(out["error"])
    return out["result"]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fund_many(settings, url: str, targets: list[str], eth: float) -> None:
    from ledger.ethereum.chain import Chain
    from ledger.ethereum.keys import fund_local

    chain = Chain.connect(url)
    wei = int(round(eth * 10**18))
    for t in targets:
        addr = _resolve_address(settings, t)
        new = fund_local(chain, addr, wei)
        print(f"funded {addr} with {eth:g} ETH (balance {new / 10**18:g} ETH)")


# ---------------------------------------------------------------------------- chain


def _up(args, settings) -> int:
    from ledger.services import anvil, listen

    for t in args.fund:  # fail before starting anything on a bad name
        _resolve_address(settings, t)
    up = anvil.chain_up(settings, port=args.port, host=args.host)
    info = up.info
    host = info.extra.get("host", listen.DEFAULT_HOST)
    warning = listen.exposure("chain", host, info.port)
    if warning:
        _err(warning)
    if up.note:
        _err(f"note: {up.note}")
    if up.started:
        print(f"chain up: {info.url} (pid {info.pid})")
    else:
        print(f"chain already running: {info.url} (pid {info.pid})")
        if args.port not in (None, 0) and args.port != info.port:
            _err(f"note: it listens on port {info.port}, not --port {args.port}; `ledger chain down` first to move it")
        if args.host and listen.check_host(args.host) != host:
            _err(f"note: it listens on {host}, not --host {args.host}; `ledger chain down` first to move it")
    print(f"state file: {info.extra.get('state_file', settings.chain_dir / anvil.STATE_FILE)}")
    if settings.rpc_url and settings.rpc_url != info.url:
        _err(f"note: LEDGER_RPC_URL / --rpc-url is set ({settings.rpc_url}); other commands will use that, not this chain")
    if args.fund:
        _fund_many(settings, info.url, args.fund, args.fund_eth)
    return 0


def _down(args, settings) -> int:
    from ledger.services import anvil

    recorded = anvil.service(settings).recorded()
    info = anvil.chain_down(settings)
    state = settings.chain_dir / anvil.STATE_FILE
    if info is not None:
        print(f"chain down: stopped anvil (pid {info.pid}); state saved in {state}")
    elif recorded is not None:
        print(
            f"chain was not running: anvil (pid {recorded.pid}) had already exited without "
            f"`ledger chain down` (killed?); its last saved state is in {state}"
        )
    else:
        print("chain was not running")
    return 0


def _status(args, settings) -> int:
    from ledger.services import anvil

    st = anvil.chain_status(settings)
    ok = False
    if st.get("running"):
        url = st["url"]
        try:
            block = int(_rpc(url, "eth_blockNumber"), 16)
            chain_id = int(_rpc(url, "eth_chainId"), 16)
            print(f"chain: running at {url} (pid {st['pid']}), chain id {chain_id}, block {block}")
            ok = True
        except Exception as e:  # noqa: BLE001 - any failure to answer
            print(f"chain: process running (pid {st['pid']}) but {url} does not answer ({type(e).__name__})")
    else:
        print(f"chain: not running (data dir {st['data_dir']})")
        if st.get("note"):
            print(f"note: {st['note']}")
    if "state_age_s" in st:
        print(f"state file: {st['state_file']} (saved {_age(st['state_age_s'])} ago)")
    else:
        print(f"state file: {st['state_file']} (none yet)")
    if settings.rpc_url:
        try:
            block = int(_rpc(settings.rpc_url, "eth_blockNumber"), 16)
            print(f"configured endpoint {settings.rpc_url}: answering, block {block}")
            ok = True
        except Exception as e:  # noqa: BLE001
            print(f"configured endpoint {settings.rpc_url}: not answering ({type(e).__name__})")
            ok = False
    if ok:
        return 0
    if settings.rpc_url:
        _err(f"error: {settings.source_of('rpc_url')} {settings.rpc_url} does not answer; start that chain or fix the URL")
    elif not st.get("running"):
        _err("error: the chain is down: run `ledger chain up`")
    else:
        _err("error: the local chain's process runs but does not answer; `ledger chain down && ledger chain up`")
    return 2     # the environment: no chain to talk to


def _fund(args, settings) -> int:
    from ledger.ethereum.deploy import resolve_rpc_url

    _fund_many(settings, resolve_rpc_url(settings), [args.address], args.eth)
    return 0


# ---------------------------------------------------------------------------- deploy


def _deploy(args, settings) -> int:
    from ledger.ethereum.deploy import deploy, record_path

    t0 = time.monotonic()
    rec = deploy(settings, account=None, force=args.force, notify=_err)
    print(f"TrainingLedger deployed at {rec.address} on chain {rec.chain_id} (block {rec.block}, tx {rec.tx_hash})")
    print(f"deployer: {rec.deployer}")
    print(f"record: {record_path(settings, rec.chain_id)} ({time.monotonic() - t0:.1f} s)")
    return 0


def _verify(args, settings) -> int:
    """Exit 1 when the code at the address is not the artifact's: the one finding this
    verification makes (an unreachable chain or a missing record stay usage errors, 2)."""
    from ledger.errors import FAILED, NotOurContract

    try:
        return _verify_code(settings)
    except NotOurContract as e:
        e.exit_code = FAILED
        raise


def _verify_code(settings) -> int:
    from ledger.ethereum.deploy import DeploymentRecord, connect, load_record, record_path, verify_deployment

    chain = connect(settings)
    if settings.contract:
        from ledger.ethereum.deploy import check_code

        how = check_code(chain, settings.contract, settings.source_of("contract"))
        print(f"ok: {settings.contract} on chain {chain.chain_id} holds the TrainingLedger code ({how} match)")
        return 0
    rec: DeploymentRecord = load_record(settings, chain.chain_id)
    for w in verify_deployment(chain, rec):
        _err(f"warning: {w}")
    print(
        f"ok: TrainingLedger at {rec.address} on chain {rec.chain_id} matches the artifact "
        f"(deployed in block {rec.block}, record {record_path(settings, rec.chain_id)})"
    )
    return 0
