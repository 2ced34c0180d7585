"""What every command module shares: registering commands and groups, the --job argument."""

from __future__ import annotations

import argparse
import textwrap
from typing import Callable, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    pass


def add_command(
    sub, name: str, help: str, handler: Callable, example: str, description: str | None = None
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help ends with a worked example. A one-paragraph
    ``description`` is wrapped to 88 columns; one with line breaks is kept as written."""
    if description and "\n" not in description:
        description = textwrap.fill(description, width=88)
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(handler=handler)
    return p


def add_group(sub, name: str, help: str, examples: Sequence[str] = ()):
    """Add a command group (``ledger chain ...``) whose --help ends with ``examples``;
    returns its subparsers."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=HelpFormatter)
    p.set_defaults(handler=None, group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def add_job_arg(p) -> None:
    p.add_argument("--job", type=int, required=True, metavar="ID", help="job id (printed by `ledger job create` as `job <id>`)")


def add_listen_args(p, default_port: str, exposes: str) -> None:
    """--port and --host of a server a command starts (``chain up``, ``ipfs up``)."""
    p.add_argument("--port", type=int, help=f"port to listen on (default {default_port}; 0 = any free port)")
    p.add_argument("--host", metavar="ADDR", default=None,
                   help=f"address to listen on (default 127.0.0.1, this machine only; {exposes})")


def add_object_args(p, digest_help: str) -> None:
    """The stored object a command reads: its CID and the sha256 its bytes must have."""
    p.add_argument("cid", metavar="CID", help="the object's CID (Qm... or b...)")
    p.add_argument("--digest", required=True, metavar="0xSHA256", help=digest_help)
