"""Gas per TrainingLedger operation, measured from real receipts on a private anvil.

Starts its own anvil (ledger.anvil, a temporary data directory, any free port),
deploys the committed artifact, and for 4, 16 and 64 workers runs a job through
two finalized rounds (every worker submits; each of the 3 aggregators commits, then
one reveal that does not finalize and one that does; every worker discloses first,
the job having a disclosure window), a round skipped by closeRound
after its deadline with too few submissions, and a last round whose three reveals
disagree, skipped by closeRound for want of a quorum. Workers and aggregators are
deterministic keys (keccak of a label) funded with anvil_setBalance. Prints a table,
the proposal cost per aggregator per round (commit + reveal), and whether the median
submitUpdate meets the 40,000-gas target (DESIGN.md, "Gas"). Stops anvil by PID and
removes the data directory at the end.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402
from web3.logs import DISCARD  # noqa: E402

from ledger import anvil  # noqa: E402
from ledger.artifacts import load_artifact  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.config import load_settings  # noqa: E402
from ledger.contract import JobParams, TrainingLedger  # noqa: E402
from ledger.tables import text_table  # noqa: E402

TARGET = 40_000
CEILING = 45_000
FUNDS = 10**21  # 1,000 ETH each


def key_for(label: str):
    """A deterministic local account (bench only: never holds real funds)."""
    return Account.from_key(keccak(text=f"training-ledger bench {label}"))


def sha(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def fund(chain: Chain, addresses) -> None:
    for a in addresses:
        chain.w3.provider.make_request("anvil_setBalance", [a, hex(FUNDS)])


def measure(chain: Chain, ledger: TrainingLedger, n_workers: int, n_aggs: int = 3, quorum: int = 2) -> dict:
    workers = [key_for(f"n{n_workers} worker {i}") for i in range(n_workers)]
    aggs = [key_for(f"n{n_workers} aggregator {i}") for i in range(n_aggs)]
    fund(chain, [a.address for a in workers + aggs])
    duration = 3600
    params = JobParams(
        config_digest=sha("config"), config_cid=sha("config cid"), config_size=2_345,
        genesis_digest=sha(f"genesis {n_workers}"), genesis_cid=sha("genesis cid"), genesis_size=3_412_345,
        workers=[w.address for w in workers], aggregators=[a.address for a in aggs], quorum=quorum,
        round_duration=duration, num_rounds=4, min_submissions=max(1, n_workers // 2), cid_version=0,
        proposal_window=600, disclosure_window=120,
    )
    t0 = time.perf_counter()
    rc = chain.transact(ledger.contract.functions.createJob(params.to_abi()), context="create job")
    create_gas = rc["gasUsed"]
    (created,) = ledger.contract.events.JobCreated().process_receipt(rc, errors=DISCARD)
    job = int(created["args"]["jobId"])

    submit: list[int] = []
    commit_first: list[int] = []
    commit: list[int] = []
    reveal: list[int] = []
    finalize: list[int] = []
    disclose: list[int] = []

    def submit_all(r: int, parent: bytes) -> None:
        for i, w in enumerate(workers):
            rc = ledger.with_account(w).submit_update(
                job, r, parent, sha(f"ckpt {n_workers} {r} {i}"), sha(f"cid {n_workers} {r} {i}"),
                3_412_345 + i, 1_600 + i,
            )
            submit.append(rc["gasUsed"])
        # the round closed early: every worker discloses what the draw asked (so commits open)
        for w in workers:
            disclose.append(ledger.with_account(w).disclose(job, r)["gasUsed"])

    def commit_reveal(r: int, merges: list[bytes], reveals: int) -> list[int]:
        """Every aggregator commits (so reveals open at once), the first ``reveals`` reveal."""
        info = ledger.round(job, r)
        verdicts = [0] * n_workers
        verdicts[-1] = 8  # one rejected contribution
        opened = []
        for k, (a, merged) in enumerate(zip(aggs, merges)):
            salt = sha(f"salt {n_workers} {r} {k}")
            outcome = TrainingLedger.outcome_of(merged, sha(f"mcid {r}"), 3_412_999, verdicts)
            rc = ledger.with_account(a).commit_proposal(job, r, TrainingLedger.commit_hash_of(outcome, salt, a.address))
            (commit_first if k == 0 else commit).append(rc["gasUsed"])
            opened.append((a, merged, salt))
        gas = []
        for a, merged, salt in opened[:reveals]:
            rc = ledger.with_account(a).reveal_proposal(job, r, info.commitment, verdicts, merged, sha(f"mcid {r}"),
                                                        3_412_999, salt)
            gas.append(rc["gasUsed"])
        return gas

    parent = params.genesis_digest
    for r in (1, 2):
        submit_all(r, parent)
        merged = sha(f"merged {n_workers} {r}")
        gas = commit_reveal(r, [merged] * n_aggs, quorum)
        reveal.extend(gas[:-1])
        finalize.append(gas[-1])
        assert ledger.round(job, r).status == "finalized"
        parent = merged
    # round 3: nobody submits; after the deadline anyone may skip it
    chain.w3.provider.make_request("evm_increaseTime", [duration + 1])
    chain.w3.provider.make_request("evm_mine", [])
    rc = ledger.with_account(aggs[0]).close_round(job, 3)
    close_gas = rc["gasUsed"]
    assert ledger.round(job, 3).status == "skipped"
    # round 4: every aggregator reveals a different outcome; once all are revealed, no quorum can follow
    submit_all(4, parent)
    reveal.extend(commit_reveal(4, [sha(f"view {k}") for k in range(n_aggs)], n_aggs))
    rc = ledger.with_account(aggs[0]).close_round(job, 4)
    no_quorum_gas = rc["gasUsed"]
    assert ledger.round(job, 4).skip_reason == "no-quorum"
    c, v, f = int(statistics.median(commit + commit_first)), int(statistics.median(reveal)), int(statistics.median(finalize))
    return {
        "workers": n_workers,
        "aggregators": n_aggs,
        "quorum": quorum,
        "createJob": create_gas,
        "submit_first": submit[0],
        "submit_median": int(statistics.median(submit)),
        "submit_max": max(submit),
        "submit_min": min(submit),
        "submits": len(submit),
        "commit_first": int(statistics.median(commit_first)),
        "commit": int(statistics.median(commit)),
        "reveal": v,
        "reveal_finalizes": f,
        "per_aggregator": c + v,
        "per_aggregator_finalizing": c + f,
        "closeRound": close_gas,
        "closeRound_no_quorum": no_quorum_gas,
        "disclose_first": disclose[0],
        "disclose": int(statistics.median(disclose)),
        "seconds": round(time.perf_counter() - t0, 1),
    }


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
    worst = max(r["submit_median"] for r in rows)
    ok = worst <= TARGET
    medians = ", ".join(f"{r['submit_median']:,} ({r['workers']} workers)" for r in rows)
    out.append(f"median submitUpdate: {medians}")
    out.append(
        f"target <= {TARGET:,} gas: {'MET' if ok else 'NOT MET'}"
        + ("" if ok else f" (ceiling {CEILING:,}: {'within' if worst <= CEILING else 'EXCEEDED'})")
    )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="4,16,64", help="comma-separated worker counts (default 4,16,64; at most 128)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="ledger-gas-"))
    settings = load_settings({"data_dir": tmp, "chain_port": 0}, env={}, config_file=None)
    up = anvil.chain_up(settings)
    try:
        deployer = key_for("deployer")
        chain = Chain.connect(up.info.url, deployer)
        fund(chain, [deployer.address])
        art = load_artifact()
        factory = chain.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        rc = chain.transact(factory.constructor(), context="deploy")
        ledger = TrainingLedger(chain, rc["contractAddress"], art["abi"])
        client = chain.w3.client_version
        settings_s = art["compiler"]["settings"]
        versions = (
            f"{client.split('/')[0]} {client.split('/')[1] if '/' in client else ''}".strip()
            + f", solc {art['compiler']['version'].split('+')[0]}"
            + f" optimizer {settings_s['optimizer']['runs']} runs{' viaIR' if settings_s.get('viaIR') else ''}"
            + f", deploy {rc['gasUsed']:,} gas"
        )
        rows = []
        for n in counts:
            rows.append(measure(chain, ledger, n))
            print(f"  measured {n} workers in {rows[-1]['seconds']}s", file=sys.stderr)
        print(render(rows, versions))
        if args.json:
            Path(args.json).write_text(json.dumps({"versions": versions, "target": TARGET, "rows": rows}, indent=2) + "\n")
        return 0 if max(r["submit_median"] for r in rows) <= CEILING else 1
    finally:
        anvil.chain_down(settings)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
