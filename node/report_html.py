"""The audit as one self-contained HTML page: header, lineage graph, loss plot, tables.

`render_html(report)` returns a complete HTML document with inline CSS and inline
SVG generated here; no scripts, fonts, images or style sheets are fetched, so the
file can be mailed, archived or opened offline and still shows everything. Every
piece of text taken from the report goes through `html.escape`.

Stable hooks (tests and anyone scripting against the page):
- `#verdict` (class `ok` or `failed`), `#job`, `#discrepancies`, `#round-<n>`;
- `svg#lineage-graph`: one `g.cell` per (round, worker), class `cell accepted|rejected|
  missing|submitted|discrepancy` (`submitted`: the round never finalized, so there is no
  on-chain verdict) with `data-round`, `data-worker`, `data-verdict` (on-chain code or
  `none`) and `data-audit-verdict`; one `g.model` per merged model (`#model-genesis`,
  `#model-r<n>`) joined by `line.link` (`broken` when a round's parent is not the previous
  model); one `g.agg` dot per aggregator and round (class `agree`, `dissent` or `absent`,
  plus `audit-mismatch`);
- `svg#loss-plot`: `path.loss-line` through the merged models' validation loss,
  `circle.loss-point`, `.contribution-point`, axis ticks `.tick`.
"""

from __future__ import annotations

import math
from html import escape

from ledger.verdicts import describe

from .findings import AuditReport, ContributionAudit, Discrepancy, RoundAudit
from .report_text import (
    accepted_counts,
    agreement,
    effective_verdict,
    finite,
    fmt_num,
    human_bytes,
    latest_model,
    plural,
    short_hex,
    sorted_rounds,
    verdict_text,
)

__all__ = ["render_html"]

# Colours (also in the CSS below). Cell fills are the verdict; outlines flag disagreement.
GREEN = "#2e9e44"       # accepted
RED = "#d93a3a"         # rejected
GREY = "#c9ccd1"        # missing (no submission)
PURPLE = "#7b2cbf"      # invalid contribution accepted on chain (audit rejects it)
ORANGE = "#f08c00"      # any other disagreement located here
BLUE = "#2f6fb3"        # merged models
INK = "#1f2328"
MUTED = "#6a737d"


def e(value) -> str:
    """Escape anything for text or a double-quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def _n(x: float) -> str:
    """A coordinate: short, deterministic."""
    return f"{x:.1f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def _addr_key(a: str | None) -> str:
    return (a or "").lower()


# ---------------------------------------------------------------- classification


class _Index:
    """Where the report's discrepancies point: (round, party), party "" for a round or the job."""

    def __init__(self, report: AuditReport):
        self.by_party: dict[tuple[int, str], list[Discrepancy]] = {}
        for d in report.discrepancies:
            self.by_party.setdefault((d.round, _addr_key(d.party)), []).append(d)

    def party(self, rnd: int, party: str) -> list[Discrepancy]:
        return self.by_party.get((rnd, _addr_key(party)), []) if party else []

    def unlocated(self, rnd: int) -> list[Discrepancy]:
        """Discrepancies about the round (or job, round 0) itself, no party."""
        return self.by_party.get((rnd, ""), [])


def cell_state(c: ContributionAudit | None, flagged: list[Discrepancy]) -> tuple[str, str | None]:
    """(class, outline colour) of a lineage cell.

    accepted / rejected: the finalized on-chain verdict, the audit agrees;
    missing: the worker did not submit; submitted: submitted in a round that never
    finalized (no on-chain verdict); discrepancy: the audit disagrees with the chain
    or a discrepancy names this worker in this round (outline purple when an invalid
    contribution was accepted, orange otherwise).
    """
    if c is None:
        return "missing", None
    mismatch = c.onchain_verdict is not None and c.onchain_verdict != c.audit_verdict
    if mismatch or flagged:
        if c.onchain_verdict == 0 and c.audit_verdict != 0:
            return "discrepancy", PURPLE
        return "discrepancy", ORANGE
    if c.onchain_verdict is None:
        return "submitted", None  # the round never finalized: no verdict on chain
    return ("accepted" if c.onchain_verdict == 0 else "rejected"), None


def _cell_title(rnd: RoundAudit, c: ContributionAudit | None, worker: str, flagged: list[Discrepancy]) -> str:
    if c is None:
        return f"round {rnd.round} {worker}: no submission"
    lines = [f"round {rnd.round} #{c.index} {c.worker}"]
    if c.onchain_verdict is None:
        lines.append(f"on chain: no verdict (round {rnd.status})")
    else:
        lines.append(f"on chain: {verdict_text(c.onchain_verdict)}")
    lines.append(f"audit: {verdict_text(c.audit_verdict)}" + (f" - {c.reason}" if c.reason else ""))
    if c.val_loss is not None:
        lines.append(f"val loss {fmt_num(c.val_loss)}")
    if c.update_norm is not None:
        lines.append(f"update norm {fmt_num(c.update_norm)}")
    lines.append(f"digest {c.digest}")
    for d in flagged:
        lines.append("DISCREPANCY " + d.line())
    return "\n".join(lines)


# ---------------------------------------------------------------- lineage graph

# Styles for the SVG text, carried inside each <svg> so a graph copied out of the page
# (or opened on its own) looks the same.
_SVG_CSS = (
    "<style>"
    f"text {{ font-family: system-ui, 'DejaVu Sans', sans-serif; font-size: 11px; fill: {INK}; }}"
    ".col-head { font-size: 12px; font-weight: 600; }"
    f".col-sub, .empty, .axis-title {{ fill: {MUTED}; }}"
    ".row-head, .digest-label { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; }"
    ".model-head { font-family: system-ui, 'DejaVu Sans', sans-serif; font-weight: 600; }"
    ".node-label { font-weight: 700; } .node-label.light { fill: #fff; }"
    f".digest-label {{ font-size: 10px; fill: {MUTED}; }}"
    ".axis-title { font-size: 12px; }"
    ".cell:hover rect, .agg:hover circle { opacity: 0.8; }"
    "</style>"
)


def _text_w(text: str, px: float = 11) -> float:
    """Rough width of sans-serif text (legend layout; no font metrics available here)."""
    return len(text) * px * 0.62


def _expected_parents(report: AuditReport, rounds: list[RoundAudit]) -> dict[int, str | None]:
    """The parent each round should have: genesis, then the previous finalized merge."""
    out: dict[int, str | None] = {}
    current = report.genesis_digest or None
    prev_round = 0
    for rnd in rounds:
        out[rnd.round] = current if rnd.round == prev_round + 1 else None  # gap: unknown
        if rnd.status == "finalized" and rnd.merged_digest:
            current = rnd.merged_digest
        elif rnd.status != "skipped":
            current = None  # open/closed: nothing after it is determined
        prev_round = rnd.round
    return out


def _mark(kind: str, x: float, y: float, w: float, h: float, colour: str = "#fff") -> str:
    """A small white glyph drawn as a path (no font needed)."""
    cx, cy = x + w / 2, y + h / 2
    s = min(w, h) * 0.28
    if kind == "accepted":
        d = f"M{_n(cx - s)} {_n(cy)} L{_n(cx - s / 3)} {_n(cy + s * 0.7)} L{_n(cx + s)} {_n(cy - s * 0.7)}"
    elif kind == "rejected":
        d = f"M{_n(cx - s)} {_n(cy - s)} L{_n(cx + s)} {_n(cy + s)} M{_n(cx + s)} {_n(cy - s)} L{_n(cx - s)} {_n(cy + s)}"
    else:
        return ""
    return f'<path class="glyph" d="{d}" fill="none" stroke="{colour}" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"/>'


def lineage_svg(report: AuditReport) -> str:
    rounds = sorted_rounds(report)
    idx = _Index(report)

    # rows: the job's workers, then anyone who submitted without being listed
    workers: list[str] = list(report.workers)
    seen = {_addr_key(w) for w in workers}
    for rnd in rounds:
        for c in rnd.contributions:
            if _addr_key(c.worker) not in seen:
                seen.add(_addr_key(c.worker))
                workers.append(c.worker)

    n_agg = max([len(report.aggregators)] + [len(r.proposals) for r in rounds] + [0])
    col_w = max(80, 16 * n_agg + 24)
    row_h = 32
    label_w = 150
    top = 44
    cell_w, cell_h = col_w - 30, row_h - 8
    grid_h = row_h * len(workers)
    model_y = top + grid_h + 34
    node_r = 13
    legend_y = model_y + node_r + 18 + 16 + 26
    width = label_w + col_w * (len(rounds) + 1) + 20
    height = legend_y + 44

    def col_x(i: int) -> float:
        """Left edge of column i (0 = genesis, 1.. = rounds in order)."""
        return label_w + col_w * i

    parts: list[str] = []
    parts.append(
        f'<svg id="lineage-graph" class="lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="lineage-title" '
        f'data-rounds="{len(rounds)}" data-workers="{len(workers)}">'
    )
    parts.append(
        '<title id="lineage-title">Lineage: one column per round, one row per worker; '
        "merged models along the bottom</title>"
    )
    parts.append(_SVG_CSS)
    parts.append(
        "<defs>"
        f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        f'<path d="M0 0 L10 5 L0 10 z" fill="{MUTED}"/></marker>'
        f'<marker id="arrow-bad" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        f'<path d="M0 0 L10 5 L0 10 z" fill="{RED}"/></marker>'
        "</defs>"
    )

    # column headers
    parts.append(f'<text class="col-head" x="{_n(col_x(0) + col_w / 2)}" y="18" text-anchor="middle">genesis</text>')
    for i, rnd in enumerate(rounds, start=1):
        cx = col_x(i) + col_w / 2
        parts.append(
            f'<text class="col-head" x="{_n(cx)}" y="18" text-anchor="middle">round {rnd.round}</text>'
        )
        if rnd.status != "finalized":
            parts.append(
                f'<text class="col-sub" x="{_n(cx)}" y="32" text-anchor="middle">{e(rnd.status)}</text>'
            )

    # row labels
    for j, w in enumerate(workers):
        y = top + j * row_h + row_h / 2 + 4
        listed = j < len(report.workers)
        parts.append(
            f'<text class="row-head" x="{label_w - 10}" y="{_n(y)}" text-anchor="end">'
            f"<title>{e(w)}{'' if listed else ' (not a worker of this job)'}</title>"
            f"{e(short_hex(w, 6, 4, chr(0x2026)))}{'' if listed else ' ?'}</text>"
        )
    parts.append(
        f'<text class="row-head model-head" x="{label_w - 10}" y="{_n(model_y + 4)}" text-anchor="end">merged model</text>'
    )

    expected_parent = _expected_parents(report, rounds)

    # cells, per round: worker marks, a bus from accepted marks down to the merged model
    for i, rnd in enumerate(rounds, start=1):
        x0 = col_x(i) + 6
        bus_x = x0 + cell_w + 9
        by_worker: dict[str, ContributionAudit] = {}
        for c in rnd.contributions:
            by_worker.setdefault(_addr_key(c.worker), c)
        feeding_rows: list[float] = []
        for j, w in enumerate(workers):
            c = by_worker.get(_addr_key(w))
            flagged = idx.party(rnd.round, w)
            state, outline = cell_state(c, flagged)
            y = top + j * row_h + 4
            fill, glyph_colour = GREY, "#fff"
            stroke = f' stroke="{outline}" stroke-width="3"' if outline else ""
            if state == "submitted":
                # no on-chain verdict: hollow, dashed, in the colour of the audit's opinion
                fill = "#ffffff"
                glyph_colour = GREEN if c.audit_verdict == 0 else RED
                stroke = f' stroke="{glyph_colour}" stroke-width="1.5" stroke-dasharray="3 2"'
            elif c is not None:
                fill = GREEN if effective_verdict(c) == 0 else RED
            verdict_attr = ""
            if c is not None:
                onchain = "none" if c.onchain_verdict is None else str(c.onchain_verdict)
                verdict_attr = f' data-verdict="{onchain}" data-audit-verdict="{c.audit_verdict}"'
            parts.append(
                f'<g class="cell {state}" data-round="{rnd.round}" data-worker="{e(w)}"{verdict_attr}>'
                f"<title>{e(_cell_title(rnd, c, w, flagged))}</title>"
                f'<rect x="{_n(x0)}" y="{_n(y)}" width="{_n(cell_w)}" height="{_n(cell_h)}" rx="4" fill="{fill}"{stroke}/>'
                + (
                    _mark("accepted" if effective_verdict(c) == 0 else "rejected", x0, y, cell_w, cell_h, glyph_colour)
                    if c
                    else ""
                )
                + "</g>"
            )
            if c is not None and effective_verdict(c) == 0 and rnd.status == "finalized":
                yc = y + cell_h / 2
                feeding_rows.append(yc)
                parts.append(
                    f'<line class="feed" x1="{_n(x0 + cell_w)}" y1="{_n(yc)}" x2="{_n(bus_x)}" y2="{_n(yc)}" stroke="{MUTED}" stroke-width="1.5"/>'
                )
        node_cx = col_x(i) + col_w / 2
        if feeding_rows:
            y_end = model_y - node_r - 3
            parts.append(
                f'<path class="feed" d="M{_n(bus_x)} {_n(min(feeding_rows))} L{_n(bus_x)} {_n(y_end - 8)} '
                f'L{_n(node_cx + 4)} {_n(y_end)}" fill="none" stroke="{MUTED}" stroke-width="1.5" marker-end="url(#arrow)"/>'
            )

    # merged-model row: genesis -> r1 -> r2 ...
    g_cx = col_x(0) + col_w / 2
    g_flag = idx.unlocated(0)
    parts.append(
        f'<g class="model genesis" id="model-genesis"><title>{e("genesis " + (report.genesis_digest or "-"))}'
        + "".join(e("\nDISCREPANCY " + d.line()) for d in g_flag)
        + "</title>"
        f'<circle cx="{_n(g_cx)}" cy="{_n(model_y)}" r="{node_r}" fill="{INK}"'
        + (f' stroke="{ORANGE}" stroke-width="3"' if g_flag else "")
        + "/>"
        f'<text class="node-label light" x="{_n(g_cx)}" y="{_n(model_y + 4)}" text-anchor="middle">G</text>'
        f'<text class="digest-label" x="{_n(g_cx)}" y="{_n(model_y + node_r + 14)}" text-anchor="middle">{e(short_hex(report.genesis_digest, 6, 0, ""))}</text>'
        "</g>"
    )
    prev_cx = g_cx
    for i, rnd in enumerate(rounds, start=1):
        cx = col_x(i) + col_w / 2
        exp = expected_parent.get(rnd.round)
        bad_link = exp is not None and _addr_key(rnd.parent) != _addr_key(exp)
        link_title = f"parent of round {rnd.round}: {rnd.parent}" + (
            f" (expected {exp})" if bad_link else ""
        )
        parts.append(
            f'<line class="link{" broken" if bad_link else ""}" x1="{_n(prev_cx + node_r)}" y1="{_n(model_y)}" '
            f'x2="{_n(cx - node_r - 2)}" y2="{_n(model_y)}" stroke="{RED if bad_link else MUTED}" stroke-width="2"'
            + (' stroke-dasharray="5 3"' if bad_link else "")
            + f' marker-end="url(#{"arrow-bad" if bad_link else "arrow"})"><title>{e(link_title)}</title></line>'
        )
        prev_cx = cx
        flagged = idx.unlocated(rnd.round)
        recompute_bad = (
            rnd.status == "finalized"
            and rnd.recomputed_digest is not None
            and _addr_key(rnd.recomputed_digest) != _addr_key(rnd.merged_digest)
        )
        node_bad = bool(flagged) or recompute_bad or not rnd.ok
        if rnd.status == "finalized":
            fill, label, dash = BLUE, rnd.merged_digest, ""
        elif rnd.status == "skipped":
            fill, label, dash = "#e6e8eb", rnd.parent, ' stroke-dasharray="3 2"'
        else:
            fill, label, dash = "#ffffff", None, ' stroke-dasharray="3 2"'
        stroke = ORANGE if node_bad else (MUTED if rnd.status != "finalized" else BLUE)
        title = [f"round {rnd.round}: {rnd.status}"]
        if rnd.status == "finalized":
            title.append(f"merged {rnd.merged_digest or '-'}")
            if rnd.recomputed_digest is not None:
                title.append(
                    f"recomputed {rnd.recomputed_digest}" + (" (MISMATCH)" if recompute_bad else " (matches)")
                )
        elif rnd.status == "skipped":
            why = "no quorum in the proposal window" if rnd.skip_reason == "no-quorum" else "too few submissions"
            title.append(f"skipped ({why}): parent kept {rnd.parent}")
        if rnd.merged_val_loss is not None:
            title.append(f"val loss {fmt_num(rnd.merged_val_loss)}")
        for d in flagged:
            title.append("DISCREPANCY " + d.line())
        parts.append(
            f'<g class="model {e(rnd.status)}{" bad" if node_bad else ""}" id="model-r{rnd.round}">'
            f"<title>{e(chr(10).join(title))}</title>"
            f'<circle cx="{_n(cx)}" cy="{_n(model_y)}" r="{node_r}" fill="{fill}" stroke="{stroke}" '
            f'stroke-width="{3 if node_bad else 1.5}"{dash}/>'
            f'<text class="node-label{" light" if rnd.status == "finalized" else ""}" x="{_n(cx)}" '
            f'y="{_n(model_y + 4)}" text-anchor="middle">{rnd.round}</text>'
            f'<text class="digest-label" x="{_n(cx)}" y="{_n(model_y + node_r + 14)}" text-anchor="middle">'
            f'{e(short_hex(label, 6, 0, "") if label else rnd.status)}</text>'
            "</g>"
        )
        # aggregator agreement: "2/3 agree" and one dot per aggregator
        agree, total = agreement(report, rnd)
        ay = model_y + node_r + 30
        if rnd.proposals or rnd.status == "finalized":
            parts.append(
                f'<text class="agree-label" x="{_n(cx)}" y="{_n(ay)}" text-anchor="middle">{agree}/{total} agree</text>'
            )
        by_agg = {_addr_key(p.aggregator): p for p in rnd.proposals}
        aggs = list(report.aggregators) + [
            p.aggregator for p in rnd.proposals if _addr_key(p.aggregator) not in {_addr_key(a) for a in report.aggregators}
        ]
        if rnd.proposals or rnd.status == "finalized":
            dots_w = 16 * len(aggs)
            for k, a in enumerate(aggs):
                dx = cx - dots_w / 2 + 8 + 16 * k
                p = by_agg.get(_addr_key(a))
                a_flag = idx.party(rnd.round, a)
                if p is None:
                    cls, fill = "absent", "#ffffff"
                    desc = "no proposal"
                elif p.agrees_with_quorum:
                    cls, fill = "agree", BLUE
                    desc = "agrees with the finalized outcome"
                else:
                    cls, fill = "dissent", RED
                    desc = "DISSENTS from the finalized outcome"
                audit_bad = (p is not None and not p.agrees_with_audit) or bool(a_flag)
                tip = [f"{a}: {desc}"]
                if p is not None:
                    tip.append(f"proposed {p.merged_digest}")
                    tip.append("agrees with the audit" if p.agrees_with_audit else "DISAGREES with the audit")
                for d in a_flag:
                    tip.append("DISCREPANCY " + d.line())
                parts.append(
                    f'<g class="agg {cls}{" audit-mismatch" if audit_bad else ""}" data-round="{rnd.round}" data-aggregator="{e(a)}">'
                    f"<title>{e(chr(10).join(tip))}</title>"
                    f'<circle cx="{_n(dx)}" cy="{_n(ay + 13)}" r="{6 if cls == "dissent" else 5}" fill="{fill}" '
                    f'stroke="{ORANGE if audit_bad else (RED if cls == "dissent" else MUTED)}" '
                    f'stroke-width="{2.5 if audit_bad or cls == "dissent" else 1}"/></g>'
                )

    if not rounds:
        parts.append(
            f'<text class="empty" x="{_n(col_x(1) + 10)}" y="{_n(model_y + 4)}">no rounds recorded</text>'
        )

    # legend: two rows, cells then models and aggregators
    lx, ly = 10.0, float(legend_y)
    cell_items = [
        ("accepted", GREEN, None, ""),
        ("rejected", RED, None, ""),
        ("no submission", GREY, None, ""),
        ("no verdict (round not finalized)", "#ffffff", MUTED, ' stroke-dasharray="3 2"'),
        ("invalid but accepted", "#ffffff", PURPLE, ""),
        ("other discrepancy", "#ffffff", ORANGE, ""),
    ]
    for text, fill, outline, dash in cell_items:
        stroke = f' stroke="{outline}" stroke-width="{1.5 if dash else 3}"{dash}' if outline else ""
        parts.append(
            f'<rect class="legend-swatch" x="{_n(lx)}" y="{_n(ly)}" width="14" height="12" rx="2" fill="{fill}"{stroke}/>'
            f'<text class="legend" x="{_n(lx + 20)}" y="{_n(ly + 10)}">{e(text)}</text>'
        )
        lx += 20 + _text_w(text) + 16
    max_x = lx
    lx, ly = 10.0, ly + 22
    dot_items = [
        ("merged model", 6, BLUE, BLUE, 1),
        ("round skipped / open", 6, "#e6e8eb", MUTED, 1),
        ("aggregator agrees", 5, BLUE, MUTED, 1),
        ("dissents from the quorum", 6, RED, RED, 2.5),
        ("disagrees with the audit", 5, BLUE, ORANGE, 2.5),
    ]
    for text, r, fill, stroke, sw in dot_items:
        parts.append(
            f'<circle cx="{_n(lx + 7)}" cy="{_n(ly + 6)}" r="{r}" fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
            f'<text class="legend" x="{_n(lx + 18)}" y="{_n(ly + 10)}">{e(text)}</text>'
        )
        lx += 18 + _text_w(text) + 16
    max_x = max(max_x, lx)
    parts.append("</svg>")
    # the legend may be wider than a small graph: widen the canvas if so
    svg = "".join(parts)
    min_w = int(max_x + 10)
    if min_w > width:
        svg = svg.replace(
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}"',
            f'width="{min_w}" height="{height}" viewBox="0 0 {min_w} {height}"',
            1,
        )
    return svg


# ---------------------------------------------------------------- loss plot


def nice_ticks(lo: float, hi: float, target: int = 5) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] and the decimals to print them with."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0], 0
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if raw <= step:
            break
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    count = int(round((end - start) / step))
    ticks = [start + k * step for k in range(count + 1)]
    decimals = max(0, -int(math.floor(math.log10(step) + 1e-9)) + (1 if m == 2.5 else 0))
    return ticks, decimals


def loss_svg(report: AuditReport) -> str:
    rounds = sorted_rounds(report)
    idx = _Index(report)
    n_x = (rounds[-1].round - rounds[0].round + 2) if rounds else 1
    W, H = max(760, min(120 + 28 * n_x, 1400)), 320
    ml, mr, mt, mb = 64, 24, 32, 46
    pw, ph = W - ml - mr, H - mt - mb

    # the merged model's loss per round; the first round's parent is the start (x = 0)
    series: list[tuple[int, float, str]] = []  # (x, loss, kind)
    if rounds and finite(rounds[0].parent_val_loss):
        series.append((rounds[0].round - 1, float(rounds[0].parent_val_loss), "start"))
    for rnd in rounds:
        if finite(rnd.merged_val_loss):
            series.append((rnd.round, float(rnd.merged_val_loss), rnd.status))
        elif rnd.status == "skipped" and finite(rnd.parent_val_loss):
            series.append((rnd.round, float(rnd.parent_val_loss), "skipped"))

    contribs: list[tuple[int, int, int, float, str, ContributionAudit]] = []  # (round, k, n, loss, state, c)
    for rnd in rounds:
        pts = [c for c in rnd.contributions if finite(c.val_loss)]
        for k, c in enumerate(pts):
            state, _ = cell_state(c, idx.party(rnd.round, c.worker))
            contribs.append((rnd.round, k, len(pts), float(c.val_loss), state, c))

    if not series and not contribs:
        H = 120
        ph = H - mt - 20
    parts = [
        f'<svg id="loss-plot" class="loss" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-labelledby="loss-title" data-points="{len(series)}">',
        '<title id="loss-title">Validation loss of the merged model per round</title>',
        _SVG_CSS,
    ]
    if not series and not contribs:
        parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d0d7de"/>')
        parts.append(
            f'<text class="empty" x="{_n(ml + pw / 2)}" y="{_n(mt + ph / 2)}" text-anchor="middle">'
            "no validation loss recorded</text></svg>"
        )
        return "".join(parts)

    # y range: the merged series and accepted contributions; outliers are clipped to the edge
    basis = [v for _, v, _ in series] + [v for *_, v, s, c in contribs if effective_verdict(c) == 0]
    if not basis:
        basis = [v for *_, v, _, _ in contribs]
    yticks, ydec = nice_ticks(min(basis), max(basis))
    y0, y1 = yticks[0], yticks[-1]

    x_lo = min([x for x, _, _ in series] + [r for r, *_ in contribs])
    x_hi = max([x for x, _, _ in series] + [r for r, *_ in contribs])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    pad = 18  # keep the first and last rounds' points off the frame

    def sx(x: float) -> float:
        return ml + pad + (x - x_lo) / (x_hi - x_lo) * (pw - 2 * pad)

    def sy(v: float) -> float:
        return mt + (1 - (v - y0) / (y1 - y0)) * ph

    parts.append(f'<rect class="plot-area" x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d0d7de"/>')
    # y axis: grid + labels
    for t in yticks:
        y = sy(t)
        parts.append(
            f'<line class="grid" x1="{ml}" y1="{_n(y)}" x2="{ml + pw}" y2="{_n(y)}" stroke="#e1e4e8"/>'
            f'<text class="tick ytick" x="{ml - 8}" y="{_n(y + 4)}" text-anchor="end">{t:.{ydec}f}</text>'
        )
    # x axis: one tick per round (thinned when there are many)
    span = int(x_hi - x_lo)
    step = 1 if span <= 20 else max(1, int(nice_ticks(0, span, 10)[0][1]))
    for x in range(int(math.ceil(x_lo)), int(math.floor(x_hi)) + 1):
        if (x - int(math.ceil(x_lo))) % step:
            continue
        px = sx(x)
        label = "start" if rounds and x == rounds[0].round - 1 and any(k == "start" for *_, k in series) else str(x)
        parts.append(
            f'<line class="xgrid" x1="{_n(px)}" y1="{mt + ph}" x2="{_n(px)}" y2="{mt + ph + 5}" stroke="{MUTED}"/>'
            f'<text class="tick xtick" x="{_n(px)}" y="{mt + ph + 18}" text-anchor="middle">{e(label)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="{INK}"/>'
        f'<line class="axis" x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="{INK}"/>'
        f'<text class="axis-title" x="{_n(ml + pw / 2)}" y="{H - 8}" text-anchor="middle">round</text>'
        f'<text class="axis-title" x="14" y="{_n(mt + ph / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_n(mt + ph / 2)})">validation loss</text>'
    )

    # contributions (behind the line)
    for rnd_no, k, n, v, state, c in contribs:
        px = sx(rnd_no) + (k - (n - 1) / 2) * 6
        colour = GREEN if effective_verdict(c) == 0 else RED
        if state == "submitted":
            colour = "#ffffff"
        outline = (GREEN if effective_verdict(c) == 0 else RED) if state == "submitted" else PURPLE if state == "discrepancy" and c.onchain_verdict == 0 else ORANGE if state == "discrepancy" else "#fff"
        tip = f"round {rnd_no} {c.worker}: val loss {fmt_num(v)}, {verdict_text(effective_verdict(c))}"
        if v > y1 or v < y0:
            edge = mt + 2 if v > y1 else mt + ph - 2
            tri = (
                f"M{_n(px - 5)} {_n(edge + 7)} L{_n(px + 5)} {_n(edge + 7)} L{_n(px)} {_n(edge)} z"
                if v > y1
                else f"M{_n(px - 5)} {_n(edge - 7)} L{_n(px + 5)} {_n(edge - 7)} L{_n(px)} {_n(edge)} z"
            )
            parts.append(
                f'<path class="contribution-point clipped {state}" d="{tri}" fill="{colour}" stroke="{outline}">'
                f"<title>{e(tip + ' (off scale)')}</title></path>"
            )
        else:
            parts.append(
                f'<circle class="contribution-point {state}" cx="{_n(px)}" cy="{_n(sy(v))}" r="3.5" '
                f'fill="{colour}" fill-opacity="0.75" stroke="{outline}"><title>{e(tip)}</title></circle>'
            )

    # the merged model's loss
    if series:
        d = " ".join(f"{'M' if i == 0 else 'L'}{_n(sx(x))} {_n(sy(v))}" for i, (x, v, _) in enumerate(series))
        parts.append(
            f'<path class="loss-line" d="{d}" fill="none" stroke="{BLUE}" stroke-width="2.5" stroke-linejoin="round"/>'
        )
        point_r = 4.5 if len(series) <= 30 else 3 if len(series) <= 80 else 2
        for x, v, kind in series:
            label = "start (round 1 parent)" if kind == "start" else f"round {x} ({kind})"
            hollow = kind in ("start", "skipped")
            parts.append(
                f'<circle class="loss-point {e(kind)}" cx="{_n(sx(x))}" cy="{_n(sy(v))}" r="{point_r}" '
                f'fill="{"#fff" if hollow else BLUE}" stroke="{BLUE}" stroke-width="2">'
                f"<title>{e(label)}: {e(fmt_num(v))}</title></circle>"
            )
    # legend, above the plot area so it never hides a point
    lx, ly = float(ml), 14.0
    parts.append(
        f'<line x1="{_n(lx)}" y1="{_n(ly)}" x2="{_n(lx + 20)}" y2="{_n(ly)}" stroke="{BLUE}" stroke-width="2.5"/>'
        f'<text class="legend" x="{_n(lx + 26)}" y="{_n(ly + 4)}">merged model</text>'
    )
    lx += 26 + _text_w("merged model") + 18
    for text, colour in (("accepted contribution", GREEN), ("rejected contribution", RED)):
        parts.append(
            f'<circle cx="{_n(lx + 4)}" cy="{_n(ly)}" r="3.5" fill="{colour}"/>'
            f'<text class="legend" x="{_n(lx + 12)}" y="{_n(ly + 4)}">{text}</text>'
        )
        lx += 12 + _text_w(text) + 18
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- tables and page


def _code(value: str | None, head: int = 10, tail: int = 6) -> str:
    """A digest/address/CID shortened, full value in the tooltip."""
    if not value:
        return '<span class="muted">-</span>'
    return f'<code title="{e(value)}">{e(short_hex(value, head, tail, chr(0x2026)))}</code>'


_FLAG = ' <span class="flag" title="the audit disagrees with the chain here">&#9888;</span>'


def _verdict_cell(code: int | None, reason: str = "") -> str:
    if code is None:
        return '<span class="muted">no verdict</span>'
    if code == 0:
        return '<span class="v-ok">accepted</span>'
    tip = f' title="{e(reason)}"' if reason else ""
    return f'<span class="v-bad"{tip}>{e(describe(code))} ({code})</span>'


def _replay_cell(c: ContributionAudit) -> str:
    if not c.replayed_segments:
        return '<span class="muted">-</span>'
    segs = "segment" + ("s " if len(c.replayed_segments) > 1 else " ") + ", ".join(map(str, c.replayed_segments))
    dist = "" if c.replay_distance is None else f" (distance {e(fmt_num(c.replay_distance))})"
    if c.audit_verdict in (9, 12, 13):
        return f'<span class="v-bad">{e(segs)}: not reproduced{dist}</span>'
    return f'<span class="v-ok">{e(segs)} reproduced{dist}</span>'


def _discrepancy_table(report: AuditReport) -> str:
    if not report.discrepancies:
        return '<p class="none" id="discrepancies">No discrepancies: every check passed.</p>'
    return _located_table(report.discrepancies, "discrepancies")


def _located_table(items, table_id: str) -> str:
    """Located findings (discrepancies, artifacts unavailable now, notes) as one table."""
    rows = []
    for d in sorted(items, key=lambda d: d.round):
        where = f'<a href="#round-{d.round}">{d.round}</a>' if d.round else "job"
        rows.append(
            "<tr>"
            f"<td class=num>{where}</td>"
            f"<td>{_code(d.party, 8, 4) if d.party else '<span class=muted>-</span>'}</td>"
            f"<td><b>{e(d.check)}</b></td>"
            f"<td class=wrap>{e(d.expected)}</td>"
            f"<td class=wrap>{e(d.actual)}</td>"
            f"<td class=wrap>{e(d.detail)}</td>"
            "</tr>"
        )
    return (
        f'<table id="{table_id}" class="grid discrepancies"><thead><tr>'
        "<th>round</th><th>party</th><th>check</th><th>expected</th><th>actual</th><th>detail</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _round_section(report: AuditReport, rnd: RoundAudit, idx: _Index) -> str:
    agree, total = agreement(report, rnd)
    onchain, audit = accepted_counts(rnd)
    recompute_bad = (
        rnd.recomputed_digest is not None
        and rnd.merged_digest is not None
        and _addr_key(rnd.recomputed_digest) != _addr_key(rnd.merged_digest)
    )
    head = (
        f'<section class="round{" bad" if not rnd.ok else ""}" id="round-{rnd.round}">'
        f'<h3>Round {rnd.round} <span class="status s-{e(rnd.status)}">{e(rnd.status)}</span> '
        f'<span class="{"v-ok" if rnd.ok else "v-bad"}">{"ok" if rnd.ok else "FAILED"}</span></h3>'
    )
    facts = [
        ("parent", _code(rnd.parent)),
        ("merged (on chain)", _code(rnd.merged_digest) if rnd.status == "finalized" else '<span class="muted">-</span>'),
        (
            "merged (recomputed)",
            (_code(rnd.recomputed_digest) + (' <span class="v-bad">mismatch</span>' if recompute_bad else ' <span class="v-ok">matches</span>' if rnd.merged_digest else ""))
            if rnd.recomputed_digest
            else '<span class="muted">-</span>',
        ),
        ("submissions", str(len(rnd.contributions))),
        (
            "accepted",
            (f"{onchain} on chain, {audit} by the audit" if onchain is not None else f"{audit} by the audit (no on-chain verdicts)"),
        ),
        ("aggregators", f"{agree}/{total} agree" if rnd.proposals else '<span class="muted">no proposals</span>'),
        ("val loss", f"{e(fmt_num(rnd.parent_val_loss))} &rarr; {e(fmt_num(rnd.merged_val_loss))}"),
    ]
    body = ['<dl class="facts">'] + [f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts] + ["</dl>"]

    own = [d for d in report.discrepancies if d.round == rnd.round]
    if own:
        body.append('<ul class="round-discrepancies">' + "".join(f"<li>{e(d.line())}</li>" for d in own) + "</ul>")

    if rnd.contributions:
        rows = []
        for c in sorted(rnd.contributions, key=lambda c: c.index):
            state, _ = cell_state(c, idx.party(rnd.round, c.worker))
            rows.append(
                f'<tr class="row-{state}">'
                f"<td class=num>{c.index}</td>"
                f"<td>{_code(c.worker, 6, 4)}</td>"
                f"<td>{_code(c.digest, 8, 4)}</td>"
                f"<td>{_code(c.cid, 8, 4)}</td>"
                f"<td class=num>{c.num_samples}</td>"
                f"<td>{_verdict_cell(c.onchain_verdict)}</td>"
                f"<td>{_verdict_cell(c.audit_verdict, c.reason)}{_FLAG if state == 'discrepancy' else ''}"
                + (f'<div class="reason">{e(c.reason)}</div>' if c.reason else "")
                + "</td>"
                f"<td class=num>{e(fmt_num(c.val_loss))}</td>"
                f"<td class=num>{e(fmt_num(c.update_norm))}</td>"
                f"<td>{_replay_cell(c)}</td>"
                "</tr>"
            )
        body.append(
            '<table class="grid contributions"><thead><tr>'
            "<th>#</th><th>worker</th><th>digest</th><th>cid</th><th>samples</th>"
            "<th>on-chain verdict</th><th>audit verdict</th><th>val loss</th><th>update norm</th><th>replay</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    else:
        body.append('<p class="muted">No submissions.</p>')

    if rnd.proposals:
        rows = []
        for p in rnd.proposals:
            verdicts = " ".join(str(v) for v in p.verdicts)
            labels = ", ".join(describe(v) for v in p.verdicts)
            rows.append(
                f'<tr class="{"" if p.agrees_with_quorum else "row-dissent"}">'
                f"<td>{_code(p.aggregator, 6, 4)}</td>"
                f"<td>{_code(p.merged_digest, 8, 4)}</td>"
                f"<td>{_code(p.merged_cid, 8, 4)}</td>"
                f'<td><code title="{e(labels)}">[{e(verdicts)}]</code></td>'
                f"<td>{'<span class=v-ok>yes</span>' if p.agrees_with_quorum else '<span class=v-bad>DISSENTS</span>'}</td>"
                f"<td>{'<span class=v-ok>yes</span>' if p.agrees_with_audit else '<span class=v-bad>no</span>'}</td>"
                f"<td class=num>{p.block or ''}</td>"
                f"<td>{_code(p.tx_hash, 8, 4) if p.tx_hash else ''}</td>"
                "</tr>"
            )
        body.append(
            '<table class="grid proposals"><thead><tr>'
            "<th>aggregator</th><th>merged digest</th><th>merged cid</th><th>verdicts</th>"
            "<th>agrees with quorum</th><th>agrees with audit</th><th>block</th><th>tx</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    return head + "".join(body) + "</section>"


_CSS = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
body {{ margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: {INK}; background: #fff; }}
h1 {{ font-size: 22px; margin: 0 0 8px; }}
h2 {{ font-size: 18px; margin: 32px 0 10px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }}
h3 {{ font-size: 15px; margin: 22px 0 6px; }}
code {{ font: 12px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; }}
.muted {{ color: {MUTED}; }}
#verdict {{ display: inline-block; padding: 8px 16px; border-radius: 6px; font-weight: 700; font-size: 18px; color: #fff; }}
#verdict.ok {{ background: #1a7f37; }}
#verdict.failed {{ background: #b42318; }}
.meta {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 14px 0; }}
.meta dt {{ color: {MUTED}; }} .meta dd {{ margin: 0; word-break: break-all; }}
.facts {{ display: grid; grid-template-columns: max-content 1fr; gap: 1px 14px; margin: 4px 0 10px; }}
.facts dt {{ color: {MUTED}; }} .facts dd {{ margin: 0; }}
.scroll {{ overflow-x: auto; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px; background: #fff; }}
table.grid {{ border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }}
table.grid th, table.grid td {{ border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }}
table.grid th {{ background: #f6f8fa; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.wrap {{ word-break: break-all; max-width: 360px; }}
.v-ok {{ color: #1a7f37; }} .v-bad {{ color: #b42318; font-weight: 600; }}
tr.row-rejected td {{ background: #fff5f5; }}
tr.row-discrepancy td {{ background: #fff4e0; }}
tr.row-dissent td {{ background: #fff5f5; }}
.reason {{ color: {MUTED}; font-size: 12px; }}
.status {{ font-size: 12px; font-weight: 500; padding: 1px 6px; border-radius: 10px; background: #eaeef2; }}
.s-finalized {{ background: #dafbe1; }} .s-skipped {{ background: #eaeef2; }}
section.round.bad h3 {{ color: #b42318; }}
.discrepancies b {{ color: #b42318; }}
p.none {{ color: #1a7f37; }}
footer {{ margin-top: 36px; color: {MUTED}; font-size: 12px; }}
@media print {{ .scroll {{ overflow: visible; border: none; }} }}
"""


def render_html(report: AuditReport) -> str:
    """The whole audit as one self-contained HTML document."""
    rounds = sorted_rounds(report)
    idx = _Index(report)
    n_disc = len(report.discrepancies)
    verdict = ("AUDIT OK" if report.ok else f"AUDIT FAILED: {plural(n_disc, 'discrepancy')}"
               if report.discrepancies else f"AUDIT INCOMPLETE: {plural(len(report.unavailable), 'artifact')} "
               "unavailable now; the final model is not provable until they are republished")
    n_fin = sum(1 for r in rounds if r.status == "finalized")
    n_skip = sum(1 for r in rounds if r.status == "skipped")
    subs = [c for r in rounds for c in r.contributions]
    n_acc_chain = sum(1 for c in subs if c.onchain_verdict == 0)
    n_acc_audit = sum(1 for c in subs if c.audit_verdict == 0)
    model = latest_model(report)

    meta = [
        ("job id", e(report.job_id)),
        ("contract", f"<code>{e(report.contract or '-')}</code>"),
        ("chain id", e(report.chain_id)),
        ("config digest", f"<code>{e(report.config_digest or '-')}</code>"),
        ("genesis digest", f"<code>{e(report.genesis_digest or '-')}</code>"),
        (
            "final digest",
            f"<code>{e(report.final_digest)}</code>"
            if report.final_digest
            else f'<span class="muted">job not completed</span>'
            + (f" (latest model <code>{e(model)}</code>)" if model else ""),
        ),
        ("merge rule", e(report.merge_rule)),
        ("quorum", f"{e(report.quorum)} of {len(report.aggregators)} aggregators"),
        ("workers", str(len(report.workers))),
        (
            "rounds",
            f"{len(rounds)} ({n_fin} finalized, {n_skip} skipped)",
        ),
        (
            "contributions",
            f"{len(subs)} ({n_acc_chain} accepted on chain, {n_acc_audit} valid per audit)",
        ),
        ("replay", e(report.replay)),
        ("verified", f"{e(human_bytes(report.bytes_verified))} in {report.seconds:.1f} s"),
    ]

    parties = (
        "<details><summary>Workers and aggregators</summary>"
        '<table class="grid parties"><thead><tr><th>role</th><th>address</th></tr></thead><tbody>'
        + "".join(f"<tr><td>worker</td><td><code>{e(w)}</code></td></tr>" for w in report.workers)
        + "".join(f"<tr><td>aggregator</td><td><code>{e(a)}</code></td></tr>" for a in report.aggregators)
        + "</tbody></table></details>"
    )

    sections = "".join(_round_section(report, r, idx) for r in rounds) or '<p class="muted">No rounds.</p>'
    title = f"Audit of job {report.job_id}: {'OK' if report.ok else plural(n_disc, 'discrepancy')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header id="job"><h1>Training ledger audit &mdash; job {e(report.job_id)}</h1>'
        f'<div id="verdict" class="{"ok" if report.ok else "failed"}">{e(verdict)}</div>'
        '<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>"
        + parties
        + "</header>"
        '<h2>Lineage</h2><p class="muted">Columns are rounds, rows are workers. Accepted contributions '
        "feed the round's merged model; hover any mark for details.</p>"
        f'<div class="scroll">{lineage_svg(report)}</div>'
        '<h2>Validation loss</h2>'
        f'<div class="scroll">{loss_svg(report)}</div>'
        f"<h2>Discrepancies ({n_disc})</h2>{_discrepancy_table(report)}"
        + (f"<h2>Unavailable now ({len(report.unavailable)})</h2><p class=muted>Nothing shown wrong; not "
           f"re-checkable until republished.</p>{_located_table(report.unavailable, 'unavailable')}"
           if report.unavailable else "")
        + (f"<h2>Notes ({len(report.notes)})</h2><p class=muted>Consistent, not failures.</p>"
           f"{_located_table(report.notes, 'notes')}" if report.notes else "")
        + f"<h2>Rounds</h2>{sections}"
        f"<footer>ledger audit &middot; job {e(report.job_id)} &middot; chain {e(report.chain_id)} &middot; "
        f"contract {e(report.contract)}</footer>"
        "</body></html>\n"
    )
