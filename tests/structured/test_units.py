"""Unit masks, sums and costs: the pure tensor code on unit groups."""

from __future__ import annotations

import torch
from torch import nn

from lightning_autoprune.structured import find_unit_groups, unit_costs, unit_masks


def _weights(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith("weight")}


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def test_batchnorm_and_flatten_are_carried_and_costed() -> None:
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3))
    groups, _ = find_unit_groups(model, (torch.randn(2, 1, 5),), prunable=_weights(model))
    assert [g.name for g in groups] == ["0"]
    group = groups[0]
    consumer = next(s for s in group.slices if s.role == "consumer")
    assert consumer.param == "4.weight"
    assert consumer.index.numel() == 20
    assert torch.equal(torch.bincount(consumer.unit), torch.full((4,), 5))
    # per channel: 3 conv weights + 1 bias + gamma + beta + 5 positions x 3 outputs of the Linear
    assert unit_costs(group, _masks(model)).tolist() == [21.0] * 4

    masks = unit_masks(groups, {"0": torch.tensor([True, False, True, True])}, _masks(model))
    assert not masks["1.weight"][1]
    assert not masks["1.bias"][1]
    assert masks["1.weight"][0]
    assert not masks["4.weight"][:, 5:10].any()
    assert masks["4.weight"][:, :5].all()
