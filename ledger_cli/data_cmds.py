"""`ledger data commit`: the commitment a worker's private data is bound to."""

from __future__ import annotations

from .common import add_command, add_group


def register(sub) -> None:
    g = add_group(sub, "data", "commit to private training data")
    p = add_command(
        g, "commit", "print the Merkle commitment of a text file or a folder of text files", _commit,
        "ledger data commit notes.txt   ->   root 0x3f1c…9a2e bytes 48213",
        description=(
            "Reads PATH (a file, or a folder's files in sorted order, concatenated; the bytes are\n"
            "the tokens), cuts it into 64-byte chunks and prints `root 0x<64 hex> bytes <n>`: a\n"
            "Merkle root over the chunks bound to the length. Nothing leaves this machine. Give the\n"
            "job owner `0x<root>:<n>` for `ledger job create --data-root`; later, only the chunks a\n"
            "verifier's drawn training segments read are revealed, each with its Merkle proof."
        ),
    )
    p.add_argument("path", metavar="PATH", help="a text file, or a folder of text files")


def _commit(args, settings) -> int:
    from ledger.datacommit import commit_path

    print(commit_path(args.path))
    return 0
