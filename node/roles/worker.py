"""The worker: for each open round, fetch and check the parent, train on its own
shard, publish the checkpoint and its training transcript, submit its digest on chain.

The transcript (``node.training.transcript``) is the whole training state every
``policy.segment_steps`` steps; the checkpoint's metadata lists each snapshot's
digest and CID, so the one on-chain digest commits to all of them. Snapshots are
published with the checkpoint, before the submission: a verifier can replay any
segment at any time later without the worker being online.

Private-data jobs (``node.training.privdata``): the worker trains on its own text, whose
commitment is in the job config, and builds one window bundle per segment (the
chunks the segment's windows read, with their Merkle proofs), committed in the
manifest but kept on disk. Once its round closes it computes the verifiers' draw
and stores exactly the drawn bundles (the *reveal*), then moves on; the state
file records the reveal, so a restart reveals what is still due.

Crash-safe by construction: the chain says what was submitted (``hasSubmitted``),
and local state (``<data>/worker/chain-C/<contract>/job-J/<address>/round-R.json``
plus the checkpoint and snapshot files: keyed by deployment, since job ids restart on
every one) is written atomically after each step, so a restart after kill -9 at any
point resumes without training twice after a finished checkpoint and without ever
submitting twice. Nothing is submitted that the worker's own store does not serve at
that moment: what it lost is put again from the local files (or trained again).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ledger import atomic
from ledger.store import checkpoint
from ledger.monitor import metrics
from ledger.ethereum.chain import tx_hash_of
from ledger.protocol import datacommit as dc
from ledger.digest import from_hex, sha256_bytes, to_hex
from ledger.errors import ContractReverted, LedgerError
from ledger.units import eth
from ledger.services.procs import hold_lock

from node.training import dp as dpmod
from node.training import privdata
from node.training import train as trainmod
from node.training import transcript as tx
from node.simulate.faults import crash_point
from node.context import JobContext, Located, contribution_meta

log = logging.getLogger("ledger.worker")


@dataclass
class WorkerOptions:
    poll: float = 1.0
    progress: bool = True
    max_rounds: int | None = None     # stop after submitting this many rounds (tests, demos)
    threads: int | None = None        # torch threads (default: the job's); verifiers tolerate any
    device: str = "cpu"               # cpu or cuda: the transcript is the same, verifiers replay on CPU
    relay: str | None = None          # a relay's URL (`ledger relay run`): submit through its batch
    relay_fallback: float = 10.0      # seconds before the deadline to submit directly if the batch has not landed
    nproc: int = 1                    # data-parallel training processes (node.training.distributed)


class Worker:
    def __init__(self, ctx: JobContext, address: str, state_dir: Path, options: WorkerOptions | None = None,
                 data: bytes | None = None):
        self.ctx = ctx
        self.address = address
        self.index = ctx.worker_index(address)
        self.dir = ctx.state_dir(state_dir, address)
        self.opt = options or WorkerOptions()
        self.private = ctx.config.data.private
        # what is stored only once the draw is known: drawn snapshots, drawn window bundles
        self.reveals = ctx.config.discloses
        self._dp_secret: bytes | None = None     # the DP noise secret of the round being trained
        self.data = self._checked_data(data)
        if self.opt.nproc > 1:
            from node.training.distributed import check_nproc

            check_nproc(ctx.config, self.opt.nproc)

    def _checked_data(self, data: bytes | None) -> bytes | None:
        """The worker's own text, if the job trains on private data: exactly what it committed to."""
        job = self.ctx.job_id
        if not self.private:
            if data is not None:
                raise LedgerError(f"job {job} trains on shards of the bundled corpus; --data is for jobs created "
                                  f"with --data-root")
            return None
        if data is None:
            raise LedgerError(f"job {job} trains on private data: give this worker's text with --data PATH")
        if not self.ctx.config.seals:
            # a worker guards its own text: a job whose config names no verifier keys would
            # have it reveal drawn windows in clear, in public storage, forever
            raise LedgerError(f"job {job} names no public keys of its verifiers, so this worker's drawn windows "
                              f"could not be sealed to them: refusing to train on private data in it")
        root, n = self.ctx.data_root(self.index)
        data = self.ctx.model.stream(data) if data and self.ctx.config.model.token_bytes > 1 else data
        got = dc.commit(data) if data else None
        if got is None or got.root != root or got.length != n:
            have = f"{to_hex(got.root)} ({got.length} bytes)" if got else "nothing (empty data)"
            raise LedgerError(f"--data has root {have} but job {job} committed worker {self.address} to root "
                              f"{to_hex(root)} ({n} bytes): point --data at the text you committed"
                              + (" (tokenized with the job's tokenizer)" if self.ctx.config.model.token_bytes > 1 else ""))
        return bytes(data)

    # --- main loop -------------------------------------------------------------------
    def run(self) -> int:
        """Work every round until the job completes, riding out chain and storage outages.
        Returns the number of rounds submitted (since the last outage). One process per
        worker and job: a second one is refused (``AlreadyRunning``, naming the first's pid)."""
        ctx = self.ctx
        self._lock = hold_lock(self.dir / "lock", f"worker {self.address} on job {ctx.job_id} of contract "
                                                  f"{ctx.ledger.address} (chain {ctx.ledger.chain_id})")
        return ctx.ride_out(self._loop, log)

    def _loop(self) -> int:
        ctx, submitted, announced = self.ctx, 0, None
        log.info("worker %s on job %d (shard %d)", self.address, ctx.job_id, self.index)
        while True:
            info = ctx.refresh()
            self._reveal_due()
            if info.completed:
                log.info("job %d is complete; worker exits", ctx.job_id)
                return submitted
            r = info.current_round
            standing = self._standing(info, r, announced)
            if standing == "left":
                log.info("this worker left job %d; worker exits", ctx.job_id)
                return submitted
            if standing != "active":
                announced = (r, standing)
                ctx.wait(self.opt.poll)
                continue
            rd = ctx.ledger.round(ctx.job_id, r)
            if ctx.ledger.has_submitted(ctx.job_id, r, self.address):
                self._forget_older(r)
                if announced != r:
                    self._keep_served(r)
                    log.info("round %d: submitted; waiting for the round to finalize", r)
                    announced = r
                # a reveal still due waits for the deadline too (a round can close on it, eventless)
                due = self.reveals and bool(self._pending_reveals())
                # waiting for the block that seeds the draw: look again at the next block
                until = time.time() if getattr(self, "_draw_waiting", None) else rd.deadline + 1
                ctx.wait(self.opt.poll, until=until if due else None)
                continue
            if ctx.round_closed(rd):
                if announced != (r, "late"):
                    log.warning("round %d closed at its deadline before this worker submitted (late); waiting for round %d", r, r + 1)
                    announced = (r, "late")
                ctx.wait(self.opt.poll)
                continue
            if self.work_round(r, rd.parent):
                submitted += 1
                metrics.round_done()
                if self.opt.max_rounds is not None and submitted >= self.opt.max_rounds:
                    self._finish_reveals()
                    return submitted

    def _standing(self, info, r: int, announced) -> str:
        """This worker's standing in the job (``TrainingLedger.worker_state``), said once."""
        if not (info.worker_stake or info.is_open):
            return "active"
        state, _ = self.ctx.ledger.worker_state(self.ctx.job_id, self.address)
        if state == "unstaked":
            raise LedgerError(f"job {self.ctx.job_id} takes a stake of {eth(info.worker_stake)} ETH from each "
                              f"worker: post it with `ledger worker join --job {self.ctx.job_id}`, then run again")
        if state == "joined" and announced != (r, state):
            log.info("joined job %d: this worker trains from round %d on; waiting", self.ctx.job_id, r + 1)
        return state

    def work_round(self, r: int, parent: bytes) -> bool:
        """Train, publish and submit round ``r``; True if this call's submission landed."""
        ctx = self.ctx
        state_file = self.dir / f"round-{r}.json"
        state = atomic.read_json(state_file, {}) or {}
        if state.get("parent") != to_hex(parent):
            state = {}  # stale local state from another parent: start the round afresh
        ckpt_file = self.dir / f"round-{r}.safetensors"
        # "submitted" too: a rollback can erase a submission; the same bytes go again.
        if state.get("status") in ("trained", "published", "submitted") and not self._local_files_intact(r, state, ckpt_file):
            log.warning("round %d: local checkpoint or snapshots do not match their recorded digests; training again", r)
            state = {}
        if state.get("status") in ("published", "submitted") and not self._served(state):
            # Never submit what this party's store cannot serve now (a store wiped or
            # replaced since): put it again from the local files, checked above.
            log.warning("round %d: this worker's store no longer serves %s%s; publishing it again from the local files",
                        r, state.get("cid"), "" if ctx.config.policy.reveals else " or its transcript snapshots")
            state = {**state, "status": "trained"}
        if state.get("status") not in ("trained", "published", "submitted"):
            self._extras = []
            data, num_samples, snaps, bundles = self._train(r, parent)
            for (name, blob) in self._extras:        # compressed contributions: end, error feedback
                atomic.write_bytes(self._extra_file(r, name), blob)
            for (step, blob) in snaps:
                atomic.write_bytes(self._snap_file(r, step), blob)
            for (seg, blob) in bundles:
                atomic.write_bytes(self._bundle_file(r, seg), blob)
            atomic.write_bytes(ckpt_file, data)
            state = {"status": "trained", "parent": to_hex(parent), "digest": to_hex(sha256_bytes(data)),
                     "num_samples": num_samples, "size": len(data),
                     "snapshots": {str(step): to_hex(sha256_bytes(blob)) for step, blob in snaps}}
            if bundles:
                state["windows"] = {str(seg): to_hex(sha256_bytes(blob)) for seg, blob in bundles}
            if self._dp_secret is not None:
                # the round's DP noise secret: only here (never logged), for secret_items after the draw
                state["dp_secret"] = self._dp_secret.hex()
            if self._extras:
                state["extras"] = {name: to_hex(sha256_bytes(blob)) for name, blob in self._extras}
            atomic.write_json(state_file, state)
            crash_point("worker:after-train")
        if state["status"] == "trained":
            if not ctx.config.policy.reveals:
                # every snapshot now; else the drawn ones after the close
                state["snapshot_cids"] = self._publish_snapshots(r, state)
            self._publish_extras(r, state)
            obj = ctx.store.put(ckpt_file.read_bytes())
            ctx.store.pin(obj.cid)
            state.update(status="published", cid=obj.cid)
            atomic.write_json(state_file, state)
            log.info("round %d: published %s (sha256 %s, %d bytes)%s", r, obj.cid, state["digest"], obj.size,
                     f" and {len(state.get('snapshots', {}))} transcript snapshot(s)" if not ctx.config.policy.reveals
                     else f"; {len(state.get('snapshots', {}))} transcript snapshot(s) committed, the drawn ones "
                          f"revealed after the round closes")
            crash_point("worker:after-publish")
        return self._submit(r, parent, state)

    # --- steps -----------------------------------------------------------------------
    def _train(self, r: int, parent: bytes) -> tuple[bytes, int, list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """Train round ``r``: the checkpoint bytes (its metadata holds the transcript's
        manifest), the sample count, the encoded snapshots as (step, bytes) and, for
        private data, the window bundles as (segment, bytes)."""
        ctx, cfg = self.ctx, self.ctx.config
        parent_loc: Located = ctx.locate_model(parent, before_round=r)
        params, parent_meta = ctx.load_checkpoint(parent_loc)
        log.info("round %d: parent %s verified (sha256 %s)", r, parent_loc.cid, to_hex(parent))
        shard = self.data if self.private else ctx.shard(self.index)
        seed = trainmod.derive_seed(cfg.seed, ctx.job_id, r, self.address) + getattr(self, "_seed_offset", 0)
        bar = _progress_bar(cfg.train.steps, f"round {r}", enabled=self.opt.progress)

        def progress(step, total, loss):
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            crash_point(f"worker:train-step-{step}")

        dp, seed_items, self._dp_secret = None, [], None
        if cfg.dp is not None:
            # a fresh secret per training run: the noise seeds are committed below, before anything is public
            self._dp_secret = dpmod.new_secret()
            dp = dpmod.DPStep.for_worker(cfg.dp, self._dp_secret, ctx.job_id, r, self.address)
            seed_items = dpmod.seed_items(self._dp_secret, ctx.job_id, r, self.address,
                                          tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps))
        try:
            result = self.training(r, params, shard, seed, progress, dp=dp)
        finally:
            bar.close()
        m = result.metrics
        metrics.trained(m)
        log.info("round %d: trained %d steps on %s, loss %.3f -> %.3f in %.1fs",
                 r, m["steps"], m["device"], m["loss_start"], m["loss_end"], m["seconds"])
        snaps = [(s.step, tx.encode_snapshot(s, tx.snapshot_meta(ctx.job_id, r, self.address, parent, s.step), params))
                 for s in result.snapshots]
        bundles = self.window_bundles(r, parent, seed) if self.private else []
        manifest = tx.build_manifest(cfg.policy.segment_steps, snaps, ctx.store.options, cid_of=ctx.store.cid_of,
                                     windows=bundles,
                                     dp_seeds=seed_items)
        meta = contribution_meta(ctx.job_id, r, self.address, parent, seed, m, manifest)
        if cfg.compress.on:
            tensors = self._compress(r, parent, params, parent_meta, result.params, meta)
            return checkpoint.encode(tensors, meta), int(m["samples"]), snaps, bundles
        return checkpoint.encode(result.params, meta), int(m["samples"]), snaps, bundles

    def _compress(self, r: int, parent: bytes, params, parent_meta, end, meta: dict) -> dict:
        """A compressed contribution (node.training.compress): the payload; its end of
        training and next error feedback go to ``self._extras``, committed in ``meta``."""
        from node.training import compress as cz

        ctx, cfg, w = self.ctx, self.ctx.config, self.address.lower()
        bits = cz.end_bits(end, params)
        prior = cz.registry(parent_meta).get(w)
        ef_in = None
        if prior is not None:
            local = self.dir / f"ef-{to_hex(prior.digest)}.bin"
            blob = local.read_bytes() if local.exists() else b""
            if sha256_bytes(blob) != prior.digest:
                blob = ctx.store.get(prior.cid, prior.digest, max_size=tx.snapshot_cap(cfg.policy))
            ef_in = cz.decode_bits(blob, cid=prior.cid, expect_meta={"kind": cz.EF_KIND, "worker": w}, like=params,
                                   max_size=tx.snapshot_cap(cfg.policy))
        payload, ef_out = self.compressed(bits, ef_in)
        end_blob = cz.encode_bits(bits, cz.link_meta(cz.END_KIND, ctx.job_id, r, w, parent))
        ef_blob = cz.encode_bits(ef_out, cz.link_meta(cz.EF_KIND, ctx.job_id, r, w, parent))
        atomic.write_bytes(self.dir / f"ef-{to_hex(sha256_bytes(ef_blob))}.bin", ef_blob)
        self._extras = [("end", end_blob), ("ef", ef_blob)]
        meta.update(cz.refs_meta(cz.Ref.of(end_blob, ctx.store.options), cz.Ref.of(ef_blob, ctx.store.options)))
        return payload

    def compressed(self, bits, ef_in):
        """(payload, next error feedback) of the end of training (a Byzantine worker overrides this)."""
        from node.training import compress as cz

        return cz.compress(self.ctx.config.compress, bits, ef_in)

    def window_bundles(self, r: int, parent: bytes, seed: int) -> list[tuple[int, bytes]]:
        """One bundle per segment of the committed text's windows (a Byzantine worker overrides this)."""
        ctx = self.ctx
        return privdata.all_bundles(ctx.config, self.data, seed,
                                    lambda i: privdata.bundle_meta(ctx.job_id, r, self.address, parent, i))

    def training(self, r: int, params, shard: bytes, seed: int, progress, dp=None) -> trainmod.TrainResult:
        """The round's training and its transcript (a Byzantine worker overrides this);
        ``dp``: a DP job's step (``node.training.dp.DPStep``)."""
        cfg = self.ctx.config
        if self.opt.nproc > 1:
            from node.training import distributed

            return distributed.train_local(cfg, params, shard, seed, self.opt.nproc,
                                           segment_steps=cfg.policy.segment_steps, threads=self.opt.threads,
                                           artifacts=distributed.model_files(self.ctx))
        return trainmod.train_local(self.ctx.model, cfg.train, params, shard, seed, progress=progress,
                                    segment_steps=cfg.policy.segment_steps, threads=self.opt.threads,
                                    device=self.opt.device, dp=dp)

    def secret_items(self, r: int, state: dict, drawn_segments) -> dict[str, bytes]:
        """What only the drawn segments' verifiers may read, by name: for a DP job, each
        drawn segment's noise seeds (``dp-seeds-<segment>``: canonical JSON of {step: seed
        hex}, the item the manifest committed to). Empty for other jobs."""
        secret = state.get("dp_secret")
        if not secret or self.ctx.config.dp is None:
            return {}
        cfg = self.ctx.config
        bounds = tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps)
        items = dict(dpmod.seed_items(bytes.fromhex(secret), self.ctx.job_id, r, self.address, bounds))
        return {dpmod.item_name(seg): items[seg] for seg in drawn_segments}

    def _snap_file(self, r: int, step: int) -> Path:
        return self.dir / f"round-{r}.step-{step}.snapshot"

    def _extra_file(self, r: int, name: str) -> Path:
        return self.dir / f"round-{r}.{name}.obj"

    def _publish_extras(self, r: int, state: dict) -> None:
        """Store and pin what every verifier fetches beside a compressed contribution."""
        cids = {}
        for name, digest in sorted(state.get("extras", {}).items()):
            obj = self.ctx.store.put(self._extra_file(r, name).read_bytes())
            if obj.digest != from_hex(digest):
                raise LedgerError(f"round {r}: {name} changed on disk since training; delete {self.dir} to train again")
            self.ctx.store.pin(obj.cid)
            cids[name] = obj.cid
        state["extra_cids"] = cids

    def _bundle_file(self, r: int, segment: int) -> Path:
        return self.dir / f"round-{r}.windows-{segment}.bundle"

    def _local_files_intact(self, r: int, state: dict, ckpt_file: Path) -> bool:
        files = [(ckpt_file, state.get("digest"))]
        files += [(self._snap_file(r, int(step)), d) for step, d in state.get("snapshots", {}).items()]
        files += [(self._bundle_file(r, int(seg)), d) for seg, d in state.get("windows", {}).items()]
        files += [(self._extra_file(r, name), d) for name, d in state.get("extras", {}).items()]
        return all(f.exists() and to_hex(sha256_bytes(f.read_bytes())) == d for f, d in files)

    def _publish_snapshots(self, r: int, state: dict) -> dict:
        """Store and pin every snapshot; returns their CIDs by step."""
        cids = {}
        for step, digest in sorted(state.get("snapshots", {}).items(), key=lambda kv: int(kv[0])):
            obj = self.ctx.store.put(self._snap_file(r, int(step)).read_bytes())
            if obj.digest != from_hex(digest):
                raise LedgerError(f"round {r}: snapshot at step {step} changed on disk since training; "
                                  f"delete {self.dir} to train the round again")
            self.ctx.store.pin(obj.cid)
            cids[step] = obj.cid
        return cids

    def _served(self, state: dict) -> bool:
        """Whether this worker's store serves what the round's state says it published:
        the checkpoint and, when snapshots go out with it (policy "all"), every snapshot."""
        store = self.ctx.store
        if not state.get("cid") or not store.has(state["cid"]):
            return False
        if not all(store.has(cid) for cid in (state.get("extra_cids") or {}).values()):
            return False
        if self.ctx.config.policy.reveals:
            return True
        cids = state.get("snapshot_cids")
        if cids is None or set(cids) != set(state.get("snapshots", {})):
            return False
        return all(store.has(cid) for cid in cids.values())

    def _keep_served(self, r: int) -> None:
        """Round ``r`` is submitted: if this worker's store lost what it submitted (a store
        wiped or replaced since), put it back from the local files while the round is judged."""
        state_file = self.dir / f"round-{r}.json"
        state = atomic.read_json(state_file, {}) or {}
        if state.get("status") not in ("published", "submitted") or self._served(state):
            return
        ckpt_file = self.dir / f"round-{r}.safetensors"
        if not self._local_files_intact(r, state, ckpt_file):
            log.error("round %d: this worker's store no longer serves its submission %s and the local files are gone "
                      "or changed: it cannot be republished", r, state.get("cid"))
            return
        self._publish_extras(r, state)
        obj = self.ctx.store.put(ckpt_file.read_bytes())
        self.ctx.store.pin(obj.cid)
        if not self.ctx.config.policy.reveals:
            state["snapshot_cids"] = self._publish_snapshots(r, state)
        atomic.write_json(state_file, state)
        log.warning("round %d: this worker's store had lost its submission %s: published it again from the local files",
                    r, obj.cid)

    def _submit(self, r: int, parent: bytes, state: dict) -> bool:
        ctx = self.ctx
        if ctx.ledger.has_submitted(ctx.job_id, r, self.address):
            log.info("round %d: already on chain (submitted before a restart)", r)
            return False
        crash_point("worker:before-submit")
        if self.opt.relay and self._via_relay(r, parent, state):
            return True
        try:
            receipt = ctx.ledger.submit_update(
                ctx.job_id, r, parent, bytes.fromhex(state["digest"][2:]), state["cid"],
                state["size"], state["num_samples"],
            )
        except ContractReverted as e:
            if e.name == "AlreadySubmitted":
                log.info("round %d: already on chain (submitted before a restart)", r)
                return False
            if e.name in ("RoundClosed", "WrongParent", "WrongRound"):
                if e.name != "RoundClosed" and ctx.refresh().current_round <= r:
                    log.warning("round %d: the chain no longer has this round open with this parent (%s: rolled "
                                "back?); re-reading", r, e.name)
                    return False
                log.warning("round %d: too late, the round is closed (%s); moving on to the next round", r, e.name)
                return False
            raise
        crash_point("worker:after-submit")
        tx_hash = tx_hash_of(receipt)
        atomic.write_json(self.dir / f"round-{r}.json", {**state, "status": "submitted", "tx": tx_hash})
        log.info("round %d: submitted %s in tx %s (gas %s)", r, state["cid"], tx_hash, receipt.get("gasUsed"))
        return True

    def _via_relay(self, r: int, parent: bytes, state: dict) -> bool:
        """Post the signed submission to the relay and wait for its batch: True once it is
        on chain; False to submit directly (the relay is unreachable or refused it, or the
        batch has not landed ``relay_fallback`` seconds before the deadline)."""
        import requests

        from ledger.protocol.batch import sign_submission
        from node.roles.relay import PATH

        ctx, job, url = self.ctx, self.ctx.job_id, self.opt.relay.rstrip("/")
        signed = sign_submission(ctx.ledger.chain.account, ctx.ledger.chain_id, ctx.ledger.address, job, r, parent,
                                 bytes.fromhex(state["digest"][2:]), state["cid"], state["size"], state["num_samples"])
        try:
            resp = requests.post(url + PATH, json=signed.to_json(), timeout=15)
            answer = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
        except (requests.RequestException, ValueError) as e:
            log.warning("round %d: the relay at %s does not answer (%s); submitting directly", r, url, type(e).__name__)
            return False
        if resp.status_code not in (200, 202):
            log.warning("round %d: the relay refused the submission (%s); submitting directly", r,
                        str(answer.get("error") or f"HTTP {resp.status_code}")[:300])
            return False
        fallback_at = ctx.ledger.round(job, r).deadline - self.opt.relay_fallback
        log.info("round %d: signed submission queued at the relay %s; submitting directly if its batch has not "
                 "landed by %s", r, url, time.strftime("%H:%M:%S", time.localtime(fallback_at)))
        while True:
            if ctx.ledger.has_submitted(job, r, self.address):
                mine = [s for s in ctx.ledger.submissions(job, r) if s.worker == self.address]
                tx_hash = mine[0].tx_hash if mine else ""
                atomic.write_json(self.dir / f"round-{r}.json", {**state, "status": "submitted", "tx": tx_hash,
                                                                 "relayed": True})
                log.info("round %d: submitted %s through the relay's batch in tx %s", r, state["cid"], tx_hash)
                return True
            if time.time() >= fallback_at or ctx.ledger.round(job, r).status != "open":
                break
            time.sleep(self.opt.poll)
        log.warning("round %d: the relay's batch has not landed %gs before the deadline; submitting directly",
                    r, self.opt.relay_fallback)
        return False

    def _forget_older(self, r: int) -> None:
        """Checkpoints of rounds before r are published and on chain: drop the local copies."""
        for p in self.dir.glob("round-*"):
            m = re.match(r"round-(\d+)\.(safetensors|step-\d+\.snapshot|windows-\d+\.bundle)$", p.name)
            if m and int(m.group(1)) < r:
                p.unlink(missing_ok=True)


    # --- the reveal (drawn snapshots; private data: drawn windows) -------------------------
    def _pending_reveals(self) -> list[tuple[int, dict]]:
        out = []
        for f in sorted(self.dir.glob("round-*.json")):
            m = re.match(r"round-(\d+)\.json$", f.name)
            state = atomic.read_json(f, {}) or {}
            due = (state.get("windows") or (self.ctx.config.policy.reveals and state.get("snapshots"))
                   or (self.ctx.config.dp_replays and state.get("dp_secret")))
            # "published" too: a kill between the submission and the state write leaves it so
            if m and due and state.get("status") in ("published", "submitted") and "revealed" not in state:
                out.append((int(m.group(1)), state))
        return out

    def _reveal_due(self) -> None:
        """Reveal what the draw asks of every submitted round that has closed."""
        if not self.reveals:
            return
        ctx = self.ctx
        for r, state in self._pending_reveals():
            rd = ctx.ledger.round(ctx.job_id, r)
            subs = ctx.ledger.submissions(ctx.job_id, r)
            closed = rd.status != "open" or 0 < rd.expected <= len(subs)
            if not closed:
                # closed only once the *chain's* clock passes the deadline: a submission that
                # still lands would change the draw
                chain = ctx.ledger.chain
                closed = chain.block_timestamp(chain.block_number()) > rd.deadline
            if not any(s.worker.lower() == self.address.lower() for s in subs):
                if closed:    # never made it on chain (late): nothing is due, ever
                    atomic.write_json(self.dir / f"round-{r}.json", {**state, "revealed": []})
                continue
            if closed:
                self._reveal(r, state, subs)

    def _reveal(self, r: int, state: dict, subs) -> None:
        from node.verification.rounds import DrawNotReady, replay_seed

        ctx, cfg = self.ctx, self.ctx.config
        n = len(tx.segment_bounds(cfg.train.steps, cfg.policy.segment_steps))
        try:
            seed = replay_seed(ctx.ledger, ctx.job_id, r, subs)
        except DrawNotReady as e:
            # the block that seeds the draw comes after the close: wait for it (a dev node
            # that mines only on transactions gets an empty block)
            if not getattr(self, "_draw_waiting", None) == r:
                log.info("round %d: closed; %s", r, e)
            self._draw_waiting = r
            ctx.ledger.chain.nudge()
            return
        self._draw_waiting = None
        drawn = tx.draw_segments(seed, ctx.job_id, r, self.address, n, cfg.policy.replay_segments)
        files = []
        for seg in drawn:
            if state.get("windows") and not cfg.seals:
                files.append((f"the window bundle of drawn segment {seg}", self._bundle_file(r, seg),
                              state["windows"].get(str(seg))))
            if cfg.policy.reveals:
                for step in tx.segment_snapshot_steps(cfg.train.steps, cfg.policy.segment_steps, seg):
                    files.append((f"the snapshot at step {step}", self._snap_file(r, step),
                                  state["snapshots"].get(str(step))))
        for what, f, want in files:
            if not f.exists():
                log.error("round %d: %s is gone from %s: cannot reveal it", r, what, f)
                continue
            obj = ctx.store.put(f.read_bytes())
            if to_hex(obj.digest) != want:
                log.error("round %d: %s changed on disk since training: not revealed", r, what)
                continue
            ctx.store.pin(obj.cid)
        sealed = self._seal(r, state, subs, seed, drawn) if cfg.seals else None
        crash_point("worker:after-reveal")
        if not self._disclose(r, sealed):
            return
        atomic.write_json(self.dir / f"round-{r}.json", {**state, "revealed": drawn})
        kinds = " and ".join(k for k, on in (("snapshots", cfg.policy.reveals), ("windows", bool(state.get("windows"))))
                             if on)
        log.info("round %d: revealed the %s of drawn segment(s) %s (%d of %d); the rest stay on this machine",
                 r, kinds, ",".join(map(str, drawn)), len(drawn), n)

    def _seal(self, r: int, state: dict, subs, seed: bytes, drawn: list[int]):
        """The drawn window bundles (and secret items), sealed to the verifiers the draw
        named and the job's auditors, stored: the StoredObject, or None when the bundles
        are gone from disk (then the verifiers record them unrevealed)."""
        from node.verification.rounds import readers_of

        ctx, cfg = self.ctx, self.ctx.config
        items = {}
        for seg in drawn if state.get("windows") else ():
            f, want = self._bundle_file(r, seg), state["windows"].get(str(seg))
            blob = f.read_bytes() if f.exists() else None
            if blob is None or to_hex(sha256_bytes(blob)) != want:
                log.error("round %d: the window bundle of drawn segment %d is %s: cannot reveal it", r, seg,
                          "gone from " + str(f) if blob is None else "changed on disk since training")
                continue
            items[f"windows-{seg}"] = blob
        items.update(self.secret_items(r, state, drawn))
        index = next(s.index for s in subs if s.worker.lower() == self.address.lower())
        readers = {}
        for a in readers_of(ctx, r, subs, seed, index):
            pub = cfg.access.public_key(a)
            if pub is None:
                log.error("round %d: verifier %s has no public key in the job config: it cannot read this reveal",
                          r, a)
                continue
            readers[a] = pub
        if not items or not readers:
            return None
        obj = ctx.store.put(self.seal(items, readers, privdata.reveal_binding(ctx.job_id, r, self.address)))
        ctx.store.pin(obj.cid)
        log.info("round %d: sealed %d item(s) to %d reader(s): %s", r, len(items), len(readers),
                 ", ".join(sorted(readers)))
        return obj

    def seal(self, items: dict[str, bytes], readers: dict[str, bytes], binding: bytes) -> bytes:
        """The envelope (a Byzantine worker overrides this to hand some readers garbage)."""
        from ledger.privacy import sealing

        return sealing.seal(items, readers, binding)

    def _disclose(self, r: int, sealed=None) -> bool:
        """Say on chain that what the draw asked is stored (jobs with a disclosure phase),
        naming the sealed envelope if there is one; False if the chain is not ready for it
        yet (try again later)."""
        ctx = self.ctx
        if not int(getattr(ctx.info, "disclosure_window", 0) or 0):
            return True
        try:
            receipt = ctx.ledger.disclose(ctx.job_id, r, sealed.cid if sealed else "", sealed.size if sealed else 0)
        except ContractReverted as e:
            if e.name == "AlreadyDisclosed":
                return True                     # before a restart
            if e.name == "RoundNotClosed":
                return False
            if e.name == "DisclosureClosed":
                log.warning("round %d: too late to disclose (the disclosure deadline passed): the verifiers record "
                            "this contribution's drawn artifacts as unrevealed", r)
                return True
            if e.name in ("RoundAlreadyFinalized", "WrongRound", "JobFinished"):
                return True                     # the round moved on without it
            raise
        log.info("round %d: disclosed on chain in tx %s (gas %s)", r, tx_hash_of(receipt), receipt.get("gasUsed"))
        return True

    def _finish_reveals(self) -> None:
        """Stay until every submitted round's draw is revealed (or its round is long gone)."""
        while self.reveals and self._pending_reveals():
            info = self.ctx.refresh()
            self._reveal_due()
            if info.completed or not self._pending_reveals():
                break
            self.ctx.wait(self.opt.poll)




def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled or None, leave=False, dynamic_ncols=True)


def run_worker(ledger, store, job_id: int, account_address: str, state_dir: Path, options: WorkerOptions | None = None,
               data: bytes | None = None) -> int:
    ctx = JobContext.load_riding_out(ledger, store, job_id, log)
    return Worker(ctx, account_address, state_dir, options, data=data).run()
