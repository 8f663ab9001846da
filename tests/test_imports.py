"""The import graph of kdsearch/: every module imports, no cycle, nothing reaches up a floor.

Read from the source with an AST walk, so an import inside a function (the CLI imports lazily;
the old report cycle hid in one) counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "kdsearch"

# The house's floors, lowest first: a module may import from its own room (a root module, or a
# subpackage with everything in it) and from lower floors, never from its own floor or above.
# Every room of kdsearch/ is on one: a new module fails `test_every_room_is_on_a_floor` until it
# is placed. Data flows training -> search -> study -> report.
FLOORS = [
    {"errors", "optuna_internals"},  # the latter: Optuna's private API, behind one door
    {"architecture", "objectives", "options", "install"},
    {"sizes"},  # the size and MAC arithmetic of an architecture, without torch
    {"spec"},  # the study file
    {"record"},
    {"training"},
    {"search"},
    {"study"},
    {"report", "compress"},
    {"api"},  # the Python API: the CLI's commands as functions
    {"kdsearch"},  # the package's own __init__ (its version, the Python API's front)
    {"arguments"},  # the command line's grammar (cli.py runs it)
    {"cli"},
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def _room(module: str) -> str:
    """kdsearch.training.models -> training; kdsearch.sizes -> sizes; kdsearch -> kdsearch."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for each import that reaches a room on the importer's floor or above."""
    wrong = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = _room(name), _room(target)
            if here != there and FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{name} imports {target}")
    return wrong


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The kdsearch modules that `name` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            # `from kdsearch.report import plots` imports the module kdsearch.report.plots
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for target in targets:
            while target and target not in known:  # kdsearch.x.y.Z -> kdsearch.x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path a -> ... -> a, or None. Packages import their own modules freely
    (`__init__` re-exports), so an edge from a package to a module inside it is left out."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.slow
def test_the_cycle_finder_finds_a_cycle_and_the_report_cycle_is_gone():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = import_graph()
    assert "kdsearch.report.rows" in graph["kdsearch.report.plots"]  # the walk sees imports
    assert "kdsearch.report.plots" not in graph["kdsearch.report.rows"]


@pytest.mark.slow
def test_no_import_cycle_between_kdsearch_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_room_is_on_a_floor():
    rooms = {_room(name) for name in _modules()}
    assert rooms - set(FLOOR) == set(), "place these modules on a floor in FLOORS"
    assert {"errors", "architecture", "sizes", "spec", "cli", "kdsearch"} <= rooms  # root ones too


def test_nothing_imports_upstream():
    wrong = upward_imports(import_graph())
    assert not wrong, "; ".join(wrong)


def test_the_floor_check_sees_a_root_module_importing_upward():
    """The arrow that ran back up before the split: the study file importing training's models
    for plain arithmetic (issue 21). Root modules are rooms too, so it is caught."""
    assert upward_imports({"kdsearch.spec.checks": {"kdsearch.training.models"}}) == [
        "kdsearch.spec.checks imports kdsearch.training.models"]
    assert upward_imports({"kdsearch.spec": {"kdsearch.training"}}) != []
    assert upward_imports({"kdsearch.compress": {"kdsearch.report.rows"}}) != []  # same floor
    assert upward_imports({"kdsearch.spec.loading": {"kdsearch.spec.tables", "kdsearch.sizes",
                                                     "kdsearch.errors"}}) == []
    graph = import_graph()
    assert "kdsearch.sizes" in graph["kdsearch.spec.checks"]
    assert not any(t.startswith("kdsearch.training") for t in graph["kdsearch.spec.checks"])


def test_the_report_modules_import_nothing_but_storage_below_them():
    """Reports read only from storage: no training, no search run, no study runner."""
    for name, targets in import_graph().items():
        if name.startswith("kdsearch.report."):
            for target in targets:
                assert not target.startswith(("kdsearch.training", "kdsearch.study.runner",
                                              "kdsearch.cli")), f"{name} imports {target}"


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_imports(name):
    importlib.import_module(name)
