"""`ledger export` and `ledger verify-export`: the audited final model as plain files
with a signed in-toto provenance statement, and the check of such a folder.

``export`` imports ``node`` (and torch) inside its handler; ``verify-export`` needs
neither (``ledger.trail.provenance``), so anyone can check an export without the training stack,
except to recompute a LoRA job's merged ``model.safetensors`` (base + final adapter):
that imports ``node`` (torch, peft) only then, and without it says the merge was not compared.

Exit codes: export 0 done, 1 refused (the audit FAILED), 3 refused (the audit is
INCOMPLETE: artifacts unavailable now), 2 usage (the job is not completed, OUT not
empty); verify-export 0 ``EXPORT OK``, 1 the verification failed (one line per
failure), 2 usage or environment (no such folder, no chain, no contract), 3
``EXPORT SEALED``: a private job's export checked as far as an outsider can (the
signature, the sealed files' digests, the chain's record), its contents not read
(the account holds no key to the job).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ledger.errors import LedgerError
from ledger.ethereum.party import open_party, setup_logging

from .common import add_command, add_job_arg


def register(sub) -> None:
    p = add_command(
        sub, "export", "write a job's audited final model and a signed provenance statement to a folder", _export,
        "ledger --account owner export --job 1 ./model-job1",
        description=(
            "Audits the job first (every artifact against its on-chain digest, every merge recomputed;\n"
            "--replay adds transcript replays) and refuses a job that is not completed or whose audit\n"
            "is not OK. Then writes to OUT (new or empty) the final model as files the usual libraries\n"
            "load, without pickle: a Hugging Face model as config.json, model.safetensors and\n"
            "tokenizer.json (AutoModelForCausalLM.from_pretrained(OUT)); a LoRA job merged into its base,\n"
            "plus adapter.safetensors; the byte GPT as model.safetensors and config.json. Beside them,\n"
            "provenance.intoto.jsonl: an in-toto Statement v1 (the files' sha256; chain, contract, job,\n"
            "config and genesis digests, every round's merge or skip and its accepted contributors, the\n"
            "audit verdict) in a DSSE envelope signed by your account (EIP-191 over the DSSE PAE)."
        ),
    )
    add_job_arg(p)
    p.add_argument("out", metavar="OUT", type=Path, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--replay", choices=["none", "sample", "all"], default="none",
                   help="transcript segments the audit replays first: none (default), the drawn ones, or all")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")

    p = add_command(
        sub, "verify-export", "check an exported model folder: its signature, its files, and the chain's record",
        _verify, "ledger verify-export ./model-job1 --job 1",
        description=(
            "Offline: the envelope's signature recovers to its keyid (an address; --signer requires\n"
            "one), its payload is an in-toto statement of this project, every file it lists is in OUT\n"
            "with that sha256, and OUT holds no file it does not list. Then against the chain of the\n"
            "settings (LEDGER_RPC_URL, the contract from LEDGER_CONTRACT or the deployment record: the\n"
            "ledger you trust): the chain id and contract, the job's config and genesis digests, every\n"
            "round's finalized or kept digest and accepted contributors, and the final model. Where\n"
            "your store serves them: the files and config.json an export of that job holds, the\n"
            "final checkpoint's tensors, and for a LoRA job model.safetensors as the committed base\n"
            "with the final adapter merged, recomputed here (that part needs torch and peft).\n"
            "A private job's export is sealed (NAME.sealed under the job key): your account (--account)\n"
            "must be a member or a granted auditor to read and check its contents; --unseal-to DIR then\n"
            "writes the plaintext model with its statement, a plain export folder.\n"
            "One line per failure; exit 0 EXPORT OK, 1 failed, 2 usage/environment, 3 EXPORT SEALED\n"
            "(a private job's export checked as far as a reader without its key can)."
        ),
    )
    p.add_argument("out", metavar="OUT", type=Path, help="the folder `ledger export` wrote")
    p.add_argument("--job", type=int, default=None, metavar="ID", help="require the statement to be about this job")
    p.add_argument("--signer", metavar="ADDR", default=None, help="require the statement to be signed by this address")
    p.add_argument("--offline", action="store_true", help="check the signature and the files only, not the chain")
    p.add_argument("--unseal-to", metavar="DIR", type=Path, default=None,
                   help="a private job's export: after EXPORT OK, write its plaintext files and statement to DIR "
                        "(new or empty), an export folder of its own")


def _export(args, settings) -> int:
    setup_logging()
    from node.commands.export import export_job

    ledger, store, account = open_party(settings)
    # progress as log lines on stderr; the result on stdout; a refusal is the one `error:` line
    from ledger.progress import rounds_bar

    with rounds_bar("export: audit", not args.no_progress) as progress:
        ex = export_job(ledger, store, args.job, args.out, account, replay=args.replay,
                        notify=logging.getLogger("ledger.export").info, progress=progress)
    for name, digest in sorted(ex.files.items()):
        print(f"  {name}  sha256 {digest}")
    print(f"EXPORTED job {args.job} final model {ex.model_digest} to {ex.folder}: {len(ex.files)} files, "
          f"provenance signed by {ex.signer}")
    return 0


def _merge_lora(ledger, store, job_id: int, adapter):
    """A LoRA job's merged model, recomputed (``node.commands.export.merged_weights``);
    imported here so that verify-export needs torch only for this."""
    from ledger.trail.provenance import ExportError

    try:
        from node.commands.export import merged_weights
    except ImportError as e:
        raise ExportError(f"the training stack is not installed ({e})") from None
    return merged_weights(ledger, store, job_id, adapter)


def _reader(settings):
    """The account of these settings, where one is configured (a member's or granted
    auditor's opens a private job's export); None otherwise."""
    import os

    from ledger.ethereum.keys import ENV_PRIVATE_KEY, load_account

    if not (settings.account or os.environ.get(ENV_PRIVATE_KEY)):
        return None
    return load_account(settings, settings.account)


def _job_key(ledger, store, job_id: int, account) -> bytes | None:
    from ledger.protocol import access
    from ledger.errors import ContractReverted, StorageError
    from ledger.protocol.jobconfig import JobConfig

    try:
        info = ledger.job(job_id)
        config = JobConfig.from_bytes(store.get(info.config_cid, info.config_digest, max_size=int(info.config_size)))
    except (ContractReverted, StorageError, LedgerError, ValueError):
        return None          # verify_on_chain names what is wrong
    return access.job_key_for(ledger, store, config, job_id, account)


def _verify(args, settings) -> int:
    from eth_utils import is_address

    from ledger.trail import provenance

    if args.signer and not is_address(args.signer):
        raise provenance.ExportError(f"--signer {args.signer} is not an Ethereum address")
    check = provenance.verify_offline(args.out, signer=args.signer)
    if args.unseal_to is not None and (args.offline or not check.sealed):
        raise provenance.ExportError("--unseal-to takes a private job's sealed export, checked against the chain "
                                     "(not --offline)")
    if check.statement is not None and not args.offline:
        from ledger.ethereum.deploy import open_ledger
        from ledger.store import open_store

        try:
            account = _reader(settings)     # a private job's reader opens what is sealed
        except LedgerError:
            if check.sealed:
                raise
            account = None                  # a plain export: checked as anyone checks it
        try:
            ledger = open_ledger(settings, account)
        except LedgerError as e:
            for line in check.failures:
                print(f"FAILED: {line}", file=sys.stderr)
            raise provenance.ExportError(f"cannot check the export against the chain: {e} "
                                         "(--offline checks the signature and files only)") from None
        store = None  # without one, the weights are bound to the chain by the signature alone
        if settings.storage != "embedded" or settings.store_dir.is_dir():  # never make an empty store here
            try:
                store = open_store(settings)
            except LedgerError:
                store = None
        if check.job_id is not None and store is not None and account is not None:
            key = _job_key(ledger, store, check.job_id, account)
            if key is not None:
                provenance.open_sealed(check, key)
        provenance.verify_on_chain(check, ledger, job=args.job, store=store, merge=_merge_lora)
    elif check.statement is not None and args.job is not None and check.job_id != args.job:
        check.failures.append(f"the statement is for job {check.job_id}, not job {args.job}")
    if not check.ok:
        for line in check.failures:
            print(f"FAILED: {line}", file=sys.stderr)
        return 1
    p = check.predicate
    if check.unread:
        print(f"EXPORT SEALED job {p['job']['id']} final model {p['finalModel']['digest']}: signed by {check.signer}, "
              f"{len(check.sealed)} sealed files as signed"
              + (f", the chain's record matches; {check.weights}" if check.chain_checked else
                 " (offline: the chain was not checked)"))
        return 3
    if args.unseal_to is not None:
        n = provenance.write_unsealed(check, args.unseal_to)
        print(f"  unsealed {n} files and the statement to {args.unseal_to}")
    head = f"EXPORT OK job {p['job']['id']} final model {p['finalModel']['digest']}: {len(check.files)} files, " \
           f"signed by {check.signer}"
    if check.chain_checked:
        print(f"{head}; config, genesis, {len(p['rounds'])} round(s), contributors and final model match chain "
              f"{p['ledger']['chainId']} contract {p['ledger']['contract']}; weights: "
              f"{check.weights or 'not compared: no store'}")
    else:
        print(f"{head} (offline: signature and files only, the chain was not checked)")
    return 0
