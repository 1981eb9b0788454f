"""Choosing the units to prune for a target: order, floors, rounding and cost weights."""

from __future__ import annotations

import pytest
import torch

from lightning_autoprune.core.masks import mask_sparsity
from lightning_autoprune.structured import Slice, UnitGroup, select_units, unit_costs, unit_masks


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
