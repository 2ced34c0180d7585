"""``ledger watch``: a job's live page, served by Starlette under uvicorn.

One thread (``Watcher``) re-reads the job's history from the chain every ``poll``
seconds (``ledger.trail.history.load_history``: public events and views only) and the
training loss each contribution's checkpoint metadata reports (fetched from storage
and checked against its on-chain digest; never anything else of it), and keeps the
latest ``ledger.monitor.watch.view`` as JSON. The page (``templates/watch.html.j2``) holds no
data of its own: it opens ``/events`` (server-sent events) and redraws on each state
that differs from the last, so nothing reloads. ``/state.json`` is the same state;
``/metrics`` serves the health flags and each party's idle time for Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from jinja2 import Environment, PackageLoader, select_autoescape
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ledger.store import checkpoint
from ledger.errors import LedgerError
from ledger.trail.history import load_history
from ledger.monitor.watch import DEFAULT_LATE_AFTER, view

log = logging.getLogger("ledger.monitor.watch")

# Contributions bigger than this are not fetched for the loss their metadata reports:
# the store has no range reads, and a watcher should not pull whole large models.
LOSS_FETCH_MAX = 64 * 2**20
HEARTBEAT = 15.0


class Watcher:
    """The latest state of one job, refreshed in a thread."""

    def __init__(self, ledger, store, job_id: int, poll: float = 1.0, late_after: float = DEFAULT_LATE_AFTER):
        self.ledger, self.store, self.job_id = ledger, store, job_id
        self.poll, self.late_after = poll, late_after
        self.losses: dict[bytes, float | None] = {}
        self.state: dict | None = None
        self.version = 0
        self.error: str | None = None
        self._body = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> dict:
        h = load_history(self.ledger, self.job_id)
        for rh in h.rounds:
            for s in rh.submissions:
                key = bytes(s.digest)
                if key not in self.losses:
                    self.losses[key] = self._loss(s)
        state = view(h, time.time(), self.late_after, self.losses)
        body = json.dumps(state, sort_keys=True)
        if body != self._body:
            self._body, self.state = body, state
            self.version += 1
        return state

    def _loss(self, s) -> float | None:
        """``loss_end`` from a contribution's checkpoint metadata (the worker's own
        figure), fetched only when small and checked against its on-chain digest."""
        if not s.cid or s.size > LOSS_FETCH_MAX:
            return None
        try:
            data = self.store.get(s.cid, bytes(s.digest), max_size=LOSS_FETCH_MAX)
            meta = checkpoint.read_meta(data, cid=s.cid, max_size=LOSS_FETCH_MAX)
            v = float(meta.get("loss_end"))
            return v if v == v else None
        except (LedgerError, ValueError, TypeError):
            return None

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.error = None
            except Exception as e:        # the chain or the store is away: keep the last state, say so
                self.error = str(e) if isinstance(e, LedgerError) else f"{type(e).__name__}: {e}"
                log.warning("cannot read job %d now: %s", self.job_id, self.error)
            self._stop.wait(self.poll)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self.run, name="watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def message(self) -> str:
        return json.dumps({"state": self.state, "version": self.version, "error": self.error, "now": time.time()})


class _HealthCollector:
    """/metrics of the watch: which parties are late and for what, and each one's idle time."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def collect(self):
        state = self.watcher.state or {}
        job = str((state.get("job") or {}).get("id", self.watcher.job_id))
        late = GaugeMetricFamily("ledger_watch_party_late", "1 for a party late for what the current round asks of "
                                 "it (before its deadline; late_for says what), 0 for the others",
                                 labels=["ledger_job", "party", "role", "late_for"])
        flagged = {x["party"].lower(): x for x in state.get("late", [])}
        for p in state.get("parties", []):
            x = flagged.get(p["address"].lower())
            late.add_metric([job, p["address"], p["role"], x["late_for"] if x else ""], 1 if x else 0)
        yield late
        idle = GaugeMetricFamily("ledger_watch_party_idle_seconds", "seconds since a party's last action on chain",
                                 labels=["ledger_job", "party", "role"])
        for p in state.get("parties", []):
            if p["idle_seconds"] is not None:
                idle.add_metric([job, p["address"], p["role"]], p["idle_seconds"])
        yield idle
        rnd = GaugeMetricFamily("ledger_watch_round", "the job's current round", labels=["ledger_job"])
        rnd.add_metric([job], (state.get("job") or {}).get("current_round", 0))
        yield rnd


def _template():
    env = Environment(loader=PackageLoader("ledger.monitor", "templates"), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("watch.html.j2")


def make_app(watcher: Watcher, should_exit=lambda: False) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HealthCollector(watcher))
    page = _template().render(job_id=watcher.job_id, late_after=watcher.late_after)

    async def index(request):
        return HTMLResponse(page)

    async def state(request):
        return JSONResponse(json.loads(watcher.message()))

    async def metrics(request):
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def events(request):
        async def stream():
            sent, beat = -1, time.monotonic()
            while not should_exit():
                if watcher.version != sent:
                    sent = watcher.version
                    beat = time.monotonic()
                    yield f"data: {watcher.message()}\n\n"
                elif time.monotonic() - beat > HEARTBEAT:
                    beat = time.monotonic()
                    yield ": heartbeat\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Starlette(routes=[Route("/", index), Route("/state.json", state), Route("/metrics", metrics),
                             Route("/events", events)])


def serve(watcher: Watcher, host: str, port: int, ready=None) -> None:
    """Serve the page until stopped (Ctrl-C, SIGTERM); ``ready(port)`` once listening."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    watcher.start()
    box: dict = {}
    app = make_app(watcher, should_exit=lambda: box["server"].should_exit)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
    server = box["server"] = uvicorn.Server(config)
    if ready:
        ready(sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    finally:
        watcher.stop()
        sock.close()
