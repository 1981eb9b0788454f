"""The import graph is a DAG, the layers import only downwards, and Lightning stays at the seam."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_autoprune"
#: The only modules that may import Lightning.
LIGHTNING_SEAM = ("lightning_autoprune.callback", "lightning_autoprune.trainer", "lightning_autoprune.cli")
#: What each layer may import from the package (besides itself).
ALLOWED = {
    "core": set(),
    "control": {"core"},
    "structured": {"core"},
    "scoring": {"core", "structured"},
    "reporting": {"core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module imported anywhere in the file (lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def internal(imported: set[str]) -> set[str]:
    return {name for name in imported if name in MODULES and name != "lightning_autoprune"}


def test_the_import_graph_is_a_dag() -> None:
    graph = {name: internal(imported) - {name} for name, imported in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*trail, node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for child in sorted(graph[node]):
            if not node.startswith(child + ".") and not child.startswith(node + "."):  # a package and its parts
                visit(child, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_seam_imports_lightning(name: str) -> None:
    if name in LIGHTNING_SEAM or name.startswith("lightning_autoprune.examples"):
        return
    lightning = sorted(
        i for i in MODULES[name] if i == "lightning" or i.startswith(("lightning.", "pytorch_lightning"))
    )
    assert not lightning, f"{name} imports {lightning}; only {', '.join(LIGHTNING_SEAM)} and examples/ may"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downwards(layer: str) -> None:
    prefix = f"lightning_autoprune.{layer}"
    for name, imported in MODULES.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for target in internal(imported):
            other = target.split(".")[1]
            if other == layer:
                continue
            assert other in ALLOWED[layer], f"{name} imports {target}: {layer}/ may import only {ALLOWED[layer]}"
