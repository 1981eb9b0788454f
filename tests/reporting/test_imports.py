"""reporting/ draws a plain record: it imports core at most, never Lightning or the pruning machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_autoprune.reporting

PACKAGE = Path(lightning_autoprune.reporting.__file__).parent
FORBIDDEN = (
    "lightning",
    "pytorch_lightning",
    "lightning_autoprune.callback",
    "lightning_autoprune.control",
    "lightning_autoprune.scoring",
    "lightning_autoprune.structured",
    "lightning_autoprune.examples",
)
ALLOWED_OWN = ("lightning_autoprune.core", "lightning_autoprune.reporting")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_reporting_imports_only_core_of_the_package(path: Path) -> None:
    for name in _imports(path):
        assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name} imports {name}"
        if name.startswith("lightning_autoprune"):
            assert name.startswith(ALLOWED_OWN), f"{path.name} imports {name}"
