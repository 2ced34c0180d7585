"""Gas per TrainingLedger operation, measured from real receipts on a private anvil.

Starts its own anvil (ledger.services.anvil, a temporary data directory, any free port),
deploys the committed artifact, and for 4, 16 and 64 workers runs three jobs.
Workers and aggregators are deterministic keys (keccak of a label, distinct per job,
so no balance or storage slot is shared between jobs) funded with anvil_setBalance.

1. An unfunded job without stakes, through two finalized rounds (every worker submits;
   each of the 3 aggregators commits, then one reveal that does not finalize and one
   that does; every worker discloses first, the job having a disclosure window), a
   round skipped by closeRound after its deadline with too few submissions, and a last
   round whose three reveals disagree, skipped by closeRound for want of a quorum.
   Every reveal carries its Settlement: credit 1 + i to accepted worker index i, 0 to
   the one rejected (verdict 8, not a cheating reason), nobody slashed.
2. A funded, staked job (createJob sends the reward; every named worker posts its
   stake, then submits): four rounds that every worker submits to and a quorum
   finalizes. Rounds 1 and 2 credit every worker (1 + i), so their finalizing reveals
   pay all of them and the two aggregators of the quorum: round 1 the first payment to
   each balance, round 2 a repeated one. Round 3 rejects the last worker for cheating
   (verdict 9, replay) and slashes it. Round 4's reveal also completes the job (every
   stake and the pool's dust go back to balances). Then every worker withdraws.
3. An open, staked job (maxWorkers = workers + 3, at most 128): all but the last worker
   submit to round 1; after its deadline (the round closed to submissions) three
   newcomers join (fewer if 128 would be exceeded: none with 128 workers, shown "-"),
   then one of them leaves before it is active and the last named worker, which did
   not submit, leaves too.
4. A job of 16 aggregators whose workers (keys holding no ether) sign their
   submissions (EIP-712) and one relayer sends each round's in one submitBatch:
   createJob's gas with 16 aggregators, and a batch's gas over the contributions it
   carries, every worker in one batch (rounds 1 and 2: the second rewrites what the
   first created), and one batch of a quarter of the workers.

Prints the table of the unfunded job, the proposal cost per aggregator per round
(commit + reveal), a second table of the operations of the funded and open jobs, and
whether the median submitUpdate (unstaked and staked workers alike) meets the
40,000-gas target (README, "Gas"). Stops anvil by PID and removes the data
directory at the end.

example:
  .venv/bin/python bench/gas.py                  # 4, 16 and 64 workers
  .venv/bin/python bench/gas.py --workers 8 --json gas.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402
from web3.logs import DISCARD  # noqa: E402

from ledger.services import anvil  # noqa: E402
from ledger.ethereum.artifacts import load_artifact  # noqa: E402
from ledger.ethereum.deploy import deploy_contracts  # noqa: E402
from ledger.protocol.batch import sign_submission  # noqa: E402
from ledger.store.cid import cid_from_chain  # noqa: E402
from ledger.ethereum.chain import Chain  # noqa: E402
from ledger.config import load_settings  # noqa: E402
from ledger.protocol import committee  # noqa: E402
from ledger.ethereum.contract import JobParams, TrainingLedger  # noqa: E402
from ledger.protocol.settlement import Settlement  # noqa: E402
from ledger.tables import text_table  # noqa: E402

TARGET = 40_000
BATCH_TARGET = 9_500    # gas per contribution in a batch at 64 workers (README "Many parties")
BATCH_AGGS = 16
COMMITTEE = 3
CEILING = 45_000
FUNDS = 10**21  # 1,000 ETH each
N_AGGS = 3
QUORUM = 2
DURATION = 3600
# the funded job: its reward pool, each worker's stake, the slash and the quorum's share
REWARD = 4 * 10**18
STAKE = 10**17
SLASH_BPS = 5_000
AGGREGATOR_BPS = 1_000
FUNDED_ROUNDS = 4
JOINERS = 3
REJECTED = 8  # VALIDATION_LOSS: rejected, not slashed
CHEATED = 9   # REPLAY: rejected and slashed


def key_for(label: str):
    """A deterministic local account (bench only: never holds real funds)."""
    return Account.from_key(keccak(text=f"training-ledger bench {label}"))


def sha(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def fund(chain: Chain, addresses) -> None:
    for a in addresses:
        chain.w3.provider.make_request("anvil_setBalance", [a, hex(FUNDS)])


def warp(chain: Chain, seconds: int) -> None:
    chain.w3.provider.make_request("evm_increaseTime", [int(seconds)])
    chain.w3.provider.make_request("evm_mine", [])


def median(xs: list[int]) -> int | None:
    return int(statistics.median(xs)) if xs else None


class Job:
    """One job of the bench: its parties, and the helpers that run its rounds."""

    def __init__(self, chain: Chain, ledger: TrainingLedger, label: str, n_workers: int, **extra):
        self.chain, self.ledger, self.n = chain, ledger, n_workers
        self.workers = [key_for(f"{label} worker {i}") for i in range(n_workers)]
        self.aggs = [key_for(f"{label} aggregator {i}") for i in range(N_AGGS)]
        fund(chain, [a.address for a in self.workers + self.aggs])
        self.label = label
        self.params = JobParams(
            config_digest=sha("config"), config_cid=sha("config cid"), config_size=2_345,
            genesis_digest=sha(f"genesis {n_workers}"), genesis_cid=sha("genesis cid"), genesis_size=3_412_345,
            workers=[w.address for w in self.workers], aggregators=[a.address for a in self.aggs], quorum=QUORUM,
            round_duration=DURATION, min_submissions=max(1, n_workers // 2), cid_version=0,
            proposal_window=600, disclosure_window=120, **extra,
        )
        rc = chain.transact(ledger.contract.functions.createJob(self.params.to_abi()), context="create job",
                            value=int(self.params.reward))
        self.create_gas = rc["gasUsed"]
        (created,) = ledger.contract.events.JobCreated().process_receipt(rc, errors=DISCARD)
        self.id = int(created["args"]["jobId"])
        self.submit: list[int] = []
        self.disclose: list[int] = []

    def submit_all(self, r: int, parent: bytes, workers=None, disclose: bool = True) -> None:
        """Every worker (of ``workers``) submits in index order; once the round closed
        early, each discloses what the draw asked (so commits open)."""
        workers = self.workers if workers is None else workers
        for i, w in enumerate(workers):
            rc = self.ledger.with_account(w).submit_update(
                self.id, r, parent, sha(f"ckpt {self.label} {r} {i}"), sha(f"cid {self.label} {r} {i}"),
                3_412_345 + i, 1_600 + i,
            )
            self.submit.append(rc["gasUsed"])
        if disclose:
            for w in workers:
                self.disclose.append(self.ledger.with_account(w).disclose(self.id, r)["gasUsed"])

    def settlement(self, r: int, verdicts: list[int]) -> Settlement:
        """Credit 1 + i to accepted worker index i, slash the cheats (submissions are in index order)."""
        index = {w.lower(): i for i, w in enumerate(self.ledger.round_workers(self.id, r))}
        credits = [0] * len(index)
        slashed = 0
        for w, v in zip(self.workers, verdicts):
            i = index[w.address.lower()]
            if v == 0:
                credits[i] = 1 + i
            elif v == CHEATED:
                slashed |= 1 << i
        return Settlement(tuple(credits), slashed)

    def commit_reveal(self, r: int, merges: list[bytes], reveals: int, verdicts: list[int],
                      commits: tuple[list, list] | None = None) -> list[dict]:
        """Every aggregator commits (so reveals open at once), the first ``reveals`` reveal;
        returns their receipts. ``commits``: (first commit gas, later commit gas) lists to extend."""
        info = self.ledger.round(self.id, r)
        settlement = self.settlement(r, verdicts)
        opened = []
        for k, (a, merged) in enumerate(zip(self.aggs, merges)):
            salt = sha(f"salt {self.label} {r} {k}")
            outcome = TrainingLedger.outcome_of(merged, sha(f"mcid {r}"), 3_412_999, verdicts, settlement)
            rc = self.ledger.with_account(a).commit_proposal(self.id, r,
                                                             TrainingLedger.commit_hash_of(outcome, salt, a.address))
            if commits is not None:
                (commits[0] if k == 0 else commits[1]).append(rc["gasUsed"])
            opened.append((a, merged, salt))
        return [
            self.ledger.with_account(a).reveal_proposal(self.id, r, info.commitment, verdicts, merged, sha(f"mcid {r}"),
                                                        3_412_999, salt, settlement)
            for a, merged, salt in opened[:reveals]
        ]


def events_named(ledger: TrainingLedger, rc: dict, name: str) -> list:
    return list(getattr(ledger.contract.events, name)().process_receipt(rc, errors=DISCARD))


def measure_unfunded(chain: Chain, ledger: TrainingLedger, n_workers: int) -> dict:
    job = Job(chain, ledger, f"n{n_workers}", n_workers, num_rounds=4)
    commit_first: list[int] = []
    commit: list[int] = []
    reveal: list[int] = []
    finalize: list[int] = []
    verdicts = [0] * n_workers
    verdicts[-1] = REJECTED  # one rejected contribution

    parent = job.params.genesis_digest
    for r in (1, 2):
        job.submit_all(r, parent)
        merged = sha(f"merged {n_workers} {r}")
        gas = [rc["gasUsed"] for rc in job.commit_reveal(r, [merged] * N_AGGS, QUORUM, verdicts,
                                                          (commit_first, commit))]
        reveal.extend(gas[:-1])
        finalize.append(gas[-1])
        assert ledger.round(job.id, r).status == "finalized"
        parent = merged
    # round 3: nobody submits; after the deadline anyone may skip it
    warp(chain, DURATION + 1)
    rc = ledger.with_account(job.aggs[0]).close_round(job.id, 3)
    close_gas = rc["gasUsed"]
    assert ledger.round(job.id, 3).status == "skipped"
    # round 4: every aggregator reveals a different outcome; once all are revealed, no quorum can follow
    job.submit_all(4, parent)
    reveal.extend(rc["gasUsed"] for rc in job.commit_reveal(4, [sha(f"view {k}") for k in range(N_AGGS)], N_AGGS,
                                                            verdicts, (commit_first, commit)))
    rc = ledger.with_account(job.aggs[0]).close_round(job.id, 4)
    no_quorum_gas = rc["gasUsed"]
    assert ledger.round(job.id, 4).skip_reason == "no-quorum"
    c, v, f = median(commit + commit_first), median(reveal), median(finalize)
    submit, disclose = job.submit, job.disclose
    return {
        "createJob": job.create_gas,
        "submit_first": submit[0],
        "submit_median": median(submit),
        "submit_max": max(submit),
        "submit_min": min(submit),
        "submits": len(submit),
        "commit_first": median(commit_first),
        "commit": median(commit),
        "reveal": v,
        "reveal_finalizes": f,
        "per_aggregator": c + v,
        "per_aggregator_finalizing": c + f,
        "closeRound": close_gas,
        "closeRound_no_quorum": no_quorum_gas,
        "disclose_first": disclose[0],
        "disclose": median(disclose),
    }


def measure_funded(chain: Chain, ledger: TrainingLedger, n_workers: int) -> dict:
    job = Job(chain, ledger, f"n{n_workers} funded", n_workers, num_rounds=FUNDED_ROUNDS, reward=REWARD,
              worker_stake=STAKE, slash_bps=SLASH_BPS, aggregator_bps=AGGREGATOR_BPS)
    stake = [ledger.with_account(w).stake(job.id, STAKE)["gasUsed"] for w in job.workers]
    accepted = [0] * n_workers
    cheat = [0] * (n_workers - 1) + [CHEATED]
    finals: dict[int, dict] = {}
    parent = job.params.genesis_digest
    for r, verdicts in ((1, accepted), (2, accepted), (3, cheat), (4, accepted)):
        job.submit_all(r, parent)
        merged = sha(f"merged funded {n_workers} {r}")
        rcs = job.commit_reveal(r, [merged] * N_AGGS, QUORUM, verdicts)
        finals[r] = rcs[-1]
        assert ledger.round(job.id, r).status == "finalized"
        parent = merged
    # what the receipts say each finalizing reveal did (honest rows: the payouts really happened)
    paid = {r: events_named(ledger, rc, "RewardPaid") for r, rc in finals.items()}
    for r in (1, 2, 4):
        assert sum(1 for e in paid[r] if not e["args"]["aggregator"]) == n_workers, (r, len(paid[r]))
        assert sum(1 for e in paid[r] if e["args"]["aggregator"]) == QUORUM
    assert len(events_named(ledger, finals[3], "Slashed")) == 1
    assert sum(1 for e in paid[3] if not e["args"]["aggregator"]) == n_workers - 1
    assert len(events_named(ledger, finals[4], "StakeReturned")) == n_workers
    assert ledger.job(job.id).completed
    withdraw = [ledger.with_account(w).withdraw()["gasUsed"] for w in job.workers]
    withdraw_agg = [ledger.with_account(a).withdraw()["gasUsed"] for a in job.aggs[:QUORUM]]
    return {
        "funded_createJob": job.create_gas,
        "stake_first": stake[0],
        "stake": median(stake),
        "staked_submit_median": median(job.submit),
        "staked_submit_max": max(job.submit),
        "reveal_funded_first": finals[1]["gasUsed"],
        "reveal_funded": finals[2]["gasUsed"],
        "reveal_slash": finals[3]["gasUsed"],
        "reveal_completes": finals[4]["gasUsed"],
        "paid_per_reveal": len(paid[1]),
        "withdraw_worker": median(withdraw),
        "withdraw_aggregator": median(withdraw_agg),
    }


def measure_open(chain: Chain, ledger: TrainingLedger, n_workers: int) -> dict:
    joiners = min(JOINERS, 128 - n_workers)
    job = Job(chain, ledger, f"n{n_workers} open", n_workers, num_rounds=2, worker_stake=STAKE,
              max_workers=n_workers + joiners)
    for w in job.workers:
        ledger.with_account(w).stake(job.id, STAKE)
    # every worker but the last submits; the round closes to submissions at its deadline
    job.submit_all(1, job.params.genesis_digest, job.workers[:-1], disclose=False)
    warp(chain, DURATION + 1)
    assert ledger.round(job.id, 1).is_closed
    newcomers = [key_for(f"n{n_workers} open joiner {i}") for i in range(joiners)]
    fund(chain, [a.address for a in newcomers])
    join = [ledger.with_account(a).join(job.id, STAKE, sha(f"data {i}"), 1_000_000 + i)["gasUsed"]
            for i, a in enumerate(newcomers)]
    out = {"join": median(join), "leave_joined": None, "leave_active": None}
    if newcomers:
        out["leave_joined"] = ledger.with_account(newcomers[0]).leave(job.id)["gasUsed"]
    if n_workers > 1:
        out["leave_active"] = ledger.with_account(job.workers[-1]).leave(job.id)["gasUsed"]
        assert ledger.worker_state(job.id, job.workers[-1].address) == ("left", 0)
    return out


def measure_batched(chain: Chain, ledger: TrainingLedger, n_workers: int) -> dict:
    label = f"n{n_workers} batched"
    workers = [key_for(f"{label} worker {i}") for i in range(n_workers)]
    aggs = [key_for(f"{label} aggregator {i}") for i in range(BATCH_AGGS)]
    relayer = key_for(f"{label} relayer")
    fund(chain, [relayer.address, *(a.address for a in aggs)])
    params = JobParams(
        config_digest=sha("config"), config_cid=sha("config cid"), config_size=2_345,
        genesis_digest=sha(f"genesis {label}"), genesis_cid=sha("genesis cid"), genesis_size=3_412_345,
        workers=[w.address for w in workers], aggregators=[a.address for a in aggs], quorum=BATCH_AGGS // 2 + 1,
        round_duration=DURATION, min_submissions=1, cid_version=0, proposal_window=600, num_rounds=3,
        committee_size=COMMITTEE, vote_window=300,
    )
    rc = chain.transact(ledger.contract.functions.createJob(params.to_abi()), context="create job")
    (created,) = ledger.contract.events.JobCreated().process_receipt(rc, errors=DISCARD)
    job, create_gas = int(created["args"]["jobId"]), int(rc["gasUsed"])
    relay = ledger.with_account(relayer)

    def batch(r: int, parent: bytes, who) -> int:
        signed = [sign_submission(w, chain.chain_id, ledger.address, job, r, parent, sha(f"ckpt {label} {r} {i}"),
                                  cid_from_chain(sha(f"cid {label} {r} {i}"), 3_412_345 + i, 0), 3_412_345 + i,
                                  1_600 + i)
                  for i, w in enumerate(who)]
        return int(relay.submit_batch(job, r, parent, params.workers, signed)["gasUsed"])

    def finalize(r: int, merged: bytes, credits=None) -> None:
        info = ledger.round(job, r)
        verdicts = [0] * info.submissions
        settlement = Settlement(tuple(credits or (0,) * n_workers))
        outcome = TrainingLedger.outcome_of(merged, sha(f"mcid {r}"), 3_412_999, verdicts, settlement)
        quorum = aggs[: params.quorum]
        for a in quorum:
            ledger.with_account(a).commit_proposal(job, r, TrainingLedger.commit_hash_of(outcome, sha(f"s {r}"), a.address))
        warp(chain, 601)   # commits close at the deadline: not every aggregator commits here
        for a in quorum:
            ledger.with_account(a).reveal_proposal(job, r, info.commitment, verdicts, merged, sha(f"mcid {r}"),
                                                   3_412_999, sha(f"s {r}"), settlement)

    first = batch(1, params.genesis_digest, workers)
    # committees of COMMITTEE out of the 16 aggregators: each member votes once on its share
    # (drawn on chain once the seed block, 2 after the batch's, is mined; the contract checks the members)
    chain.nudge(), chain.nudge(), chain.nudge()
    draw_gas = int(relay.draw_committees(job, 1)["gasUsed"])
    comms = committee.committees(ledger.committees_drawn(job, 1).seed, job, 1, n_workers, params.aggregators, COMMITTEE)
    votes = 0
    for a in aggs:
        mine = [i for i, m in comms.items() if a.address in m]
        if mine:
            ballot = committee.encode_ballot(committee.Entry(i, 0, 1_000 + i) for i in mine)
            votes += int(ledger.with_account(a).vote(job, 1, ballot)["gasUsed"])
    finalize(1, sha(f"{label} m1"), [1_000 + i for i in range(n_workers)])   # the committees' decisions
    again = batch(2, sha(f"{label} m1"), workers)
    warp(chain, DURATION + 1)
    finalize(2, sha(f"{label} m2"))
    quarter = max(1, n_workers // 4)   # the rest would follow in later batches, or alone
    part = batch(3, sha(f"{label} m2"), workers[:quarter])
    return {"batch_createJob": create_gas, "batch_first": first / n_workers, "batch_again": again / n_workers,
            "batch_quarter": part / quarter, "batch_quarter_n": quarter, "votes": votes / n_workers,
            "draw": draw_gas / n_workers}


def measure(chain: Chain, ledger: TrainingLedger, n_workers: int) -> dict:
    t0 = time.perf_counter()
    row = {"workers": n_workers, "aggregators": N_AGGS, "quorum": QUORUM}
    row.update(measure_unfunded(chain, ledger, n_workers))
    row.update(measure_funded(chain, ledger, n_workers))
    row.update(measure_open(chain, ledger, n_workers))
    row.update(measure_batched(chain, ledger, n_workers))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _fmt(v) -> str:
    return "-" if v is None else f"{v:,}"


def render(rows: list[dict], versions: str) -> str:
    cols = [
        ("workers", "workers"),
        ("createJob", "createJob"),
        ("submit_first", "submit first"),
        ("submit_median", "submit median"),
        ("submit_max", "submit max"),
        ("disclose", "disclose median"),
        ("commit_first", "commit (first)"),
        ("commit", "commit"),
        ("reveal", "reveal"),
        ("reveal_finalizes", "reveal (finalizes)"),
        ("closeRound", "closeRound (too few)"),
        ("closeRound_no_quorum", "closeRound (no quorum)"),
    ]
    out = [f"TrainingLedger gas per operation ({versions}; real receipts, 3 aggregators, quorum 2)", ""]
    out += text_table([h for _, h in cols], [[f"{r[k]:,}" for k, _ in cols] for r in rows],
                      right=set(range(len(cols))))
    out.append("")
    out.append("proposal cost per aggregator per round (median commit + reveal): "
               + ", ".join(f"{r['per_aggregator']:,} ({r['workers']} workers)" for r in rows))
    out.append("  the aggregator whose reveal finalizes (commit + finalizing reveal): "
               + ", ".join(f"{r['per_aggregator_finalizing']:,}" for r in rows))

    # the funded, staked and open jobs: one row per operation, one column per worker count
    ops = [
        ("funded_createJob", "createJob (reward + stake)"),
        ("stake", "stake (median)"),
        ("staked_submit_median", "submit median (staked worker)"),
        ("staked_submit_max", "submit max (staked worker)"),
        ("reveal_funded_first", "reveal (finalizes, pays all: first payouts)"),
        ("reveal_funded", "reveal (finalizes, pays all: again)"),
        ("reveal_slash", "reveal (finalizes, slashes 1, pays the rest)"),
        ("reveal_completes", "reveal (finalizes last round: pays, returns stakes)"),
        ("withdraw_worker", "withdraw (worker, median)"),
        ("withdraw_aggregator", "withdraw (aggregator, median)"),
        ("join", "join (open job, median)"),
        ("leave_joined", "leave (joined, not active yet)"),
        ("leave_active", "leave (active, did not submit)"),
    ]
    out.append("")
    out.append(f"funded, staked and open jobs (reward {REWARD / 10**18:g} ETH over {FUNDED_ROUNDS} rounds, "
               f"stake {STAKE / 10**18:g} ETH, slash {SLASH_BPS} bps, quorum share {AGGREGATOR_BPS} bps; "
               "every worker credited unless slashed)")
    out.append("")
    out += text_table(["operation"] + [f"{r['workers']} workers" for r in rows],
                      [[h] + [_fmt(r[k]) for r in rows] for k, h in ops],
                      right=set(range(1, len(rows) + 1)))
    out.append("")
    out.append("a funded finalizing reveal over an unfunded one (payouts to every worker and the quorum): "
               + ", ".join(f"+{r['reveal_funded_first'] - r['reveal_finalizes']:,} ({r['workers']} workers)"
                           for r in rows))
    if len(rows) >= 2:
        lo, hi = min(rows, key=lambda r: r["workers"]), max(rows, key=lambda r: r["workers"])
        if hi["workers"] > lo["workers"]:
            span = hi["workers"] - lo["workers"]
            out.append("  per credited worker (slope from "
                       f"{lo['workers']} to {hi['workers']} workers): "
                       f"{(hi['reveal_funded_first'] - lo['reveal_funded_first']) / span:,.0f} gas first payout, "
                       f"{(hi['reveal_funded'] - lo['reveal_funded']) / span:,.0f} again")

    out.append("")
    out.append(f"batched submissions (submitBatch: workers sign, one relayer sends; {BATCH_AGGS} aggregators)")
    out.append("")
    bops = [
        ("batch_createJob", f"createJob ({BATCH_AGGS} aggregators)"),
        ("batch_first", "per contribution, every worker in one batch (round 1)"),
        ("batch_again", "per contribution, every worker in one batch (round 2)"),
        ("batch_quarter", "per contribution, a quarter of the workers in one batch"),
        ("votes", f"committee votes per contribution (committees of {COMMITTEE}, each member one vote)"),
        ("draw", "drawCommittees per contribution (closed by its last submission)"),
    ]
    out += text_table(["operation"] + [f"{r['workers']} workers" for r in rows],
                      [[h] + [_fmt(round(r[k])) for r in rows] for k, h in bops],
                      right=set(range(1, len(rows) + 1)))
    widest = max(rows, key=lambda r: r["workers"])
    per = max(widest["batch_first"], widest["batch_again"])
    out.append(f"gas per contribution at {widest['workers']} workers: {per:,.0f} (batched; target <= "
               f"{BATCH_TARGET:,}: {'MET' if per <= BATCH_TARGET else 'NOT MET'}); "
               f"a direct submitUpdate: {widest['submit_median']:,}")
    out.append("")

    worst = max(max(r["submit_median"], r["staked_submit_median"]) for r in rows)
    ok = worst <= TARGET
    medians = ", ".join(f"{r['submit_median']:,} ({r['workers']} workers)" for r in rows)
    out.append(f"median submitUpdate: {medians}")
    out.append("  staked workers: " + ", ".join(f"{r['staked_submit_median']:,} ({r['workers']} workers)"
                                                for r in rows))
    out.append(
        f"target <= {TARGET:,} gas: {'MET' if ok else 'NOT MET'}"
        + ("" if ok else f" (ceiling {CEILING:,}: {'within' if worst <= CEILING else 'EXCEEDED'})")
    )
    return "\n".join(out)


@contextmanager
def deployed_ledger():
    """(chain, a freshly deployed TrainingLedger, a line naming the versions) on an anvil of
    its own, stopped and removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="ledger-gas-"))
    settings = load_settings({"data_dir": tmp, "chain_port": 0}, env={}, config_file=None)
    up = anvil.chain_up(settings)
    try:
        deployer = key_for("deployer")
        chain = Chain.connect(up.info.url, deployer)
        fund(chain, [deployer.address])
        art = load_artifact()
        rc, _libraries = deploy_contracts(chain)
        ledger = TrainingLedger(chain, rc["contractAddress"], art["abi"])
        client = chain.w3.client_version
        settings_s = art["compiler"]["settings"]
        versions = (
            f"{client.split('/')[0]} {client.split('/')[1] if '/' in client else ''}".strip()
            + f", solc {art['compiler']['version'].split('+')[0]}"
            + f" optimizer {settings_s['optimizer']['runs']} runs{' viaIR' if settings_s.get('viaIR') else ''}"
            + f", deploy {rc['gasUsed']:,} gas"
        )
        yield chain, ledger, versions
    finally:
        anvil.chain_down(settings)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="4,16,64", help="comma-separated worker counts (default 4,16,64; 2 to 128)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if not counts or any(not 2 <= n <= 128 for n in counts):
        ap.error("--workers: each count must be between 2 and 128 (a round rejects one worker)")

    with deployed_ledger() as (chain, ledger, versions):
        rows = []
        for n in counts:
            rows.append(measure(chain, ledger, n))
            print(f"  measured {n} workers in {rows[-1]['seconds']}s", file=sys.stderr)
        print(render(rows, versions))
        if args.json:
            Path(args.json).write_text(json.dumps({"versions": versions, "target": TARGET, "rows": rows}, indent=2) + "\n")
        return 0 if max(max(r["submit_median"], r["staked_submit_median"]) for r in rows) <= CEILING else 1


if __name__ == "__main__":
    sys.exit(main())
