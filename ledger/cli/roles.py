"""What every role command needs: logging, the contract, the store, the account."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # web3/urllib3 chatter is not what a user running a node wants to read.
    for noisy in ("web3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def open_role(settings, need_account: bool = True):
    """(ledger, store, account) for a role; the account is None when not needed."""
    from ..deploy import open_ledger
    from ..keys import load_account
    from ..store import open_store

    account = load_account(settings, settings.account) if need_account else None
    return open_ledger(settings, account), open_store(settings), account


def add_job_arg(p) -> None:
    p.add_argument("--job", type=int, required=True, metavar="ID", help="job id (printed by `ledger job create` as `job <id>`)")
