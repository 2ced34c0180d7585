"""The ``ledger`` command line: one front door for every role, above both packages.

The arrows run cli -> node -> ledger and cli -> ledger: ``ledger`` never imports
``node``, torch or this package, and ``node`` never imports this package. Each
command group lives in its own module with a ``register(subparsers)`` function;
handlers receive ``(args, settings)``. Role commands import ``node`` (and so torch,
1-2 s and 200 MB) inside their handler, with plain import statements, never at
start-up, so ``ledger --help``, ``chain``, ``deploy``, ``store``, ``history``, ``round``
and ``verify-export`` work without torch.

Errors the user can act on (``LedgerError``) print one line and exit with their
code (``ledger.errors``: 0 OK, 1 FAILED, 2 usage or environment, 3 INCOMPLETE); so do
a file or folder the system refuses (``OSError``). Nothing prints a traceback unless
``LEDGER_DEBUG=1``. SIGINT, SIGTERM and SIGHUP unwind the command (``ledger.services.procs.Stopped``),
so it stops what it started; one line says so, exit 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

from ledger.config import load_settings
from ledger.errors import USAGE, ConfigError, LedgerError
from ledger.services.procs import on_stop_signals

from . import (account_cmds, aggregator_cmds, audit_cmds, chain_cmds, compile_cmd, data_cmds, demo_cmds,
               export_cmds, job_cmds, relay_cmds, round_cmds, storage_cmds, watch_cmd)
from .common import HelpFormatter, Parser, one_line

# One module per command group, each with ``register(subparsers)``, in --help order.
GROUPS = [
    chain_cmds,       # chain up|down|status, deploy, verify-deployment
    compile_cmd,      # compile [--check]
    account_cmds,     # account new|list|fund
    storage_cmds,     # ipfs up|down|status, store put|get|verify
    data_cmds,        # data commit
    job_cmds,         # job create, worker run
    aggregator_cmds,  # aggregator run
    relay_cmds,       # relay run
    round_cmds,       # round status|close (any account)
    audit_cmds,       # history, audit
    watch_cmd,        # watch
    demo_cmds,        # demo, generate
    export_cmds,      # export, verify-export
]

EPILOG = """\
examples:
  ledger chain up                      start the local chain (state kept in .ledger/chain)
  ledger deploy                        deploy TrainingLedger and record where
  ledger account new --name w0         an encrypted keystore account (prompts for a password)
  ledger data commit notes.txt         a worker's commitment to its private text
  ledger job create --worker w0 --worker w1 --aggregator a0 --quorum 1
                                       create a training job, prints `job <id>`
  ledger --account w0 worker run --job 1
  ledger --account a0 aggregator run --job 1
  ledger audit --job 1 --html report.html
  ledger demo                          everything at once on this machine

configuration: flags, then env vars (LEDGER_RPC_URL, LEDGER_DATA_DIR, LEDGER_STORAGE,
LEDGER_IPFS_API, LEDGER_CONTRACT, LEDGER_ACCOUNT, ...), then a TOML file
(--config, $LEDGER_CONFIG or ./ledger.toml), then defaults.
keys: an encrypted keystore (`ledger account new`) or LEDGER_PRIVATE_KEY; never printed.

exit codes: 0 OK; 1 FAILED (an audit or verification found the record wrong);
2 usage or environment error (bad arguments, unknown job, unreachable chain or storage,
missing file, refused operation); 3 INCOMPLETE (storage lacks an object the record
rests on, nothing found wrong). Every error is one `error:` line saying what to do.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ledger",
        description="Verifiable training ledger: federated training anchored on an EVM chain and content-addressed storage.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    g = parser.add_argument_group("global options (also LEDGER_* env vars or ledger.toml)")
    g.add_argument("--config", metavar="FILE", help="TOML settings file (default: $LEDGER_CONFIG or ./ledger.toml)")
    g.add_argument("--data-dir", metavar="DIR", help="local state: chain, store, keystore, deployments (default .ledger)")
    g.add_argument("--rpc-url", metavar="URL", help="EVM JSON-RPC endpoint (default: the local chain of `ledger chain up`)")
    g.add_argument("--contract", metavar="ADDR", help="TrainingLedger address (default: the deployment record)")
    g.add_argument("--storage", choices=["embedded", "ipfs"], help="artifact storage backend (default embedded)")
    g.add_argument("--ipfs-api", metavar="ADDR", help="Kubo-compatible RPC API, e.g. /ip4/127.0.0.1/tcp/5001/http")
    g.add_argument("--account", metavar="NAME|ADDR", help="keystore account to act as (default: LEDGER_PRIVATE_KEY)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def settings_from_args(args: argparse.Namespace):
    flags = {
        "data_dir": args.data_dir,
        "rpc_url": args.rpc_url,
        "contract": args.contract,
        "storage": args.storage,
        "ipfs_api": args.ipfs_api,
        "account": args.account,
    }
    return load_settings(flags, config_file=args.config, check_dirs=True)


MAX_UINT256 = 2**256 - 1


def check_job_arg(args: argparse.Namespace) -> None:
    """A job id is a uint256 on chain: anything else would reach web3 as an encoding error."""
    job = getattr(args, "job", None)
    if isinstance(job, int) and not 0 <= job <= MAX_UINT256:
        raise ConfigError(f"--job {job} is not a job id: a job id is a whole number from 0 to 2**256-1 "
                          "(printed by `ledger job create` as `job <id>`)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (usage errors too: argparse's exit 2, and
    --help's 0, come back as a return value, so callers in-process get a code)."""
    _tolerant_output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else USAGE)
    except OSError as e:        # a path an argument type looked at (a name too long, ...)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return USAGE
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group without its subcommand, or nothing at all: teach instead of failing.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    restore = on_stop_signals()
    try:
        check_job_arg(args)
        settings = settings_from_args(args)
        return int(handler(args, settings) or 0)
    except KeyboardInterrupt as e:
        # Ctrl-C, SIGTERM or SIGHUP (procs.Stopped): the command unwound, stopping what it
        # started (the demo its parties, chain and IPFS node); one line says so.
        signum = getattr(e, "signum", signal.SIGINT)
        done = getattr(e, "stopped", None)
        print(f"stopped by {signal.Signals(signum).name}" + (f": {'; '.join(done)}" if done else ""),
              file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:
        # stdout's reader went away (`ledger round status | head -n 3`): nothing left to say
        # to anyone; point stdout at /dev/null so the exit's flush cannot complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + int(signal.SIGPIPE)
    except LedgerError as e:
        if os.environ.get("LEDGER_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A file or folder the system refused (permissions, a full disk, a path through a
        # file): the environment, not the record; one line naming it.
        if os.environ.get("LEDGER_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {one_line(where + str(e.strerror or e))}", file=sys.stderr)
        return USAGE
    finally:
        restore()


def _tolerant_output() -> None:
    """Paths and prompts can hold bytes that are not UTF-8 (surrogate escapes in argv):
    printing them must not raise. Escaped as \\x.. on the terminal and in pipes."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):   # a closed or detached stream: nothing to print to
                pass


if __name__ == "__main__":
    sys.exit(main())
