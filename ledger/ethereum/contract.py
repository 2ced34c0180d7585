"""``TrainingLedger``: a typed wrapper of the contract, one method per function, view and event.

Values cross this boundary as Python types: digests as 32-byte ``bytes``, CIDs as
their text (``Qm...``/``b...``; ``""`` where none is recorded), addresses as
checksummed ``str``, verdicts as ``list[int]``, round status as a ``str``
(``none``/``open``/``closed``/``finalized``/``skipped``).

A CID is stored on chain as its root's sha2-256 digest beside the object's size;
with the job's CID version that rebuilds the CID (``ledger.store.cid``). This module is
the only one that converts between the two forms: every other module sees text.

``commitment_of``, ``outcome_of`` and ``commit_hash_of`` recompute off chain exactly
what the contract computes, so an auditor can check a round from its events alone::

    seed       = keccak256(abi.encode(uint256 jobId, uint256 round))
    commitment = keccak256(abi.encodePacked(c, worker, digest, cid, uint64 size, uint64 numSamples))  # per submission
    settlement = keccak256(abi.encode(uint64[] credits, uint128 slashed))      # per worker index
    outcome    = keccak256(abi.encodePacked(mergedDigest, mergedCid, uint64 mergedSize, bytes verdicts, settlement))
    commit     = keccak256(abi.encodePacked(outcome, salt, aggregator))  # commit-reveal of a proposal
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from ledger.ethereum.artifacts import load_artifact
from ledger.ethereum.chain import Chain, plain_value
from ledger.store.cid import cid_from_chain, cid_to_chain
from ledger.errors import ChainUnreachable, ContractReverted, LedgerError
from ledger.protocol.settlement import Settlement, round_workers

ZERO32 = b"\0" * 32

ROUND_STATUS = ("none", "open", "closed", "finalized", "skipped")
SKIP_REASONS = ("", "too-few-submissions", "no-quorum")
# The contract's limits (its MAX_WORKERS() and MAX_AGGREGATORS()): argument checks need them
# before any chain is reached; tests/chain/test_contract.py checks them against the deployed contract.
MAX_WORKERS, MAX_AGGREGATORS = 128, 255
WORKER_STATES = ("none", "active", "joined", "unstaked", "left")


def abi_fields(abi: Sequence[dict] | None, function: str, side: str) -> list[str]:
    """The field names of ``function``'s one struct argument (``side="inputs"``) or result
    (``"outputs"``), in the ABI's order: the one place the Python side learns a struct's layout."""
    for entry in abi if abi is not None else load_artifact()["abi"]:
        if entry.get("type") == "function" and entry.get("name") == function and len(entry.get(side, ())) == 1:
            return [c["name"] for c in entry[side][0].get("components", ())]
    raise LedgerError(f"the contract's ABI has no {function} with one struct {side[:-1]}")


def job_event_names(abi: Sequence[dict] | None = None) -> list[str]:
    """The ABI's events of a job: those whose first indexed topic is ``jobId``."""
    return [e["name"] for e in (abi if abi is not None else load_artifact()["abi"]) if e.get("type") == "event"
            and e.get("inputs") and e["inputs"][0].get("name") == "jobId" and e["inputs"][0].get("indexed")]


def _snake(name: str) -> str:
    """``configDigest`` -> ``config_digest`` (a Solidity field's Python name)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _b32(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        s = value[2:] if value.startswith(("0x", "0X")) else value
        value = bytes.fromhex(s)
    value = bytes(value)
    if len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(value)}")
    return value


def _cid32(cid: Any, what: str) -> bytes:
    """A CID's on-chain form: the 32-byte sha2-256 digest of its root (a ``str`` CID is
    converted here, so no caller handles the encoding; raw ``bytes32`` pass as they are)."""
    return cid_to_chain(cid) if isinstance(cid, str) else _b32(cid, what)


def _cid32_or_zero(cid: Any, what: str) -> bytes:
    """``_cid32``, with ``""`` (no object) as the zero digest."""
    return ZERO32 if cid in ("", None) else _cid32(cid, what)


def _cid_text(cid32: Any, size: int, version: int) -> str:
    """The CID an on-chain (root digest, size) stands for in a job of CID ``version``;
    ``""`` for the zero digest the contract holds where nothing is recorded yet."""
    cid32 = bytes(cid32)
    return "" if cid32 == ZERO32 else cid_from_chain(cid32, int(size), int(version))


def _hex(h: Any) -> str:
    if hasattr(h, "to_0x_hex"):
        return h.to_0x_hex()
    if isinstance(h, (bytes, bytearray)):
        return "0x" + bytes(h).hex()
    return str(h)


# ------------------------------------------------------------------------------ types


# Gas a reveal needs beyond its estimate if it turns out to finalize the round.
FINALIZE_GAS = 200_000
# Seconds of a job's commit phase, and again of its reveal phase, unless the creator says.
DEFAULT_PROPOSAL_WINDOW = 300

@dataclass
class JobParams:
    """The arguments of ``createJob`` (see HACKING.md)."""

    config_digest: bytes
    config_cid: str | bytes           # a CID (or its on-chain bytes32)
    config_size: int
    genesis_digest: bytes
    genesis_cid: str | bytes
    genesis_size: int
    workers: list[str]
    aggregators: list[str]
    quorum: int
    round_duration: int
    num_rounds: int
    min_submissions: int
    cid_version: int = 0
    proposal_window: int = DEFAULT_PROPOSAL_WINDOW
    # seconds after a round's deadline for workers to `disclose` (0: the job has nothing to disclose)
    disclosure_window: int = 0
    max_workers: int = 0      # 0: the named workers only; else an open job anyone may join up to this many
    worker_stake: int = 0     # wei each worker posts before it submits (0: none)
    slash_bps: int = 0        # basis points of a worker's remaining stake slashed per cheating rejection
    aggregator_bps: int = 0   # basis points of each round's reward paid to the finalizing quorum
    reward: int = 0           # wei sent with createJob: the job's reward pool
    # verification committees (ledger.protocol.committee), enforced on chain: the policy's
    # committee_size, committee_quorum and vote_window (size 0: every aggregator judges everything)
    committee_size: int = 0
    committee_quorum: int = 0
    vote_window: int = 0

    def to_abi(self, abi: Sequence[dict] | None = None) -> tuple:
        """The ``JobParams`` struct in the field order of ``abi``'s ``createJob`` (the
        committed artifact's by default): each field by its Solidity name."""
        given = {
            "config_digest": _b32(self.config_digest, "config_digest"),
            "config_cid": _cid32(self.config_cid, "config_cid"),
            "genesis_digest": _b32(self.genesis_digest, "genesis_digest"),
            "genesis_cid": _cid32(self.genesis_cid, "genesis_cid"),
            "workers": [to_checksum_address(w) for w in self.workers],
            "aggregators": [to_checksum_address(a) for a in self.aggregators],
        }
        out = []
        for name in abi_fields(abi, "createJob", "inputs"):
            attr = _snake(name)
            if attr not in given and not hasattr(self, attr):
                raise LedgerError(f"the contract's JobParams has a field {name!r} this ledger does not know")
            out.append(given[attr] if attr in given else int(getattr(self, attr)))
        return tuple(out)


@dataclass
class JobInfo:
    """``getJob`` + ``getWorkers`` + ``getAggregators``, read at one block."""

    job_id: int
    owner: str  # the creator
    config_digest: bytes
    config_cid: str
    config_size: int
    genesis_digest: bytes
    genesis_cid: str
    genesis_size: int
    workers: list[str]
    aggregators: list[str]
    quorum: int
    round_duration: int
    num_rounds: int
    min_submissions: int
    cid_version: int
    current_round: int  # the open/closed round; num_rounds once completed
    current_parent: bytes  # the current global model; the final model once completed
    current_parent_cid: str
    current_parent_size: int
    completed: bool
    created_block: int
    proposal_window: int = DEFAULT_PROPOSAL_WINDOW  # seconds of the commit phase, and of the reveal phase
    disclosure_window: int = 0  # seconds after a round's deadline for workers to disclose (0: none)
    max_workers: int = 0        # 0: a closed job; else open, up to this many workers
    active_workers: int = 0     # workers the current round waits for
    worker_stake: int = 0       # wei
    slash_bps: int = 0
    aggregator_bps: int = 0
    reward: int = 0             # wei the job was funded with
    pool: int = 0               # wei not paid out yet

    @property
    def is_open(self) -> bool:
        return self.max_workers > 0

    @property
    def creator(self) -> str:
        return self.owner

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def num_aggregators(self) -> int:
        return len(self.aggregators)


@dataclass
class RoundInfo:
    """``getRound``: the live state of the current round, or the record of a past one."""

    job_id: int
    round: int
    parent: bytes
    deadline: int  # unix time; submissions are accepted while block.timestamp <= deadline
    submissions: int
    commitment: bytes
    status: str  # none / open / closed / finalized / skipped
    merged_digest: bytes
    merged_cid: str  # "" until the round is finalized
    merged_size: int
    outcome: bytes
    accepted: int
    proposals: int  # reveals
    commits: int = 0
    commit_deadline: int = 0  # last second of the commit phase (it ends earlier once every aggregator committed)
    reveal_deadline: int = 0  # last second of the reveal phase; then closeRound skips the round
    skip_reason: str = ""  # "" / "too-few-submissions" / "no-quorum"
    disclosed: int = 0  # submitters that disclosed (jobs with a disclosure window)
    disclosure_deadline: int = 0  # last second to disclose; 0 when the job has no disclosures
    expected: int = 0  # workers the round waits for: it closes early once that many submitted

    @property
    def all_submitted(self) -> bool:
        return 0 < self.expected <= self.submissions

    @property
    def is_closed(self) -> bool:
        return self.status in ("closed", "finalized", "skipped")

    @property
    def is_done(self) -> bool:
        return self.status in ("finalized", "skipped")


@dataclass
class Submission:
    """One ``UpdateSubmitted`` event, the one type of a contribution every role passes
    around: ``index`` is its position in the round (verdict order), ``digest`` the
    sha256 of the checkpoint's bytes and ``size`` their length."""

    job_id: int
    round: int
    index: int
    worker: str
    digest: bytes
    cid: str
    size: int
    num_samples: int
    # Where the event is on chain; left at their defaults for a submission not read
    # from a chain (a benchmark's or a test's).
    block: int = 0
    tx_hash: str = ""
    log_index: int = 0
    timestamp: int = 0


@dataclass
class Disclosure:
    """One ``Disclosed`` event: ``worker`` stored what the draw asked of it, in time;
    ``sealed_cid`` names the encrypted object of its drawn window bundles for its
    verifiers (``""``: nothing sealed), ``sealed_size`` its length."""

    job_id: int
    round: int
    worker: str
    block: int
    tx_hash: str
    log_index: int
    timestamp: int = 0
    sealed_cid: str = ""
    sealed_size: int = 0


@dataclass
class Grant:
    """One ``AccessGranted`` event: the job's creator (``by``) granted ``to`` the object ``cid``."""

    to: str
    by: str
    cid: str
    size: int
    block: int
    tx: str


@dataclass
class Vote:
    """One ``CommitteeVoted`` event: ``aggregator``'s packed ballot (``ledger.protocol.committee``)."""

    job_id: int
    round: int
    aggregator: str
    ballot: bytes
    block: int
    tx_hash: str
    log_index: int
    timestamp: int = 0


@dataclass
class Commit:
    """One ``ProposalCommitted`` event."""

    job_id: int
    round: int
    aggregator: str
    commit_hash: bytes
    commit_deadline: int
    block: int
    tx_hash: str
    log_index: int
    timestamp: int = 0


@dataclass
class Proposal:
    """One ``ProposalRevealed`` event: a proposal is what an aggregator revealed."""

    job_id: int
    round: int
    aggregator: str
    merged_digest: bytes
    merged_cid: str
    merged_size: int
    outcome: bytes
    accepted: int
    verdicts: list[int]
    block: int
    tx_hash: str
    log_index: int
    timestamp: int = 0
    salt: bytes = b""  # the commit's salt: commit_hash_of(outcome, salt, aggregator) is its commit
    settlement: Settlement = field(default_factory=Settlement)


@dataclass
class ChainEvent:
    """Any event of a job, decoded: ``args`` uses the Solidity names (``jobId``, ``round``, ...)."""

    name: str
    args: dict
    block: int
    tx_hash: str
    log_index: int
    timestamp: int = 0
    job_id: int = field(default=0)

    @property
    def round(self) -> int | None:
        return self.args.get("round")


@dataclass(frozen=True)
class Draw:
    """A round's committees as drawn on chain (``CommitteesDrawn``)."""

    job_id: int
    round: int
    seed: bytes
    vote_deadline: int


# A block header's fields in RLP order (Ethereum's, through Prague); a node returns
# those of its fork, and the hash check below says when one is missing.
HEADER_FIELDS = ("parentHash", "sha3Uncles", "miner", "stateRoot", "transactionsRoot", "receiptsRoot", "logsBloom",
                 "difficulty", "number", "gasLimit", "gasUsed", "timestamp", "extraData", "mixHash", "nonce",
                 "baseFeePerGas", "withdrawalsRoot", "blobGasUsed", "excessBlobGas", "parentBeaconBlockRoot",
                 "requestsHash")


_HEADER_INTS = {"difficulty", "number", "gasLimit", "gasUsed", "timestamp", "baseFeePerGas", "blobGasUsed",
                "excessBlobGas"}


def raw_header(chain: Chain, number: int) -> bytes:
    """Block ``number``'s RLP header, checked against its hash (what ``blockhash`` gives
    the contract): how ``drawCommittees`` learns a block's timestamp."""
    import rlp

    # the raw JSON-RPC block: the connection's POA middleware renames extraData
    b = chain.w3.provider.make_request("eth_getBlockByNumber", [hex(int(number)), False]).get("result") or {}
    fields = []
    for name in HEADER_FIELDS:
        if name in b:
            raw = bytes.fromhex(b[name][2:].rjust(2 * ((len(b[name]) - 1) // 2), "0"))
            fields.append(raw if name not in _HEADER_INTS else int.from_bytes(raw, "big"))
    raw = rlp.encode(fields)
    if not b or keccak(raw) != bytes.fromhex(b["hash"][2:]):
        raise LedgerError(f"block {number}: its header fields as the node returns them do not hash to its hash "
                          "(a header format this ledger does not know)")
    return raw


# ------------------------------------------------------------------------------ wrapper


class TrainingLedger:
    """The TrainingLedger contract at ``address`` on ``chain``."""

    def __init__(self, chain: Chain, address: str, abi: Sequence[dict] | None = None):
        self.chain = chain
        self.abi = list(abi) if abi is not None else load_artifact()["abi"]
        self.address = to_checksum_address(address)
        self.contract = chain.contract(self.address, self.abi)
        self._members: dict[tuple, tuple[list, list]] = {}
        self._cid_versions: dict[int, int] = {}
        self._no_committees: set[int] = set()
        self._topic_to_event = {}
        for name in job_event_names(self.abi):
            ev = getattr(self.contract.events, name)
            self._topic_to_event[bytes(keccak(text=ev.signature if hasattr(ev, "signature") else name))] = ev

    def __repr__(self) -> str:
        return f"TrainingLedger({self.address} on chain {self.chain.chain_id})"

    @property
    def chain_id(self) -> int:
        return self.chain.chain_id

    @property
    def w3(self):
        return self.chain.w3

    def with_account(self, account) -> "TrainingLedger":
        return TrainingLedger(self.chain.with_account(account), self.address, self.abi)

    # -------------------------------------------------------------- transactions

    def create_job(self, params: JobParams) -> int:
        """Create a job (sending ``params.reward`` wei as its pool); returns its id (from the JobCreated event)."""
        receipt = self.chain.transact(self.contract.functions.createJob(params.to_abi(self.abi)), context="create job",
                                      value=int(params.reward))
        for ev in self.contract.events.JobCreated().process_receipt(receipt, errors=_discard()):
            if ev["address"] == self.address:
                return int(ev["args"]["jobId"])
        raise RuntimeError("createJob succeeded but emitted no JobCreated event")  # pragma: no cover

    def submit_update(
        self, job_id: int, round: int, parent: bytes, digest: bytes, cid: str | bytes, size: int, num_samples: int
    ):
        fn = self.contract.functions.submitUpdate(
            int(job_id), int(round), _b32(parent, "parent"), _b32(digest, "digest"), _cid32(cid, "cid"),
            int(size), int(num_samples),
        )
        return self.chain.transact(fn, context=f"submit job {job_id} round {round}")

    def submit_batch(self, job_id: int, round: int, parent: bytes, roster: Sequence[str],
                     signed: Sequence[Any]) -> dict:
        """Relay workers' signed submissions (``ledger.protocol.batch.SignedSubmission``) in one
        transaction; ``roster`` is the job's workers in index order (``getWorkers``)."""
        index = {to_checksum_address(w): i for i, w in enumerate(roster)}
        entries = []
        for s in signed:
            if s.worker not in index:
                raise ValueError(f"{s.worker} is not a worker of job {job_id}")
            entries.append(s.to_abi(index[s.worker]))
        fn = self.contract.functions.submitBatch(int(job_id), int(round), _b32(parent, "parent"),
                                                 [to_checksum_address(w) for w in roster], entries)
        return self.chain.transact(fn, context=f"submit a batch of {len(entries)} to job {job_id} round {round}")

    def domain_separator(self) -> bytes:
        return bytes(self.chain.call(self.contract.functions.domainSeparator()))

    def commit_proposal(self, job_id: int, round: int, commit_hash: bytes):
        """Commit ``commit_hash_of(outcome, salt, our address)`` for a closed round."""
        fn = self.contract.functions.commitProposal(int(job_id), int(round), _b32(commit_hash, "commit_hash"))
        return self.chain.transact(fn, context=f"commit job {job_id} round {round}")

    def reveal_proposal(
        self,
        job_id: int,
        round: int,
        commitment: bytes,
        verdicts: Sequence[int],
        merged_digest: bytes,
        merged_cid: str | bytes,
        merged_size: int,
        salt: bytes,
        settlement: Settlement,
    ):
        """Reveal the committed proposal: the round's submissions commitment, the verdicts,
        the merge, the salt of the commit and the settlement (credits, slashes)."""
        fn = self.contract.functions.revealProposal(
            int(job_id), int(round), _b32(commitment, "commitment"), bytes(int(v) for v in verdicts),
            _b32(merged_digest, "merged_digest"), _cid32(merged_cid, "merged_cid"), int(merged_size),
            _b32(salt, "salt"), settlement.to_abi(),
        )
        # Estimated alone, a reveal may not be the one that reaches the quorum; mined
        # after another aggregator's, it is, and it pays for finalizing the round and
        # opening the next (~150,000 more, growing with the verdicts).
        if verdicts:
            # a reveal that reaches the quorum is checked against the committees' decisions:
            # they must be drawn (anyone may; the reveal's own error says why if they cannot be)
            try:
                self.ensure_drawn(job_id, round)
            except ContractReverted:
                pass
        return self.chain.transact(fn, context=f"reveal job {job_id} round {round}",
                                   extra_gas=FINALIZE_GAS + 40_000 * len(settlement.credits) + 5_000 * len(verdicts))

    def close_round(self, job_id: int, round: int):
        fn = self.contract.functions.closeRound(int(job_id), int(round))
        return self.chain.transact(fn, context=f"close job {job_id} round {round}")

    def disclose(self, job_id: int, round: int, sealed_cid: str = "", sealed_size: int = 0):
        """As a worker that submitted in the closed round: what the draw asks is stored;
        ``sealed_cid`` (``""``: none) names the encrypted object of its drawn window bundles."""
        fn = self.contract.functions.disclose(int(job_id), int(round), _cid32_or_zero(sealed_cid, "sealed_cid"),
                                              int(sealed_size))
        return self.chain.transact(fn, context=f"disclose job {job_id} round {round}")

    def grant(self, job_id: int, to: str, cid: str | bytes, size: int):
        """As the job's creator: record that ``to`` is granted the object ``cid`` (``size`` bytes)."""
        fn = self.contract.functions.grant(int(job_id), to_checksum_address(to), _cid32_or_zero(cid, "cid"), int(size))
        return self.chain.transact(fn, context=f"grant {to} access in job {job_id}")

    def grants(self, job_id: int) -> list[Grant]:
        """A job's ``AccessGranted`` records, in chain order."""
        logs, version = self._job_logs("AccessGranted", job_id, None)
        return [Grant(to=lg["args"]["to"], by=lg["args"]["by"],
                      cid=_cid_text(lg["args"]["cid"], lg["args"]["size"], version), size=int(lg["args"]["size"]),
                      block=int(lg["blockNumber"]), tx=_hex(lg["transactionHash"]))
                for lg in logs]

    def vote(self, job_id: int, round: int, ballot: bytes):
        """As an aggregator drawn to a committee of ``round``: vote on its contributions
        (drawing the round's committees on chain first when nobody has)."""
        fn = self.contract.functions.vote(int(job_id), int(round), bytes(ballot))
        try:
            return self.chain.transact(fn, context=f"vote on job {job_id} round {round}")
        except ContractReverted as e:
            if e.name != "CommitteesNotDrawn":
                raise
        self.ensure_drawn(job_id, round)   # says why when they cannot be drawn
        return self.chain.transact(fn, context=f"vote on job {job_id} round {round}")

    def committees_drawn(self, job_id: int, round: int) -> Draw | None:
        """The round's on-chain committee draw (``CommitteesDrawn``), or None."""
        logs, _ = self._job_logs("CommitteesDrawn", job_id, round)
        if not logs:
            return None
        a = logs[0]["args"]
        return Draw(int(job_id), int(round), bytes(a["seed"]), int(a["voteDeadline"]))

    def ensure_drawn(self, job_id: int, round: int) -> bool:
        """Draw ``round``'s committees unless drawn; False for a job without committees.
        Raises ``ContractReverted`` when they cannot be drawn (yet)."""
        if int(job_id) in self._no_committees:
            return False
        if self.committees_drawn(job_id, round) is not None:
            return True
        try:
            self.draw_committees(job_id, round)
        except ContractReverted as e:
            if e.name == "NoCommittees":
                self._no_committees.add(int(job_id))
                return False
            if e.name != "AlreadyDrawn":   # another party drew them first
                raise
        return True

    def draw_committees(self, job_id: int, round: int):
        """Draw the committees of closed ``round`` on chain (``drawCommittees``): the
        round's submissions with their workers' indexes and, for a round closed by its
        deadline, the headers of the first block past it and of its parent."""
        rd = self.round(job_id, round)
        subs = self.submissions(job_id, round)
        index = {w.lower(): i for i, w in enumerate(self.job(job_id).workers)}
        packed = b"".join(
            bytes([index[s.worker.lower()]]) + _b32(s.digest, "digest") + _cid32(s.cid, "cid")
            + int(s.size).to_bytes(8, "big") + int(s.num_samples).to_bytes(8, "big") for s in subs)
        before = closing = b""
        if not (0 < rd.expected <= len(subs)):
            close = self.chain.first_block_after(int(rd.deadline), lo=int(subs[-1].block) if subs else 0)
            if close is None:
                raise ContractReverted("RoundNotClosed", {"jobId": job_id, "round": round, "deadline": rd.deadline},
                                       f"draw committees of job {job_id} round {round}")
            before, closing = raw_header(self.chain, close - 1), raw_header(self.chain, close)
        fn = self.contract.functions.drawCommittees(int(job_id), int(round), before, closing, packed)
        return self.chain.transact(fn, context=f"draw committees of job {job_id} round {round}")

    def committee_votes(self, job_id: int, round: int | None = None) -> list[Vote]:
        """A job's committee votes (of one round, or all), in chain order."""
        logs, _ = self._job_logs("CommitteeVoted", job_id, round)
        return [
            Vote(job_id=int(lg["args"]["jobId"]), round=int(lg["args"]["round"]), aggregator=lg["args"]["aggregator"],
                 ballot=bytes(lg["args"]["ballot"]), block=int(lg["blockNumber"]), tx_hash=_hex(lg["transactionHash"]),
                 log_index=int(lg["logIndex"]), timestamp=self.chain.block_timestamp(int(lg["blockNumber"])))
            for lg in logs
        ]

    def stake(self, job_id: int, amount: int):
        """As a worker named in a staked job: post its stake (``amount`` wei, the job's)."""
        return self.chain.transact(self.contract.functions.stake(int(job_id)), context=f"stake in job {job_id}",
                                   value=int(amount))

    def join(self, job_id: int, amount: int, data_root: bytes = ZERO32, data_bytes: int = 0):
        """Join an open job, posting ``amount`` wei (the job's stake); a job on private
        data takes the joiner's committed text as (root, length)."""
        fn = self.contract.functions.join(int(job_id), _b32(data_root, "data_root"), int(data_bytes))
        return self.chain.transact(fn, context=f"join job {job_id}", value=int(amount))

    def leave(self, job_id: int):
        return self.chain.transact(self.contract.functions.leave(int(job_id)), context=f"leave job {job_id}")

    def withdraw(self):
        return self.chain.transact(self.contract.functions.withdraw(), context="withdraw")

    # -------------------------------------------------------------- views

    def job_count(self) -> int:
        return int(self.chain.call(self.contract.functions.jobCount(), "jobCount"))

    def job(self, job_id: int) -> JobInfo:
        f = self.contract.functions
        ctx = f"job {job_id}"
        info = _job_info(int(job_id), self._named("getJob", self.chain.call(f.getJob(int(job_id)), ctx)), (), ())
        self._cid_versions[info.job_id] = info.cid_version
        # A job's workers and aggregators are fixed when it is created, and every node
        # reads the job each time it wakes: they are read once per job. The key includes
        # what identifies the job's creation, so a chain that was reset and re-used the
        # id for another job is read afresh.
        # An open job's workers grow with joins: read every time.
        key = (info.job_id, info.config_digest, info.created_block, info.owner)
        members = None if info.is_open else self._members.get(key)
        if members is None:
            block = self.chain.block_number()
            members = (self.chain.call(f.getWorkers(int(job_id)), ctx, block),
                       self.chain.call(f.getAggregators(int(job_id)), ctx, block))
            self._members[key] = members
        info.workers, info.aggregators = list(members[0]), list(members[1])
        return info

    def round(self, job_id: int, round: int) -> RoundInfo:
        v = self.chain.call(self.contract.functions.getRound(int(job_id), int(round)), f"job {job_id} round {round}")
        return _round_info(int(job_id), int(round), self._named("getRound", v), self._cid_version(job_id))

    def _named(self, function: str, value) -> dict:
        """A view's struct result as {Solidity field name: value}, in the ABI's order."""
        names = abi_fields(self.abi, function, "outputs")
        if len(names) != len(value):
            raise LedgerError(f"{function} returned {len(value)} fields; the ABI names {len(names)}")
        return dict(zip(names, value))

    def _party_view(self, name: str, job_id: int, round: int, address: str):
        """One of the views keyed by (job, round, party address)."""
        fn = getattr(self.contract.functions, name)(int(job_id), int(round), to_checksum_address(address))
        return self.chain.call(fn, name)

    def has_submitted(self, job_id: int, round: int, address: str) -> bool:
        return bool(self._party_view("hasSubmitted", job_id, round, address))

    def commit_of(self, job_id: int, round: int, address: str) -> bytes:
        return bytes(self._party_view("commitOf", job_id, round, address))

    def has_committed(self, job_id: int, round: int, address: str) -> bool:
        return self.commit_of(job_id, round, address) != b"\0" * 32

    def has_disclosed(self, job_id: int, round: int, address: str) -> bool:
        """Whether ``address`` disclosed in the job's current round (past rounds: ``disclosures``)."""
        return bool(self._party_view("hasDisclosed", job_id, round, address))

    def has_proposed(self, job_id: int, round: int, address: str) -> bool:
        """Whether ``address`` revealed a proposal in the round."""
        return bool(self._party_view("hasProposed", job_id, round, address))

    def proposal_of(self, job_id: int, round: int, address: str) -> bytes:
        return bytes(self._party_view("proposalOf", job_id, round, address))

    def votes(self, job_id: int, round: int, outcome: bytes) -> int:
        fn = self.contract.functions.votes(int(job_id), int(round), _b32(outcome, "outcome"))
        return int(self.chain.call(fn, "votes"))

    def block_hash(self, block: int) -> bytes:
        return self.chain.block_hash(int(block))

    def worker_state(self, job_id: int, address: str) -> tuple[str, int]:
        """(one of ``WORKER_STATES``, wei of its stake the job holds)."""
        status, staked = self.chain.call(
            self.contract.functions.workerState(int(job_id), to_checksum_address(address)), "workerState")
        return WORKER_STATES[int(status)], int(staked)

    def balance_of(self, address: str) -> int:
        """Wei ``address`` may withdraw."""
        return int(self.chain.call(self.contract.functions.balanceOf(to_checksum_address(address)), "balanceOf"))

    # -------------------------------------------------------------- events

    def _cid_version(self, job_id: int) -> int:
        """The job's CID version (fixed at creation), read with the job and kept: rounds
        and events name CIDs in it."""
        v = self._cid_versions.get(int(job_id))
        return v if v is not None else self._event_range(job_id)[1]

    def _event_range(self, job_id: int) -> tuple[int, int]:
        """(the block the job was created in, its CID version): events are searched from
        there. A job that does not exist has neither: (0, 0)."""
        try:
            v = self.chain.call(self.contract.functions.getJob(int(job_id)), f"job {job_id}")
        except ChainUnreachable:
            raise
        except Exception:
            return 0, 0
        self._cid_versions[int(job_id)] = int(v[12])
        return int(v[20]), int(v[12])

    def _job_logs(self, event: str, job_id: int, round: int | None) -> tuple[list, int]:
        """(the job's ``event`` logs, of one round or all, in chain order; its CID version)."""
        filters: dict = {"jobId": int(job_id)}
        if round is not None:
            filters["round"] = int(round)
        start, version = self._event_range(job_id)
        return self.chain.get_logs(getattr(self.contract.events, event), start, "latest", filters), version

    def submissions(self, job_id: int, round: int | None = None) -> list[Submission]:
        """A job's submissions (of one round, or all), in submission order (block, log
        index, then position in a batch): direct ones (``UpdateSubmitted``) and relayed
        ones (the entries of ``BatchSubmitted``) alike."""
        direct, version = self._job_logs("UpdateSubmitted", job_id, round)
        batches, _ = self._job_logs("BatchSubmitted", job_id, round)
        rows = []
        for lg in direct:
            a = lg["args"]
            rows.append((int(lg["blockNumber"]), int(lg["logIndex"]), 0, lg, int(a["round"]), a["worker"],
                         bytes(a["digest"]), bytes(a["cid"]), int(a["size"]), int(a["numSamples"])))
        for lg in batches:
            for k, e in enumerate(batch_entries(lg["args"]["entries"])):
                rows.append((int(lg["blockNumber"]), int(lg["logIndex"]), k, lg, int(lg["args"]["round"]), *e))
        rows.sort(key=lambda row: row[:3])
        out, position = [], {}
        for block, log_index, _, lg, r, worker, digest, cid, size, samples in rows:
            idx = position.get(r, 0)
            position[r] = idx + 1
            out.append(Submission(
                job_id=int(job_id), round=r, index=idx, worker=worker, digest=digest,
                cid=_cid_text(cid, size, version), size=size, num_samples=samples,
                block=block, tx_hash=_hex(lg["transactionHash"]), log_index=log_index,
                timestamp=self.chain.block_timestamp(block),
            ))
        return out

    def commits(self, job_id: int, round: int | None = None) -> list[Commit]:
        """A job's proposal commits (of one round, or all), in chain order."""
        logs, _ = self._job_logs("ProposalCommitted", job_id, round)
        return [
            Commit(
                job_id=int(lg["args"]["jobId"]), round=int(lg["args"]["round"]), aggregator=lg["args"]["aggregator"],
                commit_hash=bytes(lg["args"]["commitHash"]), commit_deadline=int(lg["args"]["commitDeadline"]),
                block=int(lg["blockNumber"]), tx_hash=_hex(lg["transactionHash"]), log_index=int(lg["logIndex"]),
                timestamp=self.chain.block_timestamp(int(lg["blockNumber"])),
            )
            for lg in logs
        ]

    def disclosures(self, job_id: int, round: int | None = None) -> list[Disclosure]:
        """A job's disclosures (of one round, or all), in chain order, each with its sealed CID."""
        logs, version = self._job_logs("Disclosed", job_id, round)
        return [
            Disclosure(job_id=int(lg["args"]["jobId"]), round=int(lg["args"]["round"]), worker=lg["args"]["worker"],
                       block=int(lg["blockNumber"]), tx_hash=_hex(lg["transactionHash"]), log_index=int(lg["logIndex"]),
                       timestamp=self.chain.block_timestamp(int(lg["blockNumber"])),
                       sealed_cid=_cid_text(lg["args"]["sealedCid"], lg["args"]["sealedSize"], version),
                       sealed_size=int(lg["args"]["sealedSize"]))
            for lg in logs
        ]

    def proposals(self, job_id: int, round: int | None = None) -> list[Proposal]:
        """A job's proposals, i.e. reveals (of one round, or all), in chain order."""
        logs, version = self._job_logs("ProposalRevealed", job_id, round)
        settlements = {
            (int(s["args"]["round"]), s["args"]["aggregator"]):
                Settlement(tuple(int(c) for c in s["args"]["credits"]), int(s["args"]["slashed"]))
            for s in self._job_logs("SettlementRevealed", job_id, round)[0]
        }
        out = []
        for lg in logs:
            a = lg["args"]
            out.append(Proposal(
                settlement=settlements.get((int(a["round"]), a["aggregator"]), Settlement()),
                job_id=int(a["jobId"]), round=int(a["round"]), aggregator=a["aggregator"],
                merged_digest=bytes(a["mergedDigest"]),
                merged_cid=_cid_text(a["mergedCid"], a["mergedSize"], version),
                merged_size=int(a["mergedSize"]), outcome=bytes(a["outcome"]), accepted=int(a["accepted"]),
                verdicts=list(bytes(a["verdicts"])), salt=bytes(a["salt"]), block=int(lg["blockNumber"]),
                tx_hash=_hex(lg["transactionHash"]), log_index=int(lg["logIndex"]),
                timestamp=self.chain.block_timestamp(int(lg["blockNumber"])),
            ))
        return out

    def joins(self, job_id: int) -> list[tuple[str, int]]:
        """An open job's joins, in chain order: (worker, the first round it trains in)."""
        return [(w, first) for w, first, _, _ in self.join_records(job_id)]

    def join_records(self, job_id: int) -> list[tuple[str, int, bytes, int]]:
        """An open job's joins: (worker, first round, data root, data length)."""
        logs, _ = self._job_logs("WorkerJoined", job_id, None)
        return [(lg["args"]["worker"], int(lg["args"]["fromRound"]), bytes(lg["args"]["dataRoot"]),
                 int(lg["args"]["dataBytes"])) for lg in logs]

    def round_workers(self, job_id: int, round: int, info: JobInfo | None = None) -> list[str]:
        """The worker indexes of ``round`` (what a settlement's credits are indexed by)."""
        info = info or self.job(job_id)
        return round_workers(info.workers, self.joins(job_id) if info.is_open else (), round)

    def events(self, job_id: int) -> list[ChainEvent]:
        """Every event of the job in chain order (every event's first indexed topic is the job id)."""
        topic = "0x" + int(job_id).to_bytes(32, "big").hex()
        raw = self.chain.get_raw_logs(self.address, [None, topic], self._event_range(job_id)[0], "latest")
        out = []
        for lg in raw:
            t0 = bytes(lg["topics"][0]) if lg["topics"] else b""
            ev = self._topic_to_event.get(t0)
            if ev is None:
                continue
            d = ev.process_log(lg)
            out.append(ChainEvent(
                name=d["event"], args={k: plain_value(v) for k, v in d["args"].items()},
                block=int(lg["blockNumber"]), tx_hash=_hex(lg["transactionHash"]), log_index=int(lg["logIndex"]),
                timestamp=self.chain.block_timestamp(int(lg["blockNumber"])), job_id=int(job_id),
            ))
        return out

    # -------------------------------------------------------------- off-chain recomputation

    @staticmethod
    def commitment_seed(job_id: int, round: int) -> bytes:
        return keccak(abi_encode(["uint256", "uint256"], [int(job_id), int(round)]))

    @staticmethod
    def commitment_of(job_id: int, round: int, submissions: Iterable[Any]) -> bytes:
        """The commitment the contract holds after ``submissions`` (in submission order).

        Each item is a ``Submission`` or anything with ``worker, digest, cid, size,
        num_samples`` (attributes or dict keys)."""
        c = TrainingLedger.commitment_seed(job_id, round)
        for s in submissions:
            get = (lambda k: s[k]) if isinstance(s, dict) else (lambda k: getattr(s, k))
            c = bytes(Web3.solidity_keccak(
                ["bytes32", "address", "bytes32", "bytes32", "uint64", "uint64"],
                [c, to_checksum_address(get("worker")), _b32(get("digest"), "digest"), _cid32(get("cid"), "cid"),
                 int(get("size")), int(get("num_samples"))],
            ))
        return c

    @staticmethod
    def commit_hash_of(outcome: bytes, salt: bytes, aggregator: str) -> bytes:
        """keccak256(abi.encodePacked(outcome, salt, aggregator)): what an aggregator commits."""
        return bytes(Web3.solidity_keccak(["bytes32", "bytes32", "address"],
                                          [_b32(outcome, "outcome"), _b32(salt, "salt"), to_checksum_address(aggregator)]))

    @staticmethod
    def outcome_of(merged_digest: bytes, merged_cid: str | bytes, merged_size: int, verdicts: Sequence[int],
                   settlement: Settlement) -> bytes:
        """keccak256(abi.encodePacked(mergedDigest, mergedCid, uint64 mergedSize, bytes verdicts,
        bytes32 settlement.digest()))."""
        return bytes(Web3.solidity_keccak(
            ["bytes32", "bytes32", "uint64", "bytes", "bytes32"],
            [_b32(merged_digest, "merged_digest"), _cid32(merged_cid, "merged_cid"), int(merged_size),
             bytes(int(v) for v in verdicts), settlement.digest()],
        ))


BATCH_ENTRY = 100  # worker (20), digest (32), cid (32), size (8), numSamples (8)


def batch_entries(data: bytes) -> list[tuple[str, bytes, bytes, int, int]]:
    """The counted entries of a ``BatchSubmitted`` log: (worker, digest, cid32, size, samples)."""
    data = bytes(data)
    if len(data) % BATCH_ENTRY:
        raise ValueError(f"a BatchSubmitted log of {len(data)} bytes is not whole {BATCH_ENTRY}-byte entries")
    out = []
    for o in range(0, len(data), BATCH_ENTRY):
        e = data[o:o + BATCH_ENTRY]
        out.append((to_checksum_address(e[:20]), e[20:52], e[52:84], int.from_bytes(e[84:92], "big"),
                    int.from_bytes(e[92:100], "big")))
    return out


def _discard():
    from web3.logs import DISCARD

    return DISCARD


def _job_info(job_id: int, view: dict, workers, aggregators) -> JobInfo:
    """``getJob``'s ``JobView`` (by field name, ``_named``) as a ``JobInfo``."""
    g = {_snake(k): x for k, x in view.items()}
    v = int(g["cid_version"])
    ints = ("config_size", "genesis_size", "quorum", "round_duration", "num_rounds", "min_submissions", "cid_version",
            "current_round", "created_block", "proposal_window", "disclosure_window", "max_workers", "active_workers",
            "worker_stake", "slash_bps", "aggregator_bps", "reward", "pool")
    return JobInfo(
        job_id=job_id, owner=g["creator"], config_digest=bytes(g["config_digest"]),
        config_cid=_cid_text(g["config_cid"], g["config_size"], v),
        genesis_digest=bytes(g["genesis_digest"]), genesis_cid=_cid_text(g["genesis_cid"], g["genesis_size"], v),
        workers=list(workers), aggregators=list(aggregators),
        current_parent=bytes(g["parent_digest"]), current_parent_cid=_cid_text(g["parent_cid"], g["parent_size"], v),
        current_parent_size=int(g["parent_size"]), completed=bool(g["completed"]),
        **{k: int(g[k]) for k in ints},
    )


def _round_info(job_id: int, round: int, view: dict, cid_version: int) -> RoundInfo:
    """``getRound``'s ``RoundView`` (by field name, ``_named``) as a ``RoundInfo``."""
    g = {_snake(k): x for k, x in view.items()}
    ints = ("deadline", "submissions", "merged_size", "accepted", "proposals", "commits", "commit_deadline",
            "reveal_deadline", "disclosed", "disclosure_deadline", "expected")
    return RoundInfo(
        job_id=job_id, round=round, parent=bytes(g["parent"]), commitment=bytes(g["commitment"]),
        status=ROUND_STATUS[int(g["status"])], merged_digest=bytes(g["merged_digest"]),
        merged_cid=_cid_text(g["merged_cid"], g["merged_size"], cid_version), outcome=bytes(g["outcome"]),
        skip_reason=SKIP_REASONS[int(g["skip_reason"])], **{k: int(g[k]) for k in ints},
    )
