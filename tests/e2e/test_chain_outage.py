"""Chain outages and rollbacks: a real anvil with a state file is killed with SIGKILL
while workers and aggregators run, and restarted on its data directory a few seconds
later, once from an older state dump (a rollback of several blocks, erasing events
the roles had seen) and once from whatever it last wrote. The roles ride it out: no
role exits before the job completes, each says when the chain went and came back,
nothing is lost or duplicated, and the audit passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from eth_account import Account

from ledger.services import anvil
from ledger.services.procs import pid_alive
from support import DEV0, Env, keys, log_text, wait_for

WORKERS = keys(2, "outage-w")
AGGS = keys(3, "outage-a")


def _kill_chain(settings) -> int:
    """kill -9 the chain; returns the head it had."""
    info = anvil.service(settings).running()
    from web3 import HTTPProvider, Web3

    head = Web3(HTTPProvider(info.url)).eth.block_number
    os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return head


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(port: int, name: str, **labels) -> float | None:
    """One sample of a role's /metrics, parsed by prometheus_client."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_roles_ride_out_chain_outages_and_rollbacks(settings):
    from ledger.ethereum.deploy import deploy, open_ledger
    from ledger.store import open_store

    up = anvil.chain_up(settings)
    port = up.info.port
    env = None
    try:
        deploy(settings, Account.from_key(DEV0), notify=lambda m: None)
        env = Env(settings, open_ledger(settings, Account.from_key(DEV0)), open_store(settings))
        job = env.create_job(WORKERS, AGGS, quorum=2, rounds=3, round_duration=300)
        a, b = WORKERS
        w = lambda k, *more: env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3", *more)
        metrics_port = _free_port()     # the first aggregator's Prometheus metrics count its outages
        roles = [env.spawn(k, "aggregator", "run", "--job", str(job), "--poll", "0.3",
                           *(("--metrics-port", str(metrics_port)) if k == AGGS[0] else ())) for k in AGGS]
        once = [w(a, "--rounds", "1"), w(b, "--rounds", "1")]
        state = settings.chain_dir.resolve() / anvil.STATE_FILE
        good = settings.chain_dir.resolve() / anvil.GOOD_FILE

        # Round 2 opens with no worker in it: keep a complete dump of that state.
        wait_for(lambda: env.ledger.job(job).current_round >= 2, 240, "round 2", roles + once)
        # The keeper copies a dump within a moment of anvil writing it: a copy made more
        # than one interval after round 2 was seen holds round 2.
        dumped = time.time() + settings.state_interval + 0.5
        wait_for(lambda: good.exists() and good.stat().st_mtime > dumped, 30, "a dump of round 2", roles)
        old_dump = good.read_bytes()
        # Worker A submits round 2 and sees it on chain; then the chain dies and comes back
        # from the older dump: A's submission is erased, and A must notice and submit again.
        roles.append(w(a))
        wait_for(lambda: env.ledger.round(job, 2).submissions == 1, 120, "A's round 2 submission", roles)
        wait_for(lambda: "round 2: submitted; waiting" in log_text(roles[-1]), 60, "A to see its submission", roles)
        head_before = _kill_chain(settings)
        state.write_bytes(old_dump)
        time.sleep(3)
        anvil.chain_up(settings, port=port)
        assert env.ledger.chain.block_number() < head_before - 2, "the restart did not roll the chain back"
        wait_for(lambda: env.ledger.round(job, 2).submissions == 1, 120, "A to submit round 2 again", roles)
        # it noticed the erased submission (its log line follows the receipt the chain already shows)
        wait_for(lambda: log_text(roles[-1]).count("round 2: submitted Qm") == 2, 60, "A's second submission logged", roles)
        time.sleep(settings.state_interval + 1)  # anvil dumped the state it is now in

        # A plain kill -9 while the roles wait; back from whatever anvil last wrote.
        _kill_chain(settings)
        time.sleep(2)
        anvil.chain_up(settings, port=port)
        wait_for(lambda: _metric(metrics_port, "ledger_outages_total", service="chain") == 2, 60,
                 "two chain outages in the aggregator's metrics", roles)
        assert _metric(metrics_port, "ledger_outage_seconds_total", service="chain") >= 2
        assert _metric(metrics_port, "ledger_outages_total", service="storage") == 0
        roles.append(w(b))
        wait_for(lambda: env.ledger.job(job).completed, 300, "the job to complete", roles)
        for p in roles + once:
            try:
                rc = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{p.args} did not exit after the job completed:\n{log_text(p)[-3000:]}")
            text = log_text(p)
            assert rc == 0, f"{p.args} exited {rc}:\n{text[-3000:]}"
            assert "Traceback" not in text and "error: " not in text
        logs = [log_text(p) for p in roles]
        # the three aggregators and worker A were up through both outages
        assert sum(t.count("chain unreachable at http://127.0.0.1") >= 2 and "chain back at" in t for t in logs) == 4, logs[-2][-3000:]
        for r in (1, 2, 3):
            subs = env.ledger.submissions(job, r)
            assert sorted(s.worker for s in subs) == sorted(Account.from_key(k).address for k in WORKERS)
            assert len(env.ledger.proposals(job, r)) <= len(AGGS)
        e = {k: v for k, v in env.env().items()}
        a = subprocess.run([sys.executable, "-m", "ledger_cli", "audit", "--job", str(job), "--replay", "none", "--no-progress"],
                           capture_output=True, text=True, env=e, timeout=300)
        assert a.returncode == 0 and "AUDIT OK" in a.stdout, a.stdout + a.stderr
    finally:
        if env:
            env.stop_all()
        anvil.chain_down(settings)


def test_a_reorg_without_outage_is_noticed_and_erased_events_redone(deployed):
    """The chain swaps its recent blocks for others while the roles stay connected
    (evm_revert, then more blocks than were erased, so the head only moves forward):
    a worker whose submission was erased notices at once that the block it last saw
    has another hash, and submits again; it does not wait for its idle re-read."""
    env = deployed
    a, b = WORKERS
    job = env.create_job(WORKERS, AGGS[:1], quorum=1, rounds=2, round_duration=300)
    w = lambda k, *more: env.spawn(k, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3", *more)
    roles = [env.spawn(AGGS[0], "aggregator", "run", "--job", str(job), "--poll", "0.3")]
    once = [w(a, "--rounds", "1"), w(b, "--rounds", "1")]
    wait_for(lambda: env.ledger.job(job).current_round >= 2, 240, "round 2", roles + once)
    rpc = env.ledger.chain.w3.provider
    snapshot = rpc.make_request("evm_snapshot", [])["result"]
    roles.append(w(a))
    wait_for(lambda: "round 2: submitted; waiting" in log_text(roles[-1]), 120, "A's round 2 submission", roles)
    head = env.ledger.chain.block_number()
    assert rpc.make_request("evm_revert", [snapshot])["result"] is True
    assert env.ledger.round(job, 2).submissions == 0
    rpc.make_request("anvil_mine", [head - env.ledger.chain.block_number() + 5])
    assert env.ledger.chain.block_number() > head
    # IDLE_REREAD is 30 s: noticing within 10 s is the hash check, not the safety net.
    # Both, in either order: anvil may put the erased transaction back into its pool and
    # mine it before the worker's next poll, so the count alone can come first.
    wait_for(lambda: env.ledger.round(job, 2).submissions == 1 and "chain rolled back" in log_text(roles[-1]),
             10, "A to notice the rollback and its submission to be back", roles)
    roles.append(w(b))
    wait_for(lambda: env.ledger.job(job).completed, 240, "the job to complete", roles)
    for p in roles + once:
        assert p.wait(timeout=60) == 0, log_text(p)[-3000:]
