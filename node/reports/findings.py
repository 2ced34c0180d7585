"""What an audit found, as plain data: rendered as a terminal table, JSON and HTML.

Every discrepancy is located: round, party (worker or aggregator address, or ""
for the job itself), the check that failed, what was expected and what was found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ledger.ethereum.contract import Submission
from ledger.digest import to_hex


@dataclass
class Discrepancy:
    round: int                 # 0 = the job itself (config, genesis)
    party: str                 # worker / aggregator address, or "" for the round or job
    check: str                 # e.g. "integrity", "merge", "verdict", "lineage", "replay", "quorum"
    expected: str
    actual: str
    detail: str = ""

    def line(self) -> str:
        who = f" {self.party}" if self.party else ""
        return f"round {self.round}{who}: {self.check}: expected {self.expected}, got {self.actual}" + (
            f" ({self.detail})" if self.detail else ""
        )


@dataclass
class ContributionAudit:
    """What the audit found of one submission; the submission's own fields read through."""

    submission: Submission
    onchain_verdict: int | None    # the finalized verdict (None if the round did not finalize)
    audit_verdict: int             # what the shared verification says now
    reason: str = ""
    val_loss: float | None = None
    update_norm: float | None = None
    replayed_segments: list[int] = field(default_factory=list)   # transcript segments replayed
    replay_distance: float | None = None   # worst replay's distance to the published end / the segment's movement

    @property
    def index(self) -> int:
        return self.submission.index

    @property
    def worker(self) -> str:
        return self.submission.worker

    @property
    def digest(self) -> str:
        return to_hex(self.submission.digest)

    @property
    def cid(self) -> str:
        return self.submission.cid

    @property
    def size(self) -> int:
        return self.submission.size

    @property
    def num_samples(self) -> int:
        return self.submission.num_samples


@dataclass
class ProposalAudit:
    aggregator: str
    merged_digest: str
    merged_cid: str
    verdicts: list[int]
    agrees_with_quorum: bool
    agrees_with_audit: bool
    block: int = 0
    tx_hash: str = ""


@dataclass
class RoundAudit:
    round: int
    parent: str
    status: str                      # "finalized", "skipped", "open", "closed"
    skip_reason: str = ""            # "too-few-submissions" / "no-quorum" when skipped
    contributions: list[ContributionAudit] = field(default_factory=list)
    proposals: list[ProposalAudit] = field(default_factory=list)
    merged_digest: str | None = None       # finalized on chain
    recomputed_digest: str | None = None   # what the audit's merge of the accepted set gives
    parent_val_loss: float | None = None
    merged_val_loss: float | None = None
    ok: bool = True


@dataclass
class AuditReport:
    job_id: int
    contract: str
    chain_id: int
    config_digest: str
    genesis_digest: str
    merge_rule: str
    quorum: int
    workers: list[str]
    aggregators: list[str]
    rounds: list[RoundAudit] = field(default_factory=list)
    final_digest: str | None = None        # the completed job's final model (None while it runs)
    latest_digest: str | None = None       # the model the audited rounds lead to: the final one, or the latest
    completed: bool = False
    current_round: int = 0                 # the job's round on chain when audited
    num_rounds: int = 0
    replay: str = "none"
    bytes_verified: int = 0
    seconds: float = 0.0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    # Artifacts the record depends on that storage does not serve now (an accepted
    # contribution, a merge): nothing is shown wrong, but what rests on them is not
    # provable until someone republishes them (any copy with the on-chain digest does).
    unavailable: list[Discrepancy] = field(default_factory=list)
    # Consistent observations worth reading, not failures: e.g. a contribution the quorum
    # could not fetch at the time (recorded UNAVAILABLE) that is retrievable now.
    notes: list[Discrepancy] = field(default_factory=list)
    # Checks this auditor could not rerun, holding no key to what they need (drawn windows
    # sealed to their verifiers): neither passed nor failed. A named auditor reruns them.
    not_rerun: list[Discrepancy] = field(default_factory=list)
    # ``ledger.trail.history.worker_table`` of the job: who contributed what, its credit and payments
    contributors: list = field(default_factory=list)
    # DP jobs: the delta of every contributor's ``epsilon`` (None: the job trains without DP)
    dp_delta: float | None = None

    @property
    def provable(self) -> bool:
        """Whether every artifact the final model's lineage rests on could be re-checked."""
        return not self.unavailable

    @property
    def status(self) -> str:
        """FAILED: the record is wrong somewhere; INCOMPLETE: nothing wrong was found but
        artifacts are unavailable now, so the final model is not provable; OK: all held."""
        return "FAILED" if self.discrepancies else "INCOMPLETE" if self.unavailable else "OK"

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def unfinished(self) -> str | None:
        """``job unfinished: round 2 of 3 open`` while the job runs, else None: an audit of
        an unfinished job vouches for its latest model, not a final one."""
        if self.completed:
            return None
        if self.num_rounds:
            return f"job unfinished: round {self.current_round} of {self.num_rounds} open"
        return "job unfinished"

    def to_dict(self) -> dict:
        """JSON-ready: digests as 0x hex, each contribution's submission fields beside
        what the audit found of it."""
        d = asdict(self, dict_factory=lambda kv: {k: to_hex(v) if isinstance(v, bytes) else v for k, v in kv})
        for rnd in d["rounds"]:
            rnd["contributions"] = [{**c.pop("submission"), **c} for c in rnd["contributions"]]
        d.update(ok=self.ok, status=self.status, provable=self.provable, finished=self.completed,
                 unfinished=self.unfinished)
        return d
