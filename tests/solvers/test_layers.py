"""The solver core's modules import in layers: no cycle, no function-local import, no private name across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import odecli.solvers

PACKAGE = "odecli.solvers"
SOLVERS_DIR = Path(odecli.solvers.__file__).parent
# The bottom layer (errors, the solver contract, tableaus, step-size control, interpolation, Jacobians,
# statistics, event root-finding, fixed grids) and the problem front end above it; steppers, loops and
# front ends sit higher and may import these, never the other way round.
FOUNDATIONS = {"errors", "base", "tableau", "controllers", "interpolation", "jacobian", "stats", "events", "grid"}
PROBLEM = "problem"


def _imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """``(imported odecli.solvers module, names taken from it, inside a function?)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {p.stem for p in SOLVERS_DIR.glob("*.py")}
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module:
                names = [alias.name for alias in child.names]
                if child.module == PACKAGE:  # from odecli.solvers import stats
                    found.extend((name, [], in_function) for name in names if name in modules)
                elif child.module.startswith(PACKAGE + "."):
                    found.append((child.module.removeprefix(PACKAGE + "."), names, in_function))
            elif isinstance(child, ast.Import):
                found.extend((alias.name.removeprefix(PACKAGE + "."), [], in_function) for alias in child.names if alias.name.startswith(PACKAGE + "."))
            visit(child, nested)

    visit(tree, False)
    return found


def _graph() -> dict[str, list[tuple[str, list[str], bool]]]:
    return {path.stem: _imports(path) for path in sorted(SOLVERS_DIR.glob("*.py")) if path.stem != "__init__"}


def test_no_function_local_and_no_private_imports_between_solver_modules():
    problems = []
    for module, imports in _graph().items():
        for target, names, in_function in imports:
            if in_function:
                problems.append(f"{module} imports {target} inside a function")
            problems += [f"{module} imports private {target}.{name}" for name in names if name.startswith("_")]
    assert problems == []


def test_no_import_cycle_between_solver_modules():
    graph = {module: {target for target, _, _ in imports} for module, imports in _graph().items()}
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module not in graph:
            return None
        for target in sorted(graph[module]):
            found = cycle_from(target, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, []))]
    assert cycles == []


@pytest.mark.parametrize("module", sorted(FOUNDATIONS | {PROBLEM}))
def test_foundations_and_problem_import_only_lower_layers(module):
    imported = {target for target, _, _ in _graph()[module]}
    assert imported <= FOUNDATIONS, f"{module} imports {sorted(imported - FOUNDATIONS)} from a higher layer"
