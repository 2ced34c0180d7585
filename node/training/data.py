"""The corpus, its shards, the held-out validation split, and batches of byte windows.

Everything here is a pure function of its inputs (no clocks, no global RNG, no dict or
set iteration order), because every party must cut the same shards and every shard's
sha256 goes into the job config, whose digest is on chain.

- ``load_corpus``: the project's tinyshakespeare copy, checked against its sha256.
- ``make_split``: validation = the tail of the corpus (from a speech boundary); the
  rest is cut into shards, either IID (contiguous byte ranges) or non-IID "speaker"
  (whole speakers assigned to shards, so shards differ in who speaks).
- ``balance_sizes``: shard sizes proportional to each worker's throughput, so that
  the slowest worker's round time is as short as it can be.
- ``windows``: (x, y) byte windows at given offsets (``node.training.train`` draws the offsets
  of each step from the seed and the step, nothing else).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ledger.digest import to_hex
from ledger.errors import LedgerError
from ledger.protocol.jobconfig import DataSpec, ShardSpec

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "tinyshakespeare.txt"
SPLIT_MODES = ("iid", "speaker")


class CorpusError(LedgerError):
    """The corpus file is missing or is not the one the job names."""


def load_corpus(path: str | Path | None = None, expected_sha256: str | None = DataSpec.corpus_sha256) -> bytes:
    """Read the corpus (default: the project's data/tinyshakespeare.txt) and check its
    sha256 against ``expected_sha256`` (0x-hex; None skips the check)."""
    p = Path(path) if path is not None else DEFAULT_CORPUS
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus {p}: {e.strerror or e}; "
                          f"the project ships it as data/tinyshakespeare.txt") from None
    if expected_sha256 is not None:
        got = to_hex(hashlib.sha256(data).digest())
        want = expected_sha256.lower() if expected_sha256.lower().startswith("0x") else "0x" + expected_sha256.lower()
        if got != want:
            raise CorpusError(f"corpus {p} has sha256 {got}, but the job expects {want}: "
                              f"wrong or modified file (restore data/tinyshakespeare.txt)")
    return data


@dataclass
class Split:
    shards: list[bytes]
    validation: bytes


def split_point(corpus: bytes, val_fraction: float) -> int:
    """Where validation starts: ``len * (1 - val_fraction)``, moved forward to the start
    of the next speech (just after a blank line) so no speech is cut in two. The same
    for both split modes, so IID and non-IID jobs are scored on the same held-out text."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(corpus) * (1.0 - val_fraction))
    nxt = corpus.find(b"\n\n", cut)
    return cut if nxt < 0 else nxt + 2


def make_split(corpus: bytes, num_shards: int, mode: str = "iid", val_fraction: float = 0.1,
               sizes: list[int] | None = None) -> Split:
    """Cut ``corpus`` into ``num_shards`` training shards plus a validation split.

    ``sizes`` (optional, one per shard) are target shard sizes in bytes; if they do not
    sum to the training part's length exactly (``split_point``) they are used as
    weights and rescaled. IID shards get exactly those sizes; speaker shards get whole
    speakers, so they only approximate them.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {SPLIT_MODES}, got {mode!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    cut = split_point(corpus, val_fraction)
    train, validation = corpus[:cut], corpus[cut:]
    targets = _target_sizes(len(train), num_shards, sizes)
    if mode == "iid":
        shards, pos = [], 0
        for n in targets:
            shards.append(train[pos:pos + n])
            pos += n
    else:
        shards = _speaker_shards(train, targets)
    if any(len(s) == 0 for s in shards):
        raise ValueError(f"{mode} split into {num_shards} shards leaves a shard empty")
    return Split(shards=shards, validation=validation)


def _target_sizes(total: int, n: int, sizes: list[int] | None) -> list[int]:
    if sizes is None:
        sizes = [1] * n
    if len(sizes) != n or any(s < 0 for s in sizes) or sum(sizes) <= 0:
        raise ValueError(f"sizes must be {n} non-negative numbers with a positive sum, got {sizes}")
    if sum(sizes) == total:
        return list(sizes)
    # Largest remainder: floor the exact shares, give the leftover bytes to the largest
    # fractional parts (ties to the lower index). Integer arithmetic, no float drift.
    s = sum(sizes)
    base = [total * w // s for w in sizes]
    rema = sorted(range(n), key=lambda i: (-(total * sizes[i] % s), i))
    for i in rema[: total - sum(base)]:
        base[i] += 1
    return base


def speeches(text: bytes) -> list[tuple[str, bytes]]:
    """(speaker, speech bytes) in corpus order. A speech is a ``Name:`` line and the
    lines up to and including the blank line after them; the pieces concatenate back
    to ``text`` exactly. Text before the first speaker line, or stray blank lines,
    stays with the speech before it (speaker "" if there is none)."""
    out: list[tuple[str, bytes]] = []
    for piece in re.split(rb"(?<=\n\n)", text):
        if not piece:
            continue
        first = piece.split(b"\n", 1)[0].strip()
        if first.endswith(b":") and len(first) > 1:
            out.append((first[:-1].decode("utf-8", "replace"), piece))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + piece)
        else:
            out.append(("", piece))
    return out


def _speaker_shards(train: bytes, targets: list[int]) -> list[bytes]:
    """Assign whole speakers to shards, biggest speaker first, each to the shard that is
    furthest below its target (greedy longest-processing-time: with hundreds of
    speakers the shards come out within a few percent of their targets). Within a
    shard, speeches keep corpus order."""
    by_speaker: dict[str, int] = {}
    sp = speeches(train)
    for name, piece in sp:
        by_speaker[name] = by_speaker.get(name, 0) + len(piece)
    load = [0] * len(targets)
    owner: dict[str, int] = {}
    for name in sorted(by_speaker, key=lambda k: (-by_speaker[k], k)):
        # fill ratio after adding; shards with target 0 are never chosen while others exist
        i = min(range(len(targets)),
                key=lambda j: ((load[j] + by_speaker[name]) / targets[j] if targets[j] else math.inf, j))
        owner[name] = i
        load[i] += by_speaker[name]
    parts: list[list[bytes]] = [[] for _ in targets]
    for name, piece in sp:
        parts[owner[name]].append(piece)
    return [b"".join(p) for p in parts]


def shard_spec(index: int, data: bytes) -> ShardSpec:
    return ShardSpec(index=index, sha256=to_hex(hashlib.sha256(data).digest()), num_bytes=len(data))


def shard_specs(split: Split) -> tuple[list[ShardSpec], ShardSpec]:
    """ShardSpecs (0x-hex sha256, size) for the job config; validation has index -1."""
    return [shard_spec(i, s) for i, s in enumerate(split.shards)], shard_spec(-1, split.validation)


def balance_sizes(throughputs: list[float], total: int, min_size: int = 0) -> list[int]:
    """Integer shard sizes summing to ``total`` that minimise the round time
    ``max_i size_i / throughputs[i]`` subject to ``size_i >= min_size``.

    Continuous optimum: every worker finishes at the same time t, i.e. size_i = t * T_i,
    except workers pinned at ``min_size`` (water-filling on t). Integers: floor that,
    then hand out the remaining units one at a time to whichever worker would finish
    earliest with one more; each choice is the best possible, so the result is optimal.
    Throughputs may be in any unit (bytes/s, steps/s): only their ratios matter.
    """
    n = len(throughputs)
    if n == 0:
        raise ValueError("balance_sizes needs at least one throughput")
    if any(not (math.isfinite(t) and t > 0) for t in throughputs):
        raise ValueError(f"throughputs must be positive and finite, got {throughputs}")
    if min_size < 0 or total < n * min_size:
        raise ValueError(f"total {total} cannot give {n} shards of at least {min_size}")
    # Water-filling: find t with sum(max(min_size, t*T_i)) == total. Workers whose share
    # t*T_i falls below min_size are pinned, starting with the slowest.
    order = sorted(range(n), key=lambda i: (throughputs[i], i))
    pinned = 0
    while True:
        free = order[pinned:]
        t = (total - pinned * min_size) / sum(throughputs[i] for i in free)
        if pinned < n - 1 and t * throughputs[order[pinned]] < min_size:
            pinned += 1
            continue
        break
    sizes = [min_size] * n
    for i in order[pinned:]:
        sizes[i] = max(min_size, math.floor(t * throughputs[i]))
    # Float rounding may overshoot by a unit or two: take back from the longest-running.
    while sum(sizes) > total:
        i = max((j for j in range(n) if sizes[j] > min_size), key=lambda j: (sizes[j] / throughputs[j], -j))
        sizes[i] -= 1
    for _ in range(total - sum(sizes)):
        i = min(range(n), key=lambda j: ((sizes[j] + 1) / throughputs[j], j))
        sizes[i] += 1
    return sizes


def as_tensor(stream: bytes, token_bytes: int = 1) -> torch.Tensor:
    """A token stream (``ledger.protocol.tokens``; the text itself for the byte GPT) as a tensor of
    ids: uint8 for bytes (widened when windows are cut), int64 otherwise (a copy: torch
    wants writable memory)."""
    if token_bytes == 1:
        return torch.from_numpy(np.frombuffer(stream, dtype=np.uint8).copy())
    from ledger.protocol.tokens import from_stream

    return torch.from_numpy(from_stream(stream, token_bytes))


def windows(data: torch.Tensor, offsets: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x = data[o : o+block_size], y = the same shifted by one, for each offset o (int64)."""
    idx = offsets[:, None] + torch.arange(block_size + 1)[None, :]
    chunk = data[idx].long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
