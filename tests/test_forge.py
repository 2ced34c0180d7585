"""The forge fuzz and invariant tests of the contracts (contracts/test/, foundry.toml),
offline: forge from npm (hardhat-config/node_modules, `make install-npm`), solc from npm
through tools/solc-forge. Compiling (viaIR, solc.js) dominates: about 1.5-4 minutes on
2 cores the first time; forge caches its build in .forge/. `make fuzz` runs the deep profile."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORGE = ROOT / "hardhat-config/node_modules/@foundry-rs/forge-linux-amd64/bin/forge"


def forge_binary() -> str | None:
    return os.environ.get("LEDGER_FORGE") or (str(FORGE) if FORGE.exists() else shutil.which("forge"))


def test_forge_fuzz_and_invariants():
    forge = forge_binary()
    if forge is None:
        pytest.skip(f"forge is not installed ({FORGE}); run `make install-npm`")
    env = {**os.environ, "FOUNDRY_PROFILE": os.environ.get("FOUNDRY_PROFILE", "default")}
    out = subprocess.run([forge, "test", "--offline", "--color", "never"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-6000:]
    # the suites ran: every fuzz test of FuzzTest and the conservation invariant among the invariants
    assert "invariant_conservation()" in text and "[PASS] invariant_conservation()" in text
    assert "FuzzTest" in text and "0 failed" in text
