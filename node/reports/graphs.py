"""The audit page's two graphs, drawn with matplotlib as inline SVG: the lineage and the loss plot.

matplotlib draws (the Agg backend is selected, no GUI; the SVG writer renders), with
every glyph written as a path (``svg.fonttype = path``), so each graph is one
self-contained ``<svg>`` that shows the same offline, in any browser, without a font.
matplotlib is imported on the first call only: ``ledger`` and the rest of ``node``
never pay for it.

Each artist that the page and its tests address gets a matplotlib ``gid``; after
rendering, the ``<g id=gid>`` that matplotlib wraps it in receives its stable hooks
(classes, ``data-*`` attributes, a ``<title>`` tooltip), and every id matplotlib made
itself (glyphs, clip paths) is prefixed per graph, so two graphs on one page never
share an id. Hooks:

- ``svg#lineage-graph``: one ``g.cell`` per (round, worker), class ``cell accepted|
  rejected|missing|submitted|discrepancy`` (``submitted``: the round never finalized,
  so no on-chain verdict) with ``data-round``, ``data-worker``, ``data-verdict``
  (on-chain code or ``none``) and ``data-audit-verdict``; one ``g.model`` per merged
  model (``#model-genesis``, ``#model-r<n>``) joined by ``g.link`` (``broken`` when a
  round's parent is not the previous model); one ``g.agg`` per aggregator and round
  (class ``agree``, ``dissent`` or ``absent``, plus ``audit-mismatch``).
- ``svg#loss-plot``: ``path.loss-line`` through the merged models' validation loss,
  ``g.loss-point`` per merged model, ``g.contribution-point`` per contribution, axis
  ticks ``g.tick.xtick`` / ``g.tick.ytick`` with ``data-value``, ``g.empty`` when
  there is nothing to plot.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from node.reports.findings import AuditReport, ContributionAudit, Discrepancy, RoundAudit
from node.reports.text import (
    agreement,
    effective_verdict,
    finite,
    fmt_num,
    short_hex,
    sorted_rounds,
    verdict_text,
)

__all__ = ["lineage_svg", "loss_svg", "cell_state", "GREEN", "RED", "GREY", "PURPLE", "ORANGE", "BLUE", "INK", "MUTED"]

# Cell fills are the verdict; outlines flag disagreement.
GREEN = "#2e9e44"       # accepted
RED = "#d93a3a"         # rejected
GREY = "#c9ccd1"        # missing (no submission)
PURPLE = "#7b2cbf"      # invalid contribution accepted on chain (audit rejects it)
ORANGE = "#f08c00"      # any other disagreement located here
BLUE = "#2f6fb3"        # merged models
INK = "#1f2328"
MUTED = "#6a737d"
PALE = "#e6e8eb"

SANS = "DejaVu Sans"        # ships with matplotlib: the same glyphs on every machine
MONO = "DejaVu Sans Mono"

_SVG = "http://www.w3.org/2000/svg"
_XLINK = "http://www.w3.org/1999/xlink"
ET.register_namespace("", _SVG)
ET.register_namespace("xlink", _XLINK)

_RC = {
    "svg.fonttype": "path",          # glyphs as paths: no font needed to view the file
    "svg.hashsalt": "ledger-audit",  # matplotlib's generated ids, the same on every run
    "svg.image_inline": True,
    "path.simplify": False,          # keep every point of the loss line
    "font.family": "sans-serif",
    "font.sans-serif": [SANS],
    "axes.unicode_minus": False,
}


def _addr_key(a: str | None) -> str:
    return (a or "").lower()


# ---------------------------------------------------------------- classification


class Flags:
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
    lines.extend("DISCREPANCY " + d.line() for d in flagged)
    return "\n".join(lines)


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


# ---------------------------------------------------------------- matplotlib to inline SVG


@dataclass
class _Hooks:
    """What each gid-tagged artist becomes in the page: attributes and a tooltip."""

    root: dict[str, str]
    groups: dict[str, tuple[dict[str, str], str | None]] = field(default_factory=dict)
    inner_class: dict[str, str] = field(default_factory=dict)  # gid -> class of its drawn path
    ticks: dict[str, list[str]] = field(default_factory=dict)  # "x"/"y" -> tick values, in order

    def tag(self, gid: str, title: str | None = None, **attrs: str) -> str:
        self.groups[gid] = ({k.replace("_", "-"): str(v) for k, v in attrs.items()}, title)
        return gid


def _mpl():
    """matplotlib, loaded on first use with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return matplotlib, Figure


def _render(fig, hooks: _Hooks, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element carrying the hooks; no XML prologue,
    no metadata, no namespace URLs (the HTML parser supplies SVG's)."""
    matplotlib, _ = _mpl()
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    root = ET.fromstring(buf.getvalue().encode())
    ns = {"s": _SVG}
    for meta in root.findall("s:metadata", ns):
        root.remove(meta)
    # matplotlib's own ids (glyphs, clip paths, markers) get the graph's prefix
    own = set(hooks.groups)
    renamed: dict[str, str] = {}
    for el in root.iter():
        i = el.get("id")
        if i is not None and i not in own:
            renamed[i] = f"{prefix}-{i}"
            el.set("id", renamed[i])
    href = f"{{{_XLINK}}}href"
    url = re.compile(r"url\(#([^)]+)\)")
    for el in root.iter():
        for attr in (href, "href"):
            ref = el.get(attr)
            if ref and ref.startswith("#") and ref[1:] in renamed:
                el.set(attr, "#" + renamed[ref[1:]])
        for attr in ("clip-path", "style", "mask", "filter"):
            v = el.get(attr)
            if v and "url(#" in v:
                el.set(attr, url.sub(lambda m: f"url(#{renamed.get(m.group(1), m.group(1))})", v))
    # the hooks
    tick_groups: dict[str, list[ET.Element]] = {"x": [], "y": []}
    for el in root.iter(f"{{{_SVG}}}g"):
        gid = el.get("id", "")
        if gid in hooks.groups:
            attrs, title = hooks.groups[gid]
            for k, v in attrs.items():
                el.set(k, v)
            if title:
                t = ET.Element(f"{{{_SVG}}}title")
                t.text = title
                el.insert(0, t)
            if gid in hooks.inner_class:
                for path in el.iter(f"{{{_SVG}}}path"):
                    path.set("class", hooks.inner_class[gid])
        m = re.fullmatch(rf"{re.escape(prefix)}-([xy])tick_\d+", gid)
        if m:
            tick_groups[m.group(1)].append(el)
    for axis, els in tick_groups.items():
        values = hooks.ticks.get(axis, [])
        for k, el in enumerate(els):
            el.set("class", f"tick {axis}tick")
            if k < len(values):
                el.set("data-value", values[k])
    # sized in CSS pixels, one drawing unit per pixel
    vb = root.get("viewBox", "0 0 0 0").split()
    root.set("width", f"{float(vb[2]):g}")
    root.set("height", f"{float(vb[3]):g}")
    for k, v in hooks.root.items():
        root.set(k, v)
    text = ET.tostring(root, encoding="unicode")
    return re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text)


def _pixel_canvas(width: float, height: float):
    """A figure whose one axes spans it all, in pixel units, y growing downwards."""
    _, Figure = _mpl()
    fig = Figure(figsize=(width / 72, height / 72), dpi=72)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return fig, ax


def _text_width(text: str, size: float, family: str = SANS) -> float:
    """The drawn width of text, from the font's own glyph metrics."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), text, size=size, prop=FontProperties(family=family)).get_extents().width


# ---------------------------------------------------------------- lineage graph


def lineage_svg(report: AuditReport) -> str:
    """One column per round, one row per worker, merged models along the bottom."""
    matplotlib, _ = _mpl()
    with matplotlib.rc_context(_RC):
        return _lineage(report)


# Legend entries: (label, fill, outline, line style) for cells; (label, radius, fill, stroke, width) for dots.
_CELL_LEGEND = [
    ("accepted", GREEN, None, "solid"),
    ("rejected", RED, None, "solid"),
    ("no submission", GREY, None, "solid"),
    ("no verdict (round not finalized)", "#ffffff", MUTED, (0, (3, 2))),
    ("invalid but accepted", "#ffffff", PURPLE, "solid"),
    ("other discrepancy", "#ffffff", ORANGE, "solid"),
]
_DOT_LEGEND = [
    ("merged model", 6, BLUE, BLUE, 1),
    ("round skipped / open", 6, PALE, MUTED, 1),
    ("aggregator agrees", 5, BLUE, MUTED, 1),
    ("dissents from the quorum", 6, RED, RED, 2.5),
    ("disagrees with the audit", 5, BLUE, ORANGE, 2.5),
]


@dataclass
class _Grid:
    """The lineage's geometry in pixels: a label column, then one column per model
    (0 = genesis, 1.. = rounds in order); worker rows on top, the model row, the legend."""

    n_rounds: int
    n_workers: int
    n_agg: int
    row_h: int = 32
    label_w: int = 150
    top: int = 44
    node_r: int = 13

    @property
    def col_w(self) -> int:
        return max(80, 16 * self.n_agg + 24)

    @property
    def cell_w(self) -> int:
        return self.col_w - 30

    @property
    def cell_h(self) -> int:
        return self.row_h - 8

    @property
    def model_y(self) -> int:
        return self.top + self.row_h * self.n_workers + 34

    @property
    def legend_y(self) -> int:
        return self.model_y + self.node_r + 18 + 16 + 26

    def col_x(self, i: int) -> float:
        """Left edge of column i (0 = genesis, 1.. = rounds in order)."""
        return self.label_w + self.col_w * i

    def centre(self, i: int) -> float:
        return self.col_x(i) + self.col_w / 2

    def size(self) -> tuple[float, float]:
        legend_w = max(
            sum(20 + _text_width(t, 11) + 16 for t, *_ in _CELL_LEGEND),
            sum(18 + _text_width(t, 11) + 16 for t, *_ in _DOT_LEGEND),
        )
        width = max(self.label_w + self.col_w * (self.n_rounds + 1) + 20, int(legend_w + 20))
        return width, self.legend_y + 44


@dataclass
class _Pen:
    """Draws text on the axes; a ``gid`` makes it a hook (a tooltip and attributes in the page)."""

    ax: object
    hooks: _Hooks

    def text(self, x, y, s, *, size=11, color=INK, ha="left", weight="normal", family=SANS, gid=None, title=None,
             **attrs):
        t = self.ax.text(x, y, s, fontsize=size, color=color, ha=ha, va="baseline", fontweight=weight, family=family)
        if gid:
            t.set_gid(self.hooks.tag(gid, title, **attrs))
        return t


def _lineage(report: AuditReport) -> str:
    rounds = sorted_rounds(report)
    flags = Flags(report)
    workers = _lineage_rows(report, rounds)
    n_agg = max([len(report.aggregators)] + [len(r.proposals) for r in rounds] + [0])
    grid = _Grid(n_rounds=len(rounds), n_workers=len(workers), n_agg=n_agg)
    fig, ax = _pixel_canvas(*grid.size())
    pen = _Pen(ax, _Hooks(root={
        "id": "lineage-graph", "class": "lineage", "role": "img",
        "aria-label": "Lineage: one column per round, one row per worker; merged models along the bottom",
        "data-rounds": str(len(rounds)), "data-workers": str(len(workers)),
    }))
    _lineage_headers(pen, grid, rounds)
    _lineage_row_labels(pen, grid, report, workers)
    for i, rnd in enumerate(rounds, start=1):
        _lineage_cells(pen, grid, i, rnd, workers, flags)
    _lineage_models(pen, grid, report, rounds, flags)
    if not rounds:
        pen.text(grid.col_x(1) + 10, grid.model_y + 4, "no rounds recorded", color=MUTED, gid="lineage-empty",
                 **{"class": "empty"})
    _lineage_legend(pen, grid)
    return _render(fig, pen.hooks, "lg")


def _lineage_rows(report: AuditReport, rounds: list[RoundAudit]) -> list[str]:
    """The rows: the job's workers, then anyone who submitted without being listed."""
    workers: list[str] = list(report.workers)
    seen = {_addr_key(w) for w in workers}
    for rnd in rounds:
        for c in rnd.contributions:
            if _addr_key(c.worker) not in seen:
                seen.add(_addr_key(c.worker))
                workers.append(c.worker)
    return workers


def _lineage_headers(pen: _Pen, grid: _Grid, rounds: list[RoundAudit]) -> None:
    """Column headers: genesis, then each round with its status unless finalized."""
    pen.text(grid.centre(0), 18, "genesis", size=12, weight="bold", ha="center")
    for i, rnd in enumerate(rounds, start=1):
        cx = grid.centre(i)
        pen.text(cx, 18, f"round {rnd.round}", size=12, weight="bold", ha="center")
        if rnd.status != "finalized":
            pen.text(cx, 32, rnd.status, color=MUTED, ha="center")


def _lineage_row_labels(pen: _Pen, grid: _Grid, report: AuditReport, workers: list[str]) -> None:
    """Row labels, the full address in the tooltip; the model row's label."""
    for j, w in enumerate(workers):
        listed = j < len(report.workers)
        pen.text(grid.label_w - 10, grid.top + j * grid.row_h + grid.row_h / 2 + 4,
                 short_hex(w, 6, 4, "\u2026") + ("" if listed else " ?"),
                 family=MONO, ha="right", gid=f"lineage-row-{j}",
                 title=w + ("" if listed else " (not a worker of this job)"), **{"class": "row-head"})
    pen.text(grid.label_w - 10, grid.model_y + 4, "merged model", weight="bold", ha="right")


def _lineage_cells(pen: _Pen, grid: _Grid, i: int, rnd: RoundAudit, workers: list[str], flags: Flags) -> None:
    """Round ``rnd``'s column: one mark per worker, and a bus from the accepted marks down
    to the merged model."""
    from matplotlib.patches import FancyArrowPatch

    ax = pen.ax
    x0 = grid.col_x(i) + 6
    bus_x = x0 + grid.cell_w + 9
    by_worker: dict[str, ContributionAudit] = {}
    for c in rnd.contributions:
        by_worker.setdefault(_addr_key(c.worker), c)
    feeding: list[float] = []
    for j, w in enumerate(workers):
        c = by_worker.get(_addr_key(w))
        y = grid.top + j * grid.row_h + 4
        _lineage_cell(pen, grid, rnd, j, w, c, flags.party(rnd.round, w), x0, y)
        if c is not None and effective_verdict(c) == 0 and rnd.status == "finalized":
            yc = y + grid.cell_h / 2
            feeding.append(yc)
            ax.plot([x0 + grid.cell_w, bus_x], [yc, yc], color=MUTED, linewidth=1.5, solid_capstyle="butt")
    if feeding:
        y_end = grid.model_y - grid.node_r - 3
        ax.plot([bus_x, bus_x], [min(feeding), y_end - 8], color=MUTED, linewidth=1.5)
        ax.add_patch(FancyArrowPatch((bus_x, y_end - 8), (grid.centre(i) + 4, y_end), arrowstyle="-|>",
                                     mutation_scale=10, color=MUTED, linewidth=1.5, shrinkA=0, shrinkB=0))


def _lineage_cell(pen: _Pen, grid: _Grid, rnd: RoundAudit, j: int, w: str, c: ContributionAudit | None,
                  flagged: list[Discrepancy], x0: float, y: float) -> None:
    """One (round, worker) cell: its box, coloured by verdict and outlined by disagreement, and its glyph."""
    from matplotlib.patches import FancyBboxPatch

    state, outline = cell_state(c, flagged)
    fill, glyph, edge, lw, ls = GREY, "#ffffff", "none", 0, "solid"
    if outline:
        edge, lw = outline, 3
    if state == "submitted":
        # no on-chain verdict: hollow, dashed, in the colour of the audit's opinion
        fill = "#ffffff"
        glyph = edge = GREEN if c.audit_verdict == 0 else RED
        lw, ls = 1.5, (0, (3, 2))
    elif c is not None:
        fill = GREEN if effective_verdict(c) == 0 else RED
    attrs = {"class": f"cell {state}", "data-round": str(rnd.round), "data-worker": w}
    if c is not None:
        attrs["data-verdict"] = "none" if c.onchain_verdict is None else str(c.onchain_verdict)
        attrs["data-audit-verdict"] = str(c.audit_verdict)
    box = FancyBboxPatch((x0, y), grid.cell_w, grid.cell_h, boxstyle="round,pad=0,rounding_size=4",
                         facecolor=fill, edgecolor=edge, linewidth=lw, linestyle=ls)
    gid = f"lineage-cell-{rnd.round}-{j}"
    pen.hooks.groups[gid] = (attrs, _cell_title(rnd, c, w, flagged))
    box.set_gid(gid)
    pen.ax.add_patch(box)
    if c is not None:
        _glyph(pen.ax, "accepted" if effective_verdict(c) == 0 else "rejected", x0, y, grid.cell_w, grid.cell_h,
               glyph)


def _lineage_models(pen: _Pen, grid: _Grid, report: AuditReport, rounds: list[RoundAudit], flags: Flags) -> None:
    """The merged-model row: genesis -> r1 -> r2 ..., each round's node with its
    aggregators' agreement below it."""
    from matplotlib.patches import Circle

    g_cx = grid.centre(0)
    g_flag = flags.unlocated(0)
    circle = Circle((g_cx, grid.model_y), grid.node_r, facecolor=INK, edgecolor=ORANGE if g_flag else INK,
                    linewidth=3 if g_flag else 1)
    circle.set_gid(pen.hooks.tag("model-genesis", "\n".join(
        [f"genesis {report.genesis_digest or '-'}"] + ["DISCREPANCY " + d.line() for d in g_flag]),
        **{"class": "model genesis"}))
    pen.ax.add_patch(circle)
    pen.text(g_cx, grid.model_y + 4, "G", color="#ffffff", weight="bold", ha="center")
    pen.text(g_cx, grid.model_y + grid.node_r + 14, short_hex(report.genesis_digest, 6, 0, ""), size=10, color=MUTED,
             family=MONO, ha="center")
    expected_parent = _expected_parents(report, rounds)
    prev_cx = g_cx
    for i, rnd in enumerate(rounds, start=1):
        cx = grid.centre(i)
        _lineage_link(pen, grid, rnd, prev_cx, cx, expected_parent.get(rnd.round))
        prev_cx = cx
        _lineage_node(pen, grid, rnd, cx, flags.unlocated(rnd.round))
        if rnd.proposals or rnd.status == "finalized":
            _lineage_aggregators(pen, grid, report, rnd, cx, flags)


def _lineage_link(pen: _Pen, grid: _Grid, rnd: RoundAudit, prev_cx: float, cx: float, exp: str | None) -> None:
    """The arrow from the previous model to round ``rnd``'s, broken when its parent is not ``exp``."""
    from matplotlib.patches import FancyArrowPatch

    bad_link = exp is not None and _addr_key(rnd.parent) != _addr_key(exp)
    link = FancyArrowPatch((prev_cx + grid.node_r, grid.model_y), (cx - grid.node_r - 2, grid.model_y),
                           arrowstyle="-|>", mutation_scale=12, color=RED if bad_link else MUTED, linewidth=2,
                           linestyle=(0, (5, 3)) if bad_link else "solid", shrinkA=0, shrinkB=0)
    link.set_gid(pen.hooks.tag(
        f"lineage-link-{rnd.round}",
        f"parent of round {rnd.round}: {rnd.parent}" + (f" (expected {exp})" if bad_link else ""),
        **{"class": "link broken" if bad_link else "link", "data-round": str(rnd.round)}))
    pen.ax.add_patch(link)


def _lineage_node(pen: _Pen, grid: _Grid, rnd: RoundAudit, cx: float, flagged: list[Discrepancy]) -> None:
    """Round ``rnd``'s model: filled when finalized, pale when skipped, hollow when open;
    outlined orange when the audit found fault with the round."""
    from matplotlib.patches import Circle

    recompute_bad = (
        rnd.status == "finalized"
        and rnd.recomputed_digest is not None
        and _addr_key(rnd.recomputed_digest) != _addr_key(rnd.merged_digest)
    )
    node_bad = bool(flagged) or recompute_bad or not rnd.ok
    if rnd.status == "finalized":
        fill, label, ls = BLUE, rnd.merged_digest, "solid"
    elif rnd.status == "skipped":
        fill, label, ls = PALE, rnd.parent, (0, (3, 2))
    else:
        fill, label, ls = "#ffffff", None, (0, (3, 2))
    stroke = ORANGE if node_bad else (MUTED if rnd.status != "finalized" else BLUE)
    title = [f"round {rnd.round}: {rnd.status}"]
    if rnd.status == "finalized":
        title.append(f"merged {rnd.merged_digest or '-'}")
        if rnd.recomputed_digest is not None:
            title.append(f"recomputed {rnd.recomputed_digest}" + (" (MISMATCH)" if recompute_bad else " (matches)"))
    elif rnd.status == "skipped":
        why = "no quorum in the proposal window" if rnd.skip_reason == "no-quorum" else "too few submissions"
        title.append(f"skipped ({why}): parent kept {rnd.parent}")
    if rnd.merged_val_loss is not None:
        title.append(f"val loss {fmt_num(rnd.merged_val_loss)}")
    title.extend("DISCREPANCY " + d.line() for d in flagged)
    node = Circle((cx, grid.model_y), grid.node_r, facecolor=fill, edgecolor=stroke,
                  linewidth=3 if node_bad else 1.5, linestyle=ls)
    node.set_gid(pen.hooks.tag(f"model-r{rnd.round}", "\n".join(title),
                               **{"class": f"model {rnd.status}" + (" bad" if node_bad else "")}))
    pen.ax.add_patch(node)
    pen.text(cx, grid.model_y + 4, str(rnd.round), color="#ffffff" if rnd.status == "finalized" else INK,
             weight="bold", ha="center")
    pen.text(cx, grid.model_y + grid.node_r + 14, short_hex(label, 6, 0, "") if label else rnd.status, size=10,
             color=MUTED, family=MONO, ha="center")


def _lineage_aggregators(pen: _Pen, grid: _Grid, report: AuditReport, rnd: RoundAudit, cx: float,
                         flags: Flags) -> None:
    """Aggregator agreement under round ``rnd``'s model: "2/3 agree" and one dot per aggregator."""
    from matplotlib.patches import Circle

    agree, total = agreement(report, rnd)
    ay = grid.model_y + grid.node_r + 30
    pen.text(cx, ay, f"{agree}/{total} agree", ha="center")
    by_agg = {_addr_key(p.aggregator): p for p in rnd.proposals}
    listed = {_addr_key(a) for a in report.aggregators}
    aggs = list(report.aggregators) + [p.aggregator for p in rnd.proposals if _addr_key(p.aggregator) not in listed]
    for k, a in enumerate(aggs):
        dx = cx - 8 * len(aggs) + 8 + 16 * k
        p = by_agg.get(_addr_key(a))
        a_flag = flags.party(rnd.round, a)
        if p is None:
            cls, fill, desc = "absent", "#ffffff", "no proposal"
        elif p.agrees_with_quorum:
            cls, fill, desc = "agree", BLUE, "agrees with the finalized outcome"
        else:
            cls, fill, desc = "dissent", RED, "DISSENTS from the finalized outcome"
        audit_bad = (p is not None and not p.agrees_with_audit) or bool(a_flag)
        tip = [f"{a}: {desc}"]
        if p is not None:
            tip.append(f"proposed {p.merged_digest}")
            tip.append("agrees with the audit" if p.agrees_with_audit else "DISAGREES with the audit")
        tip.extend("DISCREPANCY " + d.line() for d in a_flag)
        dot = Circle((dx, ay + 13), 6 if cls == "dissent" else 5, facecolor=fill,
                     edgecolor=ORANGE if audit_bad else (RED if cls == "dissent" else MUTED),
                     linewidth=2.5 if audit_bad or cls == "dissent" else 1)
        dot.set_gid(pen.hooks.tag(f"lineage-agg-{rnd.round}-{k}", "\n".join(tip), **{
            "class": f"agg {cls}" + (" audit-mismatch" if audit_bad else ""),
            "data-round": str(rnd.round), "data-aggregator": a}))
        pen.ax.add_patch(dot)


def _lineage_legend(pen: _Pen, grid: _Grid) -> None:
    """The legend: two rows, cells then models and aggregators."""
    from matplotlib.patches import Circle, Rectangle

    lx, ly = 10.0, float(grid.legend_y)
    for label, fill, outline, ls in _CELL_LEGEND:
        pen.ax.add_patch(Rectangle((lx, ly), 14, 12, facecolor=fill, edgecolor=outline or "none",
                                   linewidth=(1.5 if ls != "solid" else 3) if outline else 0, linestyle=ls))
        pen.text(lx + 20, ly + 10, label)
        lx += 20 + _text_width(label, 11) + 16
    lx, ly = 10.0, ly + 22
    for label, r, fill, stroke, sw in _DOT_LEGEND:
        pen.ax.add_patch(Circle((lx + 7, ly + 6), r, facecolor=fill, edgecolor=stroke, linewidth=sw))
        pen.text(lx + 18, ly + 10, label)
        lx += 18 + _text_width(label, 11) + 16


def _glyph(ax, kind: str, x: float, y: float, w: float, h: float, colour: str) -> None:
    """A tick or a cross inside a cell, drawn as strokes (no font needed)."""
    cx, cy = x + w / 2, y + h / 2
    s = min(w, h) * 0.28
    style = dict(color=colour, linewidth=2.2, solid_capstyle="round", solid_joinstyle="round")
    if kind == "accepted":
        ax.plot([cx - s, cx - s / 3, cx + s], [cy, cy + s * 0.7, cy - s * 0.7], **style)
    else:
        ax.plot([cx - s, cx + s], [cy - s, cy + s], **style)
        ax.plot([cx + s, cx - s], [cy - s, cy + s], **style)


# ---------------------------------------------------------------- loss plot


def loss_svg(report: AuditReport) -> str:
    """The merged model's validation loss per round, with every contribution's behind it."""
    matplotlib, _ = _mpl()
    with matplotlib.rc_context(_RC):
        return _loss(report)


def _loss(report: AuditReport) -> str:
    rounds = sorted_rounds(report)
    series = _loss_series(rounds)
    contribs = _loss_contributions(rounds, Flags(report))
    n_x = (rounds[-1].round - rounds[0].round + 2) if rounds else 1
    W, H = max(760, min(120 + 28 * n_x, 1400)), 320
    ml, mr, mt, mb = 64, 24, 32, 46
    empty = not series and not contribs
    if empty:
        H, mb = 120, 20
    fig, ax = _loss_axes(W, H, (ml, mr, mt, mb))
    hooks = _Hooks(root={
        "id": "loss-plot", "class": "loss", "role": "img",
        "aria-label": "Validation loss of the merged model per round", "data-points": str(len(series)),
    })
    if empty:
        _loss_empty(ax, hooks)
        return _render(fig, hooks, "lp")
    yticks, decimals = _loss_y_scale(ax, series, contribs)
    xticks, px = _loss_x_scale(ax, rounds, series, contribs, W - ml - mr)
    ax.tick_params(colors=INK, labelsize=11, length=5)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel("round", color=MUTED, fontsize=12)
    ax.set_ylabel("validation loss", color=MUTED, fontsize=12)
    hooks.ticks = {"x": [str(x) for x in xticks], "y": [f"{t:.{decimals}f}" for t in yticks]}
    _loss_contribution_points(ax, hooks, contribs, px, yticks[0], yticks[-1])  # behind the line
    _loss_line(ax, hooks, series)
    _loss_legend(ax)
    return _render(fig, hooks, "lp")


def _loss_series(rounds: list[RoundAudit]) -> list[tuple[int, float, str]]:
    """(x, loss, kind): the merged model's loss per round; the first round's parent is the
    start (x = round - 1), a skipped round keeps its parent's."""
    series: list[tuple[int, float, str]] = []
    if rounds and finite(rounds[0].parent_val_loss):
        series.append((rounds[0].round - 1, float(rounds[0].parent_val_loss), "start"))
    for rnd in rounds:
        if finite(rnd.merged_val_loss):
            series.append((rnd.round, float(rnd.merged_val_loss), rnd.status))
        elif rnd.status == "skipped" and finite(rnd.parent_val_loss):
            series.append((rnd.round, float(rnd.parent_val_loss), "skipped"))
    return series


def _loss_contributions(rounds: list[RoundAudit],
                        flags: Flags) -> list[tuple[int, int, int, float, str, ContributionAudit]]:
    """(round, k, n, loss, state, contribution): each contribution with a loss, the k-th of n in its round."""
    contribs = []
    for rnd in rounds:
        pts = [c for c in rnd.contributions if finite(c.val_loss)]
        for k, c in enumerate(pts):
            state, _ = cell_state(c, flags.party(rnd.round, c.worker))
            contribs.append((rnd.round, k, len(pts), float(c.val_loss), state, c))
    return contribs


def _loss_axes(W: int, H: int, margins: tuple[int, int, int, int]):
    """A W x H pixel figure whose axes sit inside the margins (left, right, top, bottom)."""
    _, Figure = _mpl()
    ml, mr, mt, mb = margins
    fig = Figure(figsize=(W / 72, H / 72), dpi=72)
    ax = fig.add_axes((ml / W, mb / H, 1 - (ml + mr) / W, 1 - (mt + mb) / H))
    ax.set_facecolor("#fafbfc")
    for spine in ax.spines.values():
        spine.set_edgecolor("#d0d7de")
    ax.spines["left"].set_edgecolor(INK)
    ax.spines["bottom"].set_edgecolor(INK)
    return fig, ax


def _loss_empty(ax, hooks: _Hooks) -> None:
    """Nothing to plot: a bare frame that says so."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor("#d0d7de")
    t = ax.text(0.5, 0.5, "no validation loss recorded", transform=ax.transAxes, ha="center", va="center",
                color=MUTED, fontsize=11)
    t.set_gid(hooks.tag("loss-empty", None, **{"class": "empty"}))


def _loss_y_scale(ax, series, contribs) -> tuple[list[float], int]:
    """The y range from the merged series and accepted contributions (outliers are clipped
    to the edge), its gridded ticks; returns the ticks and their decimals."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    basis = [v for _, v, _ in series] + [v for *_, v, s, c in contribs if effective_verdict(c) == 0]
    if not basis:
        basis = [v for *_, v, _, _ in contribs]
    lo, hi = min(basis), max(basis)
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    yticks = list(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi))
    while len(yticks) > 2 and yticks[1] <= lo:
        yticks.pop(0)
    while len(yticks) > 2 and yticks[-2] >= hi:
        yticks.pop()
    ax.set_ylim(yticks[0], yticks[-1])
    ax.yaxis.set_major_locator(FixedLocator(yticks))
    ax.grid(axis="y", color="#e1e4e8", linewidth=1)
    ax.set_axisbelow(True)
    decimals = max(0, max(len(f"{t:.6f}".rstrip("0").split(".")[1]) for t in yticks))
    ax.set_yticklabels([f"{t:.{decimals}f}" for t in yticks])
    return yticks, decimals


def _loss_x_scale(ax, rounds, series, contribs, pw: float) -> tuple[list[int], float]:
    """The x range over every plotted round, padded so the first and last rounds' points
    stay off the frame, and its round ticks; returns the ticks and one pixel in x data units."""
    from matplotlib.ticker import MaxNLocator

    x_lo = min([x for x, _, _ in series] + [r for r, *_ in contribs])
    x_hi = max([x for x, _, _ in series] + [r for r, *_ in contribs])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    pad = 18 * (x_hi - x_lo) / (pw - 36)
    ax.set_xlim(x_lo - pad, x_hi + pad)
    px = (x_hi - x_lo + 2 * pad) / pw
    span = int(x_hi - x_lo)
    first = int(x_lo) if x_lo == int(x_lo) else int(x_lo) + 1
    step = 1 if span <= 20 else max(1, int(MaxNLocator(nbins=10, integer=True).tick_values(0, span)[1]))
    xticks = list(range(first, int(x_hi) + 1, step))
    has_start = any(k == "start" for *_, k in series)
    ax.set_xticks(xticks)
    ax.set_xticklabels(["start" if has_start and x == rounds[0].round - 1 else str(x) for x in xticks])
    return xticks, px


def _loss_contribution_points(ax, hooks: _Hooks, contribs, px: float, y0: float, y1: float) -> None:
    """One marker per contribution, spread around its round; off-scale ones as arrows on the edge."""
    for n_pt, (rnd_no, k, n, v, state, c) in enumerate(contribs):
        x = rnd_no + (k - (n - 1) / 2) * 6 * px
        ok = effective_verdict(c) == 0
        colour = "#ffffff" if state == "submitted" else (GREEN if ok else RED)
        if state == "submitted":
            outline = GREEN if ok else RED
        elif state == "discrepancy":
            outline = PURPLE if c.onchain_verdict == 0 else ORANGE
        else:
            outline = "#ffffff"
        tip = f"round {rnd_no} {c.worker}: val loss {fmt_num(v)}, {verdict_text(effective_verdict(c))}"
        clipped = v > y1 or v < y0
        if clipped:
            marker, y, tip = ("^" if v > y1 else "v"), (y1 if v > y1 else y0), tip + " (off scale)"
        else:
            marker, y = "o", v
        (pt,) = ax.plot([x], [y], marker=marker, markersize=9 if clipped else 7, markerfacecolor=colour,
                        markeredgecolor=outline, markeredgewidth=1, alpha=1 if clipped else 0.85, linestyle="none",
                        clip_on=False, zorder=2)
        pt.set_gid(hooks.tag(f"loss-contribution-{n_pt}", tip, **{
            "class": f"contribution-point {state}" + (" clipped" if clipped else ""),
            "data-round": str(rnd_no), "data-worker": c.worker}))


def _loss_line(ax, hooks: _Hooks, series) -> None:
    """The merged model's loss: the line, and a point per model (hollow for the start and skipped rounds)."""
    (line,) = ax.plot([x for x, _, _ in series], [v for _, v, _ in series], color=BLUE, linewidth=2.5,
                      solid_joinstyle="round", zorder=3)
    line.set_gid(hooks.tag("loss-line", None, **{"class": "loss-series"}))
    hooks.inner_class["loss-line"] = "loss-line"
    size = 9 if len(series) <= 30 else 6 if len(series) <= 80 else 4
    for n_pt, (x, v, kind) in enumerate(series):
        hollow = kind in ("start", "skipped")
        (pt,) = ax.plot([x], [v], marker="o", markersize=size, markerfacecolor="#ffffff" if hollow else BLUE,
                        markeredgecolor=BLUE, markeredgewidth=2, linestyle="none", zorder=4, clip_on=False)
        label = "start (round 1 parent)" if kind == "start" else f"round {x} ({kind})"
        pt.set_gid(hooks.tag(f"loss-point-{n_pt}", f"{label}: {fmt_num(v)}",
                             **{"class": f"loss-point {kind}", "data-round": str(x)}))


def _loss_legend(ax) -> None:
    """The legend, above the plot area so it never hides a point."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=BLUE, linewidth=2.5, label="merged model"),
        Line2D([], [], color="none", marker="o", markerfacecolor=GREEN, markeredgecolor=GREEN, markersize=7,
               label="accepted contribution"),
        Line2D([], [], color="none", marker="o", markerfacecolor=RED, markeredgecolor=RED, markersize=7,
               label="rejected contribution"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, frameon=False, fontsize=11,
              borderaxespad=0.2, handlelength=1.8, columnspacing=1.6)
