"""The auditor: re-verify a whole training history from the chain and storage alone.

It reads no local state of any worker or aggregator: the job, its rounds,
submissions, proposal commits and reveals, finalizations and skips come from chain
events and views (``ledger.trail.history``); every artifact comes from storage and is
checked against its on-chain digest. It then re-runs the very verification and merge
code the aggregators ran (``node.verification.rounds``) and reports each discrepancy with its location.

Every artifact the record commits to and the job's policy puts in storage is fetched
and hashed, whatever the audit replays: each contribution, each finalized merge, and the
transcript snapshots and window bundles that were published (every snapshot under
``publish_snapshots`` "all", the drawn ones under "drawn"). One rule for all of them:
bytes that do not hash to their digest are a discrepancy (AUDIT FAILED); an object
storage does not have is "unavailable now" (AUDIT INCOMPLETE) when the record rests on it
(an accepted contribution, its transcript, a merge), a note otherwise; and the audit goes
on past either. A round whose parent is unavailable is still hashed, and the next rounds
checked from the chain's digests (a merge the audit recomputed to its on-chain digest
stands in for a stored copy that is gone). Its own storage not answering
(``StorageUnreachable``) stops the audit: an environment error (exit 2), not a finding.

A round skipped for want of a quorum is not a failure of the record: the audit checks
that no outcome did reach the quorum and that the skip came after the proposal window
(or once every commit was revealed), and still judges the round itself, so the report
says which reveal agrees with the verification.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ledger.store import checkpoint
from ledger.protocol import phase
from ledger.protocol import settlement as settlemod
from ledger.digest import sha256_bytes, to_hex
from ledger.errors import InvalidJobConfig, LedgerError, NotFoundError, StorageError, StorageUnreachable
from ledger.trail.history import load_history, worker_table
from ledger.protocol.verdicts import Verdict, describe

from node.training import dp as dpmod
from node.training import train as trainmod
from node.training import transcript as tx
from node.reports.findings import AuditReport, ContributionAudit, Discrepancy, ProposalAudit, RoundAudit
from node.verification.rounds import (DrawNotReady, committee_tally, drawn_artifacts, merge_accepted, replay_seed,
                                      verify_submissions)
from node.context import JobContext, Located

REPLAY_MODES = ("none", "sample", "all")
# Verdicts only the replay stage gives: an audit without replay cannot re-check them.
REPLAY_VERDICTS = (Verdict.REPLAY, Verdict.TRANSCRIPT, Verdict.TRANSCRIPT_UNAVAILABLE,
                   Verdict.WINDOWS_UNREVEALED, Verdict.WINDOWS_PROOF, Verdict.TRANSCRIPT_UNREVEALED, Verdict.DP_SEEDS,
                   Verdict.SEALED)
# Verdicts for something the worker had to reveal after the draw and did not, in time.
UNREVEALED = (Verdict.WINDOWS_UNREVEALED, Verdict.TRANSCRIPT_UNREVEALED)
PRIVATE_ALL = "all (private data: the drawn segments, the only ones whose windows were revealed)"
# Verdicts that depend on the round's other contributions, not on the contribution alone.
ROUND_RELATIVE = {Verdict.UPDATE_NORM, Verdict.DUPLICATE}

# Where a finding is filed: the AuditReport list it goes in. A discrepancy fails the
# audit; unavailable now makes it incomplete; a note and a check not rerun do neither.
FAILED, INCOMPLETE, NOTE, NOT_RERUN = "discrepancies", "unavailable", "notes", "not_rerun"


class Finding(NamedTuple):
    """One thing a check found, and where in the report it is filed (FAILED, INCOMPLETE, NOTE, NOT_RERUN)."""

    where: str
    discrepancy: Discrepancy


def _hex(b) -> str:
    return to_hex(bytes(b)) if b is not None else "-"


class _AuditStore:
    """The auditor's store: remembers which (CID, digest) it fetched and hashed, so each
    artifact is read once, and serves a merge the audit recomputed to its on-chain digest
    where storage no longer has it (the next round is then checked all the same; the
    missing copy is still reported)."""

    def __init__(self, store):
        self._store = store
        self.verified: set[tuple[str, bytes]] = set()
        self._stand_ins: dict[str, bytes] = {}

    def get(self, cid, expected_digest, max_size=None):
        try:
            data = self._store.get(cid, expected_digest, max_size=max_size)
        except NotFoundError:
            data = self._stand_ins.get(cid)
            if data is None or sha256_bytes(data) != bytes(expected_digest):
                raise
            return data
        self.verified.add((cid, bytes(expected_digest)))
        return data

    def stand_in(self, cid: str, data: bytes) -> None:
        self._stand_ins = {cid: data}      # the latest merge only: the next round's parent

    def __getattr__(self, name):
        return getattr(self._store, name)


def audit_job(ledger, store, job_id: int, replay: str = "sample", progress=None, evaluate_merged: bool = True,
              threads: int | None = None) -> AuditReport:
    """Audit job ``job_id``. ``replay``: none, sample (the transcript segments the
    aggregators drew) or all (every segment; for private data, the drawn ones: no other
    windows are ever revealed). ``threads``: torch threads for replays.
    ``progress(done, total, label)`` is called per round. Raises ``InvalidJobConfig``
    (exit 2, no report) when the stored config is no job config, and
    ``StorageUnreachable`` when this party's storage does not answer."""
    if replay not in REPLAY_MODES:
        raise ValueError(f"replay must be one of {REPLAY_MODES}")
    t0 = time.perf_counter()
    info = ledger.job(job_id)
    report = AuditReport(
        job_id=job_id, contract=ledger.address, chain_id=ledger.chain_id,
        config_digest=_hex(info.config_digest), genesis_digest=_hex(info.genesis_digest),
        merge_rule="?", quorum=info.quorum, workers=list(info.workers), aggregators=list(info.aggregators),
        completed=info.completed, replay=replay, current_round=info.current_round, num_rounds=info.num_rounds,
    )
    found = report.discrepancies
    store = _AuditStore(store)
    try:
        ctx = JobContext.load(ledger, store, job_id, need_key=False)
    except StorageUnreachable:
        raise
    except NotFoundError as e:
        report.unavailable.append(Discrepancy(0, "", "config", f"config {info.config_cid} retrievable", "unavailable now",
                                              f"nothing can be re-checked without it ({e})"))
        return _done(report, t0)
    except InvalidJobConfig as e:
        # bytes matching the on-chain digest that are no job config: nothing can be
        # re-checked against them, so there is no report to give (exit 2, one line)
        raise InvalidJobConfig(f"{e}: job {job_id} cannot be audited") from None
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(0, "", "config", f"config with sha256 {_hex(info.config_digest)}", "invalid", str(e)))
        return _done(report, t0)
    report.merge_rule = ctx.config.policy.merge_rule
    if not ctx.readable:
        return _done(_audit_sealed(ctx, report), t0)
    if replay == "all" and ctx.config.data.private:
        report.replay = PRIVATE_ALL
    report.bytes_verified += info.config_size
    try:
        ctx.load_checkpoint(ctx.genesis)
        report.bytes_verified += ctx.genesis.size
    except StorageUnreachable:
        raise
    except NotFoundError as e:
        report.unavailable.append(Discrepancy(0, "", "genesis", f"genesis {ctx.genesis.cid} retrievable", "unavailable now",
                                              f"round 1 cannot be re-verified until it is republished ({e})"))
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(0, "", "genesis", _hex(info.genesis_digest), "invalid", str(e)))

    history = load_history(ledger, job_id)
    history.epsilon_of = dpmod.epsilon_by_rounds(ctx.config)
    report.dp_delta = ctx.config.dp.delta if ctx.config.dp is not None else None
    report.contributors = worker_table(history)
    mode = {"none": "none", "sample": "policy", "all": "all"}[replay]
    expected_parent = info.genesis_digest
    parent_loss = None
    for n, rh in enumerate(history.rounds):
        if progress:
            progress(n, len(history.rounds), f"round {rh.round}")
        ra = _audit_round(ctx, rh, expected_parent, mode, report, threads)
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
    if info.reward or info.worker_stake or info.is_open:
        _file(report, _check_payments(ctx, history))
    if info.completed:
        report.final_digest = report.latest_digest = _hex(info.current_parent)
        if info.current_parent != expected_parent:
            found.append(Discrepancy(0, "", "lineage", f"final model {_hex(expected_parent)} (last round's merge)", _hex(info.current_parent)))
    else:
        # unfinished: no final model yet; the latest one the audited rounds lead to
        report.latest_digest = _hex(expected_parent)
    return _done(report, t0)


def _audit_sealed(ctx: JobContext, report: AuditReport) -> AuditReport:
    """A private job audited by an outsider (no key): everything public is checked (the
    lineage of digests, the commitments, commit-reveal, skips, committee votes, payments,
    and that every artifact is stored as its CID says); the verdicts, merges and replays,
    which need the plaintext, are NOT RERUN."""
    found = report.discrepancies
    info = ctx.info
    history = load_history(ctx.ledger, ctx.job_id)
    report.contributors = worker_table(history)
    expected = info.genesis_digest
    cids = [(0, "", "genesis", ctx.genesis.cid)]
    for rh in history.rounds:
        r, i = rh.round, rh.info
        ra = RoundAudit(round=r, parent=_hex(i.parent), status=i.status, skip_reason=i.skip_reason)
        before = len(found)
        _file(report, _check_lineage(r, i, expected))
        if ctx.ledger.commitment_of(ctx.job_id, r, rh.submissions) != i.commitment:
            found.append(Discrepancy(r, "", "commitment", _hex(i.commitment), "other submissions",
                                     "submission events do not match the on-chain commitment"))
        _file(report, _check_commit_reveal(ctx, rh))
        if i.status == "skipped":
            _file(report, _check_skip(ctx, rh))
        quorum = rh.quorum_proposals()
        if i.status == "finalized" and quorum:
            _file(report, _check_committees(ctx, r, rh.submissions, quorum[0].verdicts))
            ra.merged_digest = _hex(i.merged_digest)
            if i.merged_digest != i.parent:
                cids.append((r, "", "merge", i.merged_cid))
        cids += [(r, c.worker, "contribution", c.cid) for c in rh.submissions]
        if rh.submissions:
            report.not_rerun.append(Discrepancy(r, "", "round", "verdicts, merge and replays re-run", "not rerun",
                                                "the job is private: its artifacts are encrypted to its members "
                                                "and granted auditors"))
        expected = i.merged_digest if i.status == "finalized" else i.parent if i.status == "skipped" else expected
        ra.ok = len(found) == before
        report.rounds.append(ra)
    cap = ctx.config.policy.max_checkpoint_bytes
    for r, who, what, cid in cids:
        try:
            report.bytes_verified += len(ctx.store.get_by_cid(cid, max_size=cap + 64))
        except StorageUnreachable:
            raise
        except NotFoundError as e:
            report.unavailable.append(Discrepancy(r, who, "availability", f"{what} {cid} retrievable",
                                                  "unavailable now", str(e)))
        except (LedgerError, ValueError) as e:
            found.append(Discrepancy(r, who, "integrity", f"{what} {cid}", "other bytes", str(e)))
    if info.reward or info.worker_stake or info.is_open:
        _file(report, _check_payments(ctx, history))
    if info.completed:
        report.final_digest = report.latest_digest = _hex(info.current_parent)
        if info.current_parent != expected:
            found.append(Discrepancy(0, "", "lineage", f"final model {_hex(expected)} (last round's merge)",
                                     _hex(info.current_parent)))
    else:
        report.latest_digest = _hex(expected)
    return report


def _done(report: AuditReport, t0: float) -> AuditReport:
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _audit_round(ctx: JobContext, rh, expected_parent: bytes, mode: str, report: AuditReport,
                 threads: int | None = None) -> RoundAudit:
    """Round ``rh`` re-checked; ``ok`` when it added no discrepancy."""
    ra = RoundAudit(round=rh.round, parent=_hex(rh.info.parent), status=rh.info.status, skip_reason=rh.info.skip_reason)
    before = len(report.discrepancies)
    _judge_round(ctx, rh, expected_parent, mode, report, ra, threads)
    ra.ok = len(report.discrepancies) == before
    return ra


def _judge_round(ctx: JobContext, rh, expected_parent: bytes, mode: str, report: AuditReport, ra: RoundAudit,
                 threads: int | None) -> None:
    """The thin loop: each ``_check_*`` compares one thing and returns its findings, filed
    in the order the checks run. The storage steps (``_hash_only``, ``_check_merge_artifact``,
    ``_check_published``) fetch and hash and file their own; the last one reads what is
    filed already, so a contribution found at fault is reported once."""
    r, i = rh.round, rh.info
    quorum = rh.quorum_proposals()
    onchain = quorum[0].verdicts if quorum else None
    _file(report, _check_lineage(r, i, expected_parent), _check_commitment(ctx, rh), _check_commit_reveal(ctx, rh))
    if i.status == "skipped":
        _file(report, _check_skip(ctx, rh))
        if i.skip_reason != "no-quorum" or not rh.proposals:
            _hash_only(ctx, rh, onchain, report.discrepancies, report)   # nothing rests on them: stored bytes still checked
            return
    if not rh.submissions:
        return
    # Availability is a local observation: re-verify as the quorum saw the round, its
    # UNAVAILABLE contributions left out (the round-relative checks, the median norm bound
    # and the duplicate check, then see the same set), and report separately whether
    # those bytes can be fetched now.
    withheld = {n for n, x in enumerate(onchain or ()) if x == Verdict.UNAVAILABLE}
    try:
        v = verify_submissions(ctx, r, i.parent, rh.submissions, replay=mode, threads=threads, withheld=withheld)
    except StorageUnreachable:
        raise
    except (LedgerError, ValueError) as e:
        _file(report, _unverifiable(r, i, e))
        if isinstance(e, NotFoundError):
            _hash_unverified(ctx, rh, onchain, report, ra)
        return
    ra.parent_val_loss = v.parent_val_loss
    missing_now = [c for c, rep in zip(v.contributions, v.reports)
                   if rep.verdict == Verdict.UNAVAILABLE and c.index not in withheld]
    for c, rep, _s in zip(v.contributions, v.reports, rh.submissions):
        note = _withheld_note(ctx, r, c) if c.index in withheld else None
        _file(report, [note] if note else [], _replay_not_rerun(r, c, rep))
        ra.contributions.append(_contribution_audit(c, rep, onchain, note.discrepancy.detail if note else rep.reason))
        if rep.verdict not in (Verdict.UNAVAILABLE, Verdict.INTEGRITY):
            report.bytes_verified += c.size
        if onchain is not None and c.index not in withheld:  # withheld: consistent whatever the bytes are now
            _file(report, _check_verdict(ctx, r, c, rep, onchain[c.index], mode, missing_now))
    if i.status == "skipped" and rh.proposals:
        # No merge was finalized; the audit's own merge tells which reveal was right.
        ra.recomputed_digest = _own_merge_digest(ctx, v)
    if i.status == "finalized" and quorum:
        merged, findings = _recompute_merge(ctx, r, v, onchain, missing_now)
        _file(report, findings)
        if merged is not None:
            ra.recomputed_digest = _hex(merged.digest)
        ra.merged_digest = _hex(i.merged_digest)
        _file(report, _check_merge(r, i, merged))
        if (merged is None or not merged.keeps_parent) and i.merged_digest != i.parent:
            _check_merge_artifact(ctx, r, i, merged, report.discrepancies, report)
        _file(report, _check_settlement(ctx, r, v, onchain, quorum[0].settlement, withheld, missing_now),
              _check_committees(ctx, r, rh.submissions, onchain))
    _check_published(ctx, r, rh.submissions, [rep.meta for rep in v.reports], onchain, report.discrepancies, report)
    ra.proposals += [_proposal_audit(p, i, quorum, v.verdicts, ra.recomputed_digest) for p in rh.proposals]


def _file(report: AuditReport, *findings: list[Finding]) -> None:
    """Each finding into its list of the report, in order."""
    for batch in findings:
        for where, d in batch:
            getattr(report, where).append(d)


def _check_lineage(r: int, i, expected_parent: bytes) -> list[Finding]:
    """The round continues from the model the previous round led to."""
    if i.parent == expected_parent:
        return []
    return [Finding(FAILED, Discrepancy(r, "", "lineage", f"parent {_hex(expected_parent)}", _hex(i.parent),
                                        "round does not continue from the previous model"))]


def _check_commitment(ctx: JobContext, rh) -> list[Finding]:
    """The submission events hash to the round's on-chain commitment."""
    commitment = ctx.ledger.commitment_of(ctx.job_id, rh.round, rh.submissions)
    if commitment == rh.info.commitment:
        return []
    return [Finding(FAILED, Discrepancy(rh.round, "", "commitment", _hex(rh.info.commitment), _hex(commitment),
                                        "submission events do not match the on-chain commitment"))]


def _unverifiable(r: int, i, e: Exception) -> list[Finding]:
    """Why round ``r`` could not be re-verified: its parent gone from storage (nothing is
    shown wrong, but its verdicts and merge cannot be re-checked), an unfinished round
    (its draw not seeded yet, say: nothing of it is on record to check), or a parent that
    is no model."""
    if isinstance(e, NotFoundError):
        return [Finding(INCOMPLETE, Discrepancy(
            r, "", "parent", f"parent model {_hex(i.parent)} retrievable", "unavailable now",
            f"round {r}'s verdicts and merge cannot be re-checked until it is republished ({e})"))]
    if i.status not in ("finalized", "skipped"):
        return [Finding(NOTE, Discrepancy(r, "", "open", "a round to judge", "not judged yet", str(e)))]
    return [Finding(FAILED, Discrepancy(r, "", "parent", f"parent model {_hex(i.parent)}", "invalid", str(e)))]


def _hash_unverified(ctx: JobContext, rh, onchain, report: AuditReport, ra: RoundAudit) -> None:
    """A round whose parent is gone: its stored bytes are still checked, and the next
    round goes on from the chain's digests."""
    i = rh.info
    _hash_only(ctx, rh, onchain, report.discrepancies, report)
    if i.status == "finalized" and i.merged_digest != i.parent:
        _check_merge_artifact(ctx, rh.round, i, None, report.discrepancies, report)
    ra.merged_digest = _hex(i.merged_digest) if i.status == "finalized" else None


def _contribution_audit(c, rep, onchain, reason: str) -> ContributionAudit:
    m = rep.metrics or {}
    return ContributionAudit(
        submission=c, onchain_verdict=onchain[c.index] if onchain else None, audit_verdict=int(rep.verdict),
        reason=reason, val_loss=m.get("val_loss"), update_norm=m.get("update_norm"),
        replayed_segments=list(m.get("replay_segments") or []), replay_distance=m.get("replay_distance"),
    )


def _replay_not_rerun(r: int, c, rep) -> list[Finding]:
    """Drawn segments this auditor could not replay (sealed to their verifiers)."""
    m = rep.metrics or {}
    if not m.get("replay_not_rerun"):
        return []
    return [Finding(NOT_RERUN, Discrepancy(
        r, c.worker, "replay", f"drawn segment(s) {', '.join(map(str, m['replay_not_rerun']))} replayed",
        "not rerun", m.get("not_rerun_reason", "")))]


def _check_verdict(ctx: JobContext, r: int, c, rep, chain_v: int, mode: str, missing_now) -> list[Finding]:
    """The chain's verdict on contribution ``c`` against the audit's own ``rep``."""
    if chain_v == Verdict.ACCEPTED and rep.verdict == Verdict.INTEGRITY:
        return [Finding(FAILED, Discrepancy(r, c.worker, "integrity", f"{c.cid} with sha256 {_hex(c.digest)}",
                                            describe(rep.verdict), rep.reason))]
    if chain_v in UNREVEALED and rep.verdict == Verdict.ACCEPTED and not ctx.info.disclosure_window:
        return []  # revealed after the quorum's reveal window: whether it was late is not on record
    # with a disclosure phase it is: the audit's own verdict, from the same Disclosed
    # records, must then equal the quorum's (below)
    if chain_v == Verdict.TRANSCRIPT_UNAVAILABLE and rep.verdict != chain_v:
        # the quorum could not fetch a drawn snapshot; it can be fetched now: consistent
        return [Finding(NOTE, Discrepancy(
            r, c.worker, "availability", "the drawn transcript snapshots unavailable to the quorum",
            f"retrievable now ({describe(rep.verdict)})", "availability is a local observation of its time"))]
    if rep.verdict in (Verdict.UNAVAILABLE, Verdict.TRANSCRIPT_UNAVAILABLE) + UNREVEALED:
        return [_gone_now(r, c, rep, chain_v)]
    if chain_v == rep.verdict:
        return []
    m = rep.metrics or {}
    if chain_v in REPLAY_VERDICTS and (mode == "none" or (m.get("replay_not_rerun") and rep.verdict == Verdict.ACCEPTED)):
        return []  # not re-checked: replay disabled for this audit, or sealed to others
    if rep.verdict in (Verdict.REPLAY, Verdict.TRANSCRIPT):
        # the quorum let through training that does not replay (a segment it did not draw,
        # or one it did not check): the one finding that needs a replay to be made
        return [Finding(FAILED, Discrepancy(r, c.worker, "replay", f"transcript segments replaying within "
                                            f"{ctx.config.policy.replay_tolerance:g}", describe(rep.verdict),
                                            rep.reason))]
    if missing_now and {chain_v, int(rep.verdict)} & ROUND_RELATIVE:
        return [Finding(INCOMPLETE, Discrepancy(
            r, c.worker, "verdict", f"{describe(chain_v)} (quorum) re-checked", "not re-checkable now",
            "a round-relative check (median norm bound, duplicates) needs the contributions unavailable now"))]
    return [Finding(FAILED, Discrepancy(
        r, c.worker, "verdict", f"{describe(rep.verdict)} (audit)", f"{describe(chain_v)} (quorum)",
        rep.reason if rep.verdict else "the quorum rejected a contribution the verification accepts"))]


def _gone_now(r: int, c, rep, chain_v: int) -> Finding:
    """Fetched by the quorum, gone now: the record is not shown wrong, but what rests on
    these bytes cannot be re-checked until someone republishes them."""
    if chain_v == Verdict.ACCEPTED:
        whose = "" if rep.verdict == Verdict.UNAVAILABLE else "the drawn transcript snapshots of "
        return Finding(INCOMPLETE, Discrepancy(
            r, c.worker, "availability", f"{whose}accepted contribution {c.cid} (sha256 {_hex(c.digest)}) retrievable",
            "unavailable now", f"the merge of round {r} cannot be recomputed without it; any copy with that sha256 restores it"))
    return Finding(NOTE, Discrepancy(
        r, c.worker, "availability", f"rejected contribution {c.cid} retrievable", "unavailable now",
        f"its rejection ({describe(chain_v)}) cannot be re-checked; the merge does not use it"))


def _own_merge_digest(ctx: JobContext, v) -> str | None:
    """The digest of the audit's merge of what the audit accepts (None where none can be made)."""
    try:
        return _hex(merge_accepted(ctx, v, [x == 0 for x in v.verdicts]).digest)
    except LedgerError:
        return None


def _recompute_merge(ctx: JobContext, r: int, v, onchain, missing_now):
    """The merge of the set the quorum accepted, recomputed: (merge or None, findings)."""
    accepted = [x == 0 for x in onchain]
    if any(a and c in missing_now for a, c in zip(accepted, v.contributions)):
        return None, [Finding(INCOMPLETE, Discrepancy(
            r, "", "merge", "a merge of the accepted set", "not recomputable now",
            "accepted contributions are unavailable now; the finalized merge rests on the quorum's word until they are republished"))]
    try:
        return merge_accepted(ctx, v, accepted), []
    except LedgerError as e:
        return None, [Finding(FAILED, Discrepancy(r, "", "merge", "a merge of the accepted set", "not computable", str(e)))]


def _check_merge(r: int, i, merged) -> list[Finding]:
    """The recomputed merge against the finalized one."""
    if merged is None or merged.digest == i.merged_digest:
        return []
    return [Finding(FAILED, Discrepancy(r, "", "merge", f"{_hex(merged.digest)} (merge of the accepted set)",
                                        f"{_hex(i.merged_digest)} (finalized)"))]


def _proposal_audit(p, i, quorum, audit_verdicts, recomputed: str | None) -> ProposalAudit:
    """A reveal against the finalized outcome and against the audit's verdicts and merge."""
    return ProposalAudit(
        aggregator=p.aggregator, merged_digest=_hex(p.merged_digest), merged_cid=p.merged_cid,
        verdicts=list(p.verdicts), agrees_with_quorum=bool(quorum) and p.outcome == i.outcome,
        agrees_with_audit=(list(p.verdicts) == audit_verdicts and recomputed == _hex(p.merged_digest)),
        block=p.block, tx_hash=str(p.tx_hash),
    )


def _check_committees(ctx: JobContext, r: int, submissions, onchain) -> list[Finding]:
    """In a job with verification committees: the finalized verdicts are what the
    committees decided on chain (a quorum may add only what every aggregator judges
    itself: a byte copy, an unavailable download), and who was drawn and did not vote
    is on record. Whether a decision was right is the re-verification's finding above."""
    try:
        got = committee_tally(ctx, r, submissions, replay_seed(ctx.ledger, ctx.job_id, r, submissions))
    except DrawNotReady:
        return []
    if got is None:
        return []
    t, deadline = got
    out = []
    for c in submissions:
        d = t.decided.get(c.index)
        if d is None:
            continue
        chain_v = onchain[c.index]
        own = chain_v in (Verdict.DUPLICATE, Verdict.UNAVAILABLE) and d.verdict == Verdict.ACCEPTED
        if chain_v != d.verdict and not own:
            out.append(Finding(FAILED, Discrepancy(r, c.worker, "committee", f"{describe(d.verdict)} (its committee: "
                                                   f"{', '.join(d.voters)})", f"{describe(chain_v)} (quorum)",
                                                   "the finalized verdict overrides the committee's decision on chain")))
    for a, idx in sorted(t.absent().items()):
        out.append(Finding(NOTE, Discrepancy(r, a, "committee", f"a vote on contribution(s) {', '.join(f'#{i}' for i in idx)}",
                                             "no vote that counts", f"drawn for their committees; votes closed at {deadline}")))
    return out


def _check_settlement(ctx: JobContext, r: int, v, onchain, revealed, withheld, missing_now) -> list[Finding]:
    """The finalized credits and slashes against the verification's: a slash exactly for
    the on-chain verdicts that are cheating, a credit only for the accepted ones, and each
    accepted one's credit what this machine's own loss measurement gives (within the
    ``ledger.protocol.settlement`` slack for another machine's low bits)."""
    workers = ctx.ledger.round_workers(ctx.job_id, r, ctx.info)
    if len(revealed.credits) != len(workers):
        return [Finding(FAILED, Discrepancy(r, "", "credit", f"{len(workers)} credits (one per worker of the round)",
                                            f"{len(revealed.credits)}"))]
    index = {w.lower(): n for n, w in enumerate(workers)}
    submitted = set()
    out = []
    for c, rep in zip(v.contributions, v.reports):
        n = index.get(c.worker.lower())
        if n is None:
            continue
        submitted.add(n)
        chain_v = onchain[c.index]
        got, slashed = int(revealed.credits[n]), bool((revealed.slashed >> n) & 1)
        out += _check_slash(r, c, chain_v, slashed)
        out += _check_credit(r, c, rep, chain_v, got, c.index in withheld or c in missing_now)
    for n, w in enumerate(workers):
        if n not in submitted and (revealed.credits[n] or (revealed.slashed >> n) & 1):
            out.append(Finding(FAILED, Discrepancy(r, w, "credit", "no credit and no slash (no submission)",
                                                   f"credit {revealed.credits[n]}, slashed {bool((revealed.slashed >> n) & 1)}")))
    return out


def _check_slash(r: int, c, chain_v: int, slashed: bool) -> list[Finding]:
    """Slashed exactly when the finalized verdict is cheating."""
    if slashed == (chain_v in settlemod.CHEATING):
        return []
    return [Finding(FAILED, Discrepancy(r, c.worker, "slash", "slashed" if not slashed else f"not slashed ({describe(chain_v)} "
                                        "can be honest)", "slashed" if slashed else "not slashed",
                                        f"the finalized verdict is {describe(chain_v)}"))]


def _check_credit(r: int, c, rep, chain_v: int, got: int, unavailable: bool) -> list[Finding]:
    """No credit unless accepted; an accepted contribution's credit within what the audit's
    own measurement gives (``unavailable``: withheld from the quorum or gone now)."""
    if chain_v != Verdict.ACCEPTED:
        return [Finding(FAILED, Discrepancy(r, c.worker, "credit", f"0 ({describe(chain_v)})", str(got)))] if got else []
    if unavailable or rep.verdict != Verdict.ACCEPTED:
        return []   # its verdict is reported (or cannot be re-checked now): the credit rests on it
    lo, hi = settlemod.credit_range(int(rep.verdict), rep.metrics, c.num_samples)
    if lo <= got <= hi:
        return []
    m = rep.metrics or {}
    measured = (f"val loss {m['val_loss']:.6f}, parent {m['parent_val_loss']:.6f}"
                if m.get("val_loss") is not None else f"{c.num_samples} samples")
    return [Finding(FAILED, Discrepancy(r, c.worker, "credit", str(lo) if lo == hi else f"{lo}..{hi}", f"{got} (quorum)",
                                        f"measured {measured}"))]


def _check_payments(ctx: JobContext, history) -> list[Finding]:
    """Every payout, slash and refund on chain against the contract's rules replayed from
    the job's events and its finalized settlements: the first that differs."""
    info = ctx.info
    finalized = {}
    for rh in history.rounds:
        quorum = rh.quorum_proposals()
        if rh.info.status == "finalized" and quorum:
            finalized[rh.round] = (quorum[0].settlement, [p.aggregator for p in quorum])
    expected = settlemod.expected_payments(
        creator=info.owner, workers=info.workers, aggregators=info.aggregators, quorum=info.quorum,
        num_rounds=info.num_rounds, aggregator_bps=info.aggregator_bps, slash_bps=info.slash_bps,
        worker_stake=info.worker_stake, events=history.events, finalized=finalized)
    recorded = settlemod.recorded_payments(history.events)
    want, got = [p.key() for p in expected], [p.key() for p in recorded]
    if want == got:
        return []
    for k in range(max(len(want), len(got))):
        e = expected[k] if k < len(want) else None
        g = recorded[k] if k < len(got) else None
        if e is not None and g is not None and e.key() == g.key():
            continue
        who = (e or g).account
        # one misstep shifts every later payment: the first says where
        return [Finding(FAILED, Discrepancy((e or g).round, who, "payout",
                                            f"{e.kind} {e.amount} wei" if e else "no further payment",
                                            f"{g.kind} {g.amount} wei" if g else "nothing recorded"))]
    return []


def _check_merge_artifact(ctx: JobContext, r: int, i, merged, found: list, report: AuditReport) -> None:
    """Fetch and hash round ``r``'s finalized merge. Gone from storage: unavailable now (the
    next round is then checked from the audit's own merge when that hashes to the on-chain
    digest); other bytes or not a checkpoint: a discrepancy."""
    try:
        ctx.load_checkpoint(Located(i.merged_digest, i.merged_cid, i.merged_size))
        report.bytes_verified += i.merged_size
    except StorageUnreachable:
        raise
    except NotFoundError as e:
        recomputed = merged is not None and merged.merged_bytes is not None and merged.digest == i.merged_digest
        if recomputed:
            ctx.store.stand_in(i.merged_cid, merged.merged_bytes)
        report.unavailable.append(Discrepancy(
            r, "", "merged-artifact", f"finalized merge {i.merged_cid} (sha256 {_hex(i.merged_digest)}) retrievable",
            "unavailable now",
            ("recomputed here to its digest, so the next round is still checked; " if recomputed else "")
            + f"anyone who uses the model needs a copy with that sha256 republished ({e})"))
    except (LedgerError, ValueError) as e:
        found.append(Discrepancy(r, "", "merged-artifact", f"stored merge {_hex(i.merged_digest)}", "corrupt", str(e)))


def _hash_only(ctx: JobContext, rh, onchain, found: list, report: AuditReport) -> None:
    """Fetch and hash each contribution of a round that is not re-verified (its parent is
    unavailable, or it was skipped for too few submissions), and its published artifacts."""
    cap = ctx.config.policy.max_checkpoint_bytes
    metas = []
    for c in rh.submissions:
        chain_v = onchain[c.index] if onchain else None
        meta = None
        if c.size > cap:
            metas.append(None)
            continue
        try:
            data = ctx.store.get(c.cid, c.digest, max_size=cap)
            if len(data) != c.size:
                raise LedgerError(f"{c.cid} is {len(data)} bytes, the chain says {c.size}")
            report.bytes_verified += c.size
            try:
                meta = checkpoint.read_meta(data, max_size=cap)
            except Exception:  # noqa: BLE001 - hostile bytes: no manifest to follow
                meta = None
        except StorageUnreachable:
            raise
        except NotFoundError as e:
            _missing(report, rh.round, c.worker, f"contribution {c.cid}", chain_v, str(e))
        except (LedgerError, ValueError) as e:
            if chain_v != Verdict.INTEGRITY:
                found.append(Discrepancy(rh.round, c.worker, "integrity", f"{c.cid} with sha256 {_hex(c.digest)}",
                                         "other bytes", str(e)))
        metas.append(meta)
    _check_published(ctx, rh.round, rh.submissions, metas, onchain, found, report)


def _missing(report: AuditReport, r: int, worker: str, what: str, chain_v, detail: str) -> None:
    """An object storage does not have now: unavailable (INCOMPLETE) when the record rests
    on it (the quorum accepted the contribution), a note otherwise."""
    if chain_v == Verdict.ACCEPTED:
        report.unavailable.append(Discrepancy(r, worker, "availability", f"{what} of an accepted contribution retrievable",
                                              "unavailable now", f"not re-checkable until it is republished ({detail})"))
    else:
        why = f"its rejection ({describe(chain_v)}) does not rest on it" if chain_v else "no verdict rests on it"
        report.notes.append(Discrepancy(r, worker, "availability", f"{what} retrievable", "unavailable now", why))


def _check_published(ctx: JobContext, r: int, submissions, metas, onchain, found: list, report: AuditReport) -> None:
    """Fetch and hash every transcript artifact of round ``r`` that the job's policy put in
    storage and the verification did not read: each snapshot under ``publish_snapshots``
    "all", the drawn snapshots under "drawn", and for private data the drawn window
    bundles. ``metas``: each submission's checkpoint metadata (None where it had none)."""
    cfg = ctx.config
    manifests = {}
    for c, meta in zip(submissions, metas):
        m = None
        if meta is not None:
            try:
                m = tx.read_manifest(meta, steps=cfg.train.steps, segment_steps=cfg.policy.segment_steps,
                                     max_size=tx.snapshot_cap(cfg.policy), private=cfg.data.private)
            except tx.TranscriptError:
                m = None
        manifests[c.digest] = m
    todo = []       # (submission, what, ref)
    if not cfg.policy.reveals:
        for c in submissions:
            m = manifests.get(c.digest)
            todo += [(c, f"snapshot at step {ref.step}", ref) for ref in (m.snapshots if m else ())]
    if cfg.policy.reveals or cfg.data.private:
        by_worker = {c.worker.lower(): c for c in submissions}
        try:
            drawn = drawn_artifacts(ctx, r, submissions, dict(manifests))
        except StorageUnreachable:
            raise
        except LedgerError as e:        # an unfinished round whose draw is not seeded yet
            report.notes.append(Discrepancy(r, "", "open", "the round's draw", "not made yet", str(e)))
            drawn = []
        for w, what, cid in drawn:
            if what == "sealed reveal":     # ciphertext to the drawn verifiers: stored, and the CID's bytes
                _check_sealed(ctx, r, by_worker[w], cid, onchain, report)
                continue
            m = manifests.get(by_worker[w].digest)
            ref = next((x for x in (*m.snapshots, *(m.windows or ())) if x.cid == cid), None) if m else None
            if ref is not None and (cfg.policy.reveals or not what.startswith("snapshot")):
                todo.append((by_worker[w], what, ref))
    # a contribution the verification already found fault with is reported once
    flagged = {(d.round, d.party.lower()) for d in (*found, *report.unavailable)}
    cap = tx.snapshot_cap(cfg.policy)
    for c, what, ref in todo:
        if (r, c.worker.lower()) in flagged:
            continue
        chain_v = onchain[c.index] if onchain else None
        if (ref.cid, bytes(ref.digest)) not in ctx.store.verified:
            try:
                data = ctx.store.get(ref.cid, ref.digest, max_size=cap)
                if len(data) != ref.size:
                    raise LedgerError(f"{ref.cid} is {len(data)} bytes, the manifest commits to {ref.size}")
            except StorageUnreachable:
                raise
            except NotFoundError as e:
                _missing(report, r, c.worker, f"published {what} {ref.cid}", chain_v, str(e))
                continue
            except (LedgerError, ValueError) as e:
                if chain_v not in (Verdict.TRANSCRIPT, Verdict.WINDOWS_PROOF):   # else the record says so already
                    found.append(Discrepancy(r, c.worker, "integrity", f"published {what} {ref.cid} with sha256 "
                                             f"{_hex(ref.digest)}", "other bytes", str(e)))
                continue
        report.bytes_verified += ref.size


def _check_sealed(ctx: JobContext, r: int, c, cid: str, onchain, report: AuditReport) -> None:
    """A disclosed sealed reveal is stored and is the object its CID names (its contents
    only its readers can check: the verification did, where this auditor is one)."""
    chain_v = onchain[c.index] if onchain else None
    try:
        report.bytes_verified += len(ctx.store.get_by_cid(cid, max_size=tx.snapshot_cap(ctx.config.policy)))
    except StorageUnreachable:
        raise
    except NotFoundError as e:
        _missing(report, r, c.worker, f"sealed reveal {cid}", chain_v, str(e))
    except (LedgerError, ValueError) as e:
        if chain_v not in (Verdict.SEALED, Verdict.WINDOWS_PROOF):
            report.discrepancies.append(Discrepancy(r, c.worker, "integrity", f"sealed reveal {cid}", "other bytes", str(e)))


def _check_commit_reveal(ctx: JobContext, rh) -> list[Finding]:
    """Every reveal opens an earlier commit of its aggregator, and no reveal came before
    the last commit (a revealed outcome could then have been copied into a commit)."""
    r = rh.round
    commits = {c.aggregator.lower(): c for c in rh.commits}
    last_commit = max(((c.block, c.log_index) for c in rh.commits), default=None)
    out = []
    for p in rh.proposals:
        outcome = ctx.ledger.outcome_of(p.merged_digest, p.merged_cid, p.merged_size, p.verdicts, p.settlement)
        if outcome != p.outcome:
            out.append(Discrepancy(r, p.aggregator, "commit-reveal", f"outcome {_hex(outcome)} of the revealed merge and verdicts", _hex(p.outcome)))
        c = commits.get(p.aggregator.lower())
        if c is None:
            out.append(Discrepancy(r, p.aggregator, "commit-reveal", "a commit before the reveal", "none"))
            continue
        opened = ctx.ledger.commit_hash_of(p.outcome, p.salt, p.aggregator)
        if opened != c.commit_hash:
            out.append(Discrepancy(r, p.aggregator, "commit-reveal", f"commit {_hex(c.commit_hash)}", f"reveal hashing to {_hex(opened)}"))
        if last_commit is not None and (p.block, p.log_index) < last_commit:
            out.append(Discrepancy(r, p.aggregator, "commit-reveal", "every commit before the first reveal",
                                   f"reveal in block {p.block} before a commit in block {last_commit[0]}"))
    return [Finding(FAILED, d) for d in out]


def _check_skip(ctx: JobContext, rh) -> list[Finding]:
    """A skipped round had a reason the chain's own record bears out."""
    r, i, job = rh.round, rh.info, ctx.info
    out = []
    if i.skip_reason == "no-quorum":
        best = max(rh.votes().values(), default=0)
        if best >= job.quorum:
            out.append(Discrepancy(r, "", "skip", f"no outcome revealed by {job.quorum} aggregators", f"{best} agreeing reveals"))
        skipped = next((e for e in rh.events if e.name == "RoundSkipped"), None)
        if skipped is not None and not phase.quorum_out_of_reach(len(rh.commits), len(rh.proposals), len(job.aggregators),
                                                                  i.commit_deadline, i.reveal_deadline, skipped.timestamp):
            out.append(Discrepancy(r, "", "skip", f"a skip after the reveal deadline {i.reveal_deadline} or once every commit was revealed",
                                   f"skipped at {skipped.timestamp} with {len(rh.commits) - len(rh.proposals)} commit(s) unrevealed"))
    elif i.submissions >= job.min_submissions:
        out.append(Discrepancy(r, "", "skip", f"fewer than {job.min_submissions} submissions", str(i.submissions)))
    return [Finding(FAILED, d) for d in out]


def _withheld_note(ctx: JobContext, r: int, c) -> Finding:
    """A contribution the quorum recorded UNAVAILABLE: consistent either way; say whether it
    can be fetched now (published late, or the quorum's storage failed it at the time)."""
    try:
        ctx.store.get(c.cid, c.digest, max_size=ctx.config.policy.max_checkpoint_bytes)
        now = "retrievable now"
    except StorageUnreachable:
        raise
    except (StorageError, LedgerError):
        now = "still unavailable"
    note = f"the quorum could not fetch it at the time (recorded unavailable); {now}: consistent, not a failure"
    return Finding(NOTE, Discrepancy(r, c.worker, "availability", "unavailable to the quorum", now, note))


def _val_loss_of(ctx: JobContext, rh) -> float | None:
    i = rh.info
    try:
        params, _ = ctx.load_checkpoint(Located(i.merged_digest, i.merged_cid, i.merged_size))
    except StorageUnreachable:
        raise
    except (LedgerError, ValueError):
        return None
    p = ctx.config.policy
    return trainmod.evaluate(ctx.model, params, ctx.validation, p.val_batches, p.val_batch_size, ctx.config.seed)
