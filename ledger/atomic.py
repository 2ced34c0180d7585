"""Crash-safe local files: write to a temp name, fsync, rename, fsync the directory.

A reader never sees a half-written file under the final name, so local state that a
killed process leaves behind is either the old version or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ledger import safejson


def write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def write_json(path: str | Path, obj: Any, mode: int = 0o644) -> Path:
    return write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n", mode)


def read_json(path: str | Path, default: Any = None) -> Any:
    try:
        return safejson.read(path)
    except FileNotFoundError:
        return default
