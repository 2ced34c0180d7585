"""A job as every role sees it: its on-chain record, its config, its data and its
checkpoints, each fetched from storage and checked against the chain before use.

Worker, aggregator and auditor all load a job through ``JobContext.load`` so they
see exactly the same config, shards, validation split and parent checkpoints.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ledger.store import checkpoint
from ledger.monitor import metrics
from ledger.ethereum.chain import redact_url
from ledger.digest import from_hex, sha256_bytes, to_hex
from ledger.errors import ChainUnreachable, InvalidJobConfig, LedgerError, StorageUnreachable
from ledger.protocol.jobconfig import JobConfig, ShardSpec

from node.training import data as datamod

CHECKPOINT_FORMAT = "training-ledger/checkpoint/1"
# A waiting node re-reads the job at least this often even on a head that does not move
# (a chain swapped under it at the same height, say): a safety net, not the signal.
IDLE_REREAD = 30.0
# Seconds between attempts to reach a chain that went away, then every OUTAGE_MAX_DELAY.
OUTAGE_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
OUTAGE_MAX_DELAY = 10.0
T = TypeVar("T")


def backoff_until(probe: Callable[[], object], down: type[BaseException] | tuple) -> float:
    """Call ``probe`` after each of the outage delays (``OUTAGE_BACKOFF``, then every
    ``OUTAGE_MAX_DELAY`` seconds) until it no longer raises ``down``; returns the seconds
    waited. The one backoff of every wait for a chain or a store that went away."""
    t0 = time.monotonic()
    for delay in itertools.chain(OUTAGE_BACKOFF, itertools.repeat(OUTAGE_MAX_DELAY)):
        time.sleep(delay)
        try:
            probe()
        except down:
            continue
        return time.monotonic() - t0


def job_dir(base: Path, chain_id: int, contract: str, job_id: int) -> Path:
    """Local files of one job under ``base``, keyed by chain id, contract address and job:
    job ids restart on every deployment, so the job alone would name another
    deployment's files (``<base>/chain-C/<contract>/job-J``)."""
    return Path(base) / f"chain-{int(chain_id)}" / str(contract).lower() / f"job-{int(job_id)}"


def party_dir(base: Path, chain_id: int, contract: str, job_id: int, address: str) -> Path:
    """A party's local state for one job: ``job_dir`` under its role's folder, then the
    party's address."""
    return job_dir(base, chain_id, contract, job_id) / address.lower()


@dataclass
class Located:
    """Where an artifact is and what it must hash to."""

    digest: bytes
    cid: str
    size: int


class JobContext:
    def __init__(self, ledger, store, job_id: int, info, config: JobConfig):
        self.ledger = ledger
        self.store = store
        self.job_id = job_id
        self.info = info
        self.config = config
        self._head: int | None = None  # the last block a wait() saw
        self._head_hash: bytes | None = None  # and its hash: another hash there means a rollback
        self._streams: dict[bytes, bytes] = {}  # text digest -> token stream
        self.readable = True       # False: a private job this party holds no key to

    @classmethod
    def load(cls, ledger, store, job_id: int, *, need_key: bool = True) -> "JobContext":
        """The job as this party sees it. A private job's artifacts are read and written
        through the job key (``ledger.store.sealed``), which this party's account must hold
        (``NoJobKey`` otherwise) unless ``need_key`` is False: an outsider's audit, whose
        context then has ``readable`` False and its store the raw one."""
        from ledger.protocol import access
        from ledger.store.sealed import SealedStore

        info = ledger.job(job_id)
        cid = info.config_cid
        raw = store.get(cid, info.config_digest, max_size=1 << 20)
        try:
            config = JobConfig.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidJobConfig(f"job {job_id}: config {cid} is not a valid job config: {e}") from None
        ctx = cls(ledger, store, job_id, info, config)
        if config.access.private:
            account = ledger.chain.account
            key = (access.require_job_key if need_key else access.job_key_for)(ledger, store, config, job_id, account)
            if key is not None:
                ctx.store = SealedStore(store, key)
            ctx.readable = key is not None
        return ctx

    @classmethod
    def load_riding_out(cls, ledger, store, job_id: int, log: logging.Logger) -> "JobContext":
        """``load`` for a long-running role: a chain or own-storage outage at start is
        waited out as ``ride_out`` waits it out later (a worker or aggregator started
        during a restart of its node must not exit with a round to serve)."""
        try:
            return cls.load(ledger, store, job_id)
        except (ChainUnreachable, StorageUnreachable) as e:
            what = "chain" if isinstance(e, ChainUnreachable) else "storage"
            log.warning("%s unreachable (%s), retrying in %gs", what, e, OUTAGE_BACKOFF[0])
        box: list = []
        waited = backoff_until(lambda: box.append(cls.load(ledger, store, job_id)),
                               (ChainUnreachable, StorageUnreachable))
        log.warning("%s back after %.1fs; reading the job", what, waited)
        return box[-1]

    def refresh(self):
        self.info = self.ledger.job(self.job_id)
        return self.info

    def wait(self, poll: float, until: float | None = None, idle: float = IDLE_REREAD) -> None:
        """Between two reads of the job's state: return once a new block holds an event
        of the ledger contract (checked every ``poll`` seconds at most, see
        ``Chain.wait_for_block``), once the unix time ``until`` has passed (a deadline
        closes a round without any transaction), or after ``idle`` seconds regardless.

        The contract emits an event on every state change, so blocks without one (the
        empty blocks a chain makes every second or so) change nothing a node reads; on
        a machine whose cores are training, re-reading the job on each of them was most
        of an idle aggregator's CPU."""
        chain, address, start = self.ledger.chain, self.ledger.address, time.monotonic()
        if self._head is None:
            self._head = chain.block_number()
            self._head_hash = chain.block_hash_or_none(self._head)
            return
        while True:
            head = chain.wait_for_block(self._head, poll)
            ids = chain.block_ids_or_none(head) if head > self._head else None
            # One read per new block: the new head's parent is the block we saw, or (when
            # several came at once) the block we saw still has its hash.
            if head == self._head + 1 and ids is not None:
                gone = ids[1] != self._head_hash
            else:
                gone = head < self._head or (head > self._head and chain.block_hash_or_none(self._head) != self._head_hash)
            if gone:
                # The block we last saw is gone or is another block: what we read since may
                # have been erased. Forget it and read everything again.
                logging.getLogger("ledger.node").warning(
                    "chain rolled back: block %d is gone or has another hash (head now %d); re-reading", self._head, head)
                self._head = None
                chain.forget_blocks()
                return
            if head > self._head:
                seen, self._head = self._head, head
                self._head_hash = ids[0] if ids else None
                if chain.has_logs(address, seen + 1, head):
                    return
            if until is not None and time.time() > until:
                return
            if time.monotonic() - start >= idle:
                return

    def state_dir(self, base: Path, address: str) -> Path:
        """This party's local state for this job (``party_dir``): keyed by chain id,
        contract address, job id and the party's address."""
        return party_dir(base, self.ledger.chain_id, self.ledger.address, self.job_id, address)

    def ride_out(self, loop: Callable[[], T], log: logging.Logger) -> T:
        """Run a role's ``loop``; when the chain or this party's own storage cannot be
        reached, wait for it with backoff (one warning per outage, one line when it is
        back), then run the loop again: it re-reads everything from the chain, as after a
        restart, so a rollback that came with the outage erases nothing the role still
        acts on, and nothing the party's store could not be asked for is ever held
        against another party (only a store that answers "not here" is)."""
        while True:
            try:
                return loop()
            except ChainUnreachable as e:
                self._wait_for_chain(e, log)
            except StorageUnreachable as e:
                self._wait_for_store(e, log)

    def _wait_for_chain(self, err: ChainUnreachable, log: logging.Logger) -> None:
        chain = self.ledger.chain
        url = redact_url(chain.rpc_url)
        log.warning("chain unreachable at %s, retrying in %gs (%s)", url, OUTAGE_BACKOFF[0], err)
        waited = backoff_until(chain.block_number, ChainUnreachable)
        log.warning("chain back at %s after %.1fs; re-reading the job", url, waited)
        metrics.outage("chain", waited)
        self._head = None
        chain.forget_blocks()

    def _wait_for_store(self, err: StorageUnreachable, log: logging.Logger) -> None:
        """This party's own storage does not answer: wait for it (its outage is nobody
        else's fault), then re-read the job, as after a chain outage."""
        log.warning("storage unreachable (%s), retrying in %gs; nothing is judged or published until it "
                    "answers", err, OUTAGE_BACKOFF[0])
        waited = backoff_until(lambda: self.store.has(self.info.config_cid), StorageUnreachable)
        log.warning("storage back after %.1fs; re-reading the job", waited)
        metrics.outage("storage", waited)
        self._head = None

    # --- artifacts -------------------------------------------------------------------
    def fetch(self, loc: Located) -> bytes:
        return self.store.get(loc.cid, loc.digest, max_size=self.config.policy.max_checkpoint_bytes)

    def load_checkpoint(self, loc: Located) -> tuple[dict[str, np.ndarray], dict]:
        """The model's tensors and the metadata (a merge's outer-optimizer state left out)."""
        from node.verification.outer import model_tensors

        tensors, meta = self.load_full(loc)
        return model_tensors(tensors), meta

    def load_full(self, loc: Located) -> tuple[dict[str, np.ndarray], dict]:
        """Every tensor of a checkpoint (a merge's ``outer/`` state included) and its metadata."""
        return checkpoint.decode(self.fetch(loc), cid=loc.cid, max_size=self.config.policy.max_checkpoint_bytes)

    @property
    def genesis(self) -> Located:
        i = self.info
        return Located(i.genesis_digest, i.genesis_cid, i.genesis_size)

    def locate_model(self, digest: bytes, before_round: int | None = None) -> Located:
        """Where the model with this digest is: the genesis or a finalized merge."""
        if digest == self.info.genesis_digest:
            return self.genesis
        last = (before_round or self.info.current_round + 1) - 1
        for r in range(last, 0, -1):
            rd = self.ledger.round(self.job_id, r)
            if rd.status == "finalized" and rd.merged_digest == digest:
                return Located(digest, rd.merged_cid, rd.merged_size)
        raise LedgerError(f"job {self.job_id}: no genesis or finalized model has digest {to_hex(digest)}")

    # --- the model -------------------------------------------------------------------
    @cached_property
    def model(self):
        """The job's ``node.models.LanguageModel``; a Hugging Face model's tokenizer and
        (LoRA) base weights are fetched from storage and checked against the config first."""
        from node.models import language_model

        def fetch(art, what: str) -> bytes:
            try:
                return self.store.get(art.cid, from_hex(art.sha256), max_size=int(art.num_bytes))
            except LedgerError as e:
                raise LedgerError(f"job {self.job_id}: the model's {what} {art.cid}: {e}") from None

        return language_model(self.config.model, fetch)

    # --- data ------------------------------------------------------------------------
    @cached_property
    def _split(self):
        d = self.config.data
        corpus = datamod.load_corpus(expected_sha256=d.corpus_sha256)
        sizes = [s.num_bytes for s in d.shards] if d.split == "iid" else None
        return datamod.make_split(corpus, len(d.shards), mode=d.split, val_fraction=d.val_fraction, sizes=sizes)

    def shard(self, index: int) -> bytes:
        if self.config.data.private:
            raise LedgerError(f"job {self.job_id} trains on private data: worker {index}'s text is on its own "
                              f"machine only (verifiers replay from the windows it reveals)")
        return self._stream(_checked(self._split.shards[index], self.config.data.shards[index], f"shard {index}"))

    def _stream(self, text: bytes) -> bytes:
        """Text as the job's token stream (the text itself for the byte GPT), tokenized once."""
        if self.config.model.token_bytes == 1:
            return text
        key = sha256_bytes(text)
        if key not in self._streams:
            self._streams[key] = self.model.stream(text)
        return self._streams[key]

    def data_root(self, index: int) -> tuple[bytes, int]:
        """Worker ``index``'s committed (root, length) in a private-data job: from the
        config for a worker named at creation, from its ``WorkerJoined`` event for a joiner."""
        roots = self.config.data.roots
        if index < len(roots):
            return from_hex(roots[index].root), int(roots[index].num_bytes)
        worker = self.info.workers[index] if index < len(self.info.workers) else f"#{index}"
        for who, _, root, n in self.ledger.join_records(self.job_id):
            if who.lower() == worker.lower():
                if root == b"\0" * 32 or n == 0:
                    raise LedgerError(f"worker {worker} joined job {self.job_id}, which trains on private data, "
                                      f"without a data root: it has nothing to train on")
                return root, int(n)
        raise LedgerError(f"worker {worker} has no data root in job {self.job_id}")

    @cached_property
    def validation(self) -> bytes:
        """The held-out text as the job's token stream."""
        d = self.config.data
        if d.validation_cid:   # the owner's own held-out text, stored with the config
            if d.validation is None:
                raise LedgerError(f"job {self.job_id}: the config names validation {d.validation_cid} but not its digest")
            raw = self.store.get(d.validation_cid, from_hex(d.validation.sha256), max_size=d.validation.num_bytes)
            return self._stream(_checked(raw, d.validation, "validation text"))
        return self._stream(_checked(self._split.validation, self.config.data.validation, "validation split"))

    def worker_index(self, address: str) -> int:
        addrs = [w.lower() for w in self.info.workers]
        try:
            return addrs.index(address.lower())
        except ValueError:
            raise LedgerError(
                f"{address} is not a worker of job {self.job_id}; its workers are {', '.join(self.info.workers) or 'none yet'}"
                + (f" (the job is open: join it with `ledger worker join --job {self.job_id}`)" if self.info.is_open else "")
            ) from None

    # --- checkpoint metadata -----------------------------------------------------------
    def merge_meta(self, round_: int, parent: bytes, rule: str, accepted: list[str]) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "merge",
            "job": str(self.job_id),
            "round": str(round_),
            "parent": to_hex(parent),
            "rule": rule,
            "accepted": ",".join(a.lower() for a in accepted),
        }

    def round_closed(self, rd) -> bool:
        return rd.all_submitted or time.time() > rd.deadline


def contribution_meta(job_id: int, round_: int, worker: str, parent: bytes, seed: int, metrics: dict,
                      manifest=None) -> dict:
    """Metadata of a worker's checkpoint: only deterministic fields (no timings), so
    the same training gives the same bytes; ``manifest`` (a
    ``node.training.transcript.Manifest``) commits to the training transcript."""
    extra = {"transcript": manifest.to_json()} if manifest is not None else {}
    return {**extra,
        "format": CHECKPOINT_FORMAT,
        "kind": "contribution",
        "job": str(job_id),
        "round": str(round_),
        "worker": worker.lower(),
        "parent": to_hex(parent),
        "seed": str(seed),
        "steps": str(metrics.get("steps", "")),
        "threads": str(metrics.get("threads", "")),
        "device": str(metrics.get("device", "")),
        "torch": str(metrics.get("torch_version", "")),
        "loss_start": repr(metrics.get("loss_start")),
        "loss_end": repr(metrics.get("loss_end")),
    }


def genesis_meta(config: JobConfig) -> dict:
    return {"format": CHECKPOINT_FORMAT, "kind": "genesis", "name": config.name, "seed": str(config.seed)}


def _checked(data: bytes, spec: ShardSpec | None, what: str) -> bytes:
    if spec is None:
        raise LedgerError(f"the job config has no {what}")
    actual = to_hex(sha256_bytes(data))
    if actual != spec.sha256 or len(data) != spec.num_bytes:
        raise LedgerError(
            f"{what} rebuilt from the corpus does not match the job config "
            f"(expected sha256 {spec.sha256}, {spec.num_bytes} bytes; got {actual}, {len(data)} bytes)"
        )
    return data
