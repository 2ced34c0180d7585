"""``ledger account new|list``: encrypted keystore accounts (names and addresses only, never keys)."""

from __future__ import annotations

import os
import sys

from .chain_cmds import add_fund_command
from .common import add_command, add_group, show_eth, text_in


def register(sub) -> None:
    g = add_group(sub, "account", "encrypted keystore accounts: new, list, fund",
                  ["LEDGER_KEY_PASSWORD_FILE=pw.txt ledger account new --name w0", "ledger account list"])
    p = add_command(
        g,
        "new",
        "create an encrypted keystore account; prints its name and address (never the key)",
        _new,
        example="LEDGER_KEY_PASSWORD_FILE=~/.ledger-pw ledger account new --name w0",
        description=(
            "Create a new account in the keystore (settings.keystore, default .ledger/keystore) as an "
            "encrypted keystore JSON file with mode 0600. The password comes from --password-file, "
            "LEDGER_KEY_PASSWORD, LEDGER_KEY_PASSWORD_FILE, or a prompt on a terminal. "
            "Use the account later with --account NAME or LEDGER_ACCOUNT=NAME."
        ),
    )
    p.add_argument("--name", type=text_in(1, 64), help="name of the account: letters, digits, '.', '_' or '-' "
                   "(default acct-<address prefix>)")
    p.add_argument("--password-file", metavar="FILE", help="file whose first line is the password")
    p.add_argument("--kdf", choices=["scrypt", "pbkdf2"], default="scrypt", help="key derivation (default scrypt)")
    p.add_argument(
        "--import-env-key",
        action="store_true",
        help="encrypt the key in LEDGER_PRIVATE_KEY instead of generating a new one",
    )

    add_fund_command(g, "account")

    p = add_command(
        g,
        "list",
        "list keystore accounts: names and addresses",
        _list,
        example="ledger account list --public-keys",
    )
    p.add_argument("--public-keys", action="store_true",
                   help="also print each account's public key: what a job owner needs to seal to it "
                        "(`ledger job create --aggregator PUBKEY`, `--auditor`)")
    p = add_command(
        g, "balance", "what the contract holds for an account: rewards, returned stakes, a returned pool",
        _balance, example="ledger --account w0 account balance",
    )
    p.add_argument("address", nargs="?", default=None, help="an address (default: the --account's)")
    add_command(
        g, "withdraw", "withdraw everything the contract credited to this account (rewards, stakes)", _withdraw,
        example="ledger --account w0 account withdraw",
        description=("Payments are pulled, never pushed: finalized rounds credit rewards, a completed job\n"
                     "credits stakes and (to its owner) what is left of its pool, and this sends the whole\n"
                     "balance to the account in one transaction."),
    )


def _new(args, settings) -> int:
    from ledger.errors import AccountError
    from ledger.ethereum.keys import ENV_PRIVATE_KEY, new_account, read_password

    key = None
    if args.import_env_key:
        key = os.environ.get(ENV_PRIVATE_KEY)
        if not key:
            raise AccountError(f"--import-env-key: {ENV_PRIVATE_KEY} is not set")
    password = read_password("the new account", password_file=args.password_file, confirm=True)
    entry = new_account(settings, password, name=args.name, kdf=args.kdf, private_key=key)
    print(f"{entry.name} {entry.address}")
    print(f"keystore file: {entry.path}", file=sys.stderr)
    print(f"public key (give it to job owners, for what is sealed to you): {entry.public_key}", file=sys.stderr)
    return 0


def _list(args, settings) -> int:
    from ledger.ethereum.keys import keystore_problems, list_accounts

    entries = list_accounts(settings)
    for problem in keystore_problems(settings):
        print(f"warning: {problem}", file=sys.stderr)
    if not entries:
        print(f"no accounts in {settings.keystore}; create one with `ledger account new --name NAME`", file=sys.stderr)
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.address}" + (f"  {e.public_key or '-'}" if args.public_keys else ""))
    return 0


def _balance(args, settings) -> int:
    from ledger.errors import LedgerError
    from ledger.ethereum.keys import is_address
    from ledger.ethereum.party import open_party

    if args.address is not None and not is_address(args.address):
        raise LedgerError(f"{args.address!r} is not an address (0x followed by 40 hex digits)")
    ledger, _, account = open_party(settings, need_account=args.address is None)
    who = args.address or account.address
    print(f"{who}: {show_eth(ledger.balance_of(who))} to withdraw")
    return 0


def _withdraw(args, settings) -> int:
    from ledger.ethereum.chain import tx_hash_of
    from ledger.ethereum.party import open_party

    ledger, _, account = open_party(settings)
    amount = ledger.balance_of(account.address)
    receipt = ledger.withdraw()
    print(f"{account.address}: withdrew {show_eth(amount)} in tx {tx_hash_of(receipt)}")
    return 0
