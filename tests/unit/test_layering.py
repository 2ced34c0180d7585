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


# ledger's rooms, lowest first: a module may import its own room and the rooms below it,
# never one above (lazy imports included). The basics at the package's top level
# (errors, config, atomic, safejson, digest, tables, progress, units) import no room.
ROOMS = ["(top)", "services", "privacy", "store", "protocol", "ethereum", "trail", "monitor"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports anywhere in its body (relative imports resolved)."""
    files = {_module_name(f): f for pkg in ("ledger", "node", "ledger_cli") for f in (ROOT / pkg).rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, f in files.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (known(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for a in node.names:
                    d = known(f"{base}.{a.name}") if f"{base}.{a.name}" in files else known(base)
                    if d:
                        deps.add(d)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _room(mod: str) -> str | None:
    parts = mod.split(".")
    if parts[0] != "ledger" or len(parts) == 1:
        return None
    return parts[1] if (ROOT / "ledger" / parts[1]).is_dir() else "(top)"


def test_ledger_rooms_import_only_their_own_and_lower_rooms():
    graph = _import_graph()
    rooms = {r for m in graph if (r := _room(m))}
    assert rooms == set(ROOMS), f"rooms on disk {sorted(rooms)} differ from the layering {ROOMS}: place the new one"
    wrong = [f"{m} ({_room(m)}) imports {d} ({_room(d)})"
             for m, deps in sorted(graph.items()) if _room(m)
             for d in sorted(deps) if _room(d) and ROOMS.index(_room(d)) > ROOMS.index(_room(m))]
    assert not wrong, wrong


def test_no_import_cycle_in_the_repository():
    """Tarjan's strongly connected components over every import, lazy ones included."""
    graph = _import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in graph:
        if v not in index:
            visit(v)
    assert len(graph) > 100
    assert not cycles, cycles


def test_the_checks_above_can_fail(tmp_path, monkeypatch):
    """The graph sees a lazy import that points up a room, and a cycle made of two lazy imports."""
    fake = tmp_path / "ledger"
    (fake / "store").mkdir(parents=True)
    (fake / "trail").mkdir()
    for d in (fake, fake / "store", fake / "trail"):
        (d / "__init__.py").write_text("")
    (fake / "store" / "low.py").write_text("def f():\n    from ledger.trail import high\n")
    (fake / "trail" / "high.py").write_text("def g():\n    from ledger.store.low import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _import_graph()
    assert graph["ledger.store.low"] == {"ledger.trail.high"} and graph["ledger.trail.high"] == {"ledger.store.low"}
    assert ROOMS.index(_room("ledger.trail.high")) > ROOMS.index(_room("ledger.store.low"))
