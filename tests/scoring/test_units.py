"""Unit importance formulas for structured pruning, by hand."""

from __future__ import annotations

import pytest
import torch

from lightning_autoprune.scoring import ScoreInputs, make_scorer
from lightning_autoprune.scoring.units import magnitude_keys, taylor_keys
from lightning_autoprune.structured import Slice, UnitGroup


def test_taylor_key_is_second_order_loss_change_per_removed_entry(
    unit_group: UnitGroup, unit_inputs: ScoreInputs
) -> None:
    # unit 0: sum g*w = 0.1 - 0.4 + 1.5 = 1.2; 1/2 sum w^2 F = 0.5 * (0.04 + 0.16 + 9) = 4.6; 3 entries
    # unit 1: sum g*w = 0;                     1/2 sum w^2 F = 0.5 * (0.01 + 0.01 + 0.25) = 0.135
    keys = taylor_keys([unit_group], unit_inputs)["g"]
    torch.testing.assert_close(keys, torch.tensor([5.8 / 3, 0.135 / 3], dtype=torch.float64))


def test_magnitude_key_is_the_layer_normalised_group_norm(unit_group: UnitGroup, unit_inputs: ScoreInputs) -> None:
    # unit 0: producer row 1 + 4 = 5, consumer column 9 -> mean 7; unit 1: 0.25 + 0.25, 1 -> 0.75
    norm = torch.tensor([7.0, 0.75], dtype=torch.float64)
    torch.testing.assert_close(magnitude_keys([unit_group], unit_inputs)["g"], norm / norm.mean())


def test_magnitude_key_ignores_biases_and_is_normalised_over_kept_units() -> None:
    group = UnitGroup(
        "g",
        3,
        (
            Slice("fc.weight", 0, torch.arange(3), torch.arange(3), "producer"),
            Slice("fc.bias", 0, torch.arange(3), torch.arange(3), "producer"),
        ),
        0.0,
    )
    weights = {"fc.weight": torch.tensor([[2.0], [1.0], [0.0]]), "fc.bias": torch.tensor([100.0, 0.0, 0.0])}
    masks = {"fc.weight": torch.tensor([[True], [True], [False]]), "fc.bias": torch.tensor([True, True, False])}
    keys = magnitude_keys([group], ScoreInputs(weights, masks))["g"]
    torch.testing.assert_close(keys, torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64) / 2.5)


def test_unknown_structured_importance_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"granularity='structured'.*got 'lamp'"):
        make_scorer("lamp", granularity="structured")
