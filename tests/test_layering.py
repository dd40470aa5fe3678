"""The import graph tells the layering (../shared/STYLE.md): no loops between packages, no hidden imports.

A unit is ``diffunet``, a subpackage of ``light_training`` (``light_training.memory``) or one of its top-level
modules (``light_training.runtime``). Every import counts, at the top of a module or inside a function, so an
import moved into a function cannot hide a loop. An import inside a function is allowed only for an optional
heavy dependency outside the project, with a one-line reason on its line.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("light_training", "diffunet")
# loops still open, each with the reason it is allowed for now
KNOWN_LOOPS: dict[frozenset[str], str] = {}


def _unit(module: str) -> str | None:
    """The unit of a dotted module name; None outside the project or for ``light_training`` itself."""
    parts = module.split(".")
    if parts[0] == "diffunet":
        return "diffunet"
    if parts[0] != "light_training" or len(parts) == 1:
        return None
    if (ROOT / "light_training" / parts[1]).is_dir() or (ROOT / "light_training" / f"{parts[1]}.py").is_file():
        return f"light_training.{parts[1]}"
    return None  # a name of light_training/__init__.py (``__version__``)


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, list[str], bool]]:
    """``(node, imported module names, at the module's top level)`` of every import in ``tree``."""
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node, [a.name for a in node.names], id(node) in top))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.append((node, names, id(node) in top))
    return found


def _sources() -> list[tuple[Path, str]]:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    return [(path, ".".join(path.relative_to(ROOT).with_suffix("").parts)) for path in files]


def import_graph() -> tuple[dict[str, set[str]], list[tuple[Path, int, str]], list[tuple[Path, int, str]]]:
    """The unit graph; the imports inside functions that cross units; those of other modules (with the line)."""
    edges: dict[str, set[str]] = defaultdict(set)
    crossing, late = [], []
    for path, module in _sources():
        source = path.read_text()
        lines = source.splitlines()
        here = _unit(module)
        for node, names, at_top in _imports(ast.parse(source)):
            targets = {u for u in map(_unit, names) if u is not None and u != here}
            if here is not None:
                edges[here] |= targets
            if not at_top:
                (crossing if targets else late).append((path.relative_to(ROOT), node.lineno,
                                                        lines[node.lineno - 1].strip()))
    return edges, crossing, late


def package_loops(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one unit (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return loops


def test_no_package_loops():
    edges, _, _ = import_graph()
    assert edges["light_training.memory"] and "light_training.training" in edges["light_training.memory"]
    new = [sorted(loop) for loop in package_loops(edges) if loop not in KNOWN_LOOPS]
    assert not new, f"import loops between packages: {new}"


def test_memory_stands_above_training_and_inference_and_below_its_users():
    edges, _, _ = import_graph()
    assert {"light_training.training", "light_training.inference"} <= edges["light_training.memory"]
    for unit, targets in edges.items():
        if "light_training.memory" in targets:
            assert unit in ("light_training.planning", "light_training.stages"), unit
    assert "light_training.memory" not in edges["light_training.preprocessing"]


def test_no_import_inside_a_function_crosses_packages():
    _, crossing, late = import_graph()
    assert not crossing, f"imports inside functions that cross packages: {crossing}"
    unexplained = [entry for entry in late if "#" not in entry[2]]
    assert not unexplained, f"late imports without a one-line reason: {unexplained}"


def test_a_loop_is_found():
    assert package_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert package_loops({"a": {"b"}, "b": set()}) == []
