"""`ledger round status` and `ledger round close`, through the real CLI against a real
anvil: a bystander (neither worker nor aggregator) closes stuck rounds, and every
refusal is one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import json

import pytest

from ledger.digest import sha256_bytes
from support import address, keys, wait_for

WORKERS = keys(2, "round-worker")
AGGS = keys(2, "round-agg")
BYSTANDER = keys(1, "round-bystander")[0]


def _refused(out, *words: str) -> str:
    """A refusal: exit 2, one line on stderr, no traceback, naming ``words``."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _status(env, job: int, r: int | None = None) -> dict:
    args = ["round", "status", "--job", str(job), "--json"] + (["--round", str(r)] if r else [])
    out = env.run(None, *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _advance(env, seconds: int) -> None:
    """Move the chain's clock on by ``seconds`` (and mine), rather than sleep."""
    w3 = env.ledger.chain.w3
    w3.provider.make_request("evm_increaseTime", [int(seconds)])
    w3.provider.make_request("evm_mine", [])


def _submit(env, key: str, job: int, r: int, tag: str) -> None:
    d = sha256_bytes(f"{tag}-{address(key)}".encode())
    parent = env.ledger.round(job, r).parent
    env.as_party(key).submit_update(job, r, parent, d, d, 1234, 10)


@pytest.fixture
def world(deployed):
    env = deployed
    env.fund(BYSTANDER)
    return env


def test_a_bystander_skips_a_round_nobody_submitted_to(world):
    env = world
    # rounds long enough that round 2 is still open after the CLI runs below on a loaded
    # machine: the clock is moved on past round 1's deadline, never waited for
    job = env.create_job(WORKERS[:1], AGGS[:1], quorum=1, rounds=2, round_duration=600, proposal_window=30)

    s = _status(env, job)
    assert s["round"] == 1 and s["status"] == "open" and s["submissions"] == 0 and s["workers"] == 1
    assert 0 < s["deadline_in_s"] <= 600 and s["close"]["accepted"] is False
    assert s["close"]["refusal"] == "RoundNotClosed" and "submissions" in s["waits_for"]
    text = env.run(None, "round", "status", "--job", str(job))
    assert text.returncode == 0 and "[open]" in text.stdout and "0/1" in text.stdout, text.stderr
    assert "UTC (in " in text.stdout and "close now    refused" in text.stdout

    # before the deadline: refused, one line, nothing sent
    line = _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1"),
                    "round 1 of job", "still open", "below the minimum 1", "deadline")
    assert "in " in line and "UTC" in line
    assert env.ledger.round(job, 1).status == "open"

    _advance(env, 601)
    s = _status(env, job, 1)
    assert s["status"] == "closed" and s["deadline_in_s"] < 0 and s["close"]["accepted"] is True
    assert s["close"]["skips_as"] == "too-few-submissions" and "anyone may close" in s["waits_for"]
    text = env.run(None, "round", "status", "--job", str(job), "--round", "1")
    assert "s ago)" in text.stdout and "close now    accepted" in text.stdout, text.stdout

    out = env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1")
    assert out.returncode == 0, out.stderr
    assert "skipped (too-few-submissions)" in out.stdout and address(BYSTANDER) in out.stdout
    assert "round 2 is open" in out.stdout
    rd = env.ledger.round(job, 1)
    assert rd.status == "skipped" and rd.skip_reason == "too-few-submissions"
    assert env.ledger.job(job).current_round == 2

    s = _status(env, job, 1)
    assert s["status"] == "skipped" and s["close"]["accepted"] is False and s["waits_for"].startswith("nothing")
    assert _status(env, job)["round"] == 2

    # refusals: each one line, exit 2
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1"),
             "round 1 of job", "already skipped", "too-few-submissions", "current round is 2")
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "7"), "has 2 round(s)", "no round 7")
    _refused(env.run(BYSTANDER, "round", "close", "--job", "999", "--round", "1"), "job 999 does not exist")
    _refused(env.run(None, "round", "status", "--job", "999"), "job 999 does not exist")
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "2"), "still open", "deadline")
    # usage errors are exit 2 too (argparse)
    bad = env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "outside" in bad.stderr

    # the last round: skipping it completes the job
    _advance(env, 601)
    out = env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "2")
    assert out.returncode == 0 and "the job is completed" in out.stdout, out.stderr
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "2"), "already skipped", "completed")
    assert env.ledger.job(job).completed


def test_a_bystander_skips_a_round_whose_proposals_found_no_quorum(world):
    env = world
    job = env.create_job(WORKERS[:1], AGGS, quorum=2, rounds=1, round_duration=120, proposal_window=60)
    _submit(env, WORKERS[0], job, 1, "noq")  # every worker submitted: the round is closed
    s = _status(env, job, 1)
    assert s["status"] == "closed" and s["submissions"] == 1 and s["commits"] == 0 and s["aggregators"] == 2
    assert "commits (0 of 2)" in s["waits_for"] and s["close"]["refusal"] == "ProposalWindowOpen"
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1"),
             "commit phase is still open", "0 of 2 aggregators committed")

    # two aggregators commit to different outcomes: the reveal phase opens
    p = [env.commit_as(k, job, 1, [0], sha256_bytes(f"merge {i}".encode()), sha256_bytes(f"merge {i}".encode()), 99)
         for i, k in enumerate(AGGS)]
    s = _status(env, job, 1)
    assert s["commits"] == 2 and "reveals (0 of 2 commits)" in s["waits_for"], s["waits_for"]
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1"),
             "reveal phase is still open", "0 of 2 commits revealed", "quorum 2")
    for k, prop in zip(AGGS, p):
        env.reveal_as(k, job, 1, prop)
    # every commit revealed, no two agree: no quorum can come, a close is accepted before the reveal deadline
    s = _status(env, job, 1)
    assert s["reveals"] == 2 and s["reveal_deadline_in_s"] > 0
    assert s["close"]["accepted"] is True and s["close"]["skips_as"] == "no-quorum"
    assert "nothing can bring a quorum" in s["waits_for"]
    out = env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1")
    assert out.returncode == 0 and "skipped (no-quorum)" in out.stdout, out.stderr
    assert env.ledger.round(job, 1).skip_reason == "no-quorum" and env.ledger.job(job).completed


def test_a_finalized_round_cannot_be_closed(world):
    env = world
    job = env.create_job(WORKERS, AGGS[:1], quorum=1, rounds=2, round_duration=120, proposal_window=60)
    for w in WORKERS:
        _submit(env, w, job, 1, "fin")
    merged = sha256_bytes(b"the merge")
    env.reveal_as(AGGS[0], job, 1, env.commit_as(AGGS[0], job, 1, [0, 0], merged, merged, 77))
    wait_for(lambda: env.ledger.round(job, 1).status == "finalized", 30, "round 1 to finalize")
    s = _status(env, job, 1)
    assert s["status"] == "finalized" and s["merged_digest"] == "0x" + merged.hex()
    assert s["close"]["refusal"] == "RoundAlreadyFinalized"
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "1"), "already finalized", merged.hex())
    _refused(env.run(BYSTANDER, "round", "close", "--job", str(job), "--round", "2"), "still open", "0 of 2 submitted")
    # a bystander with no account at all can read, but not send
    out = env.run(None, "round", "close", "--job", str(job), "--round", "2")
    assert out.returncode in (1, 2) and len(out.stderr.strip().splitlines()) == 1 and "account" in out.stderr


def test_a_round_waits_only_for_the_workers_the_chain_expects():
    """An open job's worker that left (or joined for a later round) is not counted among the
    round's workers: the chain's ``expected`` is, the roster only where the chain has none."""
    from types import SimpleNamespace

    from ledger_cli.round_cmds import waits_for

    job = SimpleNamespace(workers=["0xa", "0xb", "0xc"], aggregators=["0xd"], min_submissions=1, quorum=1,
                          current_round=2)
    rd = SimpleNamespace(status="open", submissions=1, expected=2, deadline=200, commits=0, commit_deadline=300,
                         proposals=0, reveal_deadline=400)
    assert waits_for(job, rd, now=100).startswith("submissions (1 of 2) until the deadline")
    rd.submissions = 2      # every expected worker submitted: on to the commits, not waiting for the one who left
    assert waits_for(job, rd, now=100).startswith("the aggregators' commits (0 of 1)")
    rd.expected, rd.submissions = 0, 1      # a chain that reports no count: the roster
    assert waits_for(job, rd, now=100).startswith("submissions (1 of 3)")
