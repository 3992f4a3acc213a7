"""The package is layered: no module imports one above it.

Units are nerf's top-level modules and subpackages (nerf.guidance, nerf.scenes, nerf.build, ...) and the command
lines of nerf.cli. Their import graph, read from the source with ast (imports inside functions included), must have
no cycle: a cycle means some unit imports one that depends on it. The CUDA extension packages import nothing from
nerf.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = ("raymarching", "gridencoder", "shencoder", "freqencoder")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (`from x import y` gives x and x.y)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def unit_of(module: str) -> str | None:
    """nerf.X for any module inside nerf.X, but each command line of nerf.cli is a unit of its own (a benchmark may
    run the training command); None outside nerf or for the package itself."""
    parts = module.split(".")
    if parts[0] != "nerf" or len(parts) < 2:
        return None
    return ".".join(parts[:3]) if parts[1] == "cli" and len(parts) > 2 else ".".join(parts[:2])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in (REPO / "nerf").rglob("*.py"):
        relative = path.relative_to(REPO).with_suffix("")
        unit = unit_of(".".join(relative.parts))
        if unit is None:
            continue
        targets = {unit_of(name) for name in imported_modules(path)} - {None, unit}
        graph.setdefault(unit, set()).update(t for t in targets if (REPO / Path(*t.split("."))).exists()
                                             or (REPO / Path(*t.split("."))).with_suffix(".py").exists())
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path of units, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        path.append(unit)
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (cycle := visit(unit)):
            return cycle
    return None


def test_no_unit_of_the_package_imports_one_above_it() -> None:
    graph = import_graph()
    assert "nerf.evaluation" not in graph["nerf.guidance"]  # the oracle prior uses nerf.scenes, below both
    assert {"nerf.scenes"} <= graph["nerf.guidance"] and {"nerf.scenes"} <= graph["nerf.evaluation"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_extension_packages_import_nothing_from_nerf() -> None:
    for package in EXTENSIONS:
        for path in (REPO / package).rglob("*.py"):
            assert not {unit_of(name) for name in imported_modules(path)} - {None}, path
