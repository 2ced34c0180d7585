"""The slither gate of tests/chain/test_forge.py fails on a new finding: the same helpers
(tests/support/slither.py) run on a small forge project with a deliberately bad contract, its
triaged twin and a stale triage comment. The real contracts' run is in tests/chain/test_forge.py,
which shares their one (slow, viaIR) build with the forge tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support import slither as slither_run

ROOT = Path(__file__).resolve().parents[2]
FORGE = slither_run.FORGE_BIN / "forge"

BAD = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

contract Bad {
    function drain(address payable to) external {
        to.transfer(address(this).balance);
    }
}
"""

TRIAGED = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

contract Triaged {
    function drain(address payable to) external {
        // slither-disable-next-line arbitrary-send-eth -- a test of the triage comment
        to.transfer(address(this).balance);
    }
}
"""

STALE = """// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

contract Stale {
    function get() external pure returns (uint256) {
        // slither-disable-next-line reentrancy-eth -- nothing here to triage any more
        return 1;
    }
}
"""


def project(tmp_path: Path, sources: dict[str, str]) -> Path:
    (tmp_path / "src").mkdir()
    for name, text in sources.items():
        (tmp_path / "src" / name).write_text(text)
    (tmp_path / "foundry.toml").write_text(f"""[profile.default]
src = "src"
out = ".forge/out"
cache_path = ".forge/cache"
libs = []
solc = "{ROOT / 'tools/solc-forge'}"
offline = true
build_info = true
""")
    out = subprocess.run([str(FORGE), "build", "--offline", "--color", "never"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp_path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    if not FORGE.exists() or slither_run.slither_binary() is None:
        pytest.skip("forge (make install-npm) or slither (make .stamps/slither) is not installed")
    root = project(tmp_path_factory.mktemp("slither"), {"Bad.sol": BAD, "Triaged.sol": TRIAGED, "Stale.sol": STALE})
    build_info = slither_run.fresh_build_info(root, sorted((root / "src").glob("*.sol")))
    return slither_run.run_slither(root, build_info)


def test_an_untriaged_finding_fails_the_gate(report):
    left = slither_run.untriaged(report)
    assert any(line.startswith("High arbitrary-send-eth: Bad.drain(") for line in left), left
    assert report["analyzed"] == 3


def test_a_triage_comment_silences_exactly_its_finding(report):
    left = slither_run.untriaged(report)
    assert not [line for line in left if "arbitrary-send-eth" in line and "Triaged." in line], left


def test_a_stale_triage_comment_is_a_finding(report):
    stale = [line for line in slither_run.untriaged(report) if "unused-ignore-directive" in line]
    assert stale == ["Informational unused-ignore-directive: Stale.sol:6 reentrancy-eth"], stale


def test_a_triage_comment_must_say_why(tmp_path: Path):
    f = tmp_path / "A.sol"
    f.write_text("// slither-disable-next-line timestamp -- deadlines are minutes long\n"
                 "// slither-disable-next-line timestamp\n"
                 "// slither-disable-next-line timestamp --\n"
                 "// slither-disable-start assembly\n"
                 "// slither-disable-end assembly\n")
    assert slither_run.triage_without_reason([f]) == [
        "A.sol:2: // slither-disable-next-line timestamp",
        "A.sol:3: // slither-disable-next-line timestamp --",
        "A.sol:4: // slither-disable-start assembly",
    ]


def test_a_stale_build_info_is_not_used(tmp_path: Path):
    """fresh_build_info refuses build-info whose sources differ from the files on disk."""
    if not FORGE.exists():
        pytest.skip("forge is not installed (make install-npm)")
    root = project(tmp_path, {"Bad.sol": BAD})
    src = root / "src/Bad.sol"
    assert slither_run.fresh_build_info(root, [src]).exists()
    src.write_text(BAD.replace("drain", "empty"))
    with pytest.raises(LookupError, match="Bad.sol"):
        slither_run.fresh_build_info(root, [src])
