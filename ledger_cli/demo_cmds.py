"""`ledger demo` and `ledger generate`."""

from __future__ import annotations

from pathlib import Path

from ledger.ethereum.party import open_party, setup_logging

from .common import SEED, add_command, add_job_arg, float_in, int_in, spec_range, writable_file


def register(sub) -> None:
    p = add_command(
        sub, "demo", "run a whole multi-party training on this machine, audit it, generate text", _demo,
        "ledger demo --workers 4 --aggregators 3 --quorum 2 --rounds 3\n"
        "  LEDGER_RPC_URL=http://127.0.0.1:8545 ledger demo --rounds 2     # on a chain already running",
        description=(
            "Starts the local chain (and, with --ipfs, the local IPFS node), deploys the contract if\n"
            "needed, creates a job, runs every worker and aggregator as its own process, shows each\n"
            "round as it happens on chain, audits the job, writes the HTML report and prints text\n"
            "from the verified final model. Stops everything it started, also on Ctrl-C, SIGTERM and\n"
            "SIGHUP. Running it again starts a new job on the same chain; one demo per data dir at a time.\n\n"
            "With --rpc-url / LEDGER_RPC_URL it starts no chain and runs on that one (Hardhat's node,\n"
            "a geth --dev, a testnet): the job owner and the parties' funds come from the key given in\n"
            "LEDGER_PRIVATE_KEY / --account (1 ETH to each party), else from the node's unlocked dev\n"
            "account (eth_accounts), else from the dev chain's set-balance method. Keys are never printed.\n\n"
            "--model smollm2 fine-tunes the pretrained SmolLM2-135M-Instruct with LoRA on the bundled\n"
            "Shakespeare (about 10 minutes on 2 cores) and prints the prompt's continuation by the\n"
            "genesis and by the audited final model side by side."
        ),
    )
    p.add_argument("--workers", type=int_in(1, 128), default=4, help="worker processes, one data shard each (default 4)")
    p.add_argument("--aggregators", type=int_in(1, 255), default=3, help="aggregator processes (default 3)")
    p.add_argument("--quorum", type=int_in(1, 255), default=2,
                   help="aggregators that must agree bit-for-bit: a strict majority of them (default 2)")
    p.add_argument("--rounds", type=int_in(1, 1000), default=None, help="training rounds (default 3; 2 with --model)")
    p.add_argument("--steps", type=int_in(1, 100000), default=None,
                   help="local steps per worker per round (default 50; 10 with --model)")
    p.add_argument("--round-duration", type=int_in(1, 2**32 - 1), default=300, metavar="S", help="round deadline in seconds (default 300)")
    p.add_argument("--merge-rule", choices=["fedavg", "median", "trimmed_mean", "krum"], default="fedavg")
    p.add_argument("--split", choices=["iid", "speaker"], default="iid", help="IID shards or non-IID by speaker")
    p.add_argument("--replay-segments", type=spec_range("Policy", "replay_segments"), default=1,
                   help="transcript segments of every contribution each aggregator replays (default 1)")
    p.add_argument("--ipfs", action="store_true", help="store artifacts on the local IPFS node instead of the embedded store")
    p.add_argument("--model", metavar="smollm2|DIR", default=None,
                   help="fine-tune a pretrained model instead of training the byte GPT from scratch: the built-in "
                        "smollm2 or a Hugging Face model directory (LoRA, small defaults sized for a CPU)")
    p.add_argument("--lora-rank", type=int_in(0, 256), default=None, metavar="R",
                   help="with --model: LoRA rank (default 8; 0 = full fine-tuning)")
    p.add_argument("--prompt", default="ROMEO:\n", help="prompt for the generated text")
    p.add_argument("--tokens", "--max-new-tokens", dest="tokens", type=int_in(1, 100000), default=None,
                   help="tokens to generate (bytes for the byte GPT; default 300, 48 with --model)")
    p.add_argument("--html", type=writable_file, default=None, help="where to write the audit report (default .ledger/reports/chain-<id>/<contract>/job-<id>/audit.html)")

    p = add_command(
        sub, "generate", "generate text with a job's final model, after its audit passes", _generate,
        'ledger generate --job 1 --prompt "ROMEO:"',
        description=(
            "Verified inference: the job's lineage is audited first (every artifact against its on-chain\n"
            "digest, every merge recomputed); the model is loaded only if the audit passes."
        ),
    )
    add_job_arg(p)
    p.add_argument("--prompt", default="ROMEO:\n", help="text to continue, tokenized with the job's tokenizer")
    p.add_argument("--max-new-tokens", "--tokens", dest="tokens", type=int_in(1, 100000), default=300, metavar="N",
                   help="tokens to generate, 1..100000 (bytes for the byte GPT; default 300)")
    p.add_argument("--temperature", type=float_in(0, 100), default=0.8, help="sampling temperature, 0..100; 0 = greedy")
    p.add_argument("--top-k", type=int_in(0), default=40, metavar="K",
                   help="sample among the K likeliest tokens (0 = all of them; default 40)")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed: the same seed gives the same text")


def _demo(args, settings) -> int:
    from ledger.errors import ConfigError

    if not (2 * args.quorum > args.aggregators and args.quorum <= args.aggregators):
        raise ConfigError(f"--quorum {args.quorum} with {args.aggregators} aggregator(s): the quorum must be a strict "
                          f"majority, {args.aggregators // 2 + 1}..{args.aggregators}")
    if args.model and not Path(args.model).is_dir():
        from node.models.importer import BUILTINS

        if args.model not in BUILTINS:
            raise ConfigError(f"--model {args.model}: not a folder and not a built-in model ({', '.join(BUILTINS)}); "
                              f"give a Hugging Face model directory (config.json, safetensors weights, tokenizer.json)")
    setup_logging()
    from node.commands.demo import DemoOptions, run_demo

    from node.commands.demo import SMOLLM2_DEMO

    given = {k: v for k, v in vars(args).items() if v is not None}
    model_defaults = dict(SMOLLM2_DEMO) if args.model else {}
    pick = lambda k, d: given.get(k, model_defaults.get(k, d))   # noqa: E731 - flag, else model default, else demo's
    opt = DemoOptions(
        workers=args.workers, aggregators=args.aggregators, quorum=args.quorum, rounds=pick("rounds", 3),
        steps=pick("steps", 50), round_duration=args.round_duration, merge_rule=args.merge_rule, split=args.split,
        replay_segments=args.replay_segments, ipfs=args.ipfs, prompt=args.prompt, tokens=pick("tokens", 300),
        html=args.html, model=args.model, lora_rank=pick("lora_rank", 0),
        block_size=model_defaults.get("block_size"), batch_size=model_defaults.get("batch_size"),
        learning_rate=model_defaults.get("learning_rate"), val_batches=model_defaults.get("val_batches"),
        val_batch_size=model_defaults.get("val_batch_size"),
    )
    return run_demo(settings, opt)


def _generate(args, settings) -> int:
    setup_logging()
    from node.commands.generate import generate_verified

    ledger, store, _ = open_party(settings, need_account=False)
    g = generate_verified(ledger, store, args.job, args.prompt, max_new_tokens=args.tokens,
                          temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    # An unfinished job has no final model yet: the header says which model this is.
    unfinished = g.report.unfinished
    print(f"# model {g.model_digest} (audit OK" + (f"; {unfinished}: the latest model, not a final one)" if unfinished
                                                   else ")"))
    print(g.text)
    return 0
