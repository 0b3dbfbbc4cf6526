"""The layout's rules, read from the source: imports point one way between packages (no cycle,
counting imports inside functions and sub-packages as units), and search/ has no long function."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
LONG_ALLOWED: set[str] = set()  # a function listed here must say why in its docstring


def _unit(module: str) -> str:
    """agesearch.search.loop.trial -> search.loop; agesearch.search.cli -> search.cli; models.x -> models."""
    parts = module.split(".")[1:]
    if parts[0] == "search" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["agesearch", *parts])


def _sources():
    for folder in ("search", "models", "spaces"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agesearch."):
            found.add(node.module)
            for alias in node.names:  # `from agesearch.search.store import study`
                found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agesearch."))
    return found


def _graph() -> dict[str, set[str]]:
    units = {_unit(_module_of(p)) for p in _sources() if _module_of(p) != "agesearch.search"}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in _sources():
        module = _module_of(path)
        if module == "agesearch.search":
            continue
        for imported in _imports(path):
            target = _unit(imported)
            if target not in units:  # `from agesearch.search.loop import x`: x is a module of the unit
                target = _unit(".".join(imported.split(".")[:-1]))
            if target != _unit(module) and target in units:
                graph[_unit(module)].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_structure_has_no_import_cycle_between_packages():
    graph = _graph()
    assert {"search.data", "search.store", "search.loop", "search.training", "search.report", "search.export", "search.cli", "models", "spaces"} <= set(graph)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    # The direction of the design: nothing imports the CLI; models and spaces never import search.
    assert not [u for u, deps in graph.items() if "search.cli" in deps]
    assert not {d for d in graph["models"] | graph["spaces"] if d.startswith("search")}
    # What a user reads (report) and what leaves the search (export) stand beside each other, and the
    # search itself never needs what leaves it.
    assert "search.export" not in graph["search.report"] and "search.report" not in graph["search.export"]
    assert "search.export" not in graph["search.loop"]


def test_structure_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_structure_search_has_no_function_over_60_lines():
    long = []
    for path in sorted((ROOT / "search").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and node.name not in LONG_ALLOWED:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long
