"""`ledger watch`: a job's live page (``ledger.monitor.watch_server``)."""

from __future__ import annotations

import sys

from ledger.ethereum.party import open_party, setup_logging

from .common import PORT, add_command, add_job_arg, float_in


def register(sub) -> None:
    p = add_command(
        sub, "watch", "serve a live web page of a running job: rounds, contributions, parties, health", _watch,
        "ledger watch --job 1 --port 8600",
        description=(
            "Follows the job on chain and in storage and serves one page that updates itself as\n"
            "events land (server-sent events, no reloads): the rounds as a timeline, each\n"
            "contribution's state (submitted, disclosed, committee votes, each aggregator's verdict,\n"
            "accepted or rejected and why), each party's last action and lag, the loss the accepted\n"
            "contributions report by round, credit and payouts of a funded job. A party that has not\n"
            "done what the round asks while others have (for --late-after seconds), or whose deadline\n"
            "is that close, is flagged as late, on the page and in /metrics\n"
            "(ledger_watch_party_late). Reads only public data: anyone can run it, with no account."
        ),
    )
    add_job_arg(p)
    p.add_argument("--port", type=PORT, default=8600, help="port to listen on (default 8600; 0 = any free port)")
    p.add_argument("--host", metavar="ADDR", default=None,
                   help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--poll", type=float_in(0, 3600, lo_open=True), default=1.0,
                   help="seconds between reads of the chain (default 1)")
    p.add_argument("--late-after", type=float_in(0, 86400 * 30), default=30.0, metavar="S",
                   help="flag a party S seconds after others did what it has not, or S seconds before its deadline "
                        "(default 30)")
    p.add_argument("-v", "--verbose", action="store_true")


def _watch(args, settings) -> int:
    setup_logging(args.verbose)
    from ledger.services import listen
    from ledger.errors import ConfigError
    from ledger.monitor.watch_server import Watcher, serve

    host = listen.check_host(args.host)
    ledger, store, _ = open_party(settings, need_account=False)
    ledger.job(args.job)           # an unknown job is the one error line, before anything listens
    watcher = Watcher(ledger, store, args.job, poll=args.poll, late_after=args.late_after)

    def ready(port: int) -> None:
        warning = listen.exposure("watch page", host, port)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        print(f"watching job {args.job} on http://{listen.url_host(host)}:{port}/", flush=True)

    try:
        serve(watcher, host, args.port, ready)
    except OSError as e:
        raise ConfigError(f"--port {args.port}: cannot listen on {host} ({e.strerror or e})") from None
    return 0
