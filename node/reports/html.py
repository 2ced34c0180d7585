"""The audit as one self-contained HTML page, rendered from a Jinja2 template.

`render_html(report)` fills ``node/reports/templates/audit.html.j2`` (loaded from the package
with Jinja2's PackageLoader, autoescape on, so every value from the report is escaped)
with the report and its two graphs from ``node.reports.graphs`` (inline SVG drawn by
matplotlib). CSS is inline and nothing is fetched (no scripts, fonts, images or style
sheets), so the file can be mailed, archived or opened offline and still shows
everything. The same report gives the same bytes.

The "Contributors" table has one row per worker (and per paid aggregator): rounds
accepted, rejections with their verdicts, accepted samples and, given the rows of
``ledger.trail.history.worker_table`` (``render_html(report, contributors=...)``, or a
``contributors`` attribute on the report), the credit and the ETH paid, slashed and
returned. Without them it is built from the report's on-chain verdicts alone and the
credit and payment columns are left out.

Stable hooks (tests and anyone scripting against the page): `#verdict` (class `ok` or
`failed`), `#job`, `#discrepancies`, `#contributors` (rows `tr.contributor` with
`data-address` and `data-role`), `#round-<n>`, and the graphs' hooks listed in
``node.reports.graphs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from markupsafe import Markup

from ledger.trail.history import WorkerRow, contributor_rows, epsilon_text
from ledger.units import eth
from ledger.protocol.verdicts import describe

from node.reports.findings import AuditReport, ContributionAudit, Discrepancy, RoundAudit
from node.reports.graphs import (
    BLUE,
    GREEN,
    GREY,
    INK,
    MUTED,
    ORANGE,
    PURPLE,
    RED,
    Flags,
    cell_state,
    lineage_svg,
    loss_svg,
)
from node.reports.text import (
    accepted_counts,
    agreement,
    fmt_num,
    human_bytes,
    latest_model,
    plural,
    short_hex,
    sorted_rounds,
    verdict_line,
)

__all__ = ["render_html", "report_contributors", "cell_state", "GREEN", "RED", "GREY", "PURPLE", "ORANGE", "BLUE"]


@dataclass
class _ContributionRow:
    audit: ContributionAudit
    state: str


@dataclass
class _RoundView:
    audit: RoundAudit
    agree: int
    total: int
    accepted_chain: int | None
    accepted_audit: int
    recompute_bad: bool
    discrepancies: list[Discrepancy]
    contributions: list[_ContributionRow] = field(default_factory=list)


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("node.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt field fails the render instead of vanishing
        keep_trailing_newline=True,
    )
    env.filters["short"] = lambda v, head=10, tail=6: short_hex(v, head, tail, "\u2026")
    env.filters["num"] = fmt_num
    env.filters["describe"] = describe
    env.filters["human_bytes"] = human_bytes
    env.filters["eth"] = lambda wei: eth(wei) + " ETH"
    env.filters["epsilon"] = epsilon_text
    return env


def report_contributors(report: AuditReport) -> list[WorkerRow]:
    """The contributors' rows the report alone gives: submissions, and the on-chain
    verdicts of the finalized rounds (no credit, no payments)."""
    return contributor_rows(
        report.workers,
        [(rnd.round, c.worker, c.onchain_verdict, c.num_samples) for rnd in report.rounds for c in rnd.contributions],
    )


def _round_view(report: AuditReport, rnd: RoundAudit, flags: Flags) -> _RoundView:
    agree, total = agreement(report, rnd)
    onchain, audit = accepted_counts(rnd)
    recompute_bad = (
        rnd.recomputed_digest is not None
        and rnd.merged_digest is not None
        and rnd.recomputed_digest.lower() != rnd.merged_digest.lower()
    )
    return _RoundView(
        audit=rnd,
        agree=agree,
        total=total,
        accepted_chain=onchain,
        accepted_audit=audit,
        recompute_bad=recompute_bad,
        discrepancies=[d for d in report.discrepancies if d.round == rnd.round],
        contributions=[
            _ContributionRow(c, cell_state(c, flags.party(rnd.round, c.worker))[0])
            for c in sorted(rnd.contributions, key=lambda c: c.index)
        ],
    )


def render_html(report: AuditReport, contributors: list[WorkerRow] | None = None) -> str:
    """The whole audit as one self-contained HTML document.

    ``contributors``: ``ledger.trail.history.worker_table`` of the audited job, for the
    credits and payments (default: the report's ``contributors`` attribute, if any)."""
    if contributors is None:
        contributors = report.contributors or None   # an audit fills it from the chain; a bare report has none
    paid = contributors is not None
    rounds = sorted_rounds(report)
    flags = Flags(report)
    n_disc = len(report.discrepancies)
    subs = [c for r in rounds for c in r.contributions]
    page = {
        "title": f"Audit of job {report.job_id}: {'OK' if report.ok else plural(n_disc, 'discrepancy')}"
                 + (f" ({report.unfinished})" if report.unfinished else ""),
        "verdict": verdict_line(report),
        "latest_model": latest_model(report),
        "n_finalized": sum(1 for r in rounds if r.status == "finalized"),
        "n_skipped": sum(1 for r in rounds if r.status == "skipped"),
        "n_contributions": len(subs),
        "n_accepted_chain": sum(1 for c in subs if c.onchain_verdict == 0),
        "n_accepted_audit": sum(1 for c in subs if c.audit_verdict == 0),
        "discrepancies": sorted(report.discrepancies, key=lambda d: d.round),
        "unavailable": sorted(report.unavailable, key=lambda d: d.round),
        "notes": sorted(report.notes, key=lambda d: d.round),
        "rounds": [_round_view(report, r, flags) for r in rounds],
        "contributors": list(contributors) if paid else report_contributors(report),
        "contributors_paid": paid,
        # DP jobs: the epsilon each worker spent (ledger.trail.history.worker_table, the job's accountant)
        "dp": report.dp_delta is not None and paid,
        "dp_delta": report.dp_delta,
        # built by matplotlib from escaped hooks and titles (ElementTree escapes them)
        "lineage_svg": Markup(lineage_svg(report)),
        "loss_svg": Markup(loss_svg(report)),
    }
    colours = {"INK": INK, "MUTED": MUTED}
    return _environment().get_template("audit.html.j2").render(report=report, page=page, colours=colours)
