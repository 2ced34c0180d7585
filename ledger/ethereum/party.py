"""A party's connections (its account, the contract, its store) and its log format:
what every role needs, from the command line or a test harness alike."""

from __future__ import annotations

import logging
import os
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


def open_party(settings, need_account: bool = True):
    """(ledger, store, account) of the party the settings name. An auditor needs none, but
    is given the one it configured (``--account``, ``LEDGER_PRIVATE_KEY``): a named or
    granted auditor opens with it what is sealed to it; without one it is None."""
    from ledger.ethereum.deploy import open_ledger
    from ledger.ethereum.keys import ENV_PRIVATE_KEY, load_account
    from ledger.store import open_store

    configured = bool(settings.account or os.environ.get(ENV_PRIVATE_KEY))
    account = load_account(settings, settings.account) if need_account or configured else None
    return open_ledger(settings, account), open_store(settings), account
