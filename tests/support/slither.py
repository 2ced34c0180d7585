"""Slither on a forge build, for tests/chain/test_forge.py (the contracts) and tests/chain/test_slither.py
(its failure paths). Slither runs from its own venv (.venv-slither, `make` target
$(STAMP)/slither): slither-analyzer 0.11.6 needs web3 7, the project's venv has web3 8.

Slither reads forge's build-info (`--foundry-ignore-compile`), so it analyses the very build
the forge tests ran, without compiling again. A finding is triaged only in the Solidity
source, on the line before it: `// slither-disable-next-line DETECTOR -- reason`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLITHER = ROOT / ".venv-slither/bin/slither"
FORGE_BIN = ROOT / "hardhat-config/node_modules/@foundry-rs/forge-linux-amd64/bin"

TRIAGE = re.compile(r"//\s*slither-disable-(next-line|start|end)\s*([a-zA-Z0-9_,-]*)(.*)")


def slither_binary() -> Path | None:
    path = Path(os.environ.get("LEDGER_SLITHER", SLITHER))
    return path if path.exists() else None


def fresh_build_info(project: Path, sources: list[Path]) -> Path:
    """The newest build-info under ``project``/.forge/out whose solc input holds every one of
    ``sources`` as it is on disk now. Forge keeps older build-info files beside the new ones;
    read together, slither would mix stale line numbers into its findings."""
    want = {str(p.relative_to(project)): p.read_text() for p in sources}
    candidates = sorted((project / ".forge/out/build-info").glob("*.json"), key=lambda p: p.stat().st_mtime,
                        reverse=True)
    for path in candidates:
        given = json.loads(path.read_text())["input"]["sources"]
        if all(given.get(name, {}).get("content") == text for name, text in want.items()):
            return path
    raise LookupError(f"no build-info in {project}/.forge/out holds the current {', '.join(want)}")


def run_slither(project: Path, build_info: Path, *filter_paths: str, timeout: int = 600) -> dict:
    """Slither's JSON report on ``build_info`` alone, every detector, unused triage comments
    reported as findings (``unused-ignore-directive``), plus ``analyzed``: how many contracts."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "build-info").mkdir()
        (Path(tmp) / "build-info" / build_info.name).symlink_to(build_info)
        out = Path(tmp) / "report.json"
        cmd = [str(slither_binary() or SLITHER), ".", "--foundry-ignore-compile",
               "--foundry-build-info-directory", str(Path(tmp) / "build-info"),
               "--warn-unused-ignores", "--fail-none", "--json", str(out)]
        if filter_paths:
            cmd += ["--filter-paths", "|".join(filter_paths)]
        # crytic-compile asks `forge config` where things are, so forge must be on PATH
        env = {**os.environ, "PATH": f"{FORGE_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=timeout, env=env)
        if not out.exists():
            raise RuntimeError(f"slither wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        report = json.loads(out.read_text())
    if not report.get("success"):
        raise RuntimeError(f"slither failed: {report.get('error')}\n{proc.stderr[-4000:]}")
    # how many contracts it analysed (its log's ". analyzed (N contracts with M detectors)")
    m = re.search(r"analyzed \((\d+) contracts", proc.stderr)
    report["analyzed"] = int(m.group(1)) if m else 0
    return report


def untriaged(report: dict) -> list[str]:
    """One line per finding left in the report: impact, detector and where."""
    lines = set()
    for r in report.get("results", {}).get("detectors", []):
        if r.get("unused_ignores"):  # a triage comment that silences nothing
            for u in r["unused_ignores"]:
                lines.add(f"{r['impact']} {r['check']}: {Path(u['file']).name}:{u['line']} "
                          f"{','.join(u['unused_detectors'])}")
            continue
        first = r["description"].strip().splitlines()[0]
        lines.add(f"{r['impact']} {r['check']}: {first}")
    return sorted(lines)


def triage_without_reason(sources: list[Path]) -> list[str]:
    """Triage comments that do not say why (`-- reason` after the detector names)."""
    bad = []
    for path in sources:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = TRIAGE.search(line)
            if m and m.group(1) != "end" and not re.match(r"\s+--\s+\S", m.group(3)):
                bad.append(f"{path.name}:{n}: {line.strip()}")
    return bad
