"""Errors a user can act on.

Every error here carries a one-line message saying what happened and what to do.
The CLI prints ``str(err)`` and exits non-zero; it never shows a traceback for these.
Messages must never contain a private key or a password.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = 1


class ConfigError(LedgerError):
    """Bad or missing configuration (flag, env var, TOML file)."""


class ChainUnreachable(LedgerError):
    """The JSON-RPC endpoint does not answer."""


class WrongChain(LedgerError):
    """The endpoint's chain id is not the one the deployment record names."""


class NoDeployment(LedgerError):
    """No deployment record for this chain (run `ledger deploy`)."""


class NotOurContract(LedgerError):
    """The code at the recorded address is not the TrainingLedger artifact."""


class InsufficientFunds(LedgerError):
    """The sending account cannot pay for gas."""


class TransactionFailed(LedgerError):
    """A transaction was mined with status 0 or could not be sent."""


class ContractReverted(TransactionFailed):
    """A call reverted with a custom error, decoded from the ABI.

    ``name`` is the Solidity error name (e.g. ``WrongParent``), ``args`` its decoded
    arguments as a dict.
    """

    def __init__(self, name: str, args: dict | None = None, context: str = ""):
        self.name = name
        self.args_dict = dict(args or {})
        shown = ", ".join(f"{k}={_short(v)}" for k, v in self.args_dict.items())
        where = f"{context}: " if context else ""
        super().__init__(f"{where}contract reverted with {name}({shown})")


class AccountError(LedgerError):
    """Missing key, wrong keystore password, unknown account."""


class StorageError(LedgerError):
    """Content-addressed storage failed."""


class StorageUnreachable(StorageError):
    """The IPFS HTTP API does not answer."""


class NotFoundError(StorageError):
    """No content for this CID in the store."""


class IntegrityError(StorageError):
    """Fetched content does not hash to the expected digest."""

    def __init__(self, cid: str, expected: str, actual: str, what: str = "content"):
        self.cid, self.expected, self.actual = cid, expected, actual
        super().__init__(
            f"integrity check failed for {what} {cid}: expected sha256 {expected}, got {actual}"
        )


class CheckpointFormatError(LedgerError):
    """A checkpoint that is not a well-formed safetensors file of the allowed size."""


def _short(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    return str(v)
