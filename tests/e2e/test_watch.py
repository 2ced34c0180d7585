"""Watching a running job: `ledger watch`'s live page in headless Chromium, every role's
metrics scraped by a real Prometheus (and the Grafana dashboard's queries run against
it), and a stopped worker flagged as late before its round's deadline.

Screenshots of the page are kept in each test's tmp folder; with LEDGER_UPDATE_DOCS=1
the one of the late worker replaces docs/watch.png (the README's).

One job serves the whole module: 3 workers (the third posts through a relay and stops
after round 1), 2 aggregators (started once the page has shown the submissions), a
relay, `ledger watch` and Prometheus, each a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import require_tool
from support import address, chain_of_its_own, keys, log_text, stop_process, wait_for

W = keys(3, "watch-worker")
A = keys(2, "watch-aggregator")
RELAY = keys(1, "watch-relay")[0]
ROUND_SECONDS = 120
LATE_AFTER = 4
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ledger.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class Prometheus:
    """A real Prometheus on a free port with its own config and storage under ``d``, stopped by PID."""

    def __init__(self, binary: str, d: Path, targets: dict[str, int]):
        self.port = _free_port()
        d.mkdir(parents=True, exist_ok=True)
        jobs = "".join(f"  - job_name: {name}\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
                       for name, port in targets.items())
        (d / "prometheus.yml").write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n{jobs}")
        self.log = open(d / "prometheus.log", "ab")
        self.proc = subprocess.Popen([binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.proc.log = d / "prometheus.log"
        wait_for(self.ready, 60, "Prometheus to be ready", [self.proc])

    def ready(self) -> bool:
        try:
            return _get(f"http://127.0.0.1:{self.port}/-/ready", 2).startswith(b"Prometheus")
        except OSError:
            return False

    def query(self, expr: str) -> list:
        doc = json.loads(_get(f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def value(self, expr: str) -> float:
        res = self.query(expr)
        return sum(float(s["value"][1]) for s in res)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.log.close()


class Run:
    """The module's job and its processes."""

    def __init__(self, env, tmp: Path):
        self.env, self.tmp = env, tmp
        self.job = env.create_job(W, A, quorum=2, rounds=2, round_duration=ROUND_SECONDS, proposal_window=30)
        env.fund(RELAY)
        self.ports = {f"worker{i}": _free_port() for i in range(3)}
        self.ports |= {f"aggregator{i}": _free_port() for i in range(2)}
        self.ports["relay"] = _free_port()
        self.watch = env.spawn(None, "watch", "--job", str(self.job), "--port", "0", "--poll", "0.5",
                               "--late-after", str(LATE_AFTER), log=tmp / "watch.log")
        m = wait_for(lambda: re.search(r"watching job \d+ on (http://\S+)/", log_text(self.watch)), 60,
                     "ledger watch to listen", [self.watch])
        self.url = m.group(1)
        self.ports["watch"] = int(self.url.rsplit(":", 1)[1])
        self.follow = env.spawn(None, "history", "--job", str(self.job), "--follow", "--poll", "0.5",
                                log=tmp / "follow.log")
        self.prometheus = None
        if shutil.which("prometheus"):
            self.prometheus = Prometheus(shutil.which("prometheus"), tmp / "prometheus", self.ports)
        self.relay = env.spawn(RELAY, "relay", "run", "--listen", "127.0.0.1:0", "--poll", "0.3",
                               "--metrics-port", str(self.ports["relay"]))
        relay_url = wait_for(lambda: re.search(r"relay listening on (http://\S+)", log_text(self.relay)), 60,
                             "the relay to listen", [self.relay]).group(1)
        self.workers = [self._worker(0), self._worker(1), self._worker(2, "--relay", relay_url, "--rounds", "1")]
        self.aggregators: list = []

    def _worker(self, i: int, *extra: str):
        return self.env.spawn(W[i], "worker", "run", "--job", str(self.job), "--no-progress", "--poll", "0.3",
                              "--metrics-port", str(self.ports[f"worker{i}"]), *extra)

    def start_aggregators(self) -> None:
        if not self.aggregators:
            self.aggregators = [self.env.spawn(k, "aggregator", "run", "--job", str(self.job), "--poll", "0.3",
                                               "--metrics-port", str(self.ports[f"aggregator{i}"]))
                                for i, k in enumerate(A)]

    @property
    def procs(self) -> list:
        return [self.watch, self.follow, self.relay, *self.workers, *self.aggregators]

    def state(self) -> dict:
        return json.loads(_get(self.url + "/state.json"))["state"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "watch") as env:
        r = Run(env, tmp_path_factory.mktemp("watch-run"))
        try:
            yield r
        finally:
            if r.prometheus:
                r.prometheus.stop()
            env.stop_all()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from support.browser import Browser

    b = Browser(require_tool("chromium"), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


def _states(browser, r: int) -> list:
    return browser.js(f"[...document.querySelectorAll('tr.contribution[data-round=\"{r}\"]')].map(e => e.dataset.state)")


def test_the_page_shows_submissions_then_verdicts_without_a_reload(run, browser, tmp_path):
    browser.open(run.url + "/")
    wait_for(lambda: (browser.js("Number(document.body.dataset.updates)") or 0) >= 1, 60, "the page's first state",
             run.procs)
    loaded = browser.js("window.__loadedAt")
    # the aggregators wait until the page has shown the round's three submissions, unjudged
    states = wait_for(lambda: (s := _states(browser, 1)) and len(s) == 3 and s, 240, "three submissions on the page",
                      run.procs)
    assert set(states) <= {"submitted", "disclosed"}, states
    assert browser.js("document.querySelectorAll('tr.contribution .verdict').length") == 0
    workers = browser.js("[...document.querySelectorAll('tr.contribution td.worker')].map(e => e.textContent)")
    assert sorted(workers) == sorted(address(k) for k in W)
    updates = browser.js("Number(document.body.dataset.updates)")
    shot = browser.screenshot(tmp_path / "watch-submitted.png")
    run.start_aggregators()
    wait_for(lambda: _states(browser, 1) == ["accepted"] * 3, 300, "the round's verdicts on the page", run.procs)
    # each aggregator's verdict on each contribution, from their reveals
    assert browser.js("document.querySelectorAll('tr.contribution[data-round=\"1\"] .verdict[data-code=\"0\"]').length") >= 3 * 2 - 3
    assert browser.js("window.__loadedAt") == loaded, "the page reloaded"
    assert browser.js("Number(document.body.dataset.updates)") > updates
    assert shot.stat().st_size > 10_000
    assert browser.screenshot(tmp_path / "watch-verdicts.png").stat().st_size > 10_000
    # the same state the page drew, as JSON: the round is finalized with its merge
    r1 = run.state()["rounds"][0]
    assert r1["status"] == "finalized" and r1["merged"] and r1["loss"] is not None


def test_prometheus_scrapes_every_role_and_the_dashboard_queries_return_series(run):
    if run.prometheus is None:
        pytest.skip("prometheus is not installed (make test installs it as root: Debian package prometheus)")
    prom = run.prometheus
    run.start_aggregators()
    # every role was scraped (the third worker stops after round 1: up, then down)
    wait_for(lambda: len(prom.query('max_over_time(up[10m]) == 1')) == len(run.ports), 60,
             "every target scraped by Prometheus", run.procs)
    wait_for(lambda: run.env.ledger.round(run.job, 1).status == "finalized", 300, "round 1 to finalize", run.procs)
    moved = {
        'ledger_rounds_done_total{role="worker"}': 3,
        'ledger_contributions_trained_total{role="worker"}': 3,
        'ledger_rounds_done_total{role="aggregator"}': 1,
        'ledger_contributions_verified_total{role="aggregator"}': 3,
        'ledger_verdicts_total{role="aggregator",code="0"}': 3,
        'ledger_rounds_done_total{role="relay"}': 1,
        'ledger_relayed_submissions_total': 1,
        'ledger_storage_bytes_total{role="worker",direction="stored"}': 1,
        'ledger_storage_bytes_total{role="aggregator",direction="fetched"}': 1,
        'ledger_work_seconds_total{role="worker",stage="training"}': 1e-6,
        'ledger_work_seconds_total{role="aggregator",stage="validating"}': 1e-6,
    }
    for expr, least in moved.items():
        wait_for(lambda: prom.value(expr) >= least, 60, f"{expr} >= {least} in Prometheus", run.procs)
    # the counters moved during the job: Prometheus scraped them at 0 before they rose
    for expr in ('ledger_rounds_done_total{role="worker"}', 'ledger_contributions_verified_total'):
        assert prom.value(f"min_over_time({expr}[10m])") == 0 < prom.value(f"max_over_time({expr}[10m])"), expr
    blocks = prom.query('max_over_time(ledger_last_block[10m])')
    got = sorted(s["metric"]["job"] for s in blocks)
    assert got == sorted(set(run.ports) - {"watch"}), got
    assert min(float(s["value"][1]) for s in blocks) > 0, blocks
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    for expr in exprs:
        q = expr.replace("$job", ".+").replace("$__rate_interval", "1m").replace("$__range", "5m")
        assert prom.query(q), f"the dashboard's query {expr!r} returned no series"


def test_a_stopped_worker_is_flagged_late_before_the_deadline(run, browser, tmp_path):
    run.start_aggregators()
    stopped = address(W[2])
    assert run.workers[2].wait(timeout=300) == 0, log_text(run.workers[2])   # --rounds 1: it stopped after round 1
    wait_for(lambda: run.env.ledger.job(run.job).current_round == 2, 300, "round 2 to open", run.procs)
    deadline = run.env.ledger.round(run.job, 2).deadline
    wait_for(lambda: run.env.ledger.round(run.job, 2).submissions == 2, 120, "the two live workers' submissions",
             run.procs)
    if browser.js("location.href") != run.url + "/":
        browser.open(run.url + "/")
    late = wait_for(lambda: browser.js("[...document.querySelectorAll('#late .late')].map(e => [e.dataset.party, e.dataset.lateFor])"),
                    60, "the late flag on the page", run.procs)
    assert late == [[stopped, "submit round 2"]]
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(_get(run.url + "/metrics").decode())}
    flags = {(s.labels["party"], s.labels["late_for"]): s.value for s in families["ledger_watch_party_late"].samples
             if s.labels["role"] == "worker" and s.labels["ledger_job"] == str(run.job)}
    assert flags == {(stopped, "submit round 2"): 1.0, **{(address(k), ""): 0.0 for k in W[:2]}}, flags
    assert time.time() < deadline, "flagged only after the deadline"
    assert "late: submit round 2" in browser.js("document.querySelector('#parties').textContent")
    shot = browser.screenshot(tmp_path / "watch-late.png")
    if os.environ.get("LEDGER_UPDATE_DOCS"):      # README's picture: LEDGER_UPDATE_DOCS=1 pytest tests/e2e/test_watch.py
        shutil.copy(shot, ROOT / "docs" / "watch.png")
    if run.prometheus:
        wait_for(lambda: run.prometheus.value(f'ledger_watch_party_late{{party="{stopped}"}}') == 1, 30,
                 "the late flag in Prometheus", run.procs)


def test_history_follow_prints_each_event_as_it_lands_and_stops_on_ctrl_c(run):
    run.start_aggregators()
    wait_for(lambda: log_text(run.follow).count("ProposalRevealed  round 1") == 2, 300,
             "both reveals of round 1 in `history --follow`", run.procs)
    out = log_text(run.follow)
    lines = out.splitlines()
    assert lines[0].split("  ")[2] == "JobCreated" and "RoundOpened  round 1" in lines[1]
    # two sent directly, the third in the relay's batch
    direct = [ln.split("  ")[4] for ln in lines if "UpdateSubmitted  round 1" in ln]
    batched = [ln.split("submissions of ")[1].split("  ")[0] for ln in lines if "BatchSubmitted  round 1" in ln]
    assert sorted(direct + batched) == sorted(address(k) for k in W), out
    assert out.index("UpdateSubmitted") < out.index("ProposalCommitted") < out.index("ProposalRevealed")
    assert len(lines) == len(set(lines)), "an event printed twice"
    run.follow.send_signal(signal.SIGINT)
    assert run.follow.wait(timeout=30) == 130
    assert log_text(run.follow).splitlines()[-1] == "stopped by SIGINT" and "Traceback" not in log_text(run.follow)


def test_watch_stops_cleanly_with_its_page_open(run, browser):
    """Last: SIGINT to `ledger watch` while a page holds its event stream open."""
    if browser.js("location.href") != run.url + "/":
        browser.open(run.url + "/")
    wait_for(lambda: browser.js("document.getElementById('conn').textContent") == "live", 60, "the page's stream")
    run.watch.send_signal(signal.SIGINT)
    assert run.watch.wait(timeout=30) == 130, log_text(run.watch)
    out = log_text(run.watch)
    assert out.splitlines()[-1] == "stopped by SIGINT" and "Traceback" not in out, out
