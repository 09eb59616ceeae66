"""The package's shape: modules import each other in one direction only, and none grows too long.

The import graph is read from the source with ``ast`` (nothing is imported), including the imports
inside functions, which a lazy import would otherwise hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "qwen3next"
MAX_LINES = 450
# Modules allowed over MAX_LINES while they are being split; each entry must still be over the limit.
OVER_LIMIT_WHILE_SPLIT: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: one level is the current package, each further level its parent
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod when there is one, else names from pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def test_import_graph_is_acyclic():
    graph = import_graph()
    # the reader of the graph sees the imports it should: a relative one, a lazy one inside a function
    assert "qwen3next.checkpoint" in graph["qwen3next.model"] and "qwen3next.weights" in graph["qwen3next.model"]
    assert "qwen3next.model" in graph["qwen3next.exercises.ch08_model"]  # imported inside a function
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_too_long():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in modules().values()}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in OVER_LIMIT_WHILE_SPLIT}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"
    stale = {name for name in OVER_LIMIT_WHILE_SPLIT if lengths.get(name, 0) <= MAX_LINES}
    assert not stale, f"{sorted(stale)} no longer over {MAX_LINES} lines: remove them from OVER_LIMIT_WHILE_SPLIT"
