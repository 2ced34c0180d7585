"""What every command module shares: registering commands and groups, the --job argument."""

from __future__ import annotations

import argparse
from typing import Callable


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_command(
    sub, name: str, help: str, handler: Callable, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with a worked example."""
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(handler=handler)
    return p


def add_group(sub, name: str, help: str):
    """Add a command group (``ledger chain ...``); returns its subparsers."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    p.set_defaults(handler=None, group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def add_job_arg(p) -> None:
    p.add_argument("--job", type=int, required=True, metavar="ID", help="job id (printed by `ledger job create` as `job <id>`)")
