"""`ledger data commit`: the commitment a worker's private data is bound to."""

from __future__ import annotations

from .common import add_command, add_group


def register(sub) -> None:
    g = add_group(sub, "data", "commit to private training data")
    p = add_command(
        g, "commit", "print the Merkle commitment of a text file or a folder of text files", _commit,
        "ledger data commit notes.txt   ->   root 0x3f1c…9a2e bytes 48213",
        description=(
            "Reads PATH (a file, or a folder's files in sorted order, concatenated), tokenizes it with\n"
            "--model's tokenizer (for the byte-level GPT the bytes are the tokens), cuts the token\n"
            "stream into 64-byte chunks and prints `root 0x<64 hex> bytes <n>`: a\n"
            "Merkle root over the chunks bound to the length. Nothing leaves this machine. Give the\n"
            "job owner `0x<root>:<n>` for `ledger job create --data-root`; later, only the chunks a\n"
            "verifier's drawn training segments read are revealed, each with its Merkle proof."
        ),
    )
    p.add_argument("path", metavar="PATH", help="a text file, or a folder of text files")
    p.add_argument("--model", metavar="smollm2|DIR", default=None,
                   help="for a job that trains a Hugging Face model: commit to the text's tokens under that model's "
                        "tokenizer (the same --model the owner gives `ledger job create`); default: the bytes, for "
                        "the byte-level GPT")


def _commit(args, settings) -> int:
    from ledger.protocol.datacommit import commit, commit_path, read_text_data

    if args.model in (None, "byte", "byte-gpt"):
        print(commit_path(args.path))        # streamed: a 100 MB file is never in memory at once
        return 0
    data = read_text_data(args.path)
    if not data:
        from ledger.errors import LedgerError

        raise LedgerError(f"{args.path}: the file is empty; a worker needs text to train on")
    from pathlib import Path

    from ledger.protocol.tokens import model_dir_tokenizer, text_stream

    d = Path(args.model)
    if not d.is_dir():
        from node.models.importer import resolve_model_dir    # a built-in: made once (torch)

        d, _ = resolve_model_dir(args.model, settings.data_dir / "models")
    tok, width = model_dir_tokenizer(d)
    stream = text_stream(tok, data, width)
    print(f"{commit(stream)} tokens {len(stream) // width}")
    return 0
