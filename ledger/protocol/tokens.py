"""Token streams: text as the job's tokenizer cuts it, in the bytes data commitments hash.

A job's training data is a *stream* of token ids, each stored little-endian in
``width`` bytes (``ModelSpec.token_bytes``): 1 for the byte GPT, whose stream is the
text itself, 2 for vocabularies up to 65,536 tokens (GPT-2, SmolLM2), else 4. A
worker's data root (``ledger data commit``) is the Merkle root of its stream, so a
revealed 64-byte chunk proves exactly the token ids a drawn segment trained on.

Tokenizers are Hugging Face ``tokenizer.json`` files read by the ``tokenizers``
library (Rust: no code runs from the file). No torch here: ``ledger data commit``
tokenizes without it.
"""

from __future__ import annotations

import numpy as np

from ledger.errors import LedgerError

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
_DTYPES = {1: np.uint8, 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def load_tokenizer(raw: bytes):
    """A ``tokenizers.Tokenizer`` from the bytes of a ``tokenizer.json``; one-line errors."""
    if len(raw) > MAX_TOKENIZER_BYTES:
        raise LedgerError(f"tokenizer.json is {len(raw)} bytes, over the limit of {MAX_TOKENIZER_BYTES}")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(raw.decode("utf-8"))
    except (UnicodeDecodeError, Exception) as e:  # noqa: BLE001 - the Rust parser raises its own type
        raise LedgerError(f"not a tokenizer.json the tokenizers library can read ({str(e).splitlines()[0][:200]})") from None


def encode_text(tokenizer, text: bytes) -> np.ndarray:
    """Token ids of ``text`` (bytes, decoded as UTF-8 with replacement), no special tokens added.
    Long texts go in pieces cut at line ends: the ids are those of each piece, so a file
    tokenizes the same whatever machine reads it, in memory proportional to a piece."""
    ids: list[np.ndarray] = []
    piece = 1 << 20
    pos = 0
    while pos < len(text):
        end = len(text) if pos + piece >= len(text) else text.rfind(b"\n", pos, pos + piece) + 1 or pos + piece
        chunk = text[pos:end].decode("utf-8", errors="replace")
        ids.append(np.asarray(tokenizer.encode(chunk, add_special_tokens=False).ids, dtype=np.int64))
        pos = end
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def to_stream(ids: np.ndarray, width: int) -> bytes:
    """Token ids as the stream bytes of ``width`` bytes per token (little-endian)."""
    dt = _DTYPES[width]
    arr = np.asarray(ids)
    if arr.size and (arr.min() < 0 or arr.max() >= 1 << (8 * width)):
        raise LedgerError(f"token ids up to {int(arr.max())} do not fit {width}-byte stream entries")
    return arr.astype(dt).tobytes()


def from_stream(stream: bytes, width: int) -> np.ndarray:
    """The token ids in a stream (int64); its length must be a whole number of tokens."""
    if len(stream) % width:
        raise LedgerError(f"a stream of {len(stream)} bytes is not a whole number of {width}-byte tokens")
    return np.frombuffer(stream, dtype=_DTYPES[width]).astype(np.int64)


def text_stream(tokenizer, text: bytes, width: int) -> bytes:
    """What a worker commits to and trains on: ``text`` tokenized (width 1: the text itself)."""
    if width == 1 and tokenizer is None:
        return bytes(text)
    return to_stream(encode_text(tokenizer, text), width)


def width_for(vocab_size: int) -> int:
    """Stream bytes per token of a Hugging Face model (``ModelSpec.token_bytes``)."""
    return 2 if int(vocab_size) <= 1 << 16 else 4


def model_dir_tokenizer(d) -> tuple[object, int]:
    """(tokenizer, stream width) of a Hugging Face model directory, without torch: what
    ``ledger data commit --model DIR`` tokenizes with."""
    from pathlib import Path

    from ledger import safejson

    d = Path(d)
    try:
        cfg = safejson.read(d / "config.json", max_bytes=1 << 20)
        vocab = cfg["vocab_size"]
        if type(vocab) is not int or not 0 < vocab <= 1 << 32:
            raise ValueError(f"vocab_size {str(vocab)[:20]} is not a vocabulary size")
        raw = safejson.read_bytes(d / "tokenizer.json", max_bytes=MAX_TOKENIZER_BYTES)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LedgerError(f"{d}: not a Hugging Face model directory with config.json (vocab_size) and "
                          f"tokenizer.json ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    return load_tokenizer(raw), width_for(vocab)
