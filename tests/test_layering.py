"""The import structure DESIGN.md section 2 states, read from the source (imports inside
functions included): cli -> gtok -> kernels, and no two modules of `gtok.model` import each
other (issue 13, point 13: `io` and `tokenizer` did)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(p): p
    for package in ("cli", "gtok", "kernels")
    for p in (ROOT / package).rglob("*.py")
}


def _imports(path: Path) -> set[str]:
    """The modules of this repository that `path` imports anywhere (`from P import m` counts
    as importing the submodule P.m when there is one, else P)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found & set(MODULES)


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(names: set[str]) -> list[list[str]]:
    """Pairs of modules among `names` that reach each other through imports within `names`."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in GRAPH[todo.pop()] & names:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in names}
    return sorted([a, b] for a in names for b in reachable[a] if a < b and a in reachable[b])


def test_the_graph_sees_lazy_imports():
    assert "gtok.model.tokenizer" in GRAPH["gtok.model.io"]  # inside load_tokenizer


def test_no_import_cycles_in_gtok_model():
    assert _cycles({n for n in MODULES if n.startswith("gtok.model")}) == []


def test_dependencies_follow_the_data():
    for name, imported in GRAPH.items():
        layer = name.split(".")[0]
        forbidden = {"kernels": ("gtok", "cli"), "gtok": ("cli",), "cli": ()}[layer]
        assert not [m for m in imported if m.split(".")[0] in forbidden], name
