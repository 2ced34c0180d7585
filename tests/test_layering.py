"""The arrows of the layering: ledger_cli -> node -> ledger, ledger_cli -> ledger.

``ledger`` (chain, storage, history: what an auditor's tooling or a light client needs)
must import without torch, without ``node`` and without the command line; ``node``
must not import the command line. Checked by importing in a fresh interpreter and by
reading every import statement, so neither a lazy import nor a top-level one slips by.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> list[str]:
    pkg = ROOT / package
    names = [package]
    for m in pkgutil.walk_packages([str(pkg)], prefix=package + "."):
        if not m.name.endswith("__main__"):
            names.append(m.name)
    return sorted(names)


def test_every_ledger_module_imports_without_torch_node_or_the_cli():
    mods = _modules("ledger")
    assert "ledger.ethereum.chain" in mods and "ledger.store.embedded" in mods and len(mods) > 20
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'node', 'ledger_cli'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_import_statement_points_up_the_layers():
    wrong = []
    for package, forbidden in (("ledger", {"node", "ledger_cli", "torch"}), ("node", {"ledger_cli"})):
        for f in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(f) & forbidden
            if bad:
                wrong.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not wrong, wrong
