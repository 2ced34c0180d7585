"""Data commitments: a Merkle root over fixed-size chunks of a worker's private text, plus its length.

A worker publishes only the commitment (in the job config, before training); later it
reveals the few chunks a verifier's drawn segment read, each provable against the
commitment without disclosing anything else of the file.

- chunks of ``CHUNK`` (64) bytes; the last one may be shorter. Small chunks: a revealed
  training window (block_size + 1 bytes) discloses at most one chunk's worth of text on
  either side of it.
- leaf = sha256(0x00 || chunk), node = sha256(0x01 || left || right), an odd node at the
  end of a level is promoted unchanged (no duplication, so no two trees share a root).
  The prefixes keep leaves and inner nodes apart (no second preimages from a node
  passed off as a chunk).
- the commitment is ``sha256(0x02 || merkle_root || length as 8 bytes big-endian)``:
  the length is committed too, because the window offsets of every training step are a
  function of it (``node.training.train.step_offsets``).

Proofs are multiproofs: the sibling nodes the revealed chunks need, keyed by (level,
index), each sent once; a segment reveals hundreds of adjacent chunks whose paths to
the root are mostly shared. (pymerkle 7 was considered: its proofs are single-leaf
inclusion proofs, so a bundle would repeat the shared upper path for every chunk,
and its serialized proofs carry algorithm/flags we would have to police on hostile
input; this file is shorter than that glue.)

No torch: the CLI (``ledger data commit``) and the audit use it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.digest import to_hex
from ledger.errors import LedgerError

CHUNK = 64
LEAF, NODE, ROOT = b"\x00", b"\x01", b"\x02"
MAX_FILES = 100_000
READ_BLOCK = 1 << 20          # a multiple of CHUNK: what a streamed commitment holds at once


def _h(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def chunk_count(length: int) -> int:
    return (int(length) + CHUNK - 1) // CHUNK


def chunk_span(index: int, length: int) -> tuple[int, int]:
    """Byte range [start, end) of chunk ``index`` in data of ``length`` bytes."""
    return index * CHUNK, min((index + 1) * CHUNK, int(length))


def chunks_covering(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Sorted chunk indices that cover every byte range [a, b)."""
    out: set[int] = set()
    for a, b in ranges:
        if b > a:
            out.update(range(a // CHUNK, (b - 1) // CHUNK + 1))
    return sorted(out)


def _levels(data: bytes) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last."""
    if not data:
        raise ValueError("cannot commit to empty data")
    level = [_h(LEAF, data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]
    levels = [level]
    while len(level) > 1:
        nxt = [_h(NODE, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    return levels


def commitment_of(merkle_root: bytes, length: int) -> bytes:
    return _h(ROOT, merkle_root, int(length).to_bytes(8, "big"))


@dataclass(frozen=True)
class DataCommitment:
    root: bytes          # commitment_of(merkle root, length)
    length: int

    def __str__(self) -> str:
        return f"root {to_hex(self.root)} bytes {self.length}"


def commit(data: bytes) -> DataCommitment:
    return DataCommitment(commitment_of(_levels(bytes(data))[-1][0], len(data)), len(data))


def commit_stream(blocks: Iterable[bytes]) -> DataCommitment:
    """``commit`` of the concatenation of ``blocks``, in memory of one block plus one hash
    per level: the root of the level-by-level tree (odd node promoted) is the fold, right
    to left, of the perfect subtrees the length decomposes into, which a stack of
    (height, hash) builds as the leaves arrive."""
    stack: list[tuple[int, bytes]] = []
    length = 0
    carry = b""

    def leaf(chunk: bytes) -> None:
        h, height = _h(LEAF, chunk), 0
        while stack and stack[-1][0] == height:
            h = _h(NODE, stack.pop()[1], h)
            height += 1
        stack.append((height, h))

    for block in blocks:
        if not block:
            continue
        length += len(block)
        data = carry + bytes(block) if carry else bytes(block)
        end = len(data) - len(data) % CHUNK
        for i in range(0, end, CHUNK):
            leaf(data[i:i + CHUNK])
        carry = data[end:]
    if carry:
        leaf(carry)
    if not stack:
        raise ValueError("cannot commit to empty data")
    root = stack.pop()[1]
    while stack:
        root = _h(NODE, stack.pop()[1], root)
    return DataCommitment(commitment_of(root, length), length)


def _level_sizes(n_leaves: int) -> list[int]:
    sizes = [n_leaves]
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def prove(data: bytes, indices: Iterable[int]) -> dict[tuple[int, int], bytes]:
    """The multiproof of chunks ``indices``: {(level, index): hash} of every sibling
    the verifier cannot compute from the revealed chunks themselves."""
    levels = _levels(bytes(data))
    known = set(int(i) for i in indices)
    if not known or min(known) < 0 or max(known) >= len(levels[0]):
        raise ValueError("chunk indices out of range")
    out: dict[tuple[int, int], bytes] = {}
    for lvl, nodes in enumerate(levels[:-1]):
        parents = set()
        for i in known:
            sib = i ^ 1
            if sib < len(nodes) and sib not in known:
                out[(lvl, sib)] = nodes[sib]
            parents.add(i // 2)
        known = parents
    return out


def verify(root: bytes, length: int, chunks: Mapping[int, bytes], nodes: Mapping[tuple[int, int], bytes]) -> str | None:
    """None when ``chunks`` (index -> bytes) are chunks of the data committed by
    (``root``, ``length``), given the multiproof ``nodes``; else what is wrong.
    Strict: every chunk has its exact size, and the proof has no node it does not need."""
    length = int(length)
    if length < 1:
        return "the committed length is not positive"
    sizes = _level_sizes(chunk_count(length))
    if not chunks:
        return "no chunks"
    known: dict[int, bytes] = {}
    for i, c in chunks.items():
        if not 0 <= i < sizes[0]:
            return f"chunk {i} is outside the data's {sizes[0]} chunks"
        a, b = chunk_span(i, length)
        if len(c) != b - a:
            return f"chunk {i} is {len(c)} bytes, expected {b - a}"
        known[i] = _h(LEAF, c)
    used = set()
    for lvl, n in enumerate(sizes[:-1]):
        parents: dict[int, bytes] = {}
        for i in sorted(known):
            if i // 2 in parents:
                continue
            sib = i ^ 1
            if sib >= n:                      # the odd node out: promoted
                parents[i // 2] = known[i]
                continue
            if sib in known:
                s = known[sib]
            elif (lvl, sib) in nodes:
                s = nodes[(lvl, sib)]
                used.add((lvl, sib))
                if len(s) != 32:
                    return f"proof node ({lvl}, {sib}) is not 32 bytes"
            else:
                return f"the proof lacks node ({lvl}, {sib})"
            left, right = (known[i], s) if i % 2 == 0 else (s, known[i])
            parents[i // 2] = _h(NODE, left, right)
        known = parents
    if set(nodes) - used:
        return f"the proof has {len(set(nodes) - used)} node(s) it does not need"
    if commitment_of(known[0], length) != bytes(root):
        return "the chunks and proof do not hash to the committed root"
    return None


_KINDS = [(stat.S_ISCHR, "a character device (like /dev/null)"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket")]


def data_files(path: str | Path) -> list[Path]:
    """The files PATH names, in the order their bytes are read: PATH itself (a regular
    file, or a pipe such as /dev/stdin or ``<(cmd)``), or a folder's regular files
    (recursively, by sorted relative path, hidden files skipped). LedgerError, in one
    line saying what PATH is, for anything else."""
    p = Path(path)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise LedgerError(f"{p}: no such file or folder; give a text file or a folder of text files") from None
    except OSError as e:
        raise LedgerError(f"{p}: cannot read it ({e.strerror}); give a text file or a folder of text files") from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return [p]
    if stat.S_ISDIR(st.st_mode):
        files = sorted((f for f in p.rglob("*") if f.is_file()
                        and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                       key=lambda f: f.relative_to(p).as_posix())
        if len(files) > MAX_FILES:
            raise LedgerError(f"{p}: {len(files)} files, more than {MAX_FILES}; concatenate them first")
        return files
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
    raise LedgerError(f"{p} is {kind}, not a file or a folder; give a text file or a folder of text files")


def iter_text_data(path: str | Path, block: int = READ_BLOCK) -> Iterator[bytes]:
    """The bytes ``read_text_data`` returns, in blocks of at most ``block`` bytes."""
    for f in data_files(path):
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(block):
                    yield chunk
        except OSError as e:
            raise LedgerError(f"{f}: cannot read it ({e.strerror or e})") from None


def read_text_data(path: str | Path) -> bytes:
    """A file's bytes, or a folder's regular files (recursively, by sorted relative
    path, hidden files skipped) concatenated: the bytes are the tokens."""
    data = b"".join(iter_text_data(path))
    if not data and Path(path).is_dir():
        raise LedgerError(f"{path}: no data in the folder's files; point at a text file or a folder of them")
    return data


def commit_path(path: str | Path) -> DataCommitment:
    """``commit(read_text_data(path))``, streamed: memory of one read block, whatever the size."""
    try:
        return commit_stream(iter_text_data(path))
    except ValueError:
        raise LedgerError(f"{path}: no data (an empty file or folder); a worker needs text to train on") from None


def parse_root(text: str) -> tuple[bytes, int | None]:
    """``0x<64 hex>`` or ``0x<64 hex>:<bytes>`` (the form ``ledger data commit`` prints
    as ``root R bytes N``)."""
    s = text.strip()
    r, _, n = s.partition(":")
    r = r.strip()
    if not (r.startswith("0x") and len(r) == 66):
        raise LedgerError(f"--data-root {text!r}: expected 0x<64 hex>:<bytes>, as `ledger data commit FILE` prints")
    try:
        root = bytes.fromhex(r[2:])
        length = int(n) if n else None
    except ValueError:
        raise LedgerError(f"--data-root {text!r}: expected 0x<64 hex>:<bytes>, as `ledger data commit FILE` prints") from None
    if length is not None and length < 1:
        raise LedgerError(f"--data-root {text!r}: the length must be positive")
    return root, length
