"""The audit report renderers: terminal text and the self-contained HTML page.

The HTML is checked by a real browser (headless Chromium, an independent oracle):
a screenshot must show the lineage colours, and the DOM after rendering must hold
the lineage graph's cells and the loss plot's line.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ledger.protocol.verdicts import Verdict
from ledger.ethereum.contract import Submission
from node.reports.findings import AuditReport, ContributionAudit, Discrepancy, ProposalAudit, RoundAudit
from node.reports.html import GREEN, RED, render_html
from node.reports.text import render_text
from conftest import require_tool  # tests/ is on sys.path (rootdir conftest, prepend import mode)


# ---------------------------------------------------------------- realistic reports


def digest(label: str) -> str:
    return "0x" + hashlib.sha256(label.encode()).hexdigest()


def address(label: str) -> str:
    return "0x" + hashlib.sha256(("addr:" + label).encode()).hexdigest()[:40]


def cid(label: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    h = hashlib.sha256(("cid:" + label).encode()).digest()
    return "bafkrei" + "".join(alphabet[b % 32] for b in h)[:52]


def submission(r: int, index: int, worker: str, label: str, size: int, num_samples: int) -> Submission:
    return Submission(job_id=1, round=r, index=index, worker=worker, digest=bytes.fromhex(digest(label)[2:]),
                      cid=cid(label), size=size, num_samples=num_samples)


WORKERS = [address(f"worker{i}") for i in range(1, 5)]
AGGREGATORS = [address(f"aggregator{i}") for i in range(1, 4)]


def three_round_report() -> AuditReport:
    """3 rounds x 4 workers, 3 aggregators (quorum 2).

    Round 2: worker 3 rejected (update-norm) on chain and by the audit; aggregator 3
    dissents (it accepted everything). Round 3: worker 4 did not submit, and worker 2
    was accepted on chain though the audit rejects it (validation-loss): one discrepancy.
    """
    genesis = digest("genesis")
    parent = genesis
    parent_loss = 5.54
    rounds = []
    losses = {1: [4.91, 4.87, 4.95, 4.89], 2: [4.42, 4.38, 9.7, 4.45], 3: [4.12, 6.3, 4.08]}
    merged_losses = {1: 4.83, 2: 4.35, 3: 4.05}
    for r in (1, 2, 3):
        contribs = []
        submitters = WORKERS if r != 3 else WORKERS[:3]
        for i, w in enumerate(submitters):
            onchain = audit = int(Verdict.ACCEPTED)
            reason = ""
            if r == 2 and i == 2:
                onchain = audit = int(Verdict.UPDATE_NORM)
                reason = "update norm 41.2 > bound 10.0"
            if r == 3 and i == 1:
                audit = int(Verdict.VALIDATION_LOSS)
                reason = "val loss 6.3 > parent 4.35 * 1.05 <script>alert(1)</script>"
            contribs.append(
                ContributionAudit(
                    submission(r, i, w, f"r{r}w{i}", 1_234_567, 4096 + 128 * i),
                    onchain_verdict=onchain,
                    audit_verdict=audit,
                    reason=reason,
                    val_loss=losses[r][i],
                    update_norm=41.2 if reason.startswith("update") else 2.5 + 0.1 * i,
                    replayed_segments=[2] if i == 0 else [],
                    replay_distance=1e-5 if i == 0 else None,
                )
            )
        onchain_verdicts = [c.onchain_verdict for c in contribs]
        merged = digest(f"merged{r}")
        proposals = []
        for k, a in enumerate(AGGREGATORS):
            dissent = r == 2 and k == 2
            proposals.append(
                ProposalAudit(
                    aggregator=a,
                    merged_digest=digest("wrong-merge") if dissent else merged,
                    merged_cid=cid("wrong-merge" if dissent else f"merged{r}"),
                    verdicts=[0] * len(contribs) if dissent else onchain_verdicts,
                    agrees_with_quorum=not dissent,
                    agrees_with_audit=not dissent and r != 3,
                    block=100 * r + k,
                    tx_hash=digest(f"tx{r}{k}"),
                )
            )
        rounds.append(
            RoundAudit(
                round=r,
                parent=parent,
                status="finalized",
                contributions=contribs,
                proposals=proposals,
                merged_digest=merged,
                recomputed_digest=digest("recomputed3") if r == 3 else merged,
                parent_val_loss=parent_loss,
                merged_val_loss=merged_losses[r],
                ok=r != 3,
            )
        )
        parent, parent_loss = merged, merged_losses[r]
    return AuditReport(
        job_id=7,
        contract=address("contract"),
        chain_id=31337,
        config_digest=digest("config"),
        genesis_digest=genesis,
        merge_rule="fedavg",
        quorum=2,
        workers=WORKERS,
        aggregators=AGGREGATORS,
        rounds=rounds,
        final_digest=digest("merged3"),
        completed=True,
        replay="sample",
        bytes_verified=48_000_000,
        seconds=12.3,
        discrepancies=[
            Discrepancy(
                round=3,
                party=WORKERS[1],
                check="verdict",
                expected="validation-loss (8)",
                actual="accepted (0)",
                detail="val loss 6.3 > parent 4.35 * 1.05",
            )
        ],
    )


def empty_report() -> AuditReport:
    return AuditReport(
        job_id=1,
        contract=address("contract"),
        chain_id=31337,
        config_digest=digest("config"),
        genesis_digest=digest("genesis"),
        merge_rule="median",
        quorum=1,
        workers=WORKERS[:2],
        aggregators=AGGREGATORS[:1],
    )


def skipped_report() -> AuditReport:
    """Two rounds, both skipped (too few submissions), no loss recorded anywhere."""
    genesis = digest("genesis")
    rounds = [
        RoundAudit(round=1, parent=genesis, status="skipped"),
        RoundAudit(
            round=2,
            parent=genesis,
            status="skipped",
            contributions=[
                ContributionAudit(submission(2, 0, WORKERS[0], "lonely", 10, 5), onchain_verdict=None, audit_verdict=0)
            ],
        ),
    ]
    r = empty_report()
    r.rounds = rounds
    return r


# ---------------------------------------------------------------- text


def test_text_report_three_rounds():
    report = three_round_report()
    text = render_text(report, color=False)
    assert "\x1b" not in text
    lines = text.splitlines()
    header = next(l for l in lines if l.lstrip().startswith("round"))
    for col in ("status", "submissions", "accepted", "agreement", "merged", "val loss", "ok"):
        assert col in header
    rows = [l for l in lines if re.match(r"^\s*[123]\s+finalized", l)]
    assert len(rows) == 3
    assert re.search(r"\b2/3\b", rows[1]), rows[1]  # dissenting aggregator
    assert re.search(r"\b3/3\b", rows[0])
    assert rows[1].split()[3] == "3"  # 4 submissions, 3 accepted
    assert "3 (audit 2)" in rows[2]
    assert rows[2].rstrip().endswith("FAIL") and rows[0].rstrip().endswith("ok")
    assert "0x" + hashlib.sha256(b"merged1").hexdigest()[:8] in rows[0]
    assert "4.83" in rows[0]
    assert report.discrepancies[0].line() in text
    assert lines[-1] == "AUDIT FAILED: 1 discrepancy"
    # columns line up: every row as wide as its header up to the last column
    assert len({l.index("finalized") for l in rows}) == 1


def test_text_report_ok_and_empty():
    report = three_round_report()
    report.discrepancies = []
    for r in report.rounds:
        r.ok = True
    assert render_text(report, color=False).splitlines()[-1] == f"AUDIT OK final model {report.final_digest}"

    text = render_text(empty_report(), color=False)
    assert "no rounds" in text
    assert text.splitlines()[-1].startswith("AUDIT OK")
    text = render_text(skipped_report(), color=False)
    assert "skipped" in text and "(parent kept)" in text


def test_text_color_only_when_asked():
    report = three_round_report()
    assert "\x1b[" in render_text(report, color=True)
    # a pipe is not a terminal: the default is plain
    assert "\x1b" not in render_text(report)
    plain = render_text(report, color=False).splitlines()
    coloured = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in render_text(report, color=True).splitlines()]
    assert plain == coloured


# ---------------------------------------------------------------- HTML, static checks


def test_html_is_self_contained_and_escaped():
    for report in (three_round_report(), empty_report(), skipped_report()):
        page = render_html(report)
        assert page.startswith("<!DOCTYPE html>")
        assert "http://" not in page and "https://" not in page
        assert not re.search(r"\b(?:src|href)\s*=\s*[\"']?(?![\"'#])", page), "only in-page links allowed"
        assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
        assert not re.search(r"url\((?!#)", page) and "@font-face" not in page  # glyphs are paths
        assert "<image" not in page and "<?xml" not in page
        assert 'id="lineage-graph"' in page and 'id="loss-plot"' in page and 'id="verdict"' in page
    page = render_html(three_round_report())
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert render_html(three_round_report()) == page  # deterministic


# ---------------------------------------------------------------- HTML, in a real browser


def run_chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium in its own session; kill whatever is left of it afterwards."""
    chromium = require_tool("chromium")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", "--force-color-profile=srgb", f"--user-data-dir={profile}", *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"chromium did not finish in {timeout}s: {err.decode(errors='replace')[-2000:]}")
    finally:
        try:  # helpers (zygote, renderer) share the session started for this browser
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB/RGBA non-interlaced PNG -> (h, w, channels) uint8, stdlib zlib + numpy."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, header
    bpp = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=start + 1)
        if ftype == 0:
            cur = line.copy()
        elif ftype == 1:
            cur = line.reshape(-1, bpp).cumsum(axis=0, dtype=np.uint8).reshape(-1)
        elif ftype == 2:
            cur = line + prev
        else:  # average / paeth: sequential along the row
            cur_l = [0] * stride
            lb, pb = line.tolist(), prev.tolist()
            for i in range(stride):
                a = cur_l[i - bpp] if i >= bpp else 0
                b = pb[i]
                if ftype == 3:
                    cur_l[i] = (lb[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = pb[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pbb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pbb and pa <= pc else b if pbb <= pc else c
                    cur_l[i] = (lb[i] + pred) & 0xFF
            cur = np.array(cur_l, dtype=np.uint8)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)


def near(pixels: np.ndarray, hex_colour: str, tol: int = 24) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    diff = np.abs(pixels[..., :3].astype(np.int16) - rgb).max(axis=-1)
    return int((diff <= tol).sum())


class DomIndex(HTMLParser):
    """Elements of a serialized DOM with their ancestors' ids."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.elements: list[tuple[str, dict, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.elements.append((tag, a, [s.get("id", "") for _, s in self.stack]))
        if tag not in self.VOID:
            self.stack.append((tag, a))

    def handle_startendtag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.elements.append((tag, a, [s.get("id", "") for _, s in self.stack]))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def inside(self, ancestor_id: str, tag: str | None = None, cls: str | None = None):
        for t, a, anc in self.elements:
            if ancestor_id in anc and (tag is None or t == tag) and (cls is None or cls in a.get("class", "").split()):
                yield t, a


def browser_dom(tmp_path: Path, page: Path) -> DomIndex:
    done = run_chromium(tmp_path, "--dump-dom", page.as_uri())
    dom = done.stdout.decode("utf-8", errors="replace")
    assert done.returncode == 0 and "</html>" in dom, done.stderr.decode(errors="replace")[-2000:]
    index = DomIndex()
    index.feed(dom)
    index.close()
    return index


def browser_screenshot(tmp_path: Path, page: Path) -> np.ndarray:
    png = tmp_path / "shot.png"
    done = run_chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", page.as_uri())
    assert done.returncode == 0 and png.exists(), done.stderr.decode(errors="replace")[-2000:]
    pixels = decode_png(png.read_bytes())
    assert pixels.shape[:2] == (2000, 1280)
    return pixels


def test_html_three_rounds_in_chromium(tmp_path: Path):
    report = three_round_report()
    page = tmp_path / "audit.html"
    page.write_text(render_html(report), encoding="utf-8")

    dom = browser_dom(tmp_path, page)
    svgs = {a.get("id") for t, a, _ in dom.elements if t == "svg"}
    assert {"lineage-graph", "loss-plot"} <= svgs
    cells = list(dom.inside("lineage-graph", "g", "cell"))
    assert len(cells) == 12  # 3 rounds x 4 workers
    states = [next(c for c in a["class"].split() if c != "cell") for _, a in cells]
    assert states.count("missing") == 1
    assert states.count("rejected") == 1
    assert states.count("discrepancy") == 1
    assert states.count("accepted") == 9
    bad = next(a for _, a in cells if "discrepancy" in a["class"])
    assert (bad["data-round"], bad["data-worker"]) == ("3", WORKERS[1])
    rejected = next(a for _, a in cells if "rejected" in a["class"])
    assert (rejected["data-round"], rejected["data-worker"]) == ("2", WORKERS[2])
    models = [a.get("id") for _, a in dom.inside("lineage-graph", "g", "model")]
    assert models == ["model-genesis", "model-r1", "model-r2", "model-r3"]
    dissent = list(dom.inside("lineage-graph", "g", "dissent"))
    assert [(a["data-round"], a["data-aggregator"]) for _, a in dissent] == [("2", AGGREGATORS[2])]
    assert len(list(dom.inside("lineage-graph", "g", "agg"))) == 9
    links = list(dom.inside("lineage-graph", "g", "link"))
    assert [a["data-round"] for _, a in links] == ["1", "2", "3"]
    assert not any("broken" in a["class"] for _, a in links)

    lines = list(dom.inside("loss-plot", "path", "loss-line")) + list(dom.inside("loss-plot", "polyline"))
    assert lines, "the loss plot has no line"
    d = lines[0][1]["d"]
    assert d.count("L") == 3  # start + 3 rounds
    points = list(dom.inside("loss-plot", "g", "loss-point"))
    assert [a["data-round"] for _, a in points] == ["0", "1", "2", "3"]
    assert "start" in points[0][1]["class"]
    assert len(list(dom.inside("loss-plot", "g", "contribution-point"))) == 11
    yticks = [float(a["data-value"]) for _, a in dom.inside("loss-plot", None, "ytick")]
    assert len(yticks) >= 3 and yticks == sorted(yticks)
    assert yticks[0] <= 4.05 and yticks[-1] >= 6.3  # every accepted loss is on the scale
    xticks = [a["data-value"] for _, a in dom.inside("loss-plot", None, "xtick")]
    assert xticks == ["0", "1", "2", "3"]

    verdict = [a for t, a, _ in dom.elements if a.get("id") == "verdict"]
    assert verdict and "failed" in verdict[0]["class"]
    assert [a.get("id") for t, a, _ in dom.elements if t == "table" and a.get("id") == "discrepancies"]
    assert {a.get("id") for t, a, _ in dom.elements if t == "section"} == {"round-1", "round-2", "round-3"}

    pixels = browser_screenshot(tmp_path, page)
    non_white = int((pixels[..., :3].min(axis=-1) < 245).sum())
    assert non_white > 20_000, f"screenshot nearly blank ({non_white} non-white pixels)"
    assert near(pixels, GREEN) > 2_000, "no accepted (green) marks visible"
    assert near(pixels, RED) > 200, "no rejected (red) marks visible"


@pytest.mark.parametrize("make", [empty_report, skipped_report], ids=["empty", "all-skipped"])
def test_html_empty_cases_in_chromium(tmp_path: Path, make):
    report = make()
    page = tmp_path / "audit.html"
    page.write_text(render_html(report), encoding="utf-8")
    dom = browser_dom(tmp_path, page)
    cells = list(dom.inside("lineage-graph", "g", "cell"))
    assert len(cells) == len(report.rounds) * len(report.workers)
    if report.rounds:
        states = sorted(next(c for c in a["class"].split() if c != "cell") for _, a in cells)
        assert states == ["missing", "missing", "missing", "submitted"]  # no on-chain verdict
    assert not list(dom.inside("loss-plot", "path", "loss-line"))
    assert list(dom.inside("loss-plot", None, "empty"))
    verdict = [a for t, a, _ in dom.elements if a.get("id") == "verdict"]
    assert verdict and "ok" in verdict[0]["class"].split()

    pixels = browser_screenshot(tmp_path, page)
    assert int((pixels[..., :3].min(axis=-1) < 245).sum()) > 5_000


# ---------------------------------------------------------------- pieces


def test_cell_states_and_ticks():
    from node.reports.html import ORANGE, PURPLE, cell_state

    def contrib(onchain, audit):
        return ContributionAudit(submission(1, 0, WORKERS[0], "x", 1, 1), onchain, audit)

    flag = [Discrepancy(1, WORKERS[0], "integrity", "a", "b")]
    assert cell_state(None, []) == ("missing", None)
    assert cell_state(contrib(0, 0), []) == ("accepted", None)
    assert cell_state(contrib(7, 7), []) == ("rejected", None)
    assert cell_state(contrib(None, 0), []) == ("submitted", None)
    assert cell_state(contrib(0, 8), []) == ("discrepancy", PURPLE)  # invalid, accepted on chain
    assert cell_state(contrib(7, 0), []) == ("discrepancy", ORANGE)  # valid, rejected on chain
    assert cell_state(contrib(7, 8), []) == ("discrepancy", ORANGE)  # different reason byte
    assert cell_state(contrib(0, 0), flag) == ("discrepancy", ORANGE)



def test_flat_loss_still_gets_a_scale():
    from node.reports.graphs import loss_svg

    report = three_round_report()
    for rnd in report.rounds:
        rnd.parent_val_loss = rnd.merged_val_loss = 2.0
        for c in rnd.contributions:
            c.val_loss = 2.0
    ticks = [float(v) for v in re.findall(r'class="tick ytick" data-value="([^"]+)"', loss_svg(report))]
    assert len(ticks) >= 3 and ticks[0] < 2.0 < ticks[-1]


def test_graph_ids_are_unique_on_the_page():
    page = render_html(three_round_report())
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)[:5]


def test_matplotlib_is_loaded_only_to_render():
    code = (
        "import sys, ledger, node.reports.html, node.reports.text\n"
        "assert 'matplotlib' not in sys.modules, 'imported at import time'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
