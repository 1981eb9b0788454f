"""Every scorer offers the whole contract, so the callback never probes it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Literal

import pytest
import torch

from lightning_autoprune.scoring import SCORERS, UNIT_SCORERS, StatefulScorer, make_scorer


@pytest.mark.parametrize("name", [n for n in SCORERS if n != "learned"])
def test_weight_formula_scorers_meet_the_contract_and_carry_no_checkpoint_state(name: str) -> None:
    scorer = make_scorer(name)
    assert isinstance(scorer.needs_gradients, bool)
    assert scorer.needs_context is False
    assert scorer.diagnostics == []
    assert scorer.feature_importances() == {}
    assert scorer.progress is None
    scorer.progress = print  # settable, like the callback does when verbose
    assert not isinstance(scorer, StatefulScorer)  # the checkpoint's "scorer" entry stays None


@pytest.mark.parametrize("name", [n for n in UNIT_SCORERS if n != "learned"])
def test_unit_formula_scorers_meet_the_contract_and_carry_no_checkpoint_state(name: str) -> None:
    scorer = make_scorer(name, granularity="structured")
    assert scorer.diagnostics == []
    assert scorer.feature_importances() == {}
    assert not isinstance(scorer, StatefulScorer)
    assert hasattr(scorer, "score_units")


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_learned_scorers_are_stateful_and_report_progress(granularity: Literal["unstructured", "structured"]) -> None:
    scorer = make_scorer("learned", granularity=granularity, estimator="sklearn.linear_model.Ridge", label_groups=32)
    assert isinstance(scorer, StatefulScorer)
    assert scorer.needs_context
    assert scorer.needs_gradients
    assert scorer.diagnostics == []
    assert scorer.progress is None
    state = scorer.state_dict()
    assert all(isinstance(t, torch.Tensor) for value in state.values() if isinstance(value, list) for t in value)


def test_estimator_with_a_formula_is_refused() -> None:
    with pytest.raises(ValueError, match="`estimator` only applies to importance='learned'"):
        make_scorer("lamp", estimator="sklearn.linear_model.Ridge")


SCORING = Path(__file__).resolve().parents[2] / "lightning_autoprune" / "scoring"
FORBIDDEN = (
    "lightning",
    "lightning_autoprune.callback",
    "lightning_autoprune.reporting",
    "lightning_autoprune.control",
)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Every module a file imports, and whether the import is at module level."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


@pytest.mark.parametrize("path", sorted(SCORING.rglob("*.py")), ids=lambda p: str(p.relative_to(SCORING)))
def test_scoring_imports_no_lightning_and_nothing_lazily(path: Path) -> None:
    for module, at_top in _imports(path):
        assert not any(module == f or module.startswith(f + ".") for f in FORBIDDEN), module
        assert at_top, f"lazy import of {module}"


def test_scoring_modules_import_each_other_without_cycles() -> None:
    def name(path: Path) -> str:
        parts = path.relative_to(SCORING.parent.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = SCORING.rglob("*.py")
    edges = {name(p): {m for m, _ in _imports(p) if m.startswith("lightning_autoprune.scoring")} for p in files}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in edges.get(module, ()):
            visit(target, (*path, module))
        done.add(module)

    for module in edges:
        visit(module, ())
