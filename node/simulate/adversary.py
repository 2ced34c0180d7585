"""Byzantine workers, for the tests and the robustness benchmark.

Each attack is a real worker process (``python -m node.simulate.adversary --attack NAME``)
that follows the protocol on chain but publishes a malicious contribution, so the
aggregators meet it exactly as they would meet a real attacker. The tensor attacks
are plain functions of (parent, honest result) so the benchmark can also apply
them without a chain.

Attacks:
  tamper       content that differs from its on-chain digest      -> integrity
  stale-parent trained from, and declaring, another parent          -> lineage
  nan          NaN / Inf values                                    -> non-finite
  scale        the honest update scaled x100                       -> update-norm
  sign-flip    the honest update negated                           -> robust rules / validation
  noise        the update replaced by Gaussian noise, 10x its size -> update-norm / validation
  shape        a tensor with another shape                         -> structure
  pickle       a Python pickle instead of safetensors              -> format
  copy         a copy of another worker's checkpoint this round    -> lineage (it names the original)

Training that did not happen as declared, behind a transcript (node.training.transcript):
  wrong-seed   honest-looking training from another data order       -> replay
  other-shard  honest training on another worker's shard             -> replay
  lazy         half the declared steps in every segment              -> replay
  free-rider   the parent plus small noise, a straight-line transcript -> replay
  replay-old   its previous round's update again (round 1: honest)   -> replay
  forge        honest final tensors, interpolated snapshots          -> replay
  tamper-snapshot  honest, but one committed snapshot altered by 1%  -> replay, when a segment
               touching it is drawn (2 of the round's segments)

Private data (jobs created with --data-root; node.training.privdata):
  other-data   trains on other text of the same length than it committed to, reveals the
               committed text's windows                                  -> replay
  bad-proof    honest training; every window bundle carries one altered byte (committed in
               the manifest as is), so its chunks do not prove against the root -> windows-proof
  nested-bundle  honest training; every window bundle is JSON nested 100,000 deep (committed
               in the manifest as is, so its digest matches). Parsed naively after eth_account
               raised the recursion limit it would segfault each verifier and auditor that
               opens it; it is refused before parsing                      -> windows-proof

  garble-one   honest training and reveal, but the sealed reveal's key slot of one of its
               readers (the first aggregator in address order) is garbage: that reader says -> sealed,
               the others accept; the committee's (or the quorum's) majority decides

DP jobs (created with --dp-epsilon; node.training.dp), honest seeds committed and revealed:
  dp-no-clip   trains without clipping the per-window gradients   -> replay
  dp-half-noise  trains with half the committed noise            -> replay

Compressed contributions (jobs created with --compress; node.training.compress):
  bad-compress honest training and transcript, but the submitted payload compresses three times
               its end of training (its next error feedback committed to match) -> compression

After the draw (any job that reveals: drawn snapshots by default, private windows):
  withhold     honest, but never reveals what the draw asks: its drawn snapshots
               (-> transcript-unrevealed) and, for private data, windows (-> windows-unrevealed)
  silent       honest, stores what the draw asks, but never discloses it on chain: whoever
               holds its key may (a test disclosing at a chosen second); else -> unrevealed
"""

from __future__ import annotations

import argparse
import logging
import pickle
import sys
import time

from dataclasses import replace

import numpy as np

from ledger.store import checkpoint
from ledger import safejson
from ledger.digest import sha256_bytes, to_hex

from node.training import train as trainmod
from node.training.transcript import TrainState
from node.roles.worker import Worker, WorkerOptions

log = logging.getLogger("ledger.adversary")

TRANSCRIPT_ATTACKS = ("other-shard", "lazy", "free-rider", "replay-old", "forge", "tamper-snapshot")
PRIVATE_ATTACKS = ("other-data", "bad-proof", "nested-bundle", "garble-one")
NESTED_BUNDLE = b"[" * 100_000 + b"]" * 100_000
REVEAL_ATTACKS = ("withhold", "silent")
DP_ATTACKS = ("dp-no-clip", "dp-half-noise")
COMPRESS_ATTACKS = ("bad-compress",)
ATTACKS = ("tamper", "stale-parent", "nan", "scale", "sign-flip", "noise", "shape", "pickle", "copy",
           "wrong-seed") + TRANSCRIPT_ATTACKS + PRIVATE_ATTACKS + REVEAL_ATTACKS + DP_ATTACKS + COMPRESS_ATTACKS
TENSOR_ATTACKS = ("nan", "scale", "sign-flip", "noise", "shape")


def attack_params(name: str, parent: dict, honest: dict, seed: int = 0) -> dict:
    """The malicious tensors for a tensor-level attack."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(parent):
        p = parent[k].astype(np.float64)
        d = honest[k].astype(np.float64) - p
        if name == "scale":
            v = p + 100.0 * d
        elif name == "sign-flip":
            v = p - d
        elif name == "noise":
            std = float(d.std()) or 1e-3
            v = p + rng.normal(0.0, 10.0 * std, size=p.shape)
        else:
            v = honest[k].astype(np.float64)
        out[k] = v.astype(parent[k].dtype)
    if name == "nan":
        first = sorted(out)[0]
        out[first] = out[first].copy()
        out[first].flat[0] = np.nan
        out[first].flat[-1] = np.inf
    elif name == "shape":
        first = sorted(out)[0]
        out[first] = np.ascontiguousarray(out[first].reshape(-1)[:-1])
    return out


class Adversary(Worker):
    """A worker that submits a malicious contribution in every round."""

    def __init__(self, *args, attack: str, **kwargs):
        super().__init__(*args, **kwargs)
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; one of {ATTACKS}")
        self.attack = attack

    def training(self, r: int, params, shard: bytes, seed: int, progress, dp=None) -> trainmod.TrainResult:
        """The transcript attacks: a round that was not trained as declared, published
        through the honest worker's own publishing and submission code."""
        if self.attack in DP_ATTACKS and dp is not None:
            # the committed seeds, the wrong mechanism
            dp = (replace(dp, clip_norm=None) if self.attack == "dp-no-clip"
                  else replace(dp, noise_std=dp.noise_std / 2))
            log.info("round %d: attack %s trains", r, self.attack)
        if self.attack == "other-data":
            w = self.ctx.config.model.token_bytes   # other text, same length: the same windows' offsets, other tokens
            shard = b"".join(shard[i:i + w] for i in range(len(shard) - w, -1, -w))
            log.info("round %d: attack other-data trains on text it did not commit to", r)
        if self.attack not in TRANSCRIPT_ATTACKS:
            return super().training(r, params, shard, seed, progress, dp=dp)
        ctx, cfg, a = self.ctx, self.ctx.config, self.attack
        k = cfg.policy.segment_steps
        if a == "other-shard":
            shard = ctx.shard((self.index + 1) % len(ctx.info.workers))
        if a == "lazy":
            # half the steps of every segment, snapshots labelled as if each were whole
            res = trainmod.train_local(ctx.model, replace(cfg.train, steps=max(1, cfg.train.steps // 2)), params,
                                       shard, seed, segment_steps=max(1, k // 2), dp=dp)
            res.snapshots = [replace(s, step=s.step * 2) for s in res.snapshots]
            res.metrics["steps"], res.metrics["samples"] = cfg.train.steps, trainmod.num_samples(cfg.train)
            return res
        res = super().training(r, params, shard, seed, progress, dp=dp)
        if a == "free-rider":
            rng = np.random.default_rng(r)
            res.params = {n: (v + 1e-3 * rng.standard_normal(v.shape)).astype(np.float32) for n, v in params.items()}
            res.snapshots = _line(params, res.params, res.snapshots, cfg.train.steps)
        elif a == "forge":
            res.snapshots = _line(params, res.params, res.snapshots, cfg.train.steps)
        elif a == "replay-old":
            old, self._old = getattr(self, "_old", None), (params, res.params, res.snapshots)
            if old is not None:               # last round's update and transcript, on this round's parent
                old_parent, old_params, old_snaps = old
                res.params = {n: (params[n] + (old_params[n].astype(np.float64) - old_parent[n])).astype(np.float32)
                              for n in params}
                res.snapshots = old_snaps
        elif a == "tamper-snapshot" and res.snapshots:
            i = len(res.snapshots) // 2
            s = res.snapshots[i]
            res.snapshots[i] = replace(s, params={n: v * np.float32(1.01) for n, v in s.params.items()}, delta=None)
        log.info("round %d: attack %s trained", r, a)
        return res

    def compressed(self, bits, ef_in):
        if self.attack != "bad-compress":
            return super().compressed(bits, ef_in)
        from node.training.transcript import bf16_bits, from_bf16

        log.info("attack bad-compress: the payload compresses 3x the end of training")
        return super().compressed({n: bf16_bits(from_bf16(b) * np.float32(3)) for n, b in bits.items()}, ef_in)

    def window_bundles(self, r: int, parent: bytes, seed: int) -> list[tuple[int, bytes]]:
        bundles = super().window_bundles(r, parent, seed)
        if self.attack == "nested-bundle":
            return [(seg, NESTED_BUNDLE) for seg, _ in bundles]
        if self.attack != "bad-proof":
            return bundles
        import json

        from ledger.protocol.jobconfig import canonical_json

        out = []
        for seg, blob in bundles:
            d = safejson.loads(blob)
            i, h = d["chunks"][0]
            d["chunks"][0] = [i, bytes([bytes.fromhex(h)[0] ^ 0x20]).hex() + h[2:]]
            out.append((seg, canonical_json(d)))
        return out

    def _reveal_due(self) -> None:
        if self.attack != "withhold":
            super()._reveal_due()

    def _pending_reveals(self):
        return [] if self.attack == "withhold" else super()._pending_reveals()

    def _disclose(self, r: int, sealed=None) -> bool:
        if self.attack == "silent":
            log.info("round %d: attack silent stores its drawn artifacts and does not disclose them", r)
            return True
        return super()._disclose(r, sealed)

    def seal(self, items, readers, binding) -> bytes:
        blob = super().seal(items, readers, binding)
        if self.attack != "garble-one":
            return blob
        from ledger.privacy import sealing

        _, slots, _, _ = sealing._parse(blob)
        aggregators = {a.lower() for a in self.ctx.info.aggregators}
        victim, slot = next((a, sl) for a, sl in slots if a.lower() in aggregators)
        at = blob.index(slot)
        log.info("round: attack garble-one hands %s a key slot that does not open", victim)
        return blob[:at + 65] + bytes(b ^ 0x5A for b in blob[at + 65:at + len(slot)]) + blob[at + len(slot):]

    def work_round(self, r: int, parent: bytes) -> bool:
        ctx = self.ctx
        if self.attack in TRANSCRIPT_ATTACKS + PRIVATE_ATTACKS + REVEAL_ATTACKS + DP_ATTACKS + COMPRESS_ATTACKS:
            return super().work_round(r, parent)
        if self.attack == "copy":
            return self._copy(r, parent)
        if self.attack == "wrong-seed":
            self._seed_offset = 1
        honest, n, snaps, _ = self._train(r, parent)
        for step, blob in snaps:      # the transcript is published; the attack is elsewhere
            ctx.store.put(blob)
        digest = None
        if self.attack == "tamper":
            data = honest
            digest = sha256_bytes(honest + b"tampered")   # the chain gets a digest the content does not have
        elif self.attack == "pickle":
            params, _ = checkpoint.decode(honest)
            data = pickle.dumps({k: v.tolist()[:2] for k, v in params.items()})
        elif self.attack == "wrong-seed":
            data = honest
        elif self.attack == "stale-parent":
            params, meta = checkpoint.decode(honest)
            meta["parent"] = to_hex(sha256_bytes(b"some older model"))
            data = checkpoint.encode(params, meta)
        else:
            params, meta = checkpoint.decode(honest)
            parent_params, _ = ctx.load_checkpoint(ctx.locate_model(parent, before_round=r))
            data = checkpoint.encode(attack_params(self.attack, parent_params, params, seed=r), meta)
        obj = ctx.store.put(data)
        log.info("round %d: attack %s published %s", r, self.attack, obj.cid)
        ctx.ledger.submit_update(ctx.job_id, r, parent, digest or obj.digest, obj.cid, obj.size, n)
        log.info("round %d: attack %s submitted", r, self.attack)
        return True

    def _copy(self, r: int, parent: bytes) -> bool:
        """Wait for another worker's submission in this round and submit its bytes as ours."""
        ctx = self.ctx
        while True:
            subs = [s for s in ctx.ledger.submissions(ctx.job_id, r) if s.worker.lower() != self.address.lower()]
            if subs:
                s = subs[0]
                ctx.ledger.submit_update(ctx.job_id, r, parent, s.digest, s.cid, s.size, s.num_samples)
                log.info("round %d: attack copy submitted %s's checkpoint", r, s.worker)
                return True
            time.sleep(self.opt.poll)


def _line(start: dict, end: dict, like: list[TrainState], steps: int) -> list[TrainState]:
    """A forged transcript: states on the straight line from ``start`` to ``end``, the
    moments of the honest snapshots ``like`` kept so only the path is a lie."""
    out = []
    for s in like:
        t = s.step / steps
        out.append(TrainState(s.step, {n: ((1 - t) * start[n].astype(np.float64) + t * end[n]).astype(np.float32)
                                       for n in start}, s.exp_avg, s.exp_avg_sq))
    return out


def main(argv=None) -> int:
    from ledger.ethereum.party import open_party, setup_logging
    from ledger.config import load_settings
    from ledger.protocol.datacommit import read_text_data

    from node.context import JobContext

    ap = argparse.ArgumentParser(description="a Byzantine worker (tests and benchmarks only)")
    ap.add_argument("--job", type=int, required=True)
    ap.add_argument("--attack", choices=ATTACKS, required=True)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--data", default=None, help="private-data jobs: the text this worker committed to")
    args = ap.parse_args(argv)
    setup_logging()
    settings = load_settings({})
    ledger, store, account = open_party(settings)
    ctx = JobContext.load(ledger, store, args.job)
    adv = Adversary(ctx, account.address, settings.data_dir / "adversary",
                    WorkerOptions(poll=args.poll, progress=False, max_rounds=args.rounds), attack=args.attack,
                    data=read_text_data(args.data) if args.data else None)
    adv.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
