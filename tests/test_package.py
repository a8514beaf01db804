"""The package's shape: layers in data-flow order, no import cycles, a light top-level import,
and top-level names that are exactly the documented ones. Checked on the source, so a
function-level import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sbi_twins

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "sbi_twins"

#: Layer of each part of the package (the longest matching prefix decides): a module may import
#: only from its own layer or lower ones. The order is the data flow of README's "Package layout".
LAYERS = {
    "sbi_twins._util": 0,
    "sbi_twins._resources": 0,
    "sbi_twins.protocol": 1,
    "sbi_twins.engine": 1,
    "sbi_twins.prior": 2,
    "sbi_twins.recording": 2,
    "sbi_twins.physiology": 3,
    "sbi_twins.data": 4,
    "sbi_twins.inference": 5,
    "sbi_twins.diagnostics": 6,
    "sbi_twins.twins": 6,
    "sbi_twins.report": 7,
    "sbi_twins.cli": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (REPO / Path(*name.split(".")) / "__init__.py").exists()


def exists(name: str) -> bool:
    return is_package(name) or (REPO / Path(*name.split("."))).with_suffix(".py").exists()


def layer(name: str) -> int:
    prefixes = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{name} is in no layer; add it to LAYERS (and to README's layout)")
    return LAYERS[max(prefixes, key=len)]


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations, never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(path: Path) -> set[str]:
    """The sbi_twins modules a source file imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sbi_twins"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sbi_twins":
                continue
            # `from pkg import sub` imports the module pkg.sub when there is one
            subs = [f"{target}.{a.name}" for a in node.names if exists(f"{target}.{a.name}")]
            found |= set(subs) if subs else {target}
    return found


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        edges = set()
        own = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 2)}
        for target in imports_of(path):
            # importing a.b.c runs the __init__ of a.b first, unless a.b contains the importer
            # (then it is already being imported)
            parts = target.split(".")
            edges |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)} - own
            edges.add(target)
        graph[name] = edges - {name}
    return graph


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    violations = []
    for name, targets in import_graph().items():
        if name == "sbi_twins":  # the public facade re-exports from every layer
            continue
        for target in sorted(targets):
            if target == "sbi_twins":
                violations.append(f"{name} imports the package root (use the module itself)")
            elif layer(target) > layer(name):
                violations.append(
                    f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
                )
    assert not violations, "\n".join(violations)


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layer_checker_sees_function_level_and_relative_imports():
    """The checker itself: a relative import inside a function is found and resolved."""
    found = imports_of(PACKAGE / "cli.py")
    assert "sbi_twins.inference" in found  # imported inside the command functions
    assert "sbi_twins._resources" in found  # `from . import _resources`


def test_import_sbi_twins_does_not_import_torch():
    code = "import sys, sbi_twins; sbi_twins.load_prior; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def documented_names() -> set[str]:
    """The names in README's "Public API" table (first column, in backticks)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_]+)`", section, flags=re.M))


def test_the_top_level_names_are_exactly_the_documented_ones():
    exported = set(sbi_twins.__all__)
    assert exported == documented_names()
    public = {n for n in dir(sbi_twins) if not n.startswith("_")}
    # besides __all__ only the subpackages and modules are visible
    assert public - exported == {n for n in public - exported if exists(f"sbi_twins.{n}")}
    for name in exported:
        getattr(sbi_twins, name)  # the lazy inference names resolve too


def test_an_unknown_top_level_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'load_estimatr'"):
        sbi_twins.load_estimatr  # noqa: B018


def test_every_subpackage_is_in_the_wheel():
    import tomllib

    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(settings["packages"])
    found = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
