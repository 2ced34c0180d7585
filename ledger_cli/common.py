"""What every command module shares: registering commands and groups, the --job argument."""

from __future__ import annotations

import argparse
import textwrap
from typing import Callable, Sequence


_CONTROLS = {i: f"\\x{i:02x}" for i in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t", 127: "\\x7f"}


def one_line(text: str) -> str:
    """An error message as one line: a value that held a newline (or another control
    character) is shown escaped, so it cannot split the line or drive the terminal."""
    return str(text).translate(_CONTROLS)


class Parser(argparse.ArgumentParser):
    """argparse, with ``--opt=--`` read as the value "--" (Python 3.11's argparse drops
    that "--" and hands the command an empty list where it expects one value), and its
    error line kept one line whatever the values it quotes."""

    def error(self, message):
        super().error(one_line(message))

    def _get_values(self, action, arg_strings):
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every checked parameter's --help line ends with its range, taken from its type
    (``int_in``, ``float_in``, ``text_in``), unless the help already states it."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action) or ""
        span = getattr(action.type, "span", None)
        if span and span not in text:
            text = f"{text}; range {span}" if text else f"range {span}"
        return text


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
    # A plain whole number here: main() checks the uint256 range with its own one-line error.
    p.add_argument("--job", type=job_id, required=True, metavar="ID",
                   help="job id (printed by `ledger job create` as `job <id>`)")


def add_listen_args(p, default_port: str, exposes: str) -> None:
    """--port and --host of a server a command starts (``chain up``, ``ipfs up``)."""
    p.add_argument("--port", type=PORT, help=f"port to listen on (default {default_port}; 0 = any free port)")
    p.add_argument("--host", metavar="ADDR", default=None,
                   help=f"address to listen on (default 127.0.0.1, this machine only; {exposes})")


def add_metrics_args(p) -> None:
    """--metrics-port and --metrics-host of a long-running role (``ledger.monitor.metrics``)."""
    p.add_argument("--metrics-port", type=PORT, default=None, metavar="N",
                   help="serve Prometheus metrics on this port (0 = any free port, printed); off by default")
    p.add_argument("--metrics-host", metavar="ADDR", default=None,
                   help="address the metrics listen on (default 127.0.0.1, this machine only)")


def start_metrics(args, role: str, party: str, job, store=None):
    """Serve the role's metrics when --metrics-port was given; returns the store to use
    (counting its bytes when metrics are on)."""
    if args.metrics_port is None:
        return store
    import sys

    from ledger.services import listen
    from ledger.monitor import metrics

    host = listen.check_host(args.metrics_host)
    try:
        port = metrics.serve(role, party, job, args.metrics_port, host)
    except OSError as e:
        from ledger.errors import ConfigError

        raise ConfigError(f"--metrics-port {args.metrics_port}: cannot listen there ({e.strerror or e})") from None
    warning = listen.exposure("metrics endpoint", host, port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"metrics on http://{listen.url_host(host)}:{port}/metrics", file=sys.stderr, flush=True)
    return metrics.counting(store) if store is not None else None


def add_object_args(p, digest_help: str) -> None:
    """The stored object a command reads: its CID and the sha256 its bytes must have."""
    p.add_argument("cid", metavar="CID", help="the object's CID (Qm... or b...)")
    p.add_argument("--digest", required=True, metavar="0xSHA256", help=digest_help)


def int_in(lo: int | None = None, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi] (either end open when None), so a
    value out of range is refused before anything is written, with its range in the error.
    Its ``span`` ("1..256") ends the option's --help line (``HelpFormatter``)."""
    span = _span(lo, hi)

    def parse(text: str) -> int:
        try:
            v = int(text.strip(), 10)
        except ValueError:          # not digits, or more digits than int() reads
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number ({span})") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is outside {span}")
        return v
    parse.__name__ = "integer"
    parse.span = span
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (an end open with ``lo_open`` /
    ``hi_open``; unbounded when None); NaN and infinities are refused."""
    import math

    low = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
    high = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
    span = f"{low}, {high}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number ({span})") from None
        if (not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo))
                or (hi is not None and (v >= hi if hi_open else v > hi))):
            raise argparse.ArgumentTypeError(f"{_shown(text)} is outside {span}")
        return v
    parse.__name__ = "number"
    parse.span = span
    return parse


def eth_amount(text: str) -> int:
    """An argparse type: an amount in ETH (up to 18 decimals), returned in wei."""
    from decimal import Decimal, InvalidOperation

    try:
        v = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an amount in ETH (e.g. 0.5)") from None
    wei = v * 10**18
    if not v.is_finite() or v < 0 or wei != wei.to_integral_value() or wei >= 2**128:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an amount in ETH between 0 and 3.4e20 "
                                         f"with at most 18 decimals")
    return int(wei)


eth_amount.__name__ = "ETH amount"


def show_eth(wei: int) -> str:
    """Wei as ETH, exact (``ledger.trail.history.eth``), with its unit."""
    from ledger.units import eth

    return f"{eth(wei)} ETH"


def text_in(lo: int = 0, hi: int = 4096, what: str = "characters"):
    """An argparse type: text of lo..hi characters (names, labels): an empty or a megabyte
    name is refused at the door instead of being written into a config or a file name."""
    span = f"{lo}..{hi} {what}"

    def parse(text: str) -> str:
        if not lo <= len(text) <= hi:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is {len(text)} {what} long, outside {span}")
        return text
    parse.__name__ = "text"
    parse.span = span
    return parse


def job_id(text: str) -> int:
    """A job id as argparse reads it: a whole number (its uint256 range is checked by main)."""
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a job id (a whole number, printed by "
                                         f"`ledger job create` as `job <id>`)") from None


job_id.span = "0..2**256-1"


def _span(lo, hi) -> str:
    def show(v):
        return {2**63 - 1: "2**63-1", 2**32 - 1: "2**32-1", 2**31 - 1: "2**31-1"}.get(v, str(v))
    if lo is not None and hi is not None:
        return f"{show(lo)}..{show(hi)}"
    return f">= {show(lo)}" if lo is not None else f"<= {show(hi)}"


def _shown(text: str, limit: int = 40) -> str:
    """A value as an error line may show it: quoted, escaped (no raw control bytes or
    surrogates reach the terminal), and cut."""
    r = ascii(text)
    return r if len(r) <= limit else r[:limit] + "...'"


PORT = int_in(0, 65535)
SEED = int_in(0, 2**63 - 1)


class spec_range:
    """An argparse type with the range of a job-config field (``ledger.protocol.jobconfig``, the one
    place ranges are written down), read when first needed: ``ledger --help`` does not
    import the config's validation. ``lo`` narrows the lower end (``--lora-rank``: 0 means
    "no LoRA" in a config, and is simply not given on the command line)."""

    def __init__(self, spec: str, field: str, lo=None):
        self.spec, self.field, self.lo = spec, field, lo
        self.__name__ = "integer"

    @property
    def _parse(self):
        if "_type" not in self.__dict__:
            from ledger.protocol import jobconfig

            kind, lo, hi, lo_open = jobconfig.limits(getattr(jobconfig, self.spec), self.field)
            if self.lo is not None:
                lo, lo_open = self.lo, False
            self._type = int_in(lo, hi) if kind is int else float_in(lo, hi, lo_open=lo_open)
        return self._type

    @property
    def span(self) -> str:
        return self._parse.span

    def __call__(self, text: str):
        return self._parse(text)


def device_name(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N (torch's names), checked before torch is imported."""
    import re

    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,3})?", text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a device: cpu, cuda or cuda:N")
    return text


def http_url(text: str) -> str:
    """``--relay``: an http(s) URL with a host, checked when the command starts, not at the first round."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.hostname:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not an http:// or https:// URL with a host "
                                         f"(the address `ledger relay run` printed)")
    return text


def writable_file(text: str):
    """A file a command will write (``--html``): refused before the command runs when it
    is a folder, or its folder is missing, not a folder, or not writable."""
    from pathlib import Path

    if not text:
        raise argparse.ArgumentTypeError("an empty path; give a file name")
    try:
        return _writable_file(Path(text), text)
    except OSError as e:              # a name too long, a loop of links...
        raise argparse.ArgumentTypeError(f"{_shown(text)}: {e.strerror or e}") from None


def _writable_file(p, text: str):
    import os

    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{_shown(text)} is a folder; give a file name inside it")
    if p.exists() and not p.is_file():
        raise argparse.ArgumentTypeError(f"{_shown(text)} exists and is not a regular file (a device?)")
    parent = p.parent
    if not parent.exists():
        raise argparse.ArgumentTypeError(f"the folder of {_shown(text)} does not exist; create it first")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{_shown(str(parent))} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"the folder {_shown(str(parent))} is not writable by this user")
    return p


