"""The relay: takes workers' signed submissions over HTTP and sends each round's in one
``submitBatch`` transaction, paying the gas once for many (README "Many parties").

A worker that runs with ``--relay URL`` signs its submission (``ledger.protocol.batch``) and posts
it here instead of sending its own transaction; it keeps watching the chain and sends
the submission itself if the batch has not landed shortly before the deadline. So a
relay can save gas but never censor or lose a contribution: at worst it delays one to
its worker's fallback. It holds no one's key but its own (it pays), and what it holds
is only signatures of public data: nothing is kept on disk, and a restarted relay
simply receives the workers' posts again.

When a round's batch goes out: once every worker the round still waits for has posted
(the common case: the round then closes at once), or ``flush_before`` seconds before
the deadline, or at ``max_batch`` entries. An entry the contract would refuse (a bad
signature, a worker not active) is dropped before sending, with a line in the log; a
worker that meanwhile submitted directly is skipped by the contract itself.

Torch-free: the relay needs only the chain.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ledger.monitor import metrics
from ledger.protocol.batch import SignedSubmission
from ledger import safejson
from ledger.ethereum.chain import tx_hash_of
from ledger.errors import ChainUnreachable, ContractReverted, LedgerError

log = logging.getLogger("ledger.relay")

MAX_BODY = 16 * 1024      # a signed submission is ~600 bytes of JSON
PATH = "/v1/submissions"
# errors of submitBatch that name one entry's worker: that entry goes, the rest stays
_ENTRY_ERRORS = ("WorkerHasLeft", "NotActiveYet", "StakeMissing")


@dataclass
class RelayOptions:
    host: str = "127.0.0.1"
    port: int = 0                 # 0: a free port, printed at start
    flush_before: float = 20.0    # seconds before a round's deadline it sends what it holds
    max_batch: int = 128
    poll: float = 0.5


@dataclass
class _Pending:
    parent: bytes
    entries: dict[str, SignedSubmission] = field(default_factory=dict)  # worker -> its signed submission


class Relay:
    """Validates posted submissions against the chain, queues them per (job, round), and
    sends each queue as one batch when it is due."""

    def __init__(self, ledger, options: RelayOptions | None = None):
        self.ledger = ledger
        self.opt = options or RelayOptions()
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], _Pending] = {}
        self.sent: list[dict] = []   # one record per batch sent (job, round, count, gas, tx)

    # ------------------------------------------------------------------ intake

    def offer(self, payload) -> tuple[int, dict]:
        """One posted submission -> (HTTP status, JSON answer). Refusals say why in one line."""
        try:
            s = SignedSubmission.from_json(payload)
        except ValueError as e:
            return 400, {"error": f"not a signed submission: {e}"}
        if s.chain_id != self.ledger.chain_id or s.contract != self.ledger.address:
            return 400, {"error": f"signed for chain {s.chain_id} contract {s.contract}; this relay sends to chain "
                                  f"{self.ledger.chain_id} contract {self.ledger.address}"}
        if s.signer() != s.worker:
            return 400, {"error": f"the signature is not {s.worker}'s over these fields"}
        try:
            info = self.ledger.job(s.job_id)
        except ContractReverted:
            return 404, {"error": f"no job {s.job_id} on this deployment"}
        if info.completed or s.round != info.current_round:
            return 409, {"error": f"round {s.round} of job {s.job_id} is not open (the current round is "
                                  f"{info.current_round}{', job complete' if info.completed else ''})"}
        rd = self.ledger.round(s.job_id, s.round)
        if rd.parent != s.parent:
            return 409, {"error": f"signed on parent 0x{s.parent.hex()}, but round {s.round} trains on 0x{rd.parent.hex()}"}
        if rd.status != "open" or time.time() > rd.deadline:
            return 409, {"error": f"round {s.round} of job {s.job_id} is closed to submissions"}
        state, _ = self.ledger.worker_state(s.job_id, s.worker)
        if state != "active":
            return 403, {"error": f"{s.worker} is not an active worker of job {s.job_id} ({state})"}
        if self.ledger.has_submitted(s.job_id, s.round, s.worker):
            return 409, {"error": f"{s.worker} already submitted in round {s.round}"}
        with self._lock:
            q = self._pending.setdefault((s.job_id, s.round), _Pending(rd.parent))
            if s.worker in q.entries:
                return 200, {"status": "queued", "note": "already queued"}
            q.entries[s.worker] = s
            n = len(q.entries)
        log.info("job %d round %d: queued %s (%d waiting)", s.job_id, s.round, s.worker, n)
        return 202, {"status": "queued", "send_by": int(rd.deadline - self.opt.flush_before)}

    # ------------------------------------------------------------------ sending

    def flush_due(self, force: bool = False) -> None:
        """Send every queue that is due (all of them with ``force``)."""
        with self._lock:
            keys = list(self._pending)
        for job, rnd in keys:
            rd = self.ledger.round(job, rnd)
            with self._lock:
                q = self._pending.get((job, rnd))
                entries = list(q.entries.values()) if q else []
            if not entries:
                continue
            if rd.status != "open" or time.time() > rd.deadline:
                self._drop(job, rnd, f"round {rnd} closed before its batch went out")
                continue
            waiting_for = max(rd.expected - rd.submissions, 0)
            due = (force or len(entries) >= waiting_for or len(entries) >= self.opt.max_batch
                   or time.time() >= rd.deadline - self.opt.flush_before)
            if due:
                self._send(job, rnd, q.parent, entries[: self.opt.max_batch])

    def _drop(self, job: int, rnd: int, why: str) -> None:
        with self._lock:
            q = self._pending.pop((job, rnd), None)
        if q and q.entries:
            log.warning("job %d round %d: %s: %d queued submission(s) dropped (their workers submit directly)",
                        job, rnd, why, len(q.entries))

    def _send(self, job: int, rnd: int, parent: bytes, entries: list[SignedSubmission]) -> None:
        roster = self.ledger.job(job).workers
        entries = [e for e in entries if not self.ledger.has_submitted(job, rnd, e.worker)]
        while entries:
            try:
                rc = self.ledger.submit_batch(job, rnd, parent, roster, entries)
                break
            except ContractReverted as e:
                bad = self._offending(e, entries)
                if bad is None:
                    self._drop(job, rnd, f"the batch was refused ({e})")
                    return
                log.warning("job %d round %d: dropped %s's entry: %s", job, rnd, entries[bad].worker, e)
                self._forget(job, rnd, [entries[bad]])
                del entries[bad]
        else:
            return
        gas = int(rc.get("gasUsed", 0))
        self._forget(job, rnd, entries)
        record = {"job": job, "round": rnd, "count": len(entries), "gas": gas, "tx": tx_hash_of(rc)}
        self.sent.append(record)
        metrics.relayed(len(entries))
        log.info("job %d round %d: relayed %d submission(s) in tx %s (gas %d, %d per contribution)",
                 job, rnd, len(entries), record["tx"], gas, gas // len(entries))

    @staticmethod
    def _offending(e: ContractReverted, entries: list[SignedSubmission]) -> int | None:
        """The position of the entry a revert names, or None if it is about the whole batch."""
        args = getattr(e, "args_dict", None) or {}
        if e.name == "BadSignature" and "position" in args:
            return int(args["position"])
        if e.name in _ENTRY_ERRORS:
            who = str(args.get("worker", "")).lower()
            for i, s in enumerate(entries):
                if s.worker.lower() == who:
                    return i
        return None

    def _forget(self, job: int, rnd: int, entries: list[SignedSubmission]) -> None:
        with self._lock:
            q = self._pending.get((job, rnd))
            if q is None:
                return
            for s in entries:
                q.entries.pop(s.worker, None)
            if not q.entries:
                del self._pending[(job, rnd)]

    # ------------------------------------------------------------------ serving

    def serve(self, ready=None, stop: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or the process is stopped); ``ready(url)`` once listening."""
        relay = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "ledger-relay"

            def log_message(self, fmt, *a):   # the relay logs what matters itself
                log.debug("%s " + fmt, self.address_string(), *a)

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/health":
                    return self._answer(404, {"error": f"no such path {self.path!r}; POST {PATH}"})
                self._answer(200, {"chain_id": relay.ledger.chain_id, "contract": relay.ledger.address,
                                   "relayer": relay.ledger.chain.address})

            def do_POST(self):
                if self.path.rstrip("/") != PATH:
                    return self._answer(404, {"error": f"no such path {self.path!r}; POST {PATH}"})
                try:
                    length = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    return self._answer(411, {"error": "a Content-Length is required"})
                if length > MAX_BODY or length < 0:
                    return self._answer(413, {"error": f"a signed submission is under {MAX_BODY} bytes"})
                try:
                    payload = safejson.loads(self.rfile.read(length), what="the body", max_bytes=MAX_BODY)
                except ValueError:
                    return self._answer(400, {"error": "the body is not JSON"})
                try:
                    status, body = relay.offer(payload)
                except (ChainUnreachable, LedgerError) as e:
                    status, body = 503, {"error": f"the relay cannot check it now: {e}"}
                self._answer(status, body)

        server = ThreadingHTTPServer((self.opt.host, self.opt.port), Handler)
        server.daemon_threads = True
        host, port = server.server_address[:2]
        url = f"http://{host}:{port}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        log.info("relay for %s on chain %d listening on %s (POST %s)", self.ledger.address, self.ledger.chain_id,
                 url, PATH)
        if ready:
            ready(url)
        try:
            while stop is None or not stop.is_set():
                try:
                    self.flush_due()
                    self.ledger.chain.block_number()    # the head, for ledger_last_block
                except ChainUnreachable as e:
                    log.warning("chain unreachable (%s); retrying", e)
                time.sleep(self.opt.poll)
        finally:
            server.shutdown()
            server.server_close()
            with self._lock:
                held = sum(len(q.entries) for q in self._pending.values())
            if held:
                log.warning("stopping with %d queued submission(s) unsent: their workers submit directly", held)
