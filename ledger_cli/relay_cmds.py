"""`ledger relay run`."""

from __future__ import annotations

from ledger.ethereum.party import setup_logging

from .common import add_command, add_metrics_args, float_in, int_in, start_metrics


def register(sub) -> None:
    p = add_command(sub, "relay", "relay workers' signed submissions in batches", None,
                    "ledger --account r0 relay run --listen 0.0.0.0:8547")
    p.set_defaults(handler=None, group_parser=p)
    s = p.add_subparsers(dest="relay_command", metavar="SUBCOMMAND")
    r = add_command(
        s, "run", "take workers' signed submissions over HTTP and send each round's in one transaction", _run,
        "ledger --account r0 relay run --listen 0.0.0.0:8547",
        description=(
            "Workers started with `ledger worker run --relay URL` sign their submission (EIP-712) and\n"
            "post it here instead of paying for their own transaction; this account sends a round's\n"
            "submissions together in one submitBatch, which costs far less per contribution (README\n"
            "\"Many parties\"). A batch goes out once every worker the round waits for has posted, or\n"
            "--flush-before seconds before the deadline. The relay cannot change or forge a\n"
            "submission (the contract checks each signature), and cannot withhold one: a worker whose\n"
            "submission is not on chain shortly before the deadline sends it itself. Serves every job\n"
            "of this deployment; keeps nothing on disk."
        ),
    )
    r.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                   help="where to listen (default 127.0.0.1 on a free port, printed at start)")
    r.add_argument("--flush-before", type=float_in(0, 86400), default=20.0, metavar="S",
                   help="send what is queued this many seconds before a round's deadline (default 20); keep it "
                        "above the workers' --relay-fallback")
    r.add_argument("--max-batch", type=int_in(1, 128), default=128, metavar="N",
                   help="most submissions in one transaction (default 128)")
    r.add_argument("--poll", type=float_in(0, 3600, lo_open=True), default=0.5,
                   help="seconds between checks of the queues (default 0.5)")
    add_metrics_args(r)
    r.add_argument("-v", "--verbose", action="store_true")


def _listen(text: str) -> tuple[str, int]:
    from ledger.errors import ConfigError

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT (e.g. 127.0.0.1:8547, or port 0 for a free one)")
    return host.strip("[]"), int(port)


def _run(args, settings) -> int:
    setup_logging(args.verbose)
    from ledger.ethereum.deploy import open_ledger
    from ledger.ethereum.keys import load_account
    from node.roles.relay import Relay, RelayOptions

    host, port = _listen(args.listen)
    ledger = open_ledger(settings, load_account(settings, settings.account))
    start_metrics(args, "relay", ledger.chain.address, None)
    relay = Relay(ledger, RelayOptions(host=host, port=port, flush_before=args.flush_before,
                                       max_batch=args.max_batch, poll=args.poll))
    try:
        relay.serve(ready=lambda url: print(f"relay listening on {url}", flush=True))
    except OSError as e:
        from ledger.errors import ConfigError

        raise ConfigError(f"--listen {args.listen}: cannot listen there ({e.strerror or e})") from None
    return 0
