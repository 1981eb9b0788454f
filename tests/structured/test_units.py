"""Unit masks, sums and costs: the pure tensor code on unit groups."""

from __future__ import annotations

import torch
from torch import nn

from lightning_autoprune.structured import (
    Slice,
    UnitGroup,
    find_unit_groups,
    kept_units,
    unit_costs,
    unit_masks,
    unit_sums,
)


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


def _hand_group() -> UnitGroup:
    """Two units: producer rows 0 and 1 of ``p`` (unit 1 is row 0) and consumer columns of ``c``."""
    return UnitGroup(
        "g",
        2,
        (
            Slice("p", 0, torch.tensor([0, 1]), torch.tensor([1, 0]), "producer"),
            Slice("c", 1, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]), "consumer"),
        ),
        0.0,
    )


def test_unit_sums_counts_only_the_requested_roles() -> None:
    group = _hand_group()
    values = {"p": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "c": torch.ones(2, 3)}
    assert unit_sums(group, values).tolist() == [7.0 + 4.0, 3.0 + 2.0]
    assert unit_sums(group, values, roles=("producer",)).tolist() == [7.0, 3.0]
    assert unit_sums(group, {"c": torch.ones(2, 3)}).tolist() == [4.0, 2.0]  # a missing parameter counts nothing


def test_kept_units_reads_the_producer_masks_only() -> None:
    group = _hand_group()
    masks = {"p": torch.tensor([[False, False], [True, False]]), "c": torch.zeros(2, 3, dtype=torch.bool)}
    assert kept_units(group, masks).tolist() == [True, False]


def test_unit_masks_drops_every_slice_of_a_unit_and_copies_the_rest() -> None:
    group = _hand_group()
    masks = {"p": torch.ones(2, 2, dtype=torch.bool), "c": torch.ones(2, 3, dtype=torch.bool), "x": torch.ones(1)}
    out = unit_masks([group], {"g": torch.tensor([True, False])}, masks)
    assert out["p"].tolist() == [[False, False], [True, True]]  # unit 1 is row 0
    assert out["c"].tolist() == [[True, True, False]] * 2
    assert masks["p"].all()  # the input masks are not modified
    assert out["x"] is not masks["x"]
