"""Creating a job: cut the data, build and store the config and the genesis model,
and record the job on chain."""

from __future__ import annotations

from dataclasses import dataclass

from ledger import checkpoint
from ledger.contract import DEFAULT_PROPOSAL_WINDOW, JobParams
from ledger.digest import to_hex
from ledger.errors import LedgerError
from ledger.jobconfig import DataRoot, JobConfig, ShardSpec

from node.training import data as datamod
from node.models.bytegpt import GPTConfig, init_params
from node.context import genesis_meta


@dataclass
class CreatedJob:
    job_id: int
    config: JobConfig
    config_cid: str
    genesis_cid: str
    genesis_digest: bytes


def prepare_config(config: JobConfig, num_workers: int, throughputs: list[float] | None = None) -> JobConfig:
    """Fill the config's data section: one shard per worker plus the validation split."""
    d = config.data
    corpus = datamod.load_corpus(expected_sha256=d.corpus_sha256)
    sizes = None
    if throughputs:
        if len(throughputs) != num_workers:
            raise ValueError(f"{len(throughputs)} throughputs given for {num_workers} workers")
        if d.split != "iid":
            raise ValueError("throughput balancing applies to IID shards only")
        total = datamod.split_point(corpus, d.val_fraction)   # the training text's length
        sizes = datamod.balance_sizes(throughputs, total, min_size=config.model.block_size * 4)
    split = datamod.make_split(corpus, num_workers, mode=d.split, val_fraction=d.val_fraction, sizes=sizes)
    d.shards, d.validation = datamod.shard_specs(split)
    return config


def _own_validation(config: JobConfig, validation: bytes, store) -> None:
    if len(validation) <= config.model.block_size + 1:
        raise LedgerError(f"the validation text is {len(validation)} bytes; it needs more than a window "
                          f"({config.model.block_size + 1} bytes)")
    obj = store.put(validation)
    store.pin(obj.cid)
    config.data.validation = ShardSpec(0, to_hex(obj.digest), len(validation))
    config.data.validation_cid = obj.cid


def private_config(config: JobConfig, workers: list[str], data_roots, validation: bytes | None, store,
                   proposal_window: int) -> JobConfig:
    """A bring-your-own-data config: the workers' commitments instead of corpus shards."""
    if len(data_roots) != len(workers):
        raise LedgerError(f"{len(data_roots)} --data-root given for {len(workers)} workers: give one per worker, "
                          f"in worker order")
    if validation is None:
        raise LedgerError("a job on private data needs the owner's held-out text: add --validation FILE")
    for w, (root, n) in zip(workers, data_roots):
        if n is None or n <= config.model.block_size + 1:
            raise LedgerError(f"worker {w}: committed data of {n} bytes is too short for windows of "
                              f"{config.model.block_size + 1} bytes")
    window = int(config.policy.reveal_window)
    if not 0 < 2 * window <= int(proposal_window):
        raise LedgerError(f"the reveal window ({window}s) must be positive and at most half the proposal window "
                          f"({proposal_window}s): aggregators judge after it and must still commit in time")
    d = config.data
    d.shards, d.split = [], "private"
    d.corpus, d.corpus_sha256 = "", ""
    d.roots = [DataRoot(to_hex(root), int(n)) for root, n in data_roots]
    _own_validation(config, validation, store)
    return config


def create_job(
    ledger,
    store,
    config: JobConfig,
    workers: list[str],
    aggregators: list[str],
    quorum: int,
    rounds: int,
    round_duration: int,
    min_submissions: int,
    throughputs: list[float] | None = None,
    proposal_window: int = DEFAULT_PROPOSAL_WINDOW,
    data_roots: list[tuple[bytes, int]] | None = None,
    validation: bytes | None = None,
) -> CreatedJob:
    """``data_roots``: one (root, length) per worker, in worker order, from ``ledger data
    commit``: each worker trains on its own private text (node.training.privdata). ``validation``:
    the owner's held-out text, stored and committed in the config (needed with roots)."""
    if data_roots:
        config = private_config(config, workers, data_roots, validation, store, proposal_window)
    else:
        config = prepare_config(config, len(workers), throughputs)
        if validation is not None:
            _own_validation(config, validation, store)
    raw_config = config.to_bytes()
    cfg_obj = store.put(raw_config)
    params = init_params(GPTConfig.from_spec(config.model), config.seed)
    genesis = checkpoint.encode(params, genesis_meta(config))
    gen_obj = store.put(genesis)
    for obj in (cfg_obj, gen_obj):
        store.pin(obj.cid)
    job_id = ledger.create_job(
        JobParams(
            config_digest=cfg_obj.digest,
            config_cid=cfg_obj.cid,
            config_size=cfg_obj.size,
            genesis_digest=gen_obj.digest,
            genesis_cid=gen_obj.cid,
            genesis_size=gen_obj.size,
            workers=list(workers),
            aggregators=list(aggregators),
            quorum=quorum,
            round_duration=round_duration,
            proposal_window=proposal_window,
            num_rounds=rounds,
            min_submissions=min_submissions,
            cid_version=config.cid_version,
        )
    )
    return CreatedJob(job_id, config, cfg_obj.cid, gen_obj.cid, gen_obj.digest)


def describe(job: CreatedJob) -> str:
    return (
        f"job {job.job_id}\n"
        f"  config  {job.config_cid}  sha256 {to_hex(job.config.digest)}\n"
        f"  genesis {job.genesis_cid}  sha256 {to_hex(job.genesis_digest)}"
    )
