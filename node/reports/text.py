"""Terminal summary of an audit: a table of rounds, one line per discrepancy, a verdict.

`render_text(report)` returns plain text (ASCII apart from what the report itself
contains). Colour is only added when asked for, or when `color=None` and stdout is a
terminal that accepts it (not `NO_COLOR`, not `TERM=dumb`).

The small formatting helpers here (`short_hex`, `fmt_num`, `agreement`, ...) are
shared with the HTML renderer so both say the same thing about the same round.
"""

from __future__ import annotations

import math
import os
import sys

from ledger.trail.history import epsilon_text
from ledger.tables import text_table
from ledger.protocol.verdicts import describe

from node.reports.findings import AuditReport, ContributionAudit, RoundAudit

__all__ = ["render_text", "verdict_line", "short_hex", "fmt_num", "agreement", "verdict_text", "accepted_counts",
           "use_color", "human_bytes"]

_RESET = "\x1b[0m"
_GREEN = "\x1b[32m"
_RED = "\x1b[31m"
_BOLD = "\x1b[1m"


# ---------------------------------------------------------------- shared helpers


def short_hex(value: str | None, head: int = 8, tail: int = 4, ellipsis: str = "..") -> str:
    """`0x1234abcd..ef01` for a long hex string or address; "-" for None/empty."""
    if not value:
        return "-"
    value = str(value)
    body = value[2:] if value.startswith("0x") else value
    prefix = "0x" if value.startswith("0x") else ""
    if len(body) <= head + tail + 2:
        return value
    return f"{prefix}{body[:head]}{ellipsis}{body[-tail:] if tail else ''}"


def fmt_num(value: float | None, digits: int = 4) -> str:
    """A loss or norm for people: 4 significant digits, "nan"/"inf" spelled out, "-" for None."""
    if value is None:
        return "-"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return f"{value:.{max(digits - 1, 1)}e}"


def finite(value: float | None) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def agreement(report: AuditReport, rnd: RoundAudit) -> tuple[int, int]:
    """(proposals agreeing with the quorum outcome, aggregators of the job)."""
    agree = sum(1 for p in rnd.proposals if p.agrees_with_quorum)
    total = max(len(report.aggregators), len(rnd.proposals))
    return agree, total


def verdict_text(code: int | None) -> str:
    """`accepted`, `rejected: update-norm (7)`, or `-` when there is no verdict."""
    if code is None:
        return "-"
    if code == 0:
        return "accepted"
    return f"rejected: {describe(code)} ({code})"


def effective_verdict(c: ContributionAudit) -> int:
    """The on-chain verdict when the round finalized, else what the audit says."""
    return c.onchain_verdict if c.onchain_verdict is not None else c.audit_verdict


def accepted_counts(rnd: RoundAudit) -> tuple[int | None, int]:
    """(accepted on chain or None if the round did not finalize, accepted by the audit)."""
    audit = sum(1 for c in rnd.contributions if c.audit_verdict == 0)
    if rnd.status != "finalized" or any(c.onchain_verdict is None for c in rnd.contributions):
        return None, audit
    return sum(1 for c in rnd.contributions if c.onchain_verdict == 0), audit


def human_bytes(n: int) -> str:
    """`512 B`, `48.0 MB` (decimal units, like storage sizes are quoted)."""
    n = int(n or 0)
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n_f = n / 1000
        if n_f < 1000 or unit == "TB":
            return f"{n_f:.1f} {unit}"
        n = n_f
    return f"{n} B"  # unreachable


def use_color(stream=None) -> bool:
    stream = sys.stdout if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def sorted_rounds(report: AuditReport) -> list[RoundAudit]:
    return sorted(report.rounds, key=lambda r: r.round)


def latest_model(report: AuditReport) -> str | None:
    """The final digest, else the model the audited rounds lead to, else the last
    finalized merge, else genesis."""
    if report.final_digest:
        return report.final_digest
    if report.latest_digest:
        return report.latest_digest
    for rnd in reversed(sorted_rounds(report)):
        if rnd.status == "finalized" and rnd.merged_digest:
            return rnd.merged_digest
    return report.genesis_digest or None


def plural(n: int, word: str) -> str:
    """`1 round`, `2 rounds`, `1 discrepancy`, `3 discrepancies`."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


# ---------------------------------------------------------------- the text report


def render_text(report: AuditReport, *, color: bool | None = None) -> str:
    """The terminal summary of `report` (ends with a newline).

    Last line: `AUDIT OK final model 0x...` or `AUDIT FAILED: N discrepancies`.
    """
    color = use_color() if color is None else color

    def paint(text: str, code: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    lines: list[str] = []
    lines.append(
        f"job {report.job_id} on chain {report.chain_id}, contract {report.contract or '-'}"
    )
    lines.append(
        f"merge {report.merge_rule}, quorum {report.quorum}/{len(report.aggregators)} aggregators, "
        f"{len(report.workers)} workers, replay {report.replay}"
    )
    lines.append(f"config  {report.config_digest or '-'}")
    lines.append(f"genesis {report.genesis_digest or '-'}")
    spent = [(w.address, w.epsilon) for w in report.contributors if getattr(w, "epsilon", None) is not None]
    if report.dp_delta is not None and spent:
        lines.append(f"epsilon spent (DP-SGD, delta {report.dp_delta:g}, each worker's own data): "
                     + ", ".join(f"{short_hex(a)} {epsilon_text(e)}" for a, e in spent))
    lines.append("")

    rounds = sorted_rounds(report)
    if rounds:
        headers = ["round", "status", "submissions", "accepted", "agreement", "merged", "val loss", "ok"]
        rows: list[list[str]] = []
        oks: list[bool] = []
        for rnd in rounds:
            onchain, audit = accepted_counts(rnd)
            if onchain is None:
                accepted = f"- (audit {audit})" if rnd.contributions else "-"
            else:
                accepted = str(onchain) if onchain == audit else f"{onchain} (audit {audit})"
            agree, total = agreement(report, rnd)
            agree_s = f"{agree}/{total}" if rnd.proposals else "-"
            if rnd.status == "finalized":
                merged = short_hex(rnd.merged_digest)
            elif rnd.status == "skipped":
                merged = "(no quorum: parent kept)" if rnd.skip_reason == "no-quorum" else "(parent kept)"
            else:
                merged = "-"
            rows.append(
                [
                    str(rnd.round),
                    rnd.status,
                    str(len(rnd.contributions)),
                    accepted,
                    agree_s,
                    merged,
                    fmt_num(rnd.merged_val_loss),
                    "ok" if rnd.ok else "FAIL",
                ]
            )
            oks.append(rnd.ok)
        table = text_table(headers, rows, right={0, 2, 3, 4, 6})
        lines.extend(table[:2])
        for line, ok in zip(table[2:], oks):
            if color:
                # colour the last column only, after padding, so alignment is unchanged
                word = "ok" if ok else "FAIL"
                line = line[: len(line) - len(word)] + paint(word, _GREEN if ok else _RED)
            lines.append(line)
        accepted_audit = sum(1 for r in rounds for c in r.contributions if c.audit_verdict == 0)
        total_subs = sum(len(r.contributions) for r in rounds)
        lines.append("")
        lines.append(
            f"{plural(len(rounds), 'round')} ({sum(1 for r in rounds if r.status == 'finalized')} finalized, "
            f"{sum(1 for r in rounds if r.status == 'skipped')} skipped), "
            f"{plural(total_subs, 'contribution')} ({accepted_audit} valid per audit)"
        )
    else:
        lines.append("no rounds")
    lines.append(
        f"verified {human_bytes(report.bytes_verified)} in {report.seconds:.1f} s"
        + (f"; {report.unfinished}" if report.unfinished else "")
    )

    if report.discrepancies:
        lines.append("")
        lines.append(paint(f"{plural(len(report.discrepancies), 'discrepancy')}:", _BOLD))
        for d in sorted(report.discrepancies, key=lambda d: d.round):
            lines.append("  " + d.line())

    for title, items in (("unavailable now (nothing shown wrong; not re-checkable)", report.unavailable),
                         ("notes (consistent, not failures)", report.notes)):
        if items:
            lines.append("")
            lines.append(paint(f"{title}:", _BOLD))
            for d in sorted(items, key=lambda d: d.round):
                lines.append("  " + d.line())

    if report.not_rerun:
        lines.append("")
        lines.append(paint(not_rerun_line(report), _BOLD))
    lines.append("")
    lines.append(paint(verdict_line(report), _RED if not report.ok else _GREEN))
    return "\n".join(lines) + "\n"


def not_rerun_line(report: AuditReport) -> str:
    """The third word, beside OK and FAILED: what this auditor could not rerun for want
    of a key, in one line (empty when it reran everything)."""
    if not report.not_rerun:
        return ""
    if any(d.party == "" for d in report.not_rerun):
        rounds = sorted({d.round for d in report.not_rerun})
        return (f"NOT RERUN: the verdicts, merges and replays of {plural(len(rounds), 'round')} ({', '.join(map(str, rounds[:12]))}"
                f"{'…' if len(rounds) > 12 else ''}): the job is private and this auditor holds no key; everything "
                f"public was checked (digests, lineage, commitments, votes, payments, stored objects)")
    where = ", ".join(f"round {d.round} {d.party[:10]}" for d in sorted(report.not_rerun, key=lambda d: d.round)[:8])
    more = f" and {len(report.not_rerun) - 8} more" if len(report.not_rerun) > 8 else ""
    return (f"NOT RERUN: the replays of {plural(len(report.not_rerun), 'contribution')} ({where}{more}): what their "
            f"workers revealed (drawn windows, noise seeds) is sealed to their verifiers and named auditors, and "
            f"this auditor holds no key; "
            f"everything public was checked")


def verdict_line(report: AuditReport) -> str:
    """The audit's last line, the same in the text, JSON-less summaries and the HTML page:
    ``AUDIT OK final model 0x...``, ``AUDIT OK (job unfinished: round 2 of 3 open) latest
    model 0x...``, ``AUDIT INCOMPLETE: ...`` or ``AUDIT FAILED: N discrepancies``."""
    unfinished = f" ({report.unfinished})" if report.unfinished else ""
    if report.status == "INCOMPLETE":
        which = "latest" if report.unfinished else "final"
        return (f"AUDIT INCOMPLETE{unfinished}: {plural(len(report.unavailable), 'artifact')} unavailable now; "
                f"no discrepancy found, but the {which} model is not provable until they are republished")
    if report.ok:
        if report.final_digest and not report.unfinished:
            return f"AUDIT OK final model {report.final_digest}"
        return f"AUDIT OK{unfinished} latest model {latest_model(report) or '-'}"
    return f"AUDIT FAILED{unfinished}: {plural(len(report.discrepancies), 'discrepancy')}"
