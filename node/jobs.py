"""Creating a job: cut the data, build and store the config and the genesis model,
and record the job on chain."""

from __future__ import annotations

from dataclasses import dataclass

from ledger import checkpoint
from ledger.contract import DEFAULT_PROPOSAL_WINDOW, JobParams
from ledger.digest import to_hex
from ledger.jobconfig import JobConfig

from . import data as datamod
from .model import GPTConfig, init_params
from .task import genesis_meta


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
) -> CreatedJob:
    config = prepare_config(config, len(workers), throughputs)
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
