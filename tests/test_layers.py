"""The package is layered: no import cycle between its top-level packages, nor between modules.

The graph is read from the source with ``ast``: every ``import mtforget...`` and ``from
mtforget... import``, wherever it stands (inside functions and ``TYPE_CHECKING`` blocks too), since
a deferred import still ties two modules together. Top-level modules such as ``mtforget.cache``
count as nodes of their own at the package level, the root package (``import mtforget``) as one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mtforget"

Edges = dict[str, dict[str, str]]  # importer -> imported -> where ("path:line"), first occurrence


def module_name(path: Path) -> str:
    """The dotted name of the module in ``path`` (a package's ``__init__`` names the package)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, importer: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(module, line) for every mtforget module that ``tree`` imports, relative imports resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "mtforget"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "mtforget":
                continue
            # ``from mtforget.report import plots`` imports the submodule plots.
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            found += [(sub, node.lineno) for sub in subs] or [(base, node.lineno)]
    return found


def module_graph() -> Edges:
    """Module-level import edges of the whole package."""
    paths = sorted(ROOT.rglob("*.py"))
    known = {module_name(p) for p in paths}
    edges: Edges = defaultdict(dict)
    for path in paths:
        importer = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for imported, line in imported_modules(tree, importer, path.name == "__init__.py", known):
            if imported != importer:
                edges[importer].setdefault(imported, f"{path.relative_to(ROOT.parent)}:{line}")
    return edges


def layer(module: str) -> str:
    """The top-level package (or top-level module) that ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def package_graph(modules: Edges) -> Edges:
    """Import edges between top-level packages, each with one import that makes it."""
    edges: Edges = defaultdict(dict)
    for importer, targets in modules.items():
        for imported, where in targets.items():
            if layer(importer) != layer(imported):
                edges[layer(importer)].setdefault(layer(imported), where)
    return edges


def strongly_connected(edges: Edges) -> list[list[str]]:
    """The graph's strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(set(edges) | {n for targets in edges.values() for n in targets}):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(edges: Edges, start: str, members: set[str]) -> list[str]:
    """A shortest cycle through ``start`` inside ``members``, as a closed path of nodes."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, {})):
            if nxt == start:
                return paths[node] + [start]
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(members)}")


def describe_cycles(edges: Edges) -> list[str]:
    """One line per import cycle (a shortest one through each node that is on a cycle): its nodes,
    and the import that makes each step."""
    lines: list[str] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for component in strongly_connected(edges):
        for start in component:
            cycle = shortest_cycle(edges, start, set(component))
            steps = list(zip(cycle, cycle[1:]))
            if frozenset(steps) in seen:  # the same cycle from another of its nodes
                continue
            seen.add(frozenset(steps))
            where = ", ".join(f"{a} -> {b} ({edges[a][b]})" for a, b in steps)
            lines.append(f"{' -> '.join(cycle)}: {where}")
    return lines


def test_the_graph_sees_deferred_and_type_checking_imports():
    edges = module_graph()
    # Imported inside a function (the CLI defers its imports) and from a package (a submodule).
    assert "mtforget.study.runner" in edges["mtforget.cli"]
    assert "mtforget.report.plots" in edges["mtforget.report.build"]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mtforget.a import b\n"
                     "def f():\n    import mtforget.c\n    from . import d\n")
    found = imported_modules(tree, "mtforget.x.y", False, {"mtforget.x.d"})
    assert [m for m, _ in found] == ["mtforget.a", "mtforget.c", "mtforget.x.d"]


def test_cycle_detection_names_the_cycle():
    edges = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2"}, "c": {"a": "c.py:3", "d": "c.py:4"}, "d": {}}
    assert describe_cycles(edges) == ["a -> b -> c -> a: a -> b (a.py:1), b -> c (b.py:2), c -> a (c.py:3)"]
    assert describe_cycles({"a": {"b": "a.py:1"}, "b": {}}) == []


@pytest.mark.parametrize("level", ["packages", "modules"])
def test_no_import_cycles(level):
    modules = module_graph()
    edges = package_graph(modules) if level == "packages" else modules
    cycles = describe_cycles(edges)
    assert not cycles, f"import cycles between {level}:\n" + "\n".join(cycles)
