"""Availability griefing and verified inference, through a real anvil, the embedded
store and role processes:

- a worker that withholds its bytes while the round is judged (the quorum records
  UNAVAILABLE) and publishes them afterwards leaves a consistent record: AUDIT OK with
  a note, and `ledger generate` runs;
- an accepted contribution that disappears later is reported as unavailable now (AUDIT
  INCOMPLETE, the final model not provable), never as a wrong verdict;
- aggregators pin what they fetched and judged, and what they merged;
- `generate` loads exactly the model the audit checked, even when a round finalizes
  between the audit and the load.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from ledger.store import checkpoint
from ledger.config import load_settings
from ledger.digest import to_hex
from ledger.store.embedded import EmbeddedStore
from ledger.protocol.verdicts import Verdict
from support import address, chain_of_its_own, keys, wait_for

HONEST, LATE, RAW = keys(3, "avail-w")
AGG = keys(1, "avail-agg")[0]
SOLO = keys(1, "avail-solo")[0]


def _junk(tag: str) -> bytes:
    return checkpoint.encode({"x": np.zeros(4, np.float32)}, {"tag": tag})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with chain_of_its_own(tmp_path_factory, "availability") as env:
        griefed = env.create_job([HONEST, LATE, RAW], [AGG], quorum=1, rounds=1)
        two = env.create_job([SOLO], [AGG], quorum=1, rounds=2)
        procs = [env.spawn(HONEST, "worker", "run", "--job", str(griefed), "--no-progress", "--poll", "0.3"),
                 env.spawn(AGG, "aggregator", "run", "--job", str(griefed), "--poll", "0.3"),
                 env.spawn(SOLO, "worker", "run", "--job", str(two), "--no-progress", "--poll", "0.3", "--rounds", "1"),
                 env.spawn(AGG, "aggregator", "run", "--job", str(two), "--poll", "0.3")]
        # LATE withholds: its bytes are only in a store nobody else reads. RAW publishes
        # without pinning.
        parent = env.ledger.round(griefed, 1).parent
        private = EmbeddedStore(env.settings.data_dir.parent / "late-private")
        late_bytes = _junk("late")
        late = private.put(late_bytes)
        raw = env.store.put(_junk("raw"))
        for key, obj in ((LATE, late), (RAW, raw)):
            env.as_party(key).submit_update(griefed, 1, parent, obj.digest, obj.cid, obj.size, 8)
        wait_for(lambda: env.ledger.job(griefed).completed, 300, "the griefed job", procs)
        wait_for(lambda: env.ledger.job(two).current_round == 2, 300, "round 1 of the two-round job", procs)
        yield env, {"griefed": griefed, "two": two, "late": late, "late_bytes": late_bytes, "raw": raw, "procs": procs}


def _auditor(env, tmp_path, store_dir=None):
    return load_settings({"data_dir": tmp_path / "auditor", "rpc_url": env.ledger.chain.rpc_url,
                          "contract": env.ledger.address, "store_path": store_dir or env.settings.store_dir},
                         env={}, config_file=None)


def _audit(env, tmp_path, job, store_dir=None):
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store
    from node.roles.audit import audit_job

    s = _auditor(env, tmp_path, store_dir)
    return audit_job(open_ledger(s), open_store(s), job, replay="none", evaluate_merged=False)


def _cli(env, tmp_path, *args, store_dir=None):
    s = _auditor(env, tmp_path, store_dir)
    e = {k: v for k, v in env.env().items() if not k.startswith("LEDGER_")}
    e.update(LEDGER_DATA_DIR=str(s.data_dir), LEDGER_RPC_URL=s.rpc_url, LEDGER_CONTRACT=s.contract,
             LEDGER_STORE_DIR=str(s.store_dir))
    return subprocess.run([sys.executable, "-m", "ledger_cli", *args], capture_output=True, text=True, env=e, timeout=300)


def _verdict_of(env, job, key):
    subs = env.ledger.submissions(job, 1)
    (p,) = env.ledger.proposals(job, 1)
    return p.verdicts[[s.worker for s in subs].index(address(key))]


def test_withheld_then_published_is_consistent_and_generate_runs(world, tmp_path):
    env, w = world
    job = w["griefed"]
    assert _verdict_of(env, job, LATE) == Verdict.UNAVAILABLE and _verdict_of(env, job, HONEST) == Verdict.ACCEPTED
    before = _audit(env, tmp_path, job)
    assert before.ok, [d.line() for d in before.discrepancies]
    env.store.put(w["late_bytes"])  # published after the round was judged
    after = _audit(env, tmp_path, job)
    assert after.ok, [d.line() for d in after.discrepancies + after.unavailable]
    assert any(n.party == address(LATE) and n.actual == "still unavailable" for n in before.notes)
    (note,) = [n for n in after.notes if n.party == address(LATE)]
    assert note.actual == "retrievable now" and "consistent" in note.detail
    r = _cli(env, tmp_path, "audit", "--job", str(job), "--replay", "none", "--no-progress")
    assert r.returncode == 0 and "AUDIT OK" in r.stdout and "retrievable now" in r.stdout, r.stdout + r.stderr
    g = _cli(env, tmp_path, "generate", "--job", str(job), "--prompt", "ROMEO:", "--tokens", "8")
    assert g.returncode == 0 and "ROMEO:" in g.stdout, g.stdout + g.stderr


def test_accepted_contribution_gone_later_is_unavailable_not_a_wrong_verdict(world, tmp_path):
    env, w = world
    job = w["griefed"]
    honest = next(s for s in env.ledger.submissions(job, 1) if s.worker == address(HONEST))
    copy = tmp_path / "store-copy"
    shutil.copytree(env.settings.store_dir, copy)
    for p in EmbeddedStore(copy).paths_of(honest.cid):
        p.unlink()
    report = _audit(env, tmp_path, job, store_dir=copy)
    assert report.discrepancies == [], [d.line() for d in report.discrepancies]
    assert report.status == "INCOMPLETE" and not report.provable
    where = {(d.round, d.party, d.check) for d in report.unavailable}
    assert (1, address(HONEST), "availability") in where and (1, "", "merge") in where
    r = _cli(env, tmp_path, "audit", "--job", str(job), "--replay", "none", "--no-progress", store_dir=copy)
    assert r.returncode == 3 and "AUDIT INCOMPLETE" in r.stdout and "AUDIT FAILED" not in r.stdout, r.stdout
    g = _cli(env, tmp_path, "generate", "--job", str(job), "--prompt", "x", "--tokens", "4", store_dir=copy)
    assert g.returncode == 3 and "not provable now" in g.stderr and "Traceback" not in g.stderr, g.stderr


def test_aggregator_pins_what_it_verified_and_merged(world):
    env, w = world
    job = w["griefed"]
    pinned = set(env.store.pinned())
    rd = env.ledger.round(job, 1)
    assert w["raw"].cid in pinned  # published unpinned by its worker; the aggregator fetched and judged it
    assert rd.merged_cid in pinned


def test_generate_loads_the_model_the_audit_checked(world, tmp_path):
    from ledger.ethereum.deploy import open_ledger
    from ledger.store import open_store
    from node.commands.generate import generate_verified

    env, w = world
    job = w["two"]
    report = _audit(env, tmp_path, job)
    round1 = env.ledger.round(job, 1).merged_digest
    assert report.ok and report.latest_digest == to_hex(round1) and report.final_digest is None
    assert report.unfinished == "job unfinished: round 2 of 2 open"
    # Round 2 finalizes between the audit and the load.
    procs = w["procs"] + [env.spawn(SOLO, "worker", "run", "--job", str(job), "--no-progress", "--poll", "0.3")]
    wait_for(lambda: env.ledger.job(job).completed, 300, "round 2", procs)
    assert env.ledger.job(job).current_parent != round1
    s = _auditor(env, tmp_path)
    g = generate_verified(open_ledger(s), open_store(s), job, "ROMEO:", max_new_tokens=8, report=report)
    assert g.model_digest == to_hex(round1)
