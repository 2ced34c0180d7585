"""`ledger aggregator run`."""

from __future__ import annotations

from .common import add_command
from ledger.ethereum.party import open_party, setup_logging

from .common import add_job_arg, add_metrics_args, float_in, int_in, spec_range, start_metrics


def register(sub) -> None:
    p = add_command(sub, "aggregator", "run an aggregator", None, "ledger --account a0 aggregator run --job 1")
    p.set_defaults(handler=None, group_parser=p)
    s = p.add_subparsers(dest="aggregator_command", metavar="SUBCOMMAND")
    r = add_command(
        s, "run", "verify, merge, commit and reveal a proposal every round of a job until it completes", _run,
        "ledger --account a0 aggregator run --job 1",
        description=(
            "When a round closes (deadline, or every worker submitted) the aggregator verifies each\n"
            "contribution, merges the accepted ones bit-exactly, publishes the merge and commits to it\n"
            "(a hash of the outcome and a secret salt, kept in its data dir); once every aggregator\n"
            "committed or the commit deadline passed, it reveals verdicts, merge and salt. The round\n"
            "finalizes when a quorum of reveals agrees, or is skipped after the proposal window."
        ),
    )
    add_job_arg(r)
    r.add_argument("--poll", type=float_in(0, 3600, lo_open=True), default=1.0, help="seconds between chain polls (default 1)")
    r.add_argument("--rounds", type=int_in(1, 2**32 - 1), default=None, help="stop after proposing this many rounds")
    r.add_argument("--replay", choices=["policy", "none", "all"], default="policy",
                   help="transcript segments to replay: the job policy's drawn ones (default), none, or all")
    r.add_argument("--threads", type=spec_range("TrainSpec", "threads"), default=None, help="torch threads for replays (default: the job's)")
    r.add_argument("--skip-stage", action="append", choices=["validation", "replay", "norm"], default=None,
                   help="turn a verification stage off (benchmarks only)")
    add_metrics_args(r)
    r.add_argument("-v", "--verbose", action="store_true")


def _run(args, settings) -> int:
    setup_logging(args.verbose)
    from node.roles.aggregator import AggregatorOptions, run_aggregator

    ledger, store, account = open_party(settings)
    store = start_metrics(args, "aggregator", account.address, args.job, store)
    stages = None
    if args.skip_stage:
        stages = {"validation", "replay", "norm"} - set(args.skip_stage)
    n = run_aggregator(ledger, store, args.job, account.address, settings.data_dir / "aggregator",
                       AggregatorOptions(poll=args.poll, replay=args.replay, stages=stages, max_rounds=args.rounds,
                                         threads=args.threads))
    print(f"aggregator {account.address}: proposed {n} round(s) of job {args.job}")
    return 0
