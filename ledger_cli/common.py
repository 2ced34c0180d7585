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


def int_in(lo: int | None = None, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi] (either end open when None), so a
    value out of range is refused before anything is written, with its range in the error."""
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is outside {_span(lo, hi)}")
        return v
    parse.__name__ = "integer"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with ``lo_open``)."""
    import math

    low = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
    high = "inf)" if hi is None else f"{hi:g}]"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{text} is outside {low}, {high}")
        return v
    parse.__name__ = "number"
    return parse


def _span(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f">= {lo}" if lo is not None else f"<= {hi}"
