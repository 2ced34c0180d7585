"""Contributions kept on local disk, read a tensor (or a block of one) at a time.

An aggregator judges and merges every contribution of a round. Holding each one's
decoded tensors in memory until the merge made its peak memory grow with the
number of workers (n x the model). Instead, once a contribution's bytes passed the
cheap checks (their digest, format, structure and finite values), they are written
to a spill file and dropped; ``SpilledParams`` reads them back, tensor by tensor or
block by block, as the validation, the replay and the merge rules need them. The
merge rules (``node.verification.merge``) work on blocks of coordinates, so a
round's peak memory is the parent, the merged model and a block of every
contribution: flat in the number of workers (``bench/scale.py`` measures it).

The file holds exactly the bytes that were verified against the on-chain digest,
written where only this process writes; it is removed when the last handle goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ledger.store import checkpoint


class SpillDir:
    """A private temporary folder, removed when garbage collected (or at exit)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="ledger-spill-", dir=root))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)
        self._n = 0

    def write(self, data: bytes) -> Path:
        self._n += 1
        p = self.path / f"{self._n:06d}.safetensors"
        with open(p, "wb") as f:
            f.write(data)
        return p


class SpilledParams(Mapping):
    """A read-only ``Mapping[str, np.ndarray]`` over a checkpoint file: each lookup
    reads that tensor from disk (a fresh array); ``block(name, a, b)`` reads the flat
    elements [a, b) only. The header was validated when the bytes were written."""

    def __init__(self, spill: SpillDir, data: bytes):
        self._spill = spill                       # keeps the folder alive while this handle is
        self._header = checkpoint.read_header(data)
        self.path = spill.write(data)
        self.nbytes = len(data)

    @property
    def meta(self) -> dict[str, str]:
        return dict(self._header.meta)

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._header.tensors[name]
        return self._read(info, 0, int(np.prod(info.shape, dtype=np.int64))).reshape(info.shape)

    def block(self, name: str, a: int, b: int) -> np.ndarray:
        """Flat elements [a, b) of tensor ``name`` (C order)."""
        return self._read(self._header.tensors[name], a, b)

    def _read(self, info, a: int, b: int) -> np.ndarray:
        dt = info.numpy_dtype
        n = max(0, b - a)
        out = np.empty(n, dtype=dt)
        if n:
            with open(self.path, "rb") as f:
                f.seek(self._header.data_start + info.begin + a * dt.itemsize)
                if f.readinto(memoryview(out).cast("B")) != n * dt.itemsize:
                    raise OSError(f"spill file {self.path} is shorter than its header says")
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._header.tensors)

    def __len__(self) -> int:
        return len(self._header.tensors)

    def load(self) -> dict[str, np.ndarray]:
        """Every tensor in memory (one contribution at a time: the validation, the replay)."""
        return {name: self[name] for name in self}


def block_of(params: Mapping[str, np.ndarray], name: str, a: int, b: int) -> np.ndarray:
    """Flat elements [a, b) of ``params[name]``, reading no more than that from a spill file."""
    if isinstance(params, SpilledParams):
        return params.block(name, a, b)
    return np.asarray(params[name]).reshape(-1)[a:b]
