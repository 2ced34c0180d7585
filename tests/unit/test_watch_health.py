"""``ledger.monitor.watch.health`` and ``view`` on a job's history built from the contract's own
record types, at chosen clock times: who is late for what, and only before the deadline.
(The end-to-end test of a stopped worker on the live page is in test_watch.py.)"""

from __future__ import annotations

from ledger.ethereum.contract import Commit, JobInfo, Proposal, RoundInfo, Submission
from ledger.trail.history import JobHistory, RoundHistory
from ledger.monitor.watch import health, view

W = ["0x" + f"{i:040x}" for i in (1, 2, 3)]
A = ["0x" + f"{i:040x}" for i in (0xA1, 0xA2, 0xA3)]
T0 = 1_000_000
D = b"\x11" * 32


def _job() -> JobInfo:
    return JobInfo(job_id=1, owner=W[0], config_digest=D, config_cid="", config_size=0, genesis_digest=D,
                   genesis_cid="", genesis_size=0, workers=W, aggregators=A, quorum=2, round_duration=100,
                   num_rounds=2, min_submissions=1, cid_version=0, current_round=1, current_parent=D,
                   current_parent_cid="", current_parent_size=0, completed=False, created_block=1, proposal_window=50)


def _history(subs=(), commits=(), reveals=(), status="open", commit_deadline=T0 + 150) -> JobHistory:
    info = RoundInfo(job_id=1, round=1, parent=D, deadline=T0 + 100, submissions=len(subs), commitment=D,
                     status=status, merged_digest=D, merged_cid="", merged_size=0, outcome=b"\0" * 32, accepted=0,
                     proposals=len(reveals), commits=len(commits), commit_deadline=commit_deadline,
                     reveal_deadline=commit_deadline + 50, expected=3)
    rh = RoundHistory(
        round=1, info=info,
        submissions=[Submission(1, 1, n, w, D, "Qm", 10, 40, timestamp=t) for n, (w, t) in enumerate(subs)],
        commits=[Commit(1, 1, a, D, commit_deadline, 0, "", 0, timestamp=t) for a, t in commits],
        proposals=[Proposal(1, 1, a, D, "Qm", 10, D, 3, [0] * len(subs), 0, "", 0, timestamp=t) for a, t in reveals])
    return JobHistory(job=_job(), events=[], rounds=[rh])


def test_a_worker_is_late_once_others_submitted_late_after_seconds_ago():
    h = _history(subs=[(W[0], T0 + 10), (W[1], T0 + 12)])
    assert health(h, T0 + 12, late_after=5) == []                      # too soon to say
    late = health(h, T0 + 16, late_after=5)
    assert [(x.party, x.role, x.late_for, x.deadline) for x in late] == [(W[2], "worker", "submit round 1", T0 + 100)]
    assert "others did it 6s ago" in late[0].why
    assert health(h, T0 + 101, late_after=5) == []                     # the deadline passed: no longer "before"


def test_nobody_submitted_every_worker_is_late_near_the_deadline():
    h = _history()
    assert health(h, T0 + 50, late_after=20) == []
    assert [x.party for x in health(h, T0 + 85, late_after=20)] == W


def test_an_aggregator_is_late_to_commit_then_to_reveal():
    subs = [(w, T0 + 5) for w in W]
    h = _history(subs=subs, commits=[(A[0], T0 + 20)], status="closed", commit_deadline=T0 + 70)
    late = health(h, T0 + 31, late_after=10)
    assert sorted((x.party, x.late_for) for x in late) == [(A[1], "commit round 1"), (A[2], "commit round 1")]
    assert health(h, T0 + 25, late_after=10) == []
    # commits over: the one that committed and has not revealed is late once another revealed
    h = _history(subs=subs, commits=[(A[0], T0 + 20), (A[1], T0 + 21)], reveals=[(A[0], T0 + 72)],
                 status="closed", commit_deadline=T0 + 70)
    assert [(x.party, x.late_for) for x in health(h, T0 + 83, late_after=10)] == [(A[1], "reveal round 1")]


def test_the_view_names_each_contribution_state_and_each_party_last_action():
    subs = [(w, T0 + 5) for w in W]
    h = _history(subs=subs, commits=[(A[0], T0 + 20)], status="closed", commit_deadline=T0 + 70)
    v = view(h, T0 + 40, late_after=10)
    assert [c["state"] for c in v["rounds"][0]["submissions"]] == ["submitted"] * 3
    assert v["rounds"][0]["phase"] == "commit"
    last = {p["address"]: (p["last_action"], p["idle_seconds"]) for p in v["parties"]}
    assert last[W[0]] == ("submitted round 1", 35) and last[A[0]] == ("committed round 1", 20)
    assert last[A[1]] == ("nothing yet", None)
    assert {x["party"] for x in v["late"]} == {A[1], A[2]}
    assert v["money"] == [] and not v["job"]["funded"]


def test_watch_and_metrics_refuse_a_host_name_and_follow_refuses_json(tmp_path, capsys, monkeypatch):
    """One error line each, exit 2, before anything listens or reads the chain."""
    import ledger_cli

    for k in [k for k in __import__("os").environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("LEDGER_DATA_DIR", str(tmp_path))
    for argv, says in ((["watch", "--job", "1", "--host", "localhost"], "--host 'localhost' is not an IP address"),
                       (["history", "--job", "1", "--follow", "--json"], "--follow prints one line per event")):
        code = ledger_cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], (argv, err)
