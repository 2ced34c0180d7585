"""Errors a user can act on.

Every error here carries a one-line message saying what happened and what to do.
The CLI prints ``str(err)`` and exits with ``exit_code``; it never shows a traceback
for these. Messages must never contain a private key or a password.

Exit codes (``ledger --help`` and the README say the same):

- 0 OK;
- 1 FAILED: an audit or a verification found the record wrong (bytes that do not hash
  to their digest, a malformed checkpoint, a model whose audit failed);
- 2 usage and environment errors: bad arguments (argparse exits 2 too), an unknown job,
  a chain or storage that does not answer, a missing file, a refused operation;
- 3 INCOMPLETE: storage lacks an object the record rests on, and nothing was found wrong.
"""

from __future__ import annotations

OK, FAILED, USAGE, INCOMPLETE = 0, 1, 2, 3


class LedgerError(Exception):
    """Base class: a failure the user can understand and act on. By default a usage or
    environment error (exit 2); the subclasses that report a finding say otherwise."""

    exit_code = USAGE


class ConfigError(LedgerError):
    """Bad or missing configuration (flag, env var, TOML file)."""


class InvalidJobConfig(LedgerError):
    """A job's stored config that does not parse or validate (its creator chose its
    bytes): no party can take part in the job and nothing of it can be checked, so
    this is an input problem (exit 2), not an audit finding."""


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
        hint = _HINTS.get(name)
        super().__init__(f"{where}contract reverted with {name}({shown})" + (f"; {hint}" if hint else ""))


# What to do about the reverts a user causes by a typo rather than by the protocol.
_HINTS = {
    "UnknownJob": "no such job on this contract: check --job (`ledger job create` printed it as `job <id>`) "
                  "and that --rpc-url / --contract name the chain and contract it was created on",
    "StakeMissing": "this job takes a stake: post it with `ledger worker join --job J` before submitting",
    "NotActiveYet": "a worker that joined trains from the next round on",
    "JobFull": "the open job has its most workers; ask its owner, or join another job",
    "JobNotOpen": "only the job's named workers train in it; ask its owner to name you in a new job",
    "NothingToWithdraw": "nothing is credited to this account yet: rewards come when rounds finalize, stakes "
                         "when the job ends",
    "ContributionPending": "wait until the round you submitted in is finalized or skipped, then leave",
}


class AlreadyRunning(LedgerError):
    """Another process already holds this party's (or this demo's) lock: one at a time."""


class AccountError(LedgerError):
    """Missing key, wrong keystore password, unknown account."""


class StorageError(LedgerError):
    """Content-addressed storage failed."""


class StorageUnreachable(StorageError):
    """The IPFS HTTP API does not answer."""


class NotFoundError(StorageError):
    """No content for this CID in the store: the record may be right, it cannot be shown now."""

    exit_code = INCOMPLETE


class IntegrityError(StorageError):
    """Fetched content does not hash to the expected digest."""

    exit_code = FAILED

    def __init__(self, cid: str, expected: str, actual: str, what: str = "content"):
        self.cid, self.expected, self.actual = cid, expected, actual
        super().__init__(
            f"integrity check failed for {what} {cid}: expected sha256 {expected}, got {actual}"
        )


class CheckpointFormatError(LedgerError):
    """A checkpoint that is not a well-formed safetensors file of the allowed size."""

    exit_code = FAILED


def _short(v) -> str:
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    return str(v)
