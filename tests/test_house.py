"""The shape of the library: an import map without circles, short functions, and one path
from a model file to cells (the Segmenter)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "protoseg"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def import_map(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Which protoseg modules each module imports, at the top or inside a function alike
    (a function-level import still makes a circle a reader has to follow)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in trees and t not in (name, "protoseg"))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_import_map_has_no_circles():
    graph = import_map(modules())
    assert "protoseg.segmenter" in graph["protoseg.predict"]  # the map sees real imports
    assert circles(graph) == []


def test_no_function_is_longer_than_80_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize(
    "module", ["protoseg.predict", "protoseg.evaluate", "protoseg.train", "protoseg.export"]
)
def test_stages_reach_the_network_only_through_the_segmenter(module):
    """Predict, evaluation, validation during training and export get from a network to
    probabilities and cells through :class:`protoseg.segmenter.Segmenter` alone."""
    graph = import_map(modules())
    assert "protoseg.inference" not in graph[module]
    assert "protoseg.segmenter" in graph[module]
