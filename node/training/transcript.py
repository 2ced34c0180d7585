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
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ledger.store import checkpoint
from ledger import safejson
from ledger.store.cid import parse_cid
from ledger.digest import from_hex, to_hex
from ledger.protocol.jobconfig import canonical_json

MANIFEST_KEY = "transcript"
SNAPSHOT_KIND = "snapshot"
GROUPS = ("param", "exp_avg", "exp_avg_sq")
# A snapshot stores bfloat16 bit patterns (safetensors U16): the parameters as their
# difference from the round's parent, both moments as they are. 6 bytes a parameter
# against a float32 checkpoint's 4: a snapshot is 1.5 checkpoints' worth.
SNAPSHOT_ENCODING = "bf16/1"
SNAPSHOT_GROUPS = ("param_delta", "exp_avg", "exp_avg_sq")
DRAW_DOMAIN = b"training-ledger/segments/1"


class TranscriptError(ValueError):
    """A manifest or snapshot that does not describe this contribution's training."""


@dataclass
class TrainState:
    """The whole training state at a step boundary. ``exp_avg`` / ``exp_avg_sq`` are
    None at step 0: a fresh optimizer, as every round starts.

    ``delta`` is set on a *compact* state (``compact``): the bfloat16 bits of the
    parameters' difference from the round's parent, which ``params`` equals exactly
    (parent + delta); its moments are bfloat16 values too. A worker continues training
    from the compact state at every snapshot boundary, so the stored snapshot is
    exactly the state its next segment started from."""

    step: int
    params: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray] | None = None
    exp_avg_sq: dict[str, np.ndarray] | None = None
    delta: dict[str, np.ndarray] | None = None

    @classmethod
    def fresh(cls, params: Mapping[str, np.ndarray]) -> "TrainState":
        return cls(0, {k: np.array(v, copy=True) for k, v in params.items()})


# --------------------------------------------------------------------------- bfloat16


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the bits of the nearest bfloat16 (ties to even), as uint16. Integer
    arithmetic on the float's bits: the same result on every machine."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def compact(state: TrainState, origin: Mapping[str, np.ndarray]) -> TrainState:
    """The state rounded to what a snapshot stores: parameters ``origin + bf16(params -
    origin)`` (float32 addition, exactly rounded everywhere), moments to bfloat16."""
    if state.exp_avg is None or state.exp_avg_sq is None:
        raise ValueError("a snapshot needs the optimizer moments")
    delta = {k: bf16_bits(np.asarray(v, dtype=np.float32) - origin[k]) for k, v in state.params.items()}
    params = {k: (origin[k] + from_bf16(d)).astype(np.float32) for k, d in delta.items()}
    m = {k: from_bf16(bf16_bits(v)) for k, v in state.exp_avg.items()}
    v2 = {k: from_bf16(bf16_bits(v)) for k, v in state.exp_avg_sq.items()}
    return TrainState(state.step, params, m, v2, delta)


def rounding_slack(state: TrainState) -> tuple[dict, dict, dict] | None:
    """How far, element by element, a compact state may lie from the unrounded state it
    was made from: a bfloat16 ulp of each stored value, plus a float32 ulp of each
    parameter (the addition to the parent). None for an exact state."""
    if state.delta is None:
        return None
    def ulp16(a):
        return np.spacing(np.abs(a)).astype(np.float64) * 65536.0
    p = {k: ulp16(from_bf16(d)) + np.spacing(np.abs(state.params[k])).astype(np.float64)
         for k, d in state.delta.items()}
    if state.exp_avg is None:     # an end of training without moments (node.training.compress)
        return p, None, None
    return p, {k: ulp16(v) for k, v in state.exp_avg.items()}, {k: ulp16(v) for k, v in state.exp_avg_sq.items()}


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
    # DP jobs: one noise-seed item per segment (node.training.dp.seed_items), ``step`` holding the
    # segment's index. Committed at training time, handed only to the drawn segments' verifiers.
    dp_seeds: tuple[SnapshotRef, ...] = ()

    def to_json(self) -> str:
        d = {"segment_steps": self.segment_steps, "snapshots": [_ref_json(s) for s in self.snapshots]}
        for key, refs in (("windows", self.windows), ("dp_seeds", self.dp_seeds)):
            if refs:
                d[key] = [{**_ref_json(w), "segment": w.step} for w in refs]
                for w in d[key]:
                    del w["step"]
        return canonical_json(d).decode()


def _ref_json(s: SnapshotRef) -> dict:
    return {"step": s.step, "digest": to_hex(s.digest), "cid": s.cid, "size": s.size}


def build_manifest(segment_steps: int, snapshots: list[tuple[int, bytes]], import_options,
                   windows: list[tuple[int, bytes]] = (), dp_seeds: list[tuple[int, bytes]] = (),
                   cid_of=None) -> Manifest:
    """The manifest of encoded snapshots (step, bytes), window bundles and DP noise-seed
    items (segment, bytes): each one's digest, size and the CID a store with
    ``import_options`` gives it, computed here without storing it (``cid_of(bytes)``:
    the store's own, where it stores other bytes than it is given: a private job's)."""
    from ledger.store.cid import cid_of_bytes
    from ledger.digest import sha256_bytes

    cid_of = cid_of or (lambda blob: cid_of_bytes(blob, import_options).cid)

    def refs(items):
        return tuple(SnapshotRef(k, sha256_bytes(blob), cid_of(blob), len(blob)) for k, blob in items)

    return Manifest(int(segment_steps), refs(snapshots), refs(windows), refs(dp_seeds))


def segment_bounds(steps: int, segment_steps: int) -> list[tuple[int, int]]:
    """[(start, end), ...] covering ``range(steps)``; the last segment may be shorter."""
    steps, k = int(steps), int(segment_steps)
    if steps < 1 or k < 1:
        raise ValueError(f"steps and segment_steps must be >= 1, got {steps} and {k}")
    return [(a, min(a + k, steps)) for a in range(0, steps, k)]


def snapshot_cap(policy) -> int:
    """The largest snapshot (or window bundle) a verifier fetches: a snapshot is 1.5
    checkpoints' worth plus its header, so twice the checkpoint cap."""
    return 2 * int(policy.max_checkpoint_bytes)


def segment_snapshot_steps(steps: int, segment_steps: int, segment: int) -> list[int]:
    """The snapshot steps segment ``segment`` starts and ends at (segment 0 starts at the
    parent, the last ends at the checkpoint: those are not snapshots)."""
    inner = inner_boundaries(steps, segment_steps)
    return [inner[b - 1] for b in (segment, segment + 1) if 1 <= b <= len(inner)]


def inner_boundaries(steps: int, segment_steps: int) -> list[int]:
    """The steps at which a worker snapshots: every segment end except the last."""
    return [end for _, end in segment_bounds(steps, segment_steps)[:-1]]


def read_manifest(meta: Mapping[str, str], *, steps: int, segment_steps: int, max_size: int,
                  private: bool = False, dp: bool | None = None) -> Manifest:
    """Parse and check a checkpoint's manifest against the job's schedule (and, for a
    private-data job, its window bundles; for a DP job, its noise-seed items: one per
    segment, in order; ``dp`` None: not checked, for callers that only look up snapshots)."""
    raw = meta.get(MANIFEST_KEY)
    if raw is None:
        raise TranscriptError("the checkpoint commits to no training transcript")
    try:
        d = safejson.loads(raw, what="the manifest")
        k = d["segment_steps"]
        refs = d["snapshots"]
        if not isinstance(k, int) or not isinstance(refs, list):
            raise TypeError("wrong field types")
        snaps = tuple(_ref(s, max_size) for s in refs)
        wins = d.get("windows", [])
        if not isinstance(wins, list) or not all(isinstance(w, dict) for w in wins):
            raise TypeError("windows must be a list of entries")
        windows = tuple(_ref({**w, "step": w.get("segment")}, max_size) for w in wins)
        seeds = d.get("dp_seeds", [])
        if not isinstance(seeds, list) or not all(isinstance(w, dict) for w in seeds):
            raise TypeError("dp_seeds must be a list of entries")
        dp_seeds = tuple(_ref({**w, "step": w.get("segment")}, max_size) for w in seeds)
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
    if dp and [w.step for w in dp_seeds] != list(range(n)):
        raise TranscriptError(f"the transcript commits to noise seeds of segments {[w.step for w in dp_seeds]}, "
                              f"a DP job needs them for each of its {n} segments")
    if dp is False and dp_seeds:
        raise TranscriptError("the transcript commits to noise seeds, but the job trains without DP")
    return Manifest(k, snaps, windows, dp_seeds)


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


def encode_snapshot(state: TrainState, meta: Mapping[str, str], origin: Mapping[str, np.ndarray]) -> bytes:
    """A snapshot's bytes: the compact state (``compact`` against ``origin``, the round's
    parent, unless the state is compact already) as bfloat16 bits."""
    cs = state if state.delta is not None else compact(state, origin)
    tensors = {}
    for group, d in zip(SNAPSHOT_GROUPS, (cs.delta, {k: bf16_bits(v) for k, v in cs.exp_avg.items()},
                                          {k: bf16_bits(v) for k, v in cs.exp_avg_sq.items()})):
        tensors.update({f"{group}/{k}": v for k, v in d.items()})
    return checkpoint.encode(tensors, {**meta, "step": str(int(cs.step)), "encoding": SNAPSHOT_ENCODING})


def decode_snapshot(data: bytes, *, cid: str, expect_meta: Mapping[str, str],
                    like: Mapping[str, np.ndarray], max_size: int) -> TrainState:
    """Strictly decode a snapshot whose bytes already matched their committed digest:
    its metadata must be ``expect_meta``, each group must have ``like``'s names and
    shapes (bfloat16 bits), all finite; ``like`` is the round's parent, which the
    parameter differences are added to."""
    try:
        tensors, meta = checkpoint.decode(data, cid=cid, max_size=max_size)
    except ValueError as e:   # CheckpointFormatError included
        raise TranscriptError(f"snapshot {cid} is not a valid snapshot: {e}") from None
    for key, want in {**expect_meta, "encoding": SNAPSHOT_ENCODING}.items():
        if meta.get(key, "").lower() != str(want).lower():
            raise TranscriptError(f"snapshot {cid} declares {key} {meta.get(key)!r}, expected {want!r}")
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in SNAPSHOT_GROUPS}
    for name, t in tensors.items():
        g, _, rest = name.partition("/")
        if g not in groups:
            raise TranscriptError(f"snapshot {cid} has an unexpected tensor {name!r}")
        groups[g][rest] = t
    values = {}
    for g, d in groups.items():
        if set(d) != set(like):
            raise TranscriptError(f"snapshot {cid}: the {g} tensors do not match the model's")
        for name, ref in like.items():
            t = d[name]
            if t.shape != ref.shape or t.dtype != np.uint16:
                raise TranscriptError(f"snapshot {cid}: {g}/{name} is {t.dtype}{list(t.shape)}, "
                                      f"expected bfloat16 bits (uint16){list(ref.shape)}")
            f = from_bf16(t)
            if not np.isfinite(f).all():
                raise TranscriptError(f"snapshot {cid}: {g}/{name} has NaN/Inf values")
            values[(g, name)] = f
    params = {n: (np.asarray(like[n], dtype=np.float32) + values[("param_delta", n)]).astype(np.float32) for n in like}
    if not all(np.isfinite(v).all() for v in params.values()):
        raise TranscriptError(f"snapshot {cid}: parameters overflow when added to the parent")
    return TrainState(int(expect_meta["step"]), params, {n: values[("exp_avg", n)] for n in like},
                      {n: values[("exp_avg_sq", n)] for n in like}, dict(groups["param_delta"]))


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
    (nothing moved, nothing differs); x/0 is infinite.

    A compact (bfloat16) published end is compared with the slack its rounding
    explains: each element's difference counts only beyond ``rounding_slack``, so an
    honest replay lands exactly as close as it would to the unrounded state; a forged
    end gains at most that slack (a bfloat16 ulp of each stored value)."""
    from node.verification.merge import exact_sum_of_squares

    slack = rounding_slack(published)
    pairs = [(published.params, replayed.params, start.params, slack[0] if slack else None)]
    if published.exp_avg is not None:
        zero = {k: np.zeros_like(v) for k, v in published.params.items()}
        pairs.append((published.exp_avg, replayed.exp_avg, start.exp_avg or zero, slack[1] if slack else None))
        pairs.append((published.exp_avg_sq, replayed.exp_avg_sq, start.exp_avg_sq or zero, slack[2] if slack else None))
    worst = 0.0
    for pub, rep, st, sl in pairs:
        if rep is None or set(rep) != set(pub):
            return float("inf")
        def beyond(k):
            d = np.abs(np.asarray(rep[k], dtype=np.float64) - np.asarray(pub[k], dtype=np.float64))
            return d if sl is None else np.maximum(d - sl[k], 0.0)
        off = math.sqrt(exact_sum_of_squares(beyond(k) for k in sorted(pub)))
        moved = math.sqrt(exact_sum_of_squares(np.asarray(pub[k], dtype=np.float64) - np.asarray(st[k], dtype=np.float64)
                                               for k in sorted(pub)))
        rel = 0.0 if off == 0 else (off / moved if moved > 0 else float("inf"))
        if not rel == rel:           # NaN: a replay that blew up
            return float("inf")
        worst = max(worst, rel)
    return worst
