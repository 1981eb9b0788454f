"""The learned unit scorer on a real model, and its feature rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned.features import UNIT_FEATURE_NAMES, unit_features
from lightning_autoprune.scoring.learned.units import LearnedUnitScorer
from lightning_autoprune.scoring.units import taylor_keys
from lightning_autoprune.structured import UnitGroup, find_unit_groups


def test_features_have_documented_columns_and_are_finite(unit_group: UnitGroup, unit_inputs: ScoreInputs) -> None:
    rows = unit_features([unit_group], unit_inputs)
    assert rows.shape == (2, len(UNIT_FEATURE_NAMES))
    assert rows.dtype == torch.float32
    assert torch.isfinite(rows).all()


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _digits_problem() -> tuple[nn.Module, ScoreInputs, list[UnitGroup]]:
    torch.manual_seed(0)
    x_np, y_np = load_digits(return_X_y=True)
    x, y = torch.tensor(x_np[:600] / 16.0, dtype=torch.float32), torch.tensor(y_np[:600])
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(x[:400]), y[:400]).backward()
        optimizer.step()
    names = {n for n, _ in model.named_parameters()}
    groups, _ = find_unit_groups(model, (x[:4],), prunable={n for n in names if n.endswith("weight")})
    params = dict(model.named_parameters())
    model.zero_grad()
    F.cross_entropy(model(x[:400]), y[:400]).backward()
    inputs = ScoreInputs(
        {n: p.detach().clone() for n, p in params.items()},
        {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()},
        generator=torch.Generator().manual_seed(0),
        target_sparsity=0.3,
    )
    inputs.grad_mean = {n: _grad(p).detach().clone() for n, p in params.items()}
    inputs.grad_sq_mean = {n: _grad(p).detach().pow(2) for n, p in params.items()}
    inputs.params = {n: p.data for n, p in params.items()}

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x[400:]).double(), y[400:]))

    inputs.loss_fn = held_out_loss
    return model, inputs, groups


def test_learned_scorer_measures_fits_and_restores_the_model() -> None:
    model, inputs, groups = _digits_problem()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scorer = LearnedUnitScorer(label_units=40)
    keys = scorer.score_units(groups, inputs)
    for name, p in model.named_parameters():  # every ablation was undone, bit for bit
        assert torch.equal(p, before[name]), name
    assert {g.name: k.numel() for g, k in zip(groups, keys.values(), strict=True)} == {"0": 48, "2": 48}
    entry = scorer.diagnostics[-1]
    assert entry["measured"] == 40
    assert entry["held_out"] == 10
    assert set(entry["fidelity"]) == {"learned", "taylor", "magnitude"}
    assert 0.0 <= entry["blend_weight"] <= 1.0
    assert len(scorer.rows) == 1
    assert scorer.rows[0].shape == (40, len(UNIT_FEATURE_NAMES))

    restored = LearnedUnitScorer(label_units=40)
    restored.load_state_dict(scorer.state_dict())
    assert len(restored.rows) == 1
    assert (restored.rows[0] == scorer.rows[0]).all()
    assert restored.diagnostics == scorer.diagnostics


def test_learned_scorer_with_too_few_units_falls_back_loudly() -> None:
    _, inputs, groups = _digits_problem()
    scorer = LearnedUnitScorer(label_units=5)
    with pytest.warns(UserWarning, match="fell back to the taylor key.*only 5 units"):
        keys = scorer.score_units(groups, inputs)
    torch.testing.assert_close(torch.cat(list(keys.values())), torch.cat(list(taylor_keys(groups, inputs).values())))


def test_user_estimator_is_used_and_feature_mismatch_is_clear() -> None:
    _, inputs, groups = _digits_problem()
    scorer = LearnedUnitScorer("sklearn.linear_model.Ridge", label_units=24)
    scorer.score_units(groups, inputs)
    assert type(scorer.template).__name__ == "Ridge"
    import numpy as np

    with pytest.raises(ValueError, match="unit feature table has"):
        scorer._fit([np.zeros((5, 3))], [np.zeros(5)])
