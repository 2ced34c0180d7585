"""`ledger history` and `ledger audit`."""

from __future__ import annotations

import json
import sys

from .common import add_command
from ledger.ethereum.party import open_party, setup_logging

from .common import add_job_arg, float_in, spec_range, writable_file


def register(sub) -> None:
    p = add_command(
        sub, "history", "the timeline of a job from the chain: who did what, when, tx hashes, CIDs, verdicts", _history,
        "ledger history --job 1 --json > history.json",
    )
    add_job_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--follow", action="store_true",
                   help="print each event as it lands (one line each) until the job completes; Ctrl-C stops")
    p.add_argument("--poll", type=float_in(0, 3600, lo_open=True), default=1.0,
                   help="with --follow: seconds between reads of the chain (default 1)")

    p = add_command(
        sub, "audit", "re-verify a job's whole history from chain and storage alone", _audit,
        "ledger audit --job 1 --replay sample --html report.html",
        description=(
            "Rebuilds the job from chain events, re-fetches every artifact and checks its digest,\n"
            "re-runs the verification and the merges bit-for-bit, replays segments of the workers'\n"
            "training transcripts (the drawn ones, or all), "
            "and checks the lineage from the genesis model to the final one. Needs no local state:\n"
            "an RPC URL, the contract address, the job id and storage access are enough.\n"
            "Exit code 0 only when everything verifies: 1 when the record is wrong, 3 when artifacts are\n"
            "unavailable now and nothing was found wrong, 2 for usage and environment errors."
        ),
    )
    add_job_arg(p)
    p.add_argument("--replay", choices=["none", "sample", "all"], default="sample",
                   help="transcript segments to replay: none, the ones the aggregators drew (default), or all "
                        "(for a private-data job: the drawn ones, the only ones whose windows were revealed)")
    p.add_argument("--threads", type=spec_range("TrainSpec", "threads"), default=None,
                   help="torch threads for replays (default: the job's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", metavar="FILE", type=writable_file,
                   help="write a self-contained HTML report (its folder must exist; checked before the audit runs)")
    p.add_argument("--no-progress", action="store_true")


def _history(args, settings) -> int:
    from ledger.trail.history import load_history, render_timeline, to_json

    if args.follow and args.json:
        from ledger.errors import ConfigError

        raise ConfigError("--follow prints one line per event; leave out --json (or use `ledger watch`)")
    ledger, store, _ = open_party(settings, need_account=False)
    if args.follow:
        from ledger.trail.history import event_line, follow

        ledger.job(args.job)        # an unknown job is the one error line, before anything is printed
        for e in follow(ledger, args.job, args.poll):
            print(event_line(e), flush=True)
        return 0
    h = load_history(ledger, args.job)
    h.epsilon_of = _epsilon_of(store, h.job)
    print(to_json(h) if args.json else render_timeline(h))
    return 0


def _epsilon_of(store, job):
    """A DP job's epsilon per worker (its accountant needs torch: imported only for DP jobs);
    None when the job trains without DP or its config cannot be read now."""
    from ledger.errors import LedgerError
    from ledger.protocol.jobconfig import JobConfig

    try:
        config = JobConfig.from_bytes(store.get(job.config_cid, job.config_digest, max_size=1 << 20))
    except (LedgerError, ValueError, OSError):
        return None
    if config.dp is None:
        return None
    from node.training.dp import epsilon_by_rounds

    return epsilon_by_rounds(config)


def _audit(args, settings) -> int:
    setup_logging()
    from node.reports.text import render_text

    ledger, store, _ = open_party(settings, need_account=False)
    report = run_audit_with_progress(ledger, store, args.job, args.replay, progress=not args.no_progress and not args.json,
                                     threads=args.threads)
    if args.html:
        from node.reports.html import render_html

        from ledger.atomic import write_bytes

        write_bytes(args.html, render_html(report).encode())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(render_text(report))
        if args.html:
            print(f"HTML report: {args.html}")
    # 0 OK, 1 FAILED (the record is wrong), 3 INCOMPLETE (artifacts unavailable now).
    return {"OK": 0, "FAILED": 1, "INCOMPLETE": 3}[report.status]


def run_audit_with_progress(ledger, store, job_id: int, replay: str, progress: bool = True, threads: int | None = None):
    from ledger.progress import rounds_bar
    from node.roles.audit import audit_job

    with rounds_bar("audit", progress) as on_progress:
        return audit_job(ledger, store, job_id, replay=replay, progress=on_progress, threads=threads)
