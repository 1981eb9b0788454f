"""Shared unit-scoring fixtures: one two-unit group and its calibration inputs."""

from __future__ import annotations

import pytest
import torch

from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.structured import Slice, UnitGroup


@pytest.fixture
def unit_group() -> UnitGroup:
    """Two units: rows of ``w`` produce them, columns of ``v`` consume them."""
    producer = Slice("w", 0, torch.arange(2), torch.arange(2), "producer")
    consumer = Slice("v", 1, torch.arange(2), torch.arange(2), "consumer")
    return UnitGroup("g", 2, (producer, consumer), 0.0)


@pytest.fixture
def unit_inputs() -> ScoreInputs:
    """Weights, full masks and calibration gradients for :func:`unit_group`."""
    weights = {"w": torch.tensor([[1.0, -2.0], [0.5, 0.5]]), "v": torch.tensor([[3.0, 1.0]])}
    masks = {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    inputs = ScoreInputs(weights, masks, generator=torch.Generator().manual_seed(0))
    inputs.grad_mean = {"w": torch.tensor([[0.1, 0.2], [0.0, 0.0]]), "v": torch.tensor([[0.5, 0.0]])}
    inputs.grad_sq_mean = {"w": torch.full((2, 2), 0.04), "v": torch.tensor([[1.0, 0.25]])}
    return inputs
