"""The contributors' table of ``ledger history`` (``ledger.trail.history.worker_table``), its
text, its JSON and the HTML report's "Contributors" table, from histories built by hand:
no chain is needed, the rows are a pure function of what the chain would return."""

from __future__ import annotations

import hashlib
import json
import re

from ledger.ethereum.contract import ChainEvent, JobInfo, Proposal, RoundInfo, Submission
from ledger.protocol.settlement import Settlement
from ledger.trail.history import JobHistory, RoundHistory, render_timeline, render_workers, to_json, worker_table
from ledger.units import eth
from ledger.protocol.verdicts import Verdict

ETH = 10**18


def addr(label: str) -> str:
    return "0x" + hashlib.sha256(("addr:" + label).encode()).hexdigest()[:40]


def h32(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


W = [addr(f"worker{i}") for i in range(4)]
A = [addr(f"aggregator{i}") for i in range(3)]


def job_info(workers=W[:3], reward=0, stake=0, completed=True, num_rounds=3, max_workers=0) -> JobInfo:
    return JobInfo(
        job_id=1, owner=addr("creator"), config_digest=h32("config"), config_cid="bafyconfig", config_size=10,
        genesis_digest=h32("genesis"), genesis_cid="bafygenesis", genesis_size=10, workers=list(workers),
        aggregators=list(A), quorum=2, round_duration=60, num_rounds=num_rounds, min_submissions=1, cid_version=1,
        current_round=num_rounds, current_parent=h32("final"), current_parent_cid="bafyfinal", current_parent_size=10,
        completed=completed, created_block=1, max_workers=max_workers, worker_stake=stake, slash_bps=5000,
        aggregator_bps=1000, reward=reward, pool=0,
    )


def round_info(r: int, status: str, outcome: bytes = b"") -> RoundInfo:
    return RoundInfo(job_id=1, round=r, parent=h32(f"parent{r}"), deadline=1_700_000_000 + 100 * r, submissions=0,
                     commitment=h32(f"c{r}"), status=status, merged_digest=h32(f"merged{r}"),
                     merged_cid=f"bafymerged{r}" if status == "finalized" else "", merged_size=10, outcome=outcome,
                     accepted=0, proposals=0, skip_reason="too-few-submissions" if status == "skipped" else "")


def sub(r: int, index: int, worker: str, samples: int) -> Submission:
    return Submission(job_id=1, round=r, index=index, worker=worker, digest=h32(f"s{r}{index}"), cid=f"bafys{r}{index}",
                      size=10, num_samples=samples, tx_hash="0x" + "ab" * 32)


def reveal(r: int, aggregator: str, outcome: bytes, verdicts, credits, slashed=0) -> Proposal:
    return Proposal(job_id=1, round=r, aggregator=aggregator, merged_digest=h32(f"merged{r}"),
                    merged_cid=f"bafymerged{r}", merged_size=10, outcome=outcome,
                    accepted=sum(1 for v in verdicts if v == 0), verdicts=list(verdicts), block=10 * r,
                    tx_hash="0x" + "cd" * 32, log_index=0, settlement=Settlement(tuple(credits), slashed))


def ev(name: str, **args) -> ChainEvent:
    return ChainEvent(name=name, args={"jobId": 1, **args}, block=1, tx_hash="0x" + "ef" * 32, log_index=0, job_id=1)


def finalized_round(r: int, subs, verdicts, credits, slashed=0, dissent=None) -> RoundHistory:
    """A finalized round: aggregators 0 and 1 reveal the outcome; aggregator 2 dissents
    with ``dissent`` (verdicts, credits) when given."""
    outcome = h32(f"outcome{r}")
    props = [reveal(r, A[0], outcome, verdicts, credits, slashed), reveal(r, A[1], outcome, verdicts, credits, slashed)]
    if dissent:
        props.append(reveal(r, A[2], h32(f"lie{r}"), *dissent))
    return RoundHistory(round=r, info=round_info(r, "finalized", outcome), submissions=subs, proposals=props)


def paid_history(rewarded: bool = True) -> JobHistory:
    """3 rounds, workers 0..2, aggregators 0..2 (quorum 2).

    Round 1: workers 0 and 1 accepted (credits 3 and 5); worker 2 rejected for a replay
    that does not land (slashed); aggregator 2 dissents, accepting everything.
    Round 2: worker 0 accepted (credit 4), worker 1 rejected (validation loss, no slash).
    Round 3: skipped (worker 0 alone submitted; judged by no one).
    Rewarded: 1 ETH funded, 0.1 ETH stakes, 10% to the quorum's aggregators, 50% slash."""
    r1 = finalized_round(1, [sub(1, 0, W[0], 100), sub(1, 1, W[1], 200), sub(1, 2, W[2], 300)],
                         [Verdict.ACCEPTED, Verdict.ACCEPTED, Verdict.REPLAY], (3, 5, 0), slashed=0b100,
                         dissent=([0, 0, 0], (1, 1, 1)))
    r2 = finalized_round(2, [sub(2, 0, W[1], 200), sub(2, 1, W[0], 100)],
                         [Verdict.VALIDATION_LOSS, Verdict.ACCEPTED], (4, 0, 0))
    r3 = RoundHistory(round=3, info=round_info(3, "skipped"), submissions=[sub(3, 0, W[0], 100)])
    events = []
    if rewarded:
        stake = ETH // 10
        events = [ev("RewardFunded", amount=ETH)] + [ev("StakePosted", worker=w, amount=stake) for w in W[:3]]
        # what the contract pays (ledger.protocol.settlement.expected_payments of these rounds): each
        # finalized round shares out pool / rounds left, 10% of it to the 2 agreeing aggregators
        events += [
            ev("RewardPaid", round=1, account=W[0], amount=112_500_000_000_000_000, aggregator=False),
            ev("RewardPaid", round=1, account=W[1], amount=187_500_000_000_000_000, aggregator=False),
            ev("RewardPaid", round=1, account=A[0], amount=16_666_666_666_666_666, aggregator=True),
            ev("RewardPaid", round=1, account=A[1], amount=16_666_666_666_666_666, aggregator=True),
            ev("Slashed", round=1, worker=W[2], amount=stake // 2),
            ev("RewardPaid", round=2, account=W[0], amount=322_500_000_000_000_001, aggregator=False),
            ev("RewardPaid", round=2, account=A[0], amount=17_916_666_666_666_666, aggregator=True),
            ev("RewardPaid", round=2, account=A[1], amount=17_916_666_666_666_666, aggregator=True),
            ev("StakeReturned", worker=W[0], amount=stake),
            ev("StakeReturned", worker=W[1], amount=stake),
            ev("StakeReturned", worker=W[2], amount=stake // 2),
            ev("PoolReturned", creator=addr("creator"), amount=358_333_333_333_333_335),
        ]
    info = job_info(reward=ETH if rewarded else 0, stake=ETH // 10 if rewarded else 0)
    return JobHistory(job=info, events=events, rounds=[r1, r2, r3])


def by_address(rows):
    return {(r.address, r.role): r for r in rows}


def test_worker_table_sums_credits_samples_rejections_and_payments():
    rows = worker_table(paid_history())
    assert [(r.address, r.role) for r in rows] == [(W[0], "worker"), (W[1], "worker"), (W[2], "worker"),
                                                  (A[0], "aggregator"), (A[1], "aggregator")]
    w0, w1, w2, a0, a1 = rows
    # accepted in two rounds: credits and samples summed; the skipped round's submission judged by no one
    assert (w0.index, w0.submitted, w0.accepted_rounds, w0.rejected) == (0, 3, [1, 2], [])
    assert (w0.samples, w0.credit) == (200, 7)
    assert w0.paid == 435_000_000_000_000_001 and w0.slashed == 0 and w0.returned == ETH // 10
    assert w0.staked == ETH // 10
    # accepted once, rejected once with its reason (the quorum's verdicts, not the dissent's)
    assert (w1.accepted_rounds, w1.samples, w1.credit) == ([1], 200, 5)
    assert w1.rejections == ["round 2: validation-loss"]
    assert w1.rejected == [(2, int(Verdict.VALIDATION_LOSS))]
    assert w1.paid == 187_500_000_000_000_000 and w1.slashed == 0
    # rejected and slashed: no credit (the dissent's credit 1 does not count), half its stake back
    assert (w2.accepted, w2.samples, w2.credit, w2.paid) == (0, 0, 0, 0)
    assert w2.rejections == ["round 1: replay"]
    assert (w2.slashed, w2.returned) == (ETH // 20, ETH // 20)
    # aggregators: only their reward shares; aggregator 2 dissented and was never paid
    assert a0.aggregator and a0.paid == a1.paid == 16_666_666_666_666_666 + 17_916_666_666_666_666
    assert (a0.submitted, a0.credit, a0.index) == (0, 0, None)
    assert A[2] not in {r.address for r in rows}
    # what was paid out and the pool returned: the reward and the slashed stake
    assert sum(r.paid for r in rows) + 358_333_333_333_333_335 == ETH + sum(r.slashed for r in rows)


def test_job_without_rewards_still_shows_contributions():
    h = paid_history(rewarded=False)
    rows = worker_table(h)
    assert [r.role for r in rows] == ["worker"] * 3  # no aggregator was paid
    w0, w1, w2 = rows
    assert (w0.accepted, w0.samples, w0.credit, w0.paid) == (2, 200, 7, 0)
    assert (w1.rejections, w1.credit, w1.paid) == (["round 2: validation-loss"], 5, 0)
    assert (w2.rejections, w2.slashed, w2.returned) == (["round 1: replay"], 0, 0)
    lines = render_workers(h)
    assert lines[0] == "contributors  (no reward)"
    row = next(l for l in lines if W[0] in l)
    assert row.split()[1:9] == ["worker", "3", "2", "200", "7", "0", "0", "0"]


def test_a_worker_without_submissions_and_a_joiner_get_their_own_indexes():
    """An open job: worker 3 joined for round 2, so round 1's credits have 3 entries and
    round 2's have 4 (a round's worker indexes are a prefix of the job's). Worker 2
    submitted nothing: a row of zeros. Worker 3 left with its stake refunded."""
    r1 = finalized_round(1, [sub(1, 0, W[1], 10)], [0], (0, 2, 0))
    r2 = finalized_round(2, [sub(2, 0, W[3], 30), sub(2, 1, W[1], 10)], [0, 0], (0, 1, 0, 6))
    events = [ev("WorkerJoined", worker=W[3], index=3, fromRound=2, dataRoot=b"", dataBytes=0),
              ev("StakePosted", worker=W[3], amount=5), ev("WorkerLeft", worker=W[3], refund=5)]
    h = JobHistory(job=job_info(workers=W, num_rounds=2, max_workers=8), events=events, rounds=[r1, r2])
    rows = by_address(worker_table(h))
    assert (rows[W[1], "worker"].credit, rows[W[1], "worker"].accepted_rounds) == (3, [1, 2])
    assert (rows[W[3], "worker"].index, rows[W[3], "worker"].credit, rows[W[3], "worker"].samples) == (3, 6, 30)
    assert rows[W[3], "worker"].left and rows[W[3], "worker"].returned == 5
    assert (rows[W[2], "worker"].submitted, rows[W[2], "worker"].credit) == (0, 0)
    assert "worker (left)" in "\n".join(render_workers(h))


def test_unfinished_and_unjudged_rounds_count_nothing():
    open_round = RoundHistory(round=1, info=round_info(1, "closed"), submissions=[sub(1, 0, W[0], 10)],
                              proposals=[reveal(1, A[0], h32("o"), [0], (9,))])
    h = JobHistory(job=job_info(completed=False, num_rounds=2), events=[], rounds=[open_round])
    w0 = worker_table(h)[0]
    assert (w0.submitted, w0.accepted, w0.rejected, w0.credit) == (1, 0, [], 0)


def test_eth_is_exact():
    assert eth(0) == "0"
    assert eth(ETH) == "1"
    assert eth(ETH // 10) == "0.1"
    assert eth(16_666_666_666_666_666) == "0.016666666666666666"
    assert eth(1) == "0.000000000000000001"
    assert eth(123 * ETH + 5) == "123.000000000000000005"
    assert eth(10**40 + 1) == "10000000000000000000000.000000000000000001"


def test_history_text_ends_with_the_contributors_table():
    h = paid_history()
    text = render_timeline(h)
    lines = text.splitlines()
    start = lines.index(next(l for l in lines if l.startswith("contributors")))
    assert lines[start] == ("contributors  (reward 1 ETH, 10% to the quorum's aggregators; stake 0.1 ETH per worker, "
                            "50% slashed for cheating; 0.358333333333333335 ETH returned to the creator)")
    assert start > next(i for i, l in enumerate(lines) if l.startswith("final model sha256"))
    table = lines[start + 1:]
    header = table[0].split()
    assert header == ["address", "role", "submitted", "accepted", "samples", "credit", "paid", "ETH", "slashed", "ETH",
                      "returned", "ETH", "rejected"]
    assert set(table[1].replace(" ", "")) == {"-"}
    rows = {l.split()[0]: l for l in table[2:]}
    assert list(rows) == [W[0], W[1], W[2], A[0], A[1]]
    assert rows[W[0]].split()[1:] == ["worker", "3", "2", "200", "7", "0.435000000000000001", "0", "0.1", "-"]
    assert rows[W[1]].split()[1:] == ["worker", "2", "1", "200", "5", "0.1875", "0", "0.1", "round", "2:",
                                      "validation-loss"]
    assert rows[W[2]].split()[1:] == ["worker", "1", "0", "0", "0", "0", "0.05", "0.05", "round", "1:", "replay"]
    assert rows[A[0]].split()[1:] == ["aggregator", "-", "-", "-", "-", "0.034583333333333332", "-", "-"]
    # numbers are right-aligned: each column ends where its header does
    paid_end = table[0].index("paid ETH") + len("paid ETH")
    assert all(l[:paid_end].endswith(cell) for l, cell in
               ((rows[W[0]], "0.435000000000000001"), (rows[W[2]], " 0"), (rows[A[0]], "0.034583333333333332")))
    assert re.search(r"^round 2  \[finalized\]", text, re.M) and "DISSENT" in text


def test_history_json_has_the_workers():
    doc = json.loads(to_json(paid_history()))
    workers = doc["workers"]
    assert [(w["address"], w["role"]) for w in workers][:3] == [(w, "worker") for w in W[:3]]
    w1 = workers[1]
    assert (w1["accepted"], w1["accepted_rounds"], w1["samples"], w1["credit"], w1["paid"]) == (
        1, [1], 200, 5, 187_500_000_000_000_000)
    assert w1["rejected"] == [{"round": 2, "verdict": int(Verdict.VALIDATION_LOSS), "label": "validation-loss"}]
    assert w1["rejections"] == ["round 2: validation-loss"]
    assert workers[2]["slashed"] == ETH // 20
    assert workers[3]["role"] == "aggregator" and workers[3]["index"] is None
    assert len(doc["rounds"]) == 3


# ---------------------------------------------------------------- HTML


def _report():
    from node.reports.findings import AuditReport, ContributionAudit, RoundAudit

    h = paid_history()
    rounds = []
    for rh in h.rounds:
        q = rh.quorum_proposals()
        contribs = [ContributionAudit(s, onchain_verdict=q[0].verdicts[s.index] if q else None,
                                      audit_verdict=q[0].verdicts[s.index] if q else 0) for s in rh.submissions]
        rounds.append(RoundAudit(round=rh.round, parent="0x" + rh.info.parent.hex(), status=rh.info.status,
                                 contributions=contribs))
    report = AuditReport(job_id=1, contract=addr("contract"), chain_id=31337, config_digest="0x" + "11" * 32,
                         genesis_digest="0x" + "22" * 32, merge_rule="fedavg", quorum=2, workers=W[:3],
                         aggregators=A, rounds=rounds, completed=True, num_rounds=3, current_round=3)
    return h, report


def _contributor_rows(page: str) -> dict:
    table = re.search(r'<table id="contributors".*?</table>', page, re.S).group(0)
    out = {}
    for m in re.finditer(r'<tr class="contributor[^"]*" data-address="([^"]+)" data-role="([^"]+)">(.*?)</tr>', table, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", m.group(3), re.S)]
        out[m.group(1), m.group(2)] = cells
    return out


def test_html_contributors_with_payments():
    from node.reports.html import render_html

    h, report = _report()
    page = render_html(report, contributors=worker_table(h))
    assert "<h2>Contributors</h2>" in page
    rows = _contributor_rows(page)
    assert list(rows) == [(W[0], "worker"), (W[1], "worker"), (W[2], "worker"), (A[0], "aggregator"),
                          (A[1], "aggregator")]
    assert rows[W[0], "worker"][2:] == ["3", "2", "200", "7", "0.435000000000000001 ETH", "0 ETH", "0.1 ETH", "-"]
    assert rows[W[1], "worker"][-1] == "round 2: validation-loss"
    assert rows[W[2], "worker"][-4:] == ["0 ETH", "0.05 ETH", "0.05 ETH", "round 1: replay"]
    assert rows[A[0], "aggregator"][6] == "0.034583333333333332 ETH"
    assert 'href="#round-1"' in page
    assert render_html(report, contributors=worker_table(h)) == page  # deterministic
    # a report carrying the rows renders the same
    report.contributors = worker_table(h)
    assert render_html(report) == page


def test_html_contributors_from_the_report_alone():
    from node.reports.html import render_html

    _, report = _report()
    page = render_html(report)
    rows = _contributor_rows(page)
    assert list(rows) == [(W[0], "worker"), (W[1], "worker"), (W[2], "worker")]
    assert rows[W[0], "worker"][2:] == ["3", "2", "200", "-"]  # no credit or payment columns
    assert rows[W[2], "worker"][-1] == "round 1: replay"
    assert "<th>credit</th>" not in page and "ledger history" in page
    # the page's sections are still the rounds only
    assert set(re.findall(r'<section[^>]* id="([^"]+)"', page)) == {"round-1", "round-2", "round-3"}
