"""Creating a job: choose the model, cut the data, build and store the config and the
genesis model, and record the job on chain.

The model is the byte GPT (built from the config), or a Hugging Face model imported
once here (``node.models.importer``): its tokenizer and, for LoRA, its frozen base
weights are stored and committed in the config; the genesis is the pretrained
weights (full fine-tuning), a fresh initialisation under the job seed (``init
random``), or the LoRA adapter's initialisation. Every party starts from these
bytes; nobody imports or converts the model again."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.store import checkpoint
from ledger.ethereum.contract import DEFAULT_PROPOSAL_WINDOW, JobParams
from ledger.digest import to_hex
from ledger.errors import LedgerError
from ledger.protocol.jobconfig import Artifact, DataRoot, JobConfig, ShardSpec, canonical_json

from node.training import data as datamod
from node.context import genesis_meta

INIT_MODES = ("pretrained", "random")
DEFAULT_HF_BLOCK = 128


@dataclass
class ModelChoice:
    """What ``ledger job create --model`` asked for."""

    imported: object = None            # node.models.importer.Imported, or None for the byte GPT
    init: str = "pretrained"           # or "random": a fresh initialisation of the config
    lora_rank: int = 0
    lora_alpha: float | None = None    # default 2 x rank
    lora_targets: list[str] | None = None


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


def _tokens(lm, text: bytes) -> int:
    return len(lm.stream(text)) // lm.token_bytes


def _own_validation(config: JobConfig, validation: bytes, store, lm) -> None:
    n = _tokens(lm, validation)
    if n <= config.model.block_size + 1:
        raise LedgerError(f"the validation text is {n} tokens long; it needs more than a window "
                          f"({config.model.block_size + 1} tokens)")
    obj = store.put(validation)
    store.pin(obj.cid)
    config.data.validation = ShardSpec(0, to_hex(obj.digest), len(validation))
    config.data.validation_cid = obj.cid


def private_config(config: JobConfig, workers: list[str], data_roots, validation: bytes | None, store,
                   proposal_window: int, lm) -> JobConfig:
    """A bring-your-own-data config: the workers' commitments instead of corpus shards."""
    if len(data_roots) != len(workers):
        raise LedgerError(f"{len(data_roots)} --data-root given for {len(workers)} workers: give one per worker, "
                          f"in worker order")
    if validation is None:
        raise LedgerError("a job on private data needs the owner's held-out text: add --validation FILE")
    width = config.model.token_bytes
    for w, (root, n) in zip(workers, data_roots):
        if n is not None and n % width:
            raise LedgerError(f"worker {w}: committed data of {n} bytes is not a stream of {width}-byte tokens: commit "
                              f"it with this job's model (`ledger data commit FILE --model ...`)")
        if n is None or n // width <= config.model.block_size + 1:
            raise LedgerError(f"worker {w}: committed data of {n // width if n else n} tokens is too short for "
                              f"windows of {config.model.block_size + 1} tokens")
    d = config.data
    d.shards, d.split = [], "private"
    d.corpus, d.corpus_sha256 = "", ""
    d.roots = [DataRoot(to_hex(root), int(n)) for root, n in data_roots]
    _own_validation(config, validation, store, lm)
    return config


def _check_shards(config: JobConfig, lm) -> list[int]:
    """Every shard of the corpus must hold more than a window of the job's tokens; their token counts."""
    split = datamod.make_split(datamod.load_corpus(expected_sha256=config.data.corpus_sha256), len(config.data.shards),
                               mode=config.data.split, val_fraction=config.data.val_fraction,
                               sizes=[s.num_bytes for s in config.data.shards] if config.data.split == "iid" else None)
    counts = []
    for i, text in enumerate(split.shards):
        n = _tokens(lm, text)
        if n <= config.model.block_size + 1:
            raise LedgerError(f"shard {i} is {n} tokens long, too short for windows of {config.model.block_size + 1} "
                              f"tokens: fewer workers or a shorter --block-size")
        counts.append(n)
    return counts


def _commit_dp(config: JobConfig, rounds: int, lm) -> None:
    """Opacus's noise multiplier for the job's steps and sampling rate (the smallest
    worker's data: the most noise any worker needs), committed in ``config.dp``."""
    from node.training import dp as dpmod

    d = config.data
    if d.private:
        tokens = [int(r.num_bytes) // config.model.token_bytes for r in d.roots]
    elif config.model.token_bytes == 1:
        tokens = [int(s.num_bytes) for s in d.shards]
    else:
        tokens = _check_shards(config, lm)
    try:
        dpmod.commit(config.dp, rounds=rounds, steps=config.train.steps, batch_size=config.train.batch_size,
                     tokens=tokens, block_size=config.model.block_size)
    except ValueError as e:
        raise LedgerError(f"--dp-epsilon {config.dp.epsilon:g}: {e}; allow a larger epsilon, fewer rounds or steps, "
                          f"or more data per worker") from None


def attach_model(config: JobConfig, store, choice: ModelChoice | None):
    """Set ``config.model`` for the choice, storing (and pinning) what it commits to, and
    return (the LanguageModel, the genesis parameters)."""
    from node.models import language_model

    m = config.model
    if choice is None or choice.imported is None:
        if choice is not None and (choice.lora_rank or choice.init != "pretrained"):
            raise LedgerError("--lora-rank and --init apply to Hugging Face models (--model DIR or smollm2); the "
                              "byte GPT always starts from a fresh initialisation")
        lm = language_model(m)
        return lm, lm.genesis(config.seed)
    if choice.init not in INIT_MODES:
        raise LedgerError(f"--init must be one of {INIT_MODES}, got {choice.init!r}")
    from node.models.hf import HFModel, context_limit

    imp = choice.imported
    hf = imp.hf_config
    limit = context_limit(hf)
    if m.block_size == 0:
        m.block_size = min(DEFAULT_HF_BLOCK, limit)
    if not 1 <= m.block_size <= limit:
        raise LedgerError(f"--block-size {m.block_size} is outside 1..{limit} (the model's position limit)")
    m.kind, m.source = "hf", imp.source
    m.hf_config = canonical_json(hf).decode()
    m.vocab_size = int(hf["vocab_size"])
    m.n_layer = int(hf.get("n_layer") or hf.get("num_hidden_layers") or 0)
    m.n_head = int(hf.get("n_head") or hf.get("num_attention_heads") or 0)
    m.n_embd = int(hf.get("n_embd") or hf.get("hidden_size") or 0)
    m.tokenizer = _store_artifact(store, imp.tokenizer_json)
    weights = imp.params
    if choice.init == "random":
        weights = HFModel(m, imp.tokenizer_json).genesis(config.seed)
    if not choice.lora_rank:
        if choice.lora_targets or choice.lora_alpha:
            raise LedgerError("--lora-alpha and --lora-target need --lora-rank")
        return HFModel(m, imp.tokenizer_json), weights
    from node.models.hf import DEFAULT_LORA_TARGETS
    from node.models.lora import LoraModel

    m.lora_rank = int(choice.lora_rank)
    m.lora_alpha = float(choice.lora_alpha or 2 * m.lora_rank)
    m.lora_targets = list(choice.lora_targets or DEFAULT_LORA_TARGETS[hf["model_type"]])
    m.base = _store_artifact(store, checkpoint.encode(weights, {"format": "training-ledger/base/1",
                                                                  "source": imp.source}))
    lm = LoraModel(m, imp.tokenizer_json, weights)
    return lm, lm.genesis(config.seed)


def _reveal_window(config: JobConfig, proposal_window: int, private: bool) -> None:
    """The seconds aggregators wait for reveals after a round closes: given, or (0) a
    minute, at most half the proposal window; aggregators judge after it and must
    still commit in time."""
    p = config.policy
    if int(p.reveal_window) == 0:
        p.reveal_window = max(1, min(60, int(proposal_window) // 2))
    window = int(p.reveal_window)
    if (private or p.reveals) and not 0 < 2 * window <= int(proposal_window):
        raise LedgerError(f"the reveal window ({window}s) must be positive and at most half the proposal window "
                          f"({proposal_window}s): aggregators judge after it and must still commit in time")


def _committees(config: JobConfig, proposal_window: int, n_aggregators: int) -> None:
    """Verification committees fit the job: no more members than aggregators, and votes
    close early enough in the proposal window for an undecided contribution to be judged
    by everyone and still committed in time."""
    p = config.policy
    if not int(p.committee_size):
        return
    if int(p.committee_size) > n_aggregators:
        raise LedgerError(f"committee_size {p.committee_size} exceeds the job's {n_aggregators} aggregator(s)")
    if 2 * int(p.vote_window) > int(proposal_window):
        raise LedgerError(f"the vote window ({p.vote_window}s) must be at most half the proposal window "
                          f"({proposal_window}s): aggregators judge what is undecided after it and must still commit")


@dataclass(frozen=True)
class Economics:
    """A job's reward pool, stakes and enrollment (amounts in wei)."""

    reward: int = 0
    worker_stake: int = 0
    slash_bps: int = 5_000        # half the remaining stake per cheating rejection
    aggregator_bps: int = 1_000   # a tenth of each round's reward to the finalizing quorum
    max_workers: int = 0          # 0: the named workers only


def _store_artifact(store, data: bytes) -> Artifact:
    obj = store.put(data)
    store.pin(obj.cid)
    return Artifact(to_hex(obj.digest), obj.cid, obj.size)


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
    model: ModelChoice | None = None,
    economics: "Economics | None" = None,
    keys: "dict[str, bytes] | None" = None,
    auditors: list[str] | None = None,
    private: bool = False,
) -> CreatedJob:
    """``data_roots``: one (root, length) per worker, in worker order, from ``ledger data
    commit``: each worker trains on its own private text (node.training.privdata). ``validation``:
    the owner's held-out text, stored and committed in the config (needed with roots).
    ``economics``: the reward, stakes and enrollment (an open job on public data splits
    the corpus for ``max_workers`` shards: a joiner trains on the shard of its index).
    ``keys``: address -> 64-byte public key of the parties given (every aggregator's is needed
    where workers seal what they reveal: private data); ``auditors``: named auditors'
    addresses (keys among ``keys``), who read what the verifiers read. ``private``: every
    artifact is stored encrypted under a job key wrapped to the owner, each member and each
    named auditor (``ledger.protocol.access``), whose public keys must all be in ``keys``."""
    econ = economics or Economics()
    plain = store        # the config stays readable by anyone: what the job is, not what it learns
    if private:
        store = _private_store(ledger, config, store, workers, aggregators, keys or {}, auditors or [])
    _reveal_window(config, proposal_window, private=bool(data_roots))
    _committees(config, proposal_window, len(aggregators))
    lm, params = attach_model(config, store, model)
    if data_roots:
        config = private_config(config, workers, data_roots, validation, store, proposal_window, lm)
    else:
        config = prepare_config(config, max(len(workers), econ.max_workers), throughputs)
        if config.model.token_bytes > 1:
            _check_shards(config, lm)
        if validation is not None:
            _own_validation(config, validation, store, lm)
    if config.dp is not None:
        _commit_dp(config, rounds, lm)
    set_access(config, workers, aggregators, keys or {}, auditors or [])
    genesis = checkpoint.encode(params, genesis_meta(config))
    policy = config.policy
    if len(genesis) > policy.max_checkpoint_bytes:
        # a contribution is the size of the genesis: room for it, and a margin
        policy.max_checkpoint_bytes = len(genesis) + len(genesis) // 4
    raw_config = config.to_bytes()
    cfg_obj = plain.put(raw_config)
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
            # the chain judges whether a worker revealed what the draw asked in time
            disclosure_window=int(config.policy.reveal_window) if config.discloses else 0,
            max_workers=econ.max_workers,
            worker_stake=econ.worker_stake,
            slash_bps=econ.slash_bps,
            aggregator_bps=econ.aggregator_bps,
            reward=econ.reward,
            # the contract enforces the committees (ledger.protocol.committee): who votes, until when, what decides
            committee_size=int(config.policy.committee_size),
            committee_quorum=int(config.policy.committee_quorum),
            vote_window=int(config.policy.vote_window),
        )
    )
    return CreatedJob(job_id, config, cfg_obj.cid, gen_obj.cid, gen_obj.digest)


def _private_store(ledger, config: JobConfig, store, workers, aggregators, keys: dict, auditors) -> object:
    """Make ``config`` private (a job key wrapped to every reader) and return the store
    that seals everything the job stores."""
    from ledger.protocol import access
    from ledger.privacy.sealing import public_key_of
    from ledger.store.sealed import SealedStore

    if config.cid_version:
        raise LedgerError("a private job stores CIDv0 objects: drop --cid-version 1")
    owner = ledger.chain.account
    if owner is None:
        raise LedgerError("a private job needs the owner's own key (it wraps the job key to itself too)")
    by_addr = {a.lower(): p for a, p in keys.items()}
    by_addr[owner.address.lower()] = public_key_of(owner)
    readers = {}
    for role, addrs in (("worker", workers), ("aggregator", aggregators), ("auditor", auditors)):
        for a in addrs:
            if a.lower() not in by_addr:
                raise LedgerError(f"{role} {a} has no public key: a private job wraps its key to every member, so "
                                  f"give each one's public key (`ledger account list --public-keys`) or keystore name")
            readers[a] = by_addr[a.lower()]
    readers[owner.address] = by_addr[owner.address.lower()]
    return SealedStore(store, access.make_private(config, readers))


def set_access(config: JobConfig, workers: list[str], aggregators: list[str], keys: dict[str, bytes],
               auditors: list[str]) -> None:
    """``config.access``: the public keys of the parties (checked against their addresses)
    and the named auditors; what seals needs a key for every reader it seals to."""
    from ledger.protocol.jobconfig import PartyKey
    from ledger.privacy.sealing import address_of, public_key_hex

    by_addr = {}
    for addr, pub in keys.items():
        if address_of(pub).lower() != addr.lower():
            raise LedgerError(f"the public key given for {addr} is the key of {address_of(pub)}")
        by_addr[addr.lower()] = (address_of(pub), pub)
    missing = [f"auditor {a}" for a in auditors if a.lower() not in by_addr]
    if config.seals:
        missing += [f"aggregator {a}" for a in aggregators if a.lower() not in by_addr]
    if missing:
        raise LedgerError(f"{missing[0]} has no public key{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: "
                          f"workers seal what they reveal to their verifiers, so give each one's public key "
                          f"(`ledger account list` shows it) or a keystore name instead of the address")
    if not (config.seals or auditors or config.access.private):
        return          # nothing is sealed: the config records no keys (and hashes as before)
    members = {a.lower() for a in (*workers, *aggregators, *auditors)}
    config.access.keys = [PartyKey(a, public_key_hex(p)) for low, (a, p) in sorted(by_addr.items()) if low in members]
    config.access.auditors = [address_of(by_addr[a.lower()][1]) for a in auditors]


def describe(job: CreatedJob) -> str:
    return (
        f"job {job.job_id}\n"
        f"  config  {job.config_cid}  sha256 {to_hex(job.config.digest)}\n"
        f"  genesis {job.genesis_cid}  sha256 {to_hex(job.genesis_digest)}"
    )
