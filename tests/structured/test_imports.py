"""structured/ stays below the Trainer: it imports torch, Torch-Pruning and core/ only."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning_autoprune.structured as structured

ALLOWED = ("lightning_autoprune.core", "lightning_autoprune.structured")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_structured_imports_only_core_and_itself() -> None:
    folder = Path(structured.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "tracing.py", "units.py", "select.py", "compact.py"}
    for path in files:
        for name in _imports(path):
            assert name.split(".")[0] != "lightning", f"{path.name} imports {name}"
            if name.startswith("lightning_autoprune"):
                assert name.startswith(ALLOWED), f"{path.name} imports {name}"
