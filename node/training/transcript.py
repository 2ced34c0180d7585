"""Training transcripts: the snapshots a worker commits to, and the segment lottery.

Training is chaotic: replayed on another CPU or a GPU, a whole round drifts from the
worker's run by 20% of the update after fifty steps, as far as a cheat would. Short
stretches do agree (about 1e-5 of the update over ten steps). So a worker cuts its
round into segments of ``policy.segment_steps`` steps and snapshots its *whole*
training state (parameters, both AdamW moments, the step) at every inner boundary.
A verifier replays a few drawn segments, each from its published start, and compares
the end under a relative tolerance.

Linking is by construction: segment 0 starts from the round's parent with a fresh
optimizer (the verifier takes both from the chain, not from the worker), segment i
starts from snapshot i-1 and ends at snapshot i, and the last segment ends at the
submitted checkpoint's exact tensors. The snapshots' digests and CIDs sit in the
checkpoint's metadata (the *manifest*), so the on-chain digest of the checkpoint
commits to all of them and a submission costs no extra gas.

No torch here: the aggregators' cheap checks, the history and the audit parse
manifests; only the replay itself (``node.training.train``) needs torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ledger import checkpoint
from ledger.cid import parse_cid
from ledger.digest import from_hex, to_hex
from ledger.jobconfig import canonical_json

MANIFEST_KEY = "transcript"
SNAPSHOT_KIND = "snapshot"
GROUPS = ("param", "exp_avg", "exp_avg_sq")
DRAW_DOMAIN = b"training-ledger/segments/1"


class TranscriptError(ValueError):
    """A manifest or snapshot that does not describe this contribution's training."""


@dataclass
class TrainState:
    """The whole training state at a step boundary. ``exp_avg`` / ``exp_avg_sq`` are
    None at step 0: a fresh optimizer, as every round starts."""

    step: int
    params: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray] | None = None
    exp_avg_sq: dict[str, np.ndarray] | None = None

    @classmethod
    def fresh(cls, params: Mapping[str, np.ndarray]) -> "TrainState":
        return cls(0, {k: np.array(v, copy=True) for k, v in params.items()})


@dataclass(frozen=True)
class SnapshotRef:
    step: int
    digest: bytes
    cid: str
    size: int


@dataclass(frozen=True)
class Manifest:
    segment_steps: int
    snapshots: tuple[SnapshotRef, ...]
    # Private-data jobs: one window bundle per segment (node.training.privdata), ``step`` holding
    # the segment's index. Committed at training time, stored only when drawn.
    windows: tuple[SnapshotRef, ...] = ()

    def to_json(self) -> str:
        d = {"segment_steps": self.segment_steps, "snapshots": [_ref_json(s) for s in self.snapshots]}
        if self.windows:
            d["windows"] = [{**_ref_json(w), "segment": w.step} for w in self.windows]
            for w in d["windows"]:
                del w["step"]
        return canonical_json(d).decode()


def _ref_json(s: SnapshotRef) -> dict:
    return {"step": s.step, "digest": to_hex(s.digest), "cid": s.cid, "size": s.size}


def build_manifest(segment_steps: int, snapshots: list[tuple[int, bytes]], import_options,
                   windows: list[tuple[int, bytes]] = ()) -> Manifest:
    """The manifest of encoded snapshots (step, bytes) and window bundles (segment,
    bytes): each one's digest, size and the CID a store with ``import_options`` gives
    it, computed here without storing it."""
    from ledger.cid import cid_of_bytes
    from ledger.digest import sha256_bytes

    def refs(items):
        return tuple(SnapshotRef(k, sha256_bytes(blob), cid_of_bytes(blob, import_options).cid, len(blob))
                     for k, blob in items)

    return Manifest(int(segment_steps), refs(snapshots), refs(windows))


def segment_bounds(steps: int, segment_steps: int) -> list[tuple[int, int]]:
    """[(start, end), ...] covering ``range(steps)``; the last segment may be shorter."""
    steps, k = int(steps), int(segment_steps)
    if steps < 1 or k < 1:
        raise ValueError(f"steps and segment_steps must be >= 1, got {steps} and {k}")
    return [(a, min(a + k, steps)) for a in range(0, steps, k)]


def inner_boundaries(steps: int, segment_steps: int) -> list[int]:
    """The steps at which a worker snapshots: every segment end except the last."""
    return [end for _, end in segment_bounds(steps, segment_steps)[:-1]]


def read_manifest(meta: Mapping[str, str], *, steps: int, segment_steps: int, max_size: int,
                  private: bool = False) -> Manifest:
    """Parse and check a checkpoint's manifest against the job's schedule (and, for a
    private-data job, its window bundles: one per segment, in order)."""
    raw = meta.get(MANIFEST_KEY)
    if raw is None:
        raise TranscriptError("the checkpoint commits to no training transcript")
    try:
        d = json.loads(raw)
        k = d["segment_steps"]
        refs = d["snapshots"]
        if not isinstance(k, int) or not isinstance(refs, list):
            raise TypeError("wrong field types")
        snaps = tuple(_ref(s, max_size) for s in refs)
        wins = d.get("windows", [])
        if not isinstance(wins, list) or not all(isinstance(w, dict) for w in wins):
            raise TypeError("windows must be a list of entries")
        windows = tuple(_ref({**w, "step": w.get("segment")}, max_size) for w in wins)
    except (ValueError, KeyError, TypeError) as e:
        raise TranscriptError(f"the transcript manifest is malformed ({e})") from None
    if k != int(segment_steps):
        raise TranscriptError(f"the transcript has segments of {k} steps, the job's policy says {segment_steps}")
    want = inner_boundaries(steps, segment_steps)
    got = [s.step for s in snaps]
    if got != want:
        raise TranscriptError(f"the transcript snapshots steps {got}, the job's schedule needs {want}")
    n = len(want) + 1
    if private and [w.step for w in windows] != list(range(n)):
        raise TranscriptError(f"the transcript commits to window bundles of segments {[w.step for w in windows]}, "
                              f"a private-data job needs one for each of its {n} segments")
    if not private and windows:
        raise TranscriptError("the transcript commits to window bundles, but the job trains on public shards")
    return Manifest(k, snaps, windows)


def _ref(s, max_size: int) -> SnapshotRef:
    if not isinstance(s, dict) or not isinstance(s.get("step"), int) or not isinstance(s.get("size"), int):
        raise TypeError("a snapshot entry needs an integer step and size")
    digest = from_hex(s["digest"])
    if len(digest) != 32:
        raise ValueError("a snapshot digest must be 32 bytes")
    parse_cid(s["cid"])
    if not 0 < s["size"] <= max_size:
        raise ValueError(f"snapshot size {s['size']} is outside 1..{max_size}")
    return SnapshotRef(s["step"], digest, str(s["cid"]), s["size"])


# --------------------------------------------------------------------------- snapshots


def snapshot_meta(job: int, round_: int, worker: str, parent: bytes, step: int) -> dict[str, str]:
    """What binds a snapshot to one contribution: a snapshot of another worker, round
    or parent is a broken link even if its tensors would replay."""
    return {"kind": SNAPSHOT_KIND, "job": str(int(job)), "round": str(int(round_)),
            "worker": worker.lower(), "parent": to_hex(parent), "step": str(int(step))}


def encode_snapshot(state: TrainState, meta: Mapping[str, str]) -> bytes:
    if state.exp_avg is None or state.exp_avg_sq is None:
        raise ValueError("a snapshot needs the optimizer moments")
    tensors = {}
    for group, d in zip(GROUPS, (state.params, state.exp_avg, state.exp_avg_sq)):
        tensors.update({f"{group}/{k}": v for k, v in d.items()})
    return checkpoint.encode(tensors, {**meta, "step": str(int(state.step))})


def decode_snapshot(data: bytes, *, cid: str, expect_meta: Mapping[str, str],
                    like: Mapping[str, np.ndarray], max_size: int) -> TrainState:
    """Strictly decode a snapshot whose bytes already matched their committed digest:
    its metadata must be ``expect_meta`` and each group must have ``like``'s names,
    shapes and dtypes, all finite."""
    try:
        tensors, meta = checkpoint.decode(data, cid=cid, max_size=max_size)
    except ValueError as e:   # CheckpointFormatError included
        raise TranscriptError(f"snapshot {cid} is not a valid snapshot: {e}") from None
    for key, want in expect_meta.items():
        if meta.get(key, "").lower() != str(want).lower():
            raise TranscriptError(f"snapshot {cid} declares {key} {meta.get(key)!r}, expected {want!r}")
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
    for name, t in tensors.items():
        g, _, rest = name.partition("/")
        if g not in groups:
            raise TranscriptError(f"snapshot {cid} has an unexpected tensor {name!r}")
        groups[g][rest] = t
    for g, d in groups.items():
        if set(d) != set(like):
            raise TranscriptError(f"snapshot {cid}: the {g} tensors do not match the model's")
        for name, ref in like.items():
            t = d[name]
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise TranscriptError(f"snapshot {cid}: {g}/{name} is {t.dtype}{list(t.shape)}, "
                                      f"expected {ref.dtype}{list(ref.shape)}")
            if not np.isfinite(t).all():
                raise TranscriptError(f"snapshot {cid}: {g}/{name} has NaN/Inf values")
    return TrainState(int(expect_meta["step"]), groups["param"], groups["exp_avg"], groups["exp_avg_sq"])


# --------------------------------------------------------------------------- the lottery


def draw_segments(seed: bytes, job: int, round_: int, worker: str, n_segments: int, count: int) -> list[int]:
    """``count`` distinct segment indices of ``n_segments`` (all when count >= n),
    sorted: a pure function of the round's seed (the hash of the block holding the
    round's last submission, unknown to every worker while it trains) and the worker,
    so every verifier draws the same segments and the worker can tell which ones."""
    n, count = int(n_segments), int(count)
    if count >= n:
        return list(range(n))
    # Rank every segment by a keyed hash and keep the smallest: sampling without
    # replacement with no modulo bias and no dependence on a library's RNG.
    prefix = DRAW_DOMAIN + bytes(seed) + f"|{int(job)}|{int(round_)}|{worker.lower()}|".encode()
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(prefix + str(i).encode()).digest())
    return sorted(ranked[:count])


# --------------------------------------------------------------------------- comparing


def replay_distance(start: TrainState, published: TrainState, replayed: TrainState) -> float:
    """How far a replay lands from the published end of its segment, relative to the
    segment's own movement: max over parameters and both moments of
    ||replayed - published|| / ||published - start||. Scale-free, so one tolerance
    serves every model size, learning rate and segment length. Moments are compared
    whenever the published end has them (every snapshot; not the final checkpoint),
    so a snapshot with forged moments fails the segment that ends in it. 0/0 is 0
    (nothing moved, nothing differs); x/0 is infinite."""
    from node.verification.merge import update_norm

    pairs = [(published.params, replayed.params, start.params)]
    if published.exp_avg is not None:
        zero = {k: np.zeros_like(v) for k, v in published.params.items()}
        pairs.append((published.exp_avg, replayed.exp_avg, start.exp_avg or zero))
        pairs.append((published.exp_avg_sq, replayed.exp_avg_sq, start.exp_avg_sq or zero))
    worst = 0.0
    for pub, rep, st in pairs:
        if set(rep) != set(pub):
            return float("inf")
        off = update_norm(rep, pub)
        moved = update_norm(pub, st)
        rel = 0.0 if off == 0 else (off / moved if moved > 0 else float("inf"))
        if not rel == rel:           # NaN: a replay that blew up
            return float("inf")
        worst = max(worst, rel)
    return worst
