"""The shape of the code: no import cycles, one complete queue interface, small classes.

Pure checks of the source (no database): they fail when a change brings back what the
architecture review removed (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from geoworker.jobs import JobQueue
from geoworker.queue import Queue
from geoworker.remote import HttpJobQueue

ROOT = Path(__file__).resolve().parent.parent
MAX_CLASS_LINES = 300


def _modules(folder: Path, package: str | None) -> dict[str, Path]:
    """{dotted module name: file} of every .py under folder (tests/ modules by their bare names)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(([package] if package else []) + parts)
        found[name or package] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports (anywhere in the file: function-local imports count too)."""
    modules = {**_modules(ROOT / "geoworker", "geoworker"), **_modules(ROOT / "tests", None)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` imports pkg.mod when that is a module, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]  # `import geoworker.x.y` -> the module we know
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package_or_the_tests():
    graph = import_graph()
    assert "geoworker.supervisor" in graph and "conftest" in graph, "the graph must cover both trees"
    assert cycles(graph) == []


def _public(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


@pytest.mark.parametrize("impl", [JobQueue, HttpJobQueue])
def test_every_queue_implements_the_whole_interface(impl):
    wanted = _public(Queue)
    have = _public(impl)
    missing = sorted(set(wanted) - set(have))
    assert not missing, f"{impl.__name__} lacks {missing}"
    for name, signature in wanted.items():
        got = have[name].parameters
        for param in signature.parameters.values():
            assert param.name in got, f"{impl.__name__}.{name} has no parameter {param.name}"
            assert got[param.name].kind == param.kind, f"{impl.__name__}.{name}({param.name}) differs in kind"
            assert got[param.name].default == param.default, f"{impl.__name__}.{name}({param.name}) default differs"
        extra = [p for p in got.values() if p.name not in signature.parameters]
        assert all(p.default is not inspect.Parameter.empty for p in extra), \
            f"{impl.__name__}.{name} needs more arguments than the interface gives"


def test_the_supervisor_stays_small_and_no_class_grows_past_300_lines():
    """The review's aim: supervisor.py at most 500 lines, and no class over 300 (there, or anywhere)."""
    long = []
    for path in sorted((ROOT / "geoworker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
    assert len((ROOT / "geoworker" / "supervisor.py").read_text().splitlines()) <= 500
