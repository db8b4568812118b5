"""The import structure docs/design.md section 2 states, read from the source of every module
of `gtok` (imports inside functions included, since a lazy import still ties two modules
together):

- layers: `gtok.cli -> gtok -> gtok.kernels`, and inside `gtok` the order of `LAYERS` (a
  module imports only from its own layer or lower ones);
- no import cycles between any two modules;
- no private name (`_x`, not `__x__`) of one module used by another.

How package `__init__` modules count: importing `P.m` is an edge to `P.m` only, not to `P`
(Python runs `P/__init__.py` first, but every submodule would then "import" its package and
re-exporting packages would all be cycles). A package `__init__` is a module like the others:
what it re-exports, eagerly or in its `__getattr__` (the lazy imports that keep start-up
fast), are its edges, and so are the modules of a name -> module table that
`gtok._lazy.lazy_names` imports from (a dict literal whose values are all module names). So
`from gtok.store import TokenStore` is an edge to `gtok.store`, which has an edge to
`gtok.store.reader`: a cycle through a re-export is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gtok",)

# lowest first; a module belongs to the longest name here that is its name or a prefix of it
LAYERS = (
    ("gtok.kernels",),
    (
        "gtok._version",
        "gtok._lazy",
        "gtok.errors",
        "gtok.stops",
        "gtok.safeload",
        "gtok.plainprogress",
        "gtok.console",
        "gtok.outputs",
        "gtok.weights",
        "gtok.devices",
        "gtok.viz",
        "gtok.envinfo",
    ),
    ("gtok.data", "gtok.metrics"),
    ("gtok.model",),
    ("gtok.store", "gtok.train"),
    ("gtok.pack", "gtok.encode"),
    ("gtok.decode",),
    ("gtok.evaluate",),
    ("gtok.demo", "gtok"),
    ("gtok.cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PATHS = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name a `from` import names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join([*base, *([node.module] if node.module else [])])


def _table_imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The modules named by the values of dict literals in `tree` whose values are all names
    of `known` modules: the name -> module tables that `gtok._lazy.lazy_names` imports from."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and node.values:
            values = [v.value if isinstance(v, ast.Constant) else None for v in node.values]
            if all(isinstance(v, str) and v in known for v in values):
                found.update(values)
    return found


def imports(module: str, source: str, known: set[str], is_package: bool = False):
    """(modules of `known` that `source`, the text of `module`, imports anywhere in it,
    [(imported module, private name) used from another module]). `from P import m` is an
    import of P.m when that is a module, else of P; the values of a name -> module table are
    imports too (`_table_imports`)."""
    found: set[str] = _table_imports(ast.parse(source), known)
    private: list[tuple[str, str]] = []
    aliases: dict[str, str] = {}  # local name -> the module of `known` it is bound to
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(module, is_package, node)
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                if sub in known:
                    found.add(sub)
                    aliases[alias.asname or alias.name] = sub
                else:
                    found.add(origin)
                    if _is_private(alias.name) and origin in known:
                        private.append((origin, alias.name))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target is not None and _is_private(node.attr):
                private.append((target, node.attr))
    found &= known
    found.discard(module)
    return found, [p for p in private if p[0] != module]


def _scan() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, str]]]]:
    graph, private = {}, {}
    for name, path in PATHS.items():
        is_package = path.name == "__init__.py"
        graph[name], private[name] = imports(name, path.read_text(), set(PATHS), is_package)
    return graph, private


GRAPH, PRIVATE = _scan()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of `graph` with more than one module, each sorted:
    every module of one reaches every other through imports."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), set()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in graph}
    components = {
        tuple(sorted({a} | {b for b in reachable[a] if a in reachable[b]})) for a in graph
    }
    return sorted(list(c) for c in components if len(c) > 1)


def layer(module: str) -> int:
    """The rank in `LAYERS` of the unit `module` belongs to."""
    units = [u for u in RANK if module == u or module.startswith(u + ".")]
    return RANK[max(units, key=len)]


def test_the_graph_sees_lazy_imports():
    assert "gtok.model.tokenizer" in GRAPH["gtok.model.io"]  # inside load_tokenizer
    assert "gtok.store.reader" in GRAPH["gtok.store"]  # in its __getattr__ or at the top


def test_the_graph_sees_name_to_module_tables():
    assert {"gtok.data.stream", "gtok.data.shards"} <= GRAPH["gtok.data"]
    assert "gtok.model" in GRAPH["gtok"]
    source = 'T = {"x": "p.a"}\nU = {"y": "p.b", "z": "not a module"}\nV = {}\n'
    assert imports("p", source, {"p.a", "p.b"}, is_package=True)[0] == {"p.a"}


def test_cycles_are_found_through_function_level_imports():
    source = {"a": "import b\n", "b": "def f():\n    from c import g\n", "c": "import a\n"}
    graph = {m: imports(m, s, set(source))[0] for m, s in source.items()}
    assert cycles({**graph, "d": {"a"}}) == [["a", "b", "c"]]


def test_private_names_across_modules_are_found():
    source = "from p.w import _diff, ok, __version__\nfrom p import v\nv._damaged('x')\n"
    assert imports("p.a", source, {"p.w", "p.v", "p"})[1] == [("p.w", "_diff"), ("p.v", "_damaged")]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_private_names_across_modules():
    assert {m: p for m, p in PRIVATE.items() if p} == {}


def test_every_module_has_a_layer():
    assert [m for m in PATHS if not any(m == u or m.startswith(u + ".") for u in RANK)] == []


def test_imports_go_down_the_layers():
    upward = sorted(
        f"{module} -> {imported}"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if layer(imported) > layer(module)
    )
    assert upward == []
