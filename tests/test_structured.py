"""Unit groups traced with Torch-Pruning, unit masks, costs and selection (structured pruning's pure parts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoprune import compact
from lightning_autoprune.core.masks import mask_sparsity
from lightning_autoprune.structured import (
    Slice,
    UnitGroup,
    find_unit_groups,
    kept_units,
    select_units,
    unit_costs,
    unit_masks,
)


class Residual(nn.Module):
    """``inp`` and ``b`` both write into one residual stream, so their units are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.b(torch.relu(self.a(h)))
        return self.head(h)


def _weights(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith("weight")}


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def _apply(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.masked_fill_(~masks[name], 0.0)


def test_residual_branches_form_one_group_and_masks_stay_consistent() -> None:
    torch.manual_seed(0)
    model = Residual()
    x = torch.randn(8, 4)
    groups, kept = find_unit_groups(model, (x,), prunable=_weights(model))
    by_name = {g.name: g for g in groups}
    assert set(by_name) == {"inp+b", "a"}
    assert kept == ["'head' (produces the model's output)"]
    roles = {(s.param, s.dim, s.role) for s in by_name["inp+b"].slices}
    assert roles == {
        ("inp.weight", 0, "producer"),
        ("inp.bias", 0, "producer"),
        ("b.weight", 0, "producer"),
        ("b.bias", 0, "producer"),
        ("a.weight", 1, "consumer"),
        ("head.weight", 1, "consumer"),
    }

    keep = {"inp+b": torch.tensor([True, False, True, False, True, True]), "a": torch.ones(5, dtype=torch.bool)}
    masks = unit_masks(groups, keep, _masks(model))
    for dropped in (1, 3):  # the same stream unit is gone from both producers and every consumer
        assert not masks["inp.weight"][dropped].any()
        assert not masks["b.weight"][dropped].any()
        assert not masks["inp.bias"][dropped]
        assert not masks["b.bias"][dropped]
        assert not masks["a.weight"][:, dropped].any()
        assert not masks["head.weight"][:, dropped].any()
    assert int((~masks["a.weight"]).sum()) == 2 * 5
    assert torch.equal(kept_units(by_name["inp+b"], masks), keep["inp+b"])

    _apply(model, masks)
    small = compact(model, x)
    assert small.inp.out_features == 4
    assert small.b.out_features == 4
    assert small.head.in_features == 4
    model.eval()
    torch.testing.assert_close(small(x), model(x))


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


def test_units_coupled_to_an_unsupported_layer_are_kept_and_named() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    groups, kept = find_unit_groups(model, (torch.randn(3, 4),), prunable=_weights(model))
    assert [g.name for g in groups] == ["2"]
    assert any(k.startswith("'0' (coupled to '1' (LayerNorm)") for k in kept)


def test_a_layer_not_selected_blocks_its_group() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    groups, kept = find_unit_groups(model, (torch.randn(3, 4),), prunable={"2.weight", "4.weight"})
    assert [g.name for g in groups] == ["2"]
    assert not any(k.startswith("'0'") for k in kept)  # excluded on purpose: no warning about it


def _linear_group(name: str, units: int, width: int) -> tuple[UnitGroup, dict[str, torch.Tensor]]:
    group = UnitGroup(name, units, (Slice(f"{name}.w", 0, torch.arange(units), torch.arange(units), "producer"),), 0.0)
    return group, {f"{name}.w": torch.ones(units, width, dtype=torch.bool)}


def test_select_units_never_overshoots_and_respects_floors_and_order() -> None:
    a, ma = _linear_group("a", 10, 3)
    b, mb = _linear_group("b", 4, 10)
    masks = {**ma, **mb}  # 30 + 40 entries
    keys = {"a": torch.arange(10, dtype=torch.float64), "b": torch.tensor([0.5, 100.0, 100.0, 100.0])}
    keep = select_units([a, b], keys, masks, 0.5, min_density=0.0)
    pruned = sum(int((~m).sum()) for m in unit_masks([a, b], keep, masks).values())
    assert pruned <= 35
    # key order a0 (0), b0 (0.5), a1 (1), ...: a0 + b0 remove 13 entries, a1..a7 21 more; a8 would pass 35
    assert not keep["b"][0]
    assert keep["b"][1:].all()
    assert keep["a"].tolist() == [False] * 8 + [True] * 2
    assert pruned == 3 * 8 + 10

    floor = select_units([a, b], keys, masks, 0.95, min_density=0.5)
    assert int(floor["a"].sum()) == 5
    assert int(floor["b"].sum()) == 2


def test_select_units_never_revives_and_rejects_wrong_key_sizes() -> None:
    a, masks = _linear_group("a", 4, 2)
    masks["a.w"][0] = False
    keep = select_units([a], {"a": torch.tensor([9.0, 0.0, 1.0, 2.0])}, masks, 0.5, min_density=0.0)
    assert keep["a"].tolist() == [False, False, True, True]  # unit 0 stays pruned; unit 3 is the floor
    with pytest.raises(ValueError, match="unit group 'a' have 3 entries, expected 4"):
        select_units([a], {"a": torch.zeros(3)}, masks, 0.5, min_density=0.0)


def test_select_units_round_to_rounds_each_pruned_group_to_a_multiple() -> None:
    a, ma = _linear_group("a", 12, 2)
    b, mb = _linear_group("b", 12, 2)
    c, mc = _linear_group("c", 4, 2)  # never pruned: its keys are the highest
    masks = {**ma, **mb, **mc}  # 56 entries
    keys = {
        "a": torch.arange(12, dtype=torch.float64),
        "b": torch.arange(12, dtype=torch.float64) + 0.5,
        "c": torch.full((4,), 100.0, dtype=torch.float64),
    }
    # unrounded, 24 entries go as a0, b0, a1, b1, ... a5, b5: each keeps 6. Rounded to 4, both round
    # up to 8 (a tie); then the budget takes `a` down to 4 (its extra units a4-a7 are the less
    # important), and `b` stays at 8 because going down too would overshoot.
    keep = select_units([a, b, c], keys, masks, 24 / 56, min_density=0.0, round_to=4)
    assert keep["a"].tolist() == [False] * 8 + [True] * 4
    assert keep["b"].tolist() == [False] * 4 + [True] * 8
    assert keep["c"].all()
    unrounded = select_units([a, b, c], keys, masks, 24 / 56, min_density=0.0)
    assert [int(unrounded[n].sum()) for n in "ab"] == [6, 6]

    # each keeps 5 unrounded and rounds down to 4, 32 entries over the goal of 28: the group whose
    # extra units matter more (`b`) goes back up to 8
    over = select_units([a, b, c], keys, masks, 28 / 56, min_density=0.0, round_to=4)
    assert [int(over[n].sum()) for n in "abc"] == [4, 8, 4]
    assert sum(int((~m).sum()) for m in unit_masks([a, b, c], over, masks).values()) <= 28

    # a width that is not a multiple rounds up to its full width at most; floors round up
    d, md = _linear_group("d", 10, 1)
    odd = select_units([d], {"d": torch.arange(10, dtype=torch.float64)}, md, 0.1, min_density=0.0, round_to=4)
    assert int(odd["d"].sum()) == 10  # 9 unrounded; 8 would overshoot, so up to the full 10
    assert int(select_units([d], {"d": torch.arange(10.0)}, md, 0.2, min_density=0.0, round_to=4)["d"].sum()) == 8
    deep = select_units([d], {"d": torch.arange(10, dtype=torch.float64)}, md, 0.7, min_density=0.0, round_to=4)
    assert int(deep["d"].sum()) == 4  # 3 unrounded: down would be 0, below one block, so up to 4
    floored = select_units([d], {"d": torch.arange(10, dtype=torch.float64)}, md, 0.9, min_density=0.5, round_to=4)
    assert int(floored["d"].sum()) == 8  # the floor of 5 units rounds up to 8
    with pytest.raises(ValueError, match="`round_to` must be an integer >= 1, got 0"):
        select_units([d], {"d": torch.arange(10.0)}, md, 0.5, min_density=0.0, round_to=0)


def test_select_units_with_cost_weights_counts_flops_not_entries() -> None:
    a, ma = _linear_group("a", 10, 3)  # 30 entries at 1 FLOP each
    b, mb = _linear_group("b", 4, 10)  # 40 entries at 4 FLOPs each: 160 of 190 FLOPs
    masks = {**ma, **mb}
    flops = {"a.w": 1.0, "b.w": 4.0}
    assert unit_costs(b, masks, flops).tolist() == [40.0] * 4
    keys = {"a": torch.arange(10, dtype=torch.float64), "b": torch.tensor([0.5, 100.0, 100.0, 100.0])}
    keep = select_units([a, b], keys, masks, 0.5, min_density=0.0, weights=flops)
    pruned = unit_masks([a, b], keep, masks)
    removed = sum(flops[n] * int((~m).sum()) for n, m in pruned.items())
    assert removed <= 0.5 * 190
    # a0 (3) + b0 (40) + a1..a9 would be 70; the goal of 95 stops only at the floor a9 (a has 10 units, 1 kept)
    assert keep["b"].tolist() == [False, True, True, True]
    assert keep["a"].tolist() == [False] * 9 + [True]
    assert removed == 40 + 27
    assert mask_sparsity(pruned, flops) == pytest.approx(67 / 190)
    # counting entries instead, the same keys stop earlier in `a` and prune the same b0
    by_entries = select_units([a, b], keys, masks, 0.5, min_density=0.0)
    assert int((~by_entries["a"]).sum()) == 8
