"""The contracts tested the way contracts that hold money are: forge fuzz and invariant tests
(contracts/test/, foundry.toml) and slither, on one build, offline. forge comes from npm
(@foundry-rs/forge-linux-amd64, `make install-npm`), solc from npm through tools/solc-forge,
slither from its own venv (.venv-slither, `make` target $(STAMP)/slither).

Compiling (viaIR, solc.js) dominates: about 2.5-4 minutes on 2 cores the first time; forge
caches its build in .forge/, and slither reads that build's build-info instead of compiling
again. Both tests live in this one module so one `forge build` serves them (pytest-xdist
keeps a file on one worker). `make fuzz` runs the deep profile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import slither as slither_run

ROOT = Path(__file__).resolve().parents[2]
FORGE = ROOT / "hardhat-config/node_modules/@foundry-rs/forge-linux-amd64/bin/forge"
STATS = ROOT / ".forge/invariant-stats.txt"
# what slither analyses: the contracts, not their tests
CONTRACTS = sorted(p for p in (ROOT / "contracts").rglob("*.sol") if "test" not in p.relative_to(ROOT).parts[1:2])


def forge_binary() -> str | None:
    return os.environ.get("LEDGER_FORGE") or (str(FORGE) if FORGE.exists() else shutil.which("forge"))


def forge(*args: str, timeout: int = 900) -> str:
    env = {**os.environ, "FOUNDRY_PROFILE": os.environ.get("FOUNDRY_PROFILE", "default")}
    out = subprocess.run([forge_binary(), *args, "--offline", "--color", "never"], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    return text


@pytest.fixture(scope="module")
def build() -> Path:
    """One forge build (with build-info, foundry.toml) of the contracts and their tests;
    returns the build-info file that holds the current sources."""
    if forge_binary() is None:
        pytest.skip(f"forge is not installed ({FORGE}); run `make install-npm`")
    forge("build")
    try:
        return slither_run.fresh_build_info(ROOT, CONTRACTS)
    except LookupError:
        # only older build-info files (forge reused its cache): build once more, from scratch
        forge("build", "--force")
        return slither_run.fresh_build_info(ROOT, CONTRACTS)


def test_forge_fuzz_and_invariants(build):
    STATS.unlink(missing_ok=True)
    text = forge("test")
    # the suites ran: every fuzz test of FuzzTest and each invariant
    assert "FuzzTest" in text and "0 failed" in text
    for name in ("conservation", "nothingPaidTwice", "payoutsWithinFunding", "roundsOnlyMoveForward",
                 "strangersChangeNothing"):
        assert f"[PASS] invariant_{name}()" in text, text[-4000:]
    # ...and not vacuously: the random call sequences finalized rounds and paid rewards
    runs = [dict(kv.split("=") for kv in line.split()) for line in STATS.read_text().splitlines()]
    finalized = sum(int(r["finalized"]) for r in runs)
    paying = sum(int(r["payments"]) > 0 for r in runs)
    calls = sum(int(r["calls"]) for r in runs)
    print(f"invariant runs: {len(runs)}, handler calls: {calls}, rounds finalized: {finalized}, "
          f"runs that paid rewards: {paying}, jobs per run up to {max(int(r['jobs']) for r in runs)}")
    assert runs and finalized > 0 and paying > 0, "no invariant run reached a finalized, paying round"


def test_slither_finds_nothing_untriaged(build):
    if slither_run.slither_binary() is None:
        pytest.skip(f"slither is not installed ({slither_run.SLITHER}); run `make .stamps/slither`")
    report = slither_run.run_slither(ROOT, build, "contracts/test")
    # the contract, its libraries and interface were analysed (TrainingLedger, ITrainingLedger, 5 libraries)
    assert report["analyzed"] >= 7, report["analyzed"]
    left = slither_run.untriaged(report)
    assert not left, "slither findings neither fixed nor triaged in the source " \
        "(`// slither-disable-next-line DETECTOR -- reason`):\n" + "\n".join(left)
    assert not slither_run.triage_without_reason(CONTRACTS), slither_run.triage_without_reason(CONTRACTS)
