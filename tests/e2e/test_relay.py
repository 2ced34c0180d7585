"""Batched submissions through the real roles: a relay process (`ledger relay run`)
takes workers' signed submissions over HTTP and sends each round's in one
`submitBatch`; workers run with `--relay`. A relay cannot withhold a contribution: a
worker whose relay accepts and then sits on its submission (a black hole, here a plain
HTTP server that answers 202 and does nothing) sends it itself before the deadline.
The aggregator judges relayed and direct submissions alike and the audit says OK.

The relay's intake, in process against the same chain: every refusal is one line
with the right HTTP status (not JSON, too big, another deployment, a forged
signature, not a worker, a closed round, a wrong parent), and a good post is sent.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from eth_account import Account

from ledger.protocol.batch import sign_submission
from ledger.store.cid import cid_of_bytes
from node.roles.relay import PATH, Relay, RelayOptions
from support import address, chain_of_its_own, keys, log_text, wait_for

pytestmark = pytest.mark.slow

WORKERS = keys(3, "relay-w")
AGG = keys(1, "relay-agg")[0]
RELAYER = keys(1, "relay-r")[0]
INTAKE_W = keys(2, "relay-intake-w")
INTAKE_AGG = keys(1, "relay-intake-agg")[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "relay") as env:
        env.fund(*WORKERS, AGG, RELAYER, *INTAKE_W, INTAKE_AGG)
        yield env


class _BlackHole(BaseHTTPRequestHandler):
    """A relay that says yes and does nothing."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"status": "queued"}'
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_workers_submit_through_a_relay_and_cannot_be_withheld(world):
    env = world
    job = env.create_job(WORKERS, [AGG], quorum=1, rounds=2, round_duration=60, min_submissions=2)
    relay = env.spawn(RELAYER, "relay", "run", "--listen", "127.0.0.1:0", "--flush-before", "20", "--poll", "0.2")
    url = wait_for(lambda: (m := re.search(r"relay listening on (http://\S+)", log_text(relay))) and m.group(1),
                   60, "the relay to listen", [relay])
    hole = ThreadingHTTPServer(("127.0.0.1", 0), _BlackHole)
    threading.Thread(target=hole.serve_forever, daemon=True).start()
    try:
        procs = [env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3", "--relay", url)
                 for k in WORKERS[:2]]
        # the third worker's relay swallows its submission: it falls back 48 s before the deadline
        procs.append(env.spawn(WORKERS[2], "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3",
                               "--relay", f"http://127.0.0.1:{hole.server_address[1]}", "--relay-fallback", "48"))
        procs.append(env.spawn(AGG, "aggregator", "run", "--job", str(job), "--poll", "0.3"))
        wait_for(lambda: env.ledger.job(job).completed, 400, "the job to complete", [relay, *procs])
    finally:
        hole.shutdown()
        hole.server_close()
    relayer = address(RELAYER)
    for r in (1, 2):
        subs = env.ledger.submissions(job, r)
        sender = {s.worker: env.ledger.w3.eth.get_transaction(s.tx_hash)["from"] for s in subs}
        assert sender == {address(WORKERS[0]): relayer, address(WORKERS[1]): relayer,
                          address(WORKERS[2]): address(WORKERS[2])}, sender
        # both relayed entries are one transaction
        assert len({s.tx_hash for s in subs if sender[s.worker] == relayer}) == 1
        (final,) = [p for p in env.ledger.proposals(job, r) if p.outcome == env.ledger.round(job, r).outcome]
        assert list(final.verdicts) == [0, 0, 0], log_text(procs[-1])[-3000:]
    assert "relayed 2 submission(s)" in log_text(relay)
    assert "submitted" in log_text(procs[0]) and "through the relay's batch" in log_text(procs[0])
    assert "has not landed 48s before the deadline; submitting directly" in log_text(procs[2])
    for p in procs:
        assert p.wait(timeout=60) == 0, log_text(p)[-3000:]
    out, report = env.audit(job)
    assert out.returncode == 0 and report and report["ok"], out.stdout[-3000:] + out.stderr
    relay.terminate()
    assert relay.wait(timeout=30) != 0 and "Traceback" not in log_text(relay)


def test_the_relay_refuses_in_one_line_and_sends_what_it_takes(world):
    env = world
    job = env.create_job(INTAKE_W, [INTAKE_AGG], quorum=1, rounds=1, round_duration=600, min_submissions=1)
    ledger = env.as_party(RELAYER)
    relay = Relay(ledger, RelayOptions(flush_before=5))
    stop = threading.Event()
    urls = []
    server = threading.Thread(target=relay.serve, kwargs={"ready": urls.append, "stop": stop}, daemon=True)
    server.start()
    wait_for(lambda: urls, 30, "the relay to listen")
    url = urls[0] + PATH
    parent = env.ledger.round(job, 1).parent
    w0, w1 = (Account.from_key(k) for k in INTAKE_W)

    def sub(account, **kw):
        args = dict(chain_id=ledger.chain_id, contract=ledger.address, job_id=job, round=1, parent=parent,
                    digest=bytes(32 * [7]), cid=cid_of_bytes(b"intake").cid, size=1000, num_samples=10)
        args.update(kw)
        return sign_submission(account, args.pop("chain_id"), args.pop("contract"), **args).to_json()

    def post(body, **kw):
        r = requests.post(url, data=body if isinstance(body, bytes) else json.dumps(body), timeout=30, **kw)
        return r.status_code, r.json().get("error", r.json().get("status"))

    try:
        cases = [
            (b"not json", 400, "not JSON"),
            (b"x" * 20_000, 413, "under"),
            ({"hello": 1}, 400, "not a signed submission: missing field"),
            (sub(w0, contract=env.ledger.chain.address), 400, "signed for chain"),
            ({**sub(w0), "worker": w1.address}, 400, "signature is not"),
            (sub(Account.from_key(AGG)), 403, "not an active worker"),
            (sub(w0, round=2), 409, "not open"),
            (sub(w0, parent=bytes(32)), 409, "signed on parent"),
            (sub(w0, job_id=999), 404, "no job 999"),
        ]
        for body, status, words in cases:
            got = post(body)
            assert got[0] == status and words in got[1], (body if isinstance(body, dict) else body[:20], got)
            assert "\n" not in got[1]
        assert requests.get(urls[0] + "/nope", timeout=10).status_code == 404
        health = requests.get(urls[0] + "/v1/health", timeout=10).json()
        assert health == {"chain_id": ledger.chain_id, "contract": ledger.address, "relayer": address(RELAYER)}
        # a good one is queued (twice: the second is a no-op), then sent when both workers posted
        assert post(sub(w0)) == (202, "queued")
        assert post(sub(w0)) == (200, "queued")
        assert not env.ledger.submissions(job, 1)
        assert post(sub(w1, digest=bytes(32 * [8]))) == (202, "queued")
        wait_for(lambda: len(env.ledger.submissions(job, 1)) == 2, 30, "the batch")
        assert [s["count"] for s in relay.sent] == [2]
        # posting again once on chain: refused, the worker knows it is done
        assert post(sub(w0))[0] == 409
    finally:
        stop.set()
        server.join(timeout=30)
