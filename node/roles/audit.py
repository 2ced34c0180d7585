"""The auditor: re-verify a whole training history from the chain and storage alone.

It reads no local state of any worker or aggregator: the job, its rounds,
submissions, proposal commits and reveals, finalizations and skips come from chain
events and views (``ledger.history``); every artifact comes from storage and is
checked against its on-chain digest. It then re-runs the very verification and merge
code the aggregators ran (``node.verification.rounds``) and reports each discrepancy with its location.

A round skipped for want of a quorum is not a failure of the record: the audit checks
that no outcome did reach the quorum and that the skip came after the proposal window
(or once every commit was revealed), and still judges the round itself, so the report
says which reveal agrees with the verification.
"""

from __future__ import annotations

import time

from ledger.digest import to_hex
from ledger.errors import LedgerError, StorageError
from ledger.history import load_history
from ledger.verdicts import Verdict, describe

from node.training import train as trainmod
from node.reports.findings import AuditReport, ContributionAudit, Discrepancy, ProposalAudit, RoundAudit
from node.verification.rounds import merge_accepted, verify_submissions
from node.context import JobContext, Located

REPLAY_MODES = ("none", "sample", "all")
# Verdicts only the replay stage gives: an audit without replay cannot re-check them.
REPLAY_VERDICTS = (Verdict.REPLAY, Verdict.TRANSCRIPT, Verdict.TRANSCRIPT_UNAVAILABLE,
                   Verdict.WINDOWS_UNREVEALED, Verdict.WINDOWS_PROOF, Verdict.TRANSCRIPT_UNREVEALED)
# Verdicts for something the worker had to reveal after the draw and did not, in time.
UNREVEALED = (Verdict.WINDOWS_UNREVEALED, Verdict.TRANSCRIPT_UNREVEALED)
PRIVATE_ALL = "all (private data: the drawn segments, the only ones whose windows were revealed)"
# Verdicts that depend on the round's other contributions, not on the contribution alone.
ROUND_RELATIVE = {Verdict.UPDATE_NORM, Verdict.DUPLICATE}


def _hex(b) -> str:
    return to_hex(bytes(b)) if b is not None else "-"


def audit_job(ledger, store, job_id: int, replay: str = "sample", progress=None, evaluate_merged: bool = True,
              threads: int | None = None) -> AuditReport:
    """Audit job ``job_id``. ``replay``: none, sample (the transcript segments the
    aggregators drew) or all (every segment; for private data, the drawn ones: no other
    windows are ever revealed). ``threads``: torch threads for replays.
    ``progress(done, total, label)`` is called per round."""
    if replay not in REPLAY_MODES:
        raise ValueError(f"replay must be one of {REPLAY_MODES}")
    t0 = time.perf_counter()
    info = ledger.job(job_id)
    report = AuditReport(
        job_id=job_id, contract=ledger.address, chain_id=ledger.chain_id,
        config_digest=_hex(info.config_digest), genesis_digest=_hex(info.genesis_digest),
        merge_rule="?", quorum=info.quorum, workers=list(info.workers), aggregators=list(info.aggregators),
        completed=info.completed, replay=replay,
    )
    found = report.discrepancies
    try:
        ctx = JobContext.load(ledger, store, job_id)
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(0, "", "config", f"config with sha256 {_hex(info.config_digest)}", "unavailable or invalid", str(e)))
        return _done(report, t0)
    report.merge_rule = ctx.config.policy.merge_rule
    if replay == "all" and ctx.config.data.private:
        report.replay = PRIVATE_ALL
    try:
        ctx.load_checkpoint(ctx.genesis)
        report.bytes_verified += ctx.genesis.size + info.config_size
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(0, "", "genesis", _hex(info.genesis_digest), "unavailable or invalid", str(e)))
        return _done(report, t0)

    history = load_history(ledger, job_id)
    mode = {"none": "none", "sample": "policy", "all": "all"}[replay]
    expected_parent = info.genesis_digest
    parent_loss = None
    for n, rh in enumerate(history.rounds):
        if progress:
            progress(n, len(history.rounds), f"round {rh.round}")
        ra = _audit_round(ctx, rh, expected_parent, mode, found, report, threads)
        report.rounds.append(ra)
        if evaluate_merged and ra.recomputed_digest and ra.status == "finalized":
            ra.merged_val_loss = _val_loss_of(ctx, rh)
        if parent_loss is None:
            parent_loss = ra.parent_val_loss
        if rh.info.status == "finalized":
            expected_parent = rh.info.merged_digest
        elif rh.info.status == "skipped":
            expected_parent = rh.info.parent
    if progress:
        progress(len(history.rounds), len(history.rounds), "done")
    if info.completed:
        report.final_digest = _hex(info.current_parent)
        if info.current_parent != expected_parent:
            found.append(Discrepancy(0, "", "lineage", f"final model {_hex(expected_parent)} (last round's merge)", _hex(info.current_parent)))
    else:
        report.final_digest = _hex(expected_parent)
    return _done(report, t0)


def _done(report: AuditReport, t0: float) -> AuditReport:
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _audit_round(ctx: JobContext, rh, expected_parent: bytes, mode: str, found: list, report: AuditReport,
                 threads: int | None = None) -> RoundAudit:
    r, i = rh.round, rh.info
    ra = RoundAudit(round=r, parent=_hex(i.parent), status=i.status, skip_reason=i.skip_reason)
    before = len(found)
    if i.parent != expected_parent:
        found.append(Discrepancy(r, "", "lineage", f"parent {_hex(expected_parent)}", _hex(i.parent), "round does not continue from the previous model"))
    commitment = ctx.ledger.commitment_of(ctx.job_id, r, rh.submissions)
    if commitment != i.commitment:
        found.append(Discrepancy(r, "", "commitment", _hex(i.commitment), _hex(commitment), "submission events do not match the on-chain commitment"))
    _check_commit_reveal(ctx, rh, found)
    if i.status == "skipped":
        _check_skip(ctx, rh, found)
        if i.skip_reason != "no-quorum" or not rh.proposals:
            ra.ok = len(found) == before
            return ra
    if not rh.submissions:
        ra.ok = len(found) == before
        return ra
    quorum = rh.quorum_proposals()
    onchain = quorum[0].verdicts if quorum else None
    # Availability is a local observation: re-verify as the quorum saw the round, its
    # UNAVAILABLE contributions left out (the round-relative checks, the median norm bound
    # and the duplicate check, then see the same set), and report separately whether
    # those bytes can be fetched now.
    withheld = {n for n, x in enumerate(onchain or ()) if x == Verdict.UNAVAILABLE}
    try:
        v = verify_submissions(ctx, r, i.parent, rh.submissions, replay=mode, threads=threads, withheld=withheld)
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(r, "", "parent", f"parent model {_hex(i.parent)}", "unavailable or invalid", str(e)))
        ra.ok = False
        return ra
    ra.parent_val_loss = v.parent_val_loss
    audit_verdicts = v.verdicts
    missing_now = [c for c, rep in zip(v.contributions, v.reports)
                   if rep.verdict == Verdict.UNAVAILABLE and c.index not in withheld]
    for c, rep, s in zip(v.contributions, v.reports, rh.submissions):
        m = rep.metrics or {}
        reason = rep.reason
        if c.index in withheld:
            reason = _withheld_note(ctx, r, c, report)
        ca = ContributionAudit(
            submission=c, onchain_verdict=onchain[c.index] if onchain else None, audit_verdict=int(rep.verdict), reason=reason,
            val_loss=m.get("val_loss"), update_norm=m.get("update_norm"),
            replayed_segments=list(m.get("replay_segments") or []), replay_distance=m.get("replay_distance"),
        )
        ra.contributions.append(ca)
        if rep.verdict not in (Verdict.UNAVAILABLE, Verdict.INTEGRITY):
            report.bytes_verified += c.size
        if onchain is None:
            continue
        chain_v = onchain[c.index]
        if c.index in withheld:
            continue  # the quorum could not fetch it: consistent whatever the bytes are now
        if chain_v == Verdict.ACCEPTED and rep.verdict == Verdict.INTEGRITY:
            found.append(Discrepancy(r, c.worker, "integrity", f"{c.cid} with sha256 {_hex(c.digest)}", describe(rep.verdict), rep.reason))
            continue
        if chain_v in UNREVEALED and rep.verdict == Verdict.ACCEPTED:
            continue  # revealed after the quorum's reveal window: whether it was late is not on record
        if chain_v == Verdict.TRANSCRIPT_UNAVAILABLE and rep.verdict != chain_v:
            # the quorum could not fetch a drawn snapshot; it can be fetched now: consistent
            report.notes.append(Discrepancy(
                r, c.worker, "availability", "the drawn transcript snapshots unavailable to the quorum",
                f"retrievable now ({describe(rep.verdict)})", "availability is a local observation of its time"))
            continue
        if rep.verdict in (Verdict.UNAVAILABLE, Verdict.TRANSCRIPT_UNAVAILABLE) + UNREVEALED:
            # Fetched by the quorum, gone now: the record is not shown wrong, but what rests
            # on these bytes cannot be re-checked until someone republishes them.
            if chain_v == Verdict.ACCEPTED:
                report.unavailable.append(Discrepancy(
                    r, c.worker, "availability", f"accepted contribution {c.cid} (sha256 {_hex(c.digest)}) retrievable",
                    "unavailable now", f"the merge of round {r} cannot be recomputed without it; any copy with that sha256 restores it"))
            else:
                report.notes.append(Discrepancy(
                    r, c.worker, "availability", f"rejected contribution {c.cid} retrievable", "unavailable now",
                    f"its rejection ({describe(chain_v)}) cannot be re-checked; the merge does not use it"))
            continue
        if chain_v != rep.verdict:
            if chain_v in REPLAY_VERDICTS and mode == "none":
                continue  # not re-checked: replay disabled for this audit
            if rep.verdict in (Verdict.REPLAY, Verdict.TRANSCRIPT):
                # the quorum let through training that does not replay (a segment it did not draw,
                # or one it did not check): the one finding that needs a replay to be made
                found.append(Discrepancy(r, c.worker, "replay", f"transcript segments replaying within "
                                         f"{ctx.config.policy.replay_tolerance:g}", describe(rep.verdict), rep.reason))
                continue
            if missing_now and {chain_v, int(rep.verdict)} & ROUND_RELATIVE:
                report.unavailable.append(Discrepancy(
                    r, c.worker, "verdict", f"{describe(chain_v)} (quorum) re-checked", "not re-checkable now",
                    "a round-relative check (median norm bound, duplicates) needs the contributions unavailable now"))
                continue
            found.append(Discrepancy(r, c.worker, "verdict", f"{describe(rep.verdict)} (audit)", f"{describe(chain_v)} (quorum)",
                                     rep.reason if rep.verdict else "the quorum rejected a contribution the verification accepts"))
    if i.status == "skipped" and rh.proposals:
        # No merge was finalized; the audit's own merge tells which reveal was right.
        try:
            ra.recomputed_digest = _hex(merge_accepted(ctx, v, [x == 0 for x in audit_verdicts]).digest)
        except LedgerError:
            pass
    if i.status == "finalized" and quorum:
        accepted = [x == 0 for x in onchain]
        merged = None
        if any(a and c in missing_now for a, c in zip(accepted, v.contributions)):
            report.unavailable.append(Discrepancy(
                r, "", "merge", "a merge of the accepted set", "not recomputable now",
                "accepted contributions are unavailable now; the finalized merge rests on the quorum's word until they are republished"))
        else:
            try:
                merged = merge_accepted(ctx, v, accepted)
                ra.recomputed_digest = _hex(merged.digest)
            except LedgerError as e:
                found.append(Discrepancy(r, "", "merge", "a merge of the accepted set", "not computable", str(e)))
        ra.merged_digest = _hex(i.merged_digest)
        if merged is not None and merged.digest != i.merged_digest:
            found.append(Discrepancy(r, "", "merge", f"{_hex(merged.digest)} (merge of the accepted set)", f"{_hex(i.merged_digest)} (finalized)"))
        if (merged is None or not merged.keeps_parent) and i.merged_digest != i.parent:
            try:
                ctx.load_checkpoint(Located(i.merged_digest, i.merged_cid, i.merged_size))
                report.bytes_verified += i.merged_size
            except (StorageError, LedgerError) as e:
                found.append(Discrepancy(r, "", "merged-artifact", f"stored merge {_hex(i.merged_digest)}", "unavailable or corrupt", str(e)))
    for p in rh.proposals:
        ra.proposals.append(ProposalAudit(
            aggregator=p.aggregator, merged_digest=_hex(p.merged_digest), merged_cid=p.merged_cid,
            verdicts=list(p.verdicts), agrees_with_quorum=bool(quorum) and p.outcome == i.outcome,
            agrees_with_audit=(list(p.verdicts) == audit_verdicts and ra.recomputed_digest == _hex(p.merged_digest)),
            block=p.block, tx_hash=str(p.tx_hash),
        ))
    ra.ok = len(found) == before
    return ra


def _check_commit_reveal(ctx: JobContext, rh, found: list) -> None:
    """Every reveal opens an earlier commit of its aggregator, and no reveal came before
    the last commit (a revealed outcome could then have been copied into a commit)."""
    r = rh.round
    commits = {c.aggregator.lower(): c for c in rh.commits}
    last_commit = max(((c.block, c.log_index) for c in rh.commits), default=None)
    for p in rh.proposals:
        outcome = ctx.ledger.outcome_of(p.merged_digest, p.merged_cid, p.merged_size, p.verdicts)
        if outcome != p.outcome:
            found.append(Discrepancy(r, p.aggregator, "commit-reveal", f"outcome {_hex(outcome)} of the revealed merge and verdicts", _hex(p.outcome)))
        c = commits.get(p.aggregator.lower())
        if c is None:
            found.append(Discrepancy(r, p.aggregator, "commit-reveal", "a commit before the reveal", "none"))
            continue
        opened = ctx.ledger.commit_hash_of(p.outcome, p.salt, p.aggregator)
        if opened != c.commit_hash:
            found.append(Discrepancy(r, p.aggregator, "commit-reveal", f"commit {_hex(c.commit_hash)}", f"reveal hashing to {_hex(opened)}"))
        if last_commit is not None and (p.block, p.log_index) < last_commit:
            found.append(Discrepancy(r, p.aggregator, "commit-reveal", "every commit before the first reveal",
                                     f"reveal in block {p.block} before a commit in block {last_commit[0]}"))


def _check_skip(ctx: JobContext, rh, found: list) -> None:
    """A skipped round had a reason the chain's own record bears out."""
    r, i, job = rh.round, rh.info, ctx.info
    if i.skip_reason == "no-quorum":
        best = max(rh.votes().values(), default=0)
        if best >= job.quorum:
            found.append(Discrepancy(r, "", "skip", f"no outcome revealed by {job.quorum} aggregators", f"{best} agreeing reveals"))
        skipped = next((e for e in rh.events if e.name == "RoundSkipped"), None)
        all_revealed = len(rh.proposals) == len(rh.commits)
        if skipped is not None and skipped.timestamp <= i.reveal_deadline and not all_revealed:
            found.append(Discrepancy(r, "", "skip", f"a skip after the reveal deadline {i.reveal_deadline} or once every commit was revealed",
                                     f"skipped at {skipped.timestamp} with {len(rh.commits) - len(rh.proposals)} commit(s) unrevealed"))
    elif i.submissions >= job.min_submissions:
        found.append(Discrepancy(r, "", "skip", f"fewer than {job.min_submissions} submissions", str(i.submissions)))


def _withheld_note(ctx: JobContext, r: int, c, report: AuditReport) -> str:
    """A contribution the quorum recorded UNAVAILABLE: consistent either way; say whether it
    can be fetched now (published late, or the quorum's storage failed it at the time)."""
    try:
        ctx.store.get(c.cid, c.digest, max_size=ctx.config.policy.max_checkpoint_bytes)
        now = "retrievable now"
    except (StorageError, LedgerError):
        now = "still unavailable"
    note = f"the quorum could not fetch it at the time (recorded unavailable); {now}: consistent, not a failure"
    report.notes.append(Discrepancy(r, c.worker, "availability", "unavailable to the quorum", now, note))
    return note


def _val_loss_of(ctx: JobContext, rh) -> float | None:
    i = rh.info
    try:
        params, _ = ctx.load_checkpoint(Located(i.merged_digest, i.merged_cid, i.merged_size))
    except (LedgerError, ValueError):
        return None
    p = ctx.config.policy
    return trainmod.evaluate(ctx.model, params, ctx.validation, p.val_batches, p.val_batch_size, ctx.config.seed)
