"""The one way to read JSON that came from outside the process.

Model directories, stored job configs, window bundles, checkpoint metadata, export
statements, relay bodies: whoever wrote them may be hostile. CPython's ``json`` parser
recurses once per nesting level, in C; ``py_ecc`` (imported by ``eth_account``) raises
the recursion limit to 100,000, so ``json.loads('[' * 100000 + ']' * 100000)`` runs
out of C stack and kills the process (SIGSEGV) instead of raising ``RecursionError``.
``loads`` therefore bounds the size and scans the nesting depth (brackets outside
strings) before ``json.loads`` sees the text, whatever the recursion limit is, and
``read`` checks a file's size before reading it. Every refusal is ``UnsafeJSON``: a
``LedgerError`` (one line) that is also a ``ValueError``, so callers that already catch
``ValueError`` for malformed JSON keep working.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ledger.errors import LedgerError

MAX_BYTES = 64 << 20          # no JSON this project reads is near this
MAX_DEPTH = 32                # the deepest legitimate document here nests about 6 levels
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class UnsafeInput(LedgerError, ValueError):
    """A file or text refused before or while reading it: not a regular file, too large."""


class UnsafeJSON(UnsafeInput):
    """JSON refused before or while parsing: too large, nested too deep, malformed, duplicate keys."""


def depth_ok(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects at most ``limit`` deep
    (brackets inside strings do not count); stops at the first level too deep. Where
    the text is malformed the count may go wrong only after the first error, and the
    parser stops there."""
    depth = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def _no_dupes(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads(raw: bytes | bytearray | memoryview | str, *, what: str = "the text", max_bytes: int = MAX_BYTES,
          max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> Any:
    """``json.loads`` of hostile text: at most ``max_bytes`` bytes, nested at most
    ``max_depth`` deep (checked first), UTF-8; with ``unique_keys`` an object that
    repeats a key is refused. ``UnsafeJSON`` naming ``what`` otherwise."""
    b = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(b) > max_bytes:
        raise UnsafeJSON(f"{what}: {len(b)} bytes, over the limit of {max_bytes}")
    if not depth_ok(b, max_depth):
        raise UnsafeJSON(f"{what} is JSON nested deeper than {max_depth} levels (refused before parsing)")
    try:
        return json.loads(b, object_pairs_hook=_no_dupes if unique_keys else None)
    except RecursionError:   # unreachable after the scan; never let it escape
        raise UnsafeJSON(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UnsafeJSON(f"{what} is not JSON ({str(e).splitlines()[0][:200]})") from None


def read_bytes(path: str | os.PathLike, *, what: str | None = None, max_bytes: int) -> bytes:
    """A regular file's bytes, its size checked before anything is read (a sparse
    file of gigabytes is refused by its size, not by running out of memory)."""
    p = Path(path)
    name = what or str(p)
    st = p.stat()      # OSError (a missing file, say) is the caller's to word
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeInput(f"{name} is not a regular file")
    if st.st_size > max_bytes:
        raise UnsafeInput(f"{name}: {st.st_size} bytes, over the limit of {max_bytes}")
    with open(p, "rb") as f:
        data = f.read(max_bytes + 1)   # the file may have grown since stat
    if len(data) > max_bytes:
        raise UnsafeInput(f"{name}: over the limit of {max_bytes} bytes")
    return data


def read(path: str | os.PathLike, *, what: str | None = None, max_bytes: int = MAX_BYTES,
         max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> Any:
    """The JSON in a file: ``read_bytes`` then ``loads``."""
    name = what or str(path)
    return loads(read_bytes(path, what=name, max_bytes=max_bytes), what=name, max_bytes=max_bytes,
                 max_depth=max_depth, unique_keys=unique_keys)
