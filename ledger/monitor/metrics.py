"""Prometheus metrics of the long-running roles, all defined here.

A worker, aggregator or relay started with ``--metrics-port`` serves them (``serve``);
the roles call the one-line hooks below (``round_done``, ``trained``, ``judged``, ...),
which only move counters in this process's registry, so a role without
``--metrics-port`` pays nothing but a few increments. Every series carries the
labels ``role``, ``party`` (the account's address) and ``ledger_job``, so one Grafana panel
shows a job's parties side by side (``deploy/grafana/ledger.json``).

Bytes stored and fetched are counted by wrapping the party's store (``counting``),
chain and storage outages where roles wait them out (``node.context.JobContext``).
``ledger watch`` serves its own registry (``ledger.monitor.watch_server``), not this one.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
# "ledger_job", not "job": Prometheus gives every target a "job" label (its scrape job)
LABELS = ("role", "party", "ledger_job")
_party = {"role": "", "party": "", "ledger_job": ""}


def _counter(name: str, doc: str, extra: tuple = ()) -> Counter:
    return Counter(name, doc, LABELS + extra, registry=REGISTRY)


def _gauge(name: str, doc: str, extra: tuple = ()) -> Gauge:
    return Gauge(name, doc, LABELS + extra, registry=REGISTRY)


ROUNDS = _counter("ledger_rounds_done", "rounds this party completed its part of (worker: submitted; aggregator: revealed; relay: batches sent)")
TRAINED = _counter("ledger_contributions_trained", "contributions this worker trained")
VERIFIED = _counter("ledger_contributions_verified", "contributions this aggregator judged")
VERDICTS = _counter("ledger_verdicts", "verdicts this aggregator reached, by reason code", ("code", "verdict"))
SECONDS = _counter("ledger_work_seconds", "seconds spent training, replaying and validating (CPU seconds for the "
                   "verification stages)", ("stage",))
BYTES = _counter("ledger_storage_bytes", "bytes this party put into and got from storage", ("direction",))
OUTAGES = _counter("ledger_outages", "chain and storage outages this party waited out", ("service",))
OUTAGE_SECONDS = _counter("ledger_outage_seconds", "seconds spent waiting out chain and storage outages", ("service",))
BLOCK = _gauge("ledger_last_block", "the newest block number this party has seen")
VAL_LOSS = _gauge("ledger_validation_loss", "the last judged round's validation loss: of its parent and the mean "
                  "of its accepted contributions", ("model",))
SUBMISSIONS = _counter("ledger_relayed_submissions", "signed submissions this relay sent in batches")
UP = _gauge("ledger_party_info", "1 for each serving party; its labels name it")


def _l(**extra) -> dict:
    return {**_party, **extra}


def serve(role: str, party: str, job: int | str | None, port: int, host: str = "127.0.0.1") -> int:
    """Serve this process's metrics on ``host:port`` (0: a free port); returns the port."""
    _party.update(role=role, party=str(party), ledger_job="" if job is None else str(job))
    UP.labels(**_l()).set(1)
    from ledger.ethereum import chain

    BLOCK.labels(**_l()).set_function(lambda: chain.last_block_seen)
    # every series at 0 from the start: a dashboard's query returns each party before it acts
    for c in (ROUNDS, TRAINED, VERIFIED, SUBMISSIONS):
        c.labels(**_l())
    for service in ("chain", "storage"):
        OUTAGES.labels(**_l(service=service))
        OUTAGE_SECONDS.labels(**_l(service=service))
    for direction in ("stored", "fetched"):
        BYTES.labels(**_l(direction=direction))
    for stage in ("training", "replaying", "validating"):
        SECONDS.labels(**_l(stage=stage))
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return server.server_address[1]


# ---------------------------------------------------------------- the roles' hooks


def round_done() -> None:
    ROUNDS.labels(**_l()).inc()


def trained(metrics: dict) -> None:
    """A worker finished training a round (``train_local``'s metrics)."""
    TRAINED.labels(**_l()).inc()
    SECONDS.labels(**_l(stage="training")).inc(float(metrics.get("seconds", 0.0)))


def judged(reports) -> None:
    """An aggregator judged a round: one ``verify.Report`` per contribution."""
    from ledger.protocol.verdicts import describe

    parent_loss, accepted = None, []
    for rep in reports:
        VERIFIED.labels(**_l()).inc()
        code = int(rep.verdict)
        VERDICTS.labels(**_l(code=str(code), verdict=describe(code))).inc()
        for stage, s in (rep.timings or {}).items():
            if stage in ("replay", "validation"):
                SECONDS.labels(**_l(stage="replaying" if stage == "replay" else "validating")).inc(float(s))
        m = rep.metrics or {}
        if "parent_val_loss" in m:
            parent_loss = float(m["parent_val_loss"])
        if code == 0 and "val_loss" in m:
            accepted.append(float(m["val_loss"]))
    if parent_loss is not None:
        VAL_LOSS.labels(**_l(model="parent")).set(parent_loss)
    if accepted:
        VAL_LOSS.labels(**_l(model="accepted_mean")).set(sum(accepted) / len(accepted))


def outage(service: str, seconds: float) -> None:
    """A chain or storage outage ended after ``seconds``."""
    OUTAGES.labels(**_l(service=service)).inc()
    OUTAGE_SECONDS.labels(**_l(service=service)).inc(float(seconds))


def relayed(count: int) -> None:
    ROUNDS.labels(**_l()).inc()
    SUBMISSIONS.labels(**_l()).inc(int(count))


# ---------------------------------------------------------------- storage traffic


class CountingStore:
    """A party's store that counts the bytes it puts and gets; everything else is the
    store's own (``__getattr__``)."""

    def __init__(self, store):
        self._store = store
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put(self, data, *a, **kw):
        obj = self._store.put(data, *a, **kw)
        BYTES.labels(**_l(direction="stored")).inc(int(obj.size))
        return obj

    def get(self, *a, **kw) -> bytes:
        data = self._store.get(*a, **kw)
        BYTES.labels(**_l(direction="fetched")).inc(len(data))
        return data

    def get_to_file(self, *a, **kw):
        path = self._store.get_to_file(*a, **kw)
        BYTES.labels(**_l(direction="fetched")).inc(path.stat().st_size)
        return path


def counting(store):
    return CountingStore(store)
