"""A stand-in for sealing: a DP worker's secret items read from storage in the clear.

``RoundContext.unsealed(worker)`` is meant to give a verifier what the worker
encrypted to it after the draw (``Worker.secret_items``). Until that layer is merged,
the worker stores those items in plain text after the draw (``Worker._reveal``) and
this module finds them by the CIDs its manifest committed to: the same dict, so the
sealing layer replaces this module without touching the replay.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ledger import checkpoint
from ledger.errors import StorageUnreachable

from node.training import dp as dpmod
from node.training import transcript as tx


def unsealed_in_clear(ctx, round_: int, submissions, replay_seed: bytes) -> Callable[[str], Mapping[str, bytes]]:
    """``unsealed`` for round ``round_``: worker -> {item name: bytes} of its drawn
    segments' items that storage serves (a missing one is absent: DP_SEEDS)."""
    cfg = ctx.config
    cap = tx.snapshot_cap(cfg.policy)
    n = len(tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps))
    by_worker = {s.worker.lower(): s for s in submissions}
    cache: dict[str, dict[str, bytes]] = {}

    def items(worker: str) -> Mapping[str, bytes]:
        if worker in cache:
            return cache[worker]
        out: dict[str, bytes] = {}
        s = by_worker.get(worker)
        try:
            raw = ctx.store.get(s.cid, s.digest, max_size=cfg.policy.max_checkpoint_bytes)
            m = tx.read_manifest(checkpoint.read_meta(raw, max_size=cfg.policy.max_checkpoint_bytes),
                                 steps=cfg.train.steps, segment_steps=cfg.policy.segment_steps, max_size=cap)
            for seg in tx.draw_segments(replay_seed, ctx.job_id, round_, worker, n, cfg.policy.replay_segments):
                if seg < len(m.dp_seeds):
                    ref = m.dp_seeds[seg]
                    try:
                        out[dpmod.item_name(seg)] = ctx.store.get(ref.cid, ref.digest, max_size=cap)
                    except StorageUnreachable:
                        raise
                    except Exception:  # noqa: BLE001 - not served: the replay records DP_SEEDS
                        pass
        except StorageUnreachable:
            raise
        except Exception:  # noqa: BLE001 - hostile or missing checkpoint: the pipeline judges it
            pass
        cache[worker] = out
        return out

    return items
