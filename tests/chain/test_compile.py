"""`ledger compile [--check]`: the committed artifact is exactly what the sources compile to.

Tests never touch the committed files: anything modified is a copy under tmp_path,
passed to the CLI with --root.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.ethereum import compile as comp
from ledger.ethereum.artifacts import artifact_path, artifact_sha256, load_artifact

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "contracts/TrainingLedger.sol"


def ledger_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ledger_cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("LEDGER_")},
    )


@pytest.fixture(scope="module")
def solc() -> comp.Solc:
    try:
        return comp.find_solc()
    except comp.CompileError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def fresh(solc) -> dict[str, dict]:
    """The committed sources compiled once for the module (viaIR takes a while): what
    `ledger compile` would write, for the checks that compare against it."""
    return comp.compile_contracts(ROOT, solc)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the project's contracts/ (sources + committed build) to modify."""
    shutil.copytree(ROOT / "contracts", tmp_path / "contracts")
    return tmp_path


def test_check_passes_on_the_committed_artifact(solc):
    """Deterministic: the same sources and settings give the very same artifact file, so
    the tests below may stand the committed artifact in for a fresh compile."""
    out = ledger_cli("compile", "--check")
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout  # which includes: the file is the one a fresh compile writes, to the byte


def test_check_fails_on_a_reformatted_artifact(copy: Path, fresh):
    assert comp.check(copy, fresh=fresh) == []          # the copy as committed: up to date
    path = copy / "contracts/build/TrainingLedger.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))
    problems = comp.check(copy, fresh=fresh)
    assert len(problems) == 1 and "not byte for byte" in problems[0], problems


def test_check_fails_when_the_code_changes(copy: Path, solc):
    src = copy / "contracts/TrainingLedger.sol"
    text = src.read_text()
    assert "BATCH_ENTRY = 100;" in text
    src.write_text(text.replace("BATCH_ENTRY = 100;", "BATCH_ENTRY = 99;"))
    # `ledger compile` on the copy rebuilds its artifacts (one compile, and the repository's untouched)
    committed = artifact_path().read_text()
    built = ledger_cli("compile", "--root", str(copy))
    assert built.returncode == 0 and "wrote contracts/build/TrainingLedger.json" in built.stdout
    build = copy / "contracts/build"
    fresh = {name: json.loads((build / f"{name}.json").read_text()) for name in comp.CONTRACTS}
    rebuilt = fresh["TrainingLedger"]
    assert rebuilt["sources"]["contracts/TrainingLedger.sol"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert rebuilt["deployedBytecode"] != load_artifact()["deployedBytecode"]
    assert artifact_path().read_text() == committed
    # the committed artifacts put back beside the changed source: what `--check` finds against
    # that very build (the command's own output on a failed check: test_check_reports_a_missing_artifact)
    for name in comp.CONTRACTS:
        shutil.copy(ROOT / f"contracts/build/{name}.json", build / f"{name}.json")
    problems = comp.check(copy, fresh=fresh)
    assert any("source sha256 differs for contracts/TrainingLedger.sol" in p for p in problems), problems
    assert any("deployedBytecode differs (code, not just metadata)" in p for p in problems), problems


def test_check_fails_on_a_comment_only_change(copy: Path, solc):
    """Same code, different source text: the metadata trailer and the source hash say so."""
    src = copy / "contracts/TrainingLedger.sol"
    src.write_text(src.read_text() + "\n// a comment\n")
    problems = comp.check(copy, solc=solc)
    assert any("source sha256 differs" in p for p in problems)
    assert any("deployedBytecode metadata trailer differs" in p for p in problems)
    assert not any("code, not just metadata" in p for p in problems)


@pytest.mark.parametrize("field", ["abi", "bytecode", "deployedBytecode", "sources", "settings"])
def test_check_fails_on_a_tampered_artifact(copy: Path, field):
    path = copy / "contracts/build/TrainingLedger.json"
    art = json.loads(path.read_text())
    if field == "abi":
        art["abi"] = [e for e in art["abi"] if e.get("name") != "closeRound"]
        expect = "ABI differs"
    elif field == "sources":
        art["sources"]["contracts/TrainingLedger.sol"] = "00" * 32
        expect = "source sha256 differs"
    elif field == "settings":
        art["compiler"]["settings"] = {**art["compiler"]["settings"], "optimizer": {"enabled": True, "runs": 1}}
        expect = "compiler settings differ"
    else:
        code, meta = comp.split_metadata(art[field])
        code = code[:10] + ("00" if code[10:12] != "00" else "01") + code[12:]
        art[field] = "0x" + code + meta
        expect = f"{field} differs (code, not just metadata)"
    path.write_text(json.dumps(art))
    problems = comp.compare_artifacts(json.loads(path.read_text()), load_artifact())
    assert any(expect in p for p in problems), problems


def test_check_reports_a_missing_artifact(copy: Path, fresh):
    (copy / "contracts/build/TrainingLedger.json").unlink()
    problems = comp.check(copy, fresh=fresh)
    assert problems == [f"{copy / 'contracts/build/TrainingLedger.json'}: missing"], problems
    # with no artifact at all nothing is compiled, and the command says what is missing
    for lib in comp.LIBRARIES:
        (copy / f"contracts/build/{lib}.json").unlink()
    out = ledger_cli("compile", "--check", "--root", str(copy))
    assert out.returncode == 1 and "missing" in out.stderr and "Traceback" not in out.stderr
    assert "do not match the sources" in out.stderr and "run `ledger compile`" in out.stderr


def test_root_without_contracts_is_a_clear_error(tmp_path: Path):
    out = ledger_cli("compile", "--check", "--root", str(tmp_path))
    assert out.returncode != 0 and "has no contracts/" in out.stderr and "Traceback" not in out.stderr


def test_artifact_contents():
    art = load_artifact()
    assert art["contractName"] == "TrainingLedger" and art["sourceName"] == "contracts/TrainingLedger.sol"
    assert art["bytecode"].startswith("0x60") and art["deployedBytecode"].startswith("0x60")
    assert art["compiler"]["version"].startswith("0.8.28+commit.")
    assert art["compiler"]["settings"] == comp.SETTINGS
    assert art["compiler"]["settings"]["optimizer"] == {"enabled": True, "runs": 200}
    assert art["sources"] == comp.sources_sha256()   # every source: the interface and libraries too
    assert art["sources"]["contracts/TrainingLedger.sol"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    assert "contracts/interfaces/ITrainingLedger.sol" in art["sources"]
    assert not any(k.startswith("contracts/test/") for k in art["sources"])   # forge tests are not deployed
    # the libraries TrainingLedger links are built beside it, and nothing else is linked
    assert sorted(n for libs in art["linkReferences"].values() for n in libs) == sorted(comp.LIBRARIES)
    for lib in comp.LIBRARIES:
        assert load_artifact(lib)["sources"] == art["sources"]
    names = {e.get("name") for e in art["abi"]}
    for fn in ("createJob", "submitUpdate", "commitProposal", "revealProposal", "closeRound", "getJob", "getWorkers",
               "getAggregators", "getRound", "hasSubmitted", "commitOf", "hasProposed", "votes", "jobCount"):
        assert fn in names
    for ev in ("JobCreated", "RoundOpened", "UpdateSubmitted", "ProposalCommitted", "ProposalRevealed", "RoundFinalized",
               "RoundSkipped", "JobCompleted"):
        assert ev in names
    assert artifact_sha256() == "0x" + hashlib.sha256(artifact_path().read_bytes()).hexdigest()
    code, meta = comp.split_metadata(art["deployedBytecode"])
    assert meta.startswith("a2") or meta.startswith("a1") or meta.startswith("a3")  # CBOR map: ipfs + solc
    assert len(meta) > 0 and code + meta == art["deployedBytecode"][2:]


def test_npm_wrapper_gives_clean_json():
    wrapper = ROOT / "tools/solc-npm"
    if not (ROOT / "hardhat-config/node_modules/solc/solc.js").exists():
        pytest.skip("npm solc is not installed (make install-npm)")
    assert subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=60).stdout.startswith("0.8.28+commit.")
    inp = {"language": "Solidity",
           "sources": {"a.sol": {"content": "// SPDX-License-Identifier: MIT\npragma solidity 0.8.28; contract A { }"}},
           "settings": {"outputSelection": {"*": {"*": ["abi"]}}}}
    out = subprocess.run([str(wrapper), "--standard-json"], input=json.dumps(inp), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert not any(line.startswith(">>>") for line in out.stdout.splitlines())
    assert json.loads(out.stdout)["contracts"]["a.sol"]["A"]["abi"] == []


def test_hardhat_config_mirrors_the_compiler_settings():
    cfg = ROOT / "hardhat-config/hardhat.config.js"
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    out = subprocess.run([node, "-e", f"console.log(JSON.stringify(require({json.dumps(str(cfg))})))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    c = json.loads(out.stdout)
    assert c["solidity"]["version"] == comp.SOLC_VERSION
    assert c["solidity"]["settings"] == comp.SETTINGS
    assert c["networks"]["localhost"]["url"] == "http://127.0.0.1:8545"


def test_split_metadata():
    assert comp.split_metadata("0x6001") == ("6001", "")
    code = "6080604052"
    meta = "a1" + "00" * 3  # a 4-byte CBOR blob
    assert comp.split_metadata("0x" + code + meta + "0004") == (code, meta + "0004")
