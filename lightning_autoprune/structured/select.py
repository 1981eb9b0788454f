"""Choosing the units to prune for a target: :func:`select_units` and its rounding, :func:`round_kept_units`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_autoprune.core.masks import mask_cost
from lightning_autoprune.core.selection import pruned_count
from lightning_autoprune.structured.units import UnitGroup, kept_units, unit_costs, unit_masks

__all__ = ["UnitSelector", "round_kept_units", "select_units"]


def select_units(
    groups: Sequence[UnitGroup],
    keys: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    target: float,
    *,
    min_density: float,
    weights: Mapping[str, float] | None = None,
    round_to: int = 1,
) -> dict[str, Tensor]:
    """Choose the units to keep so that the sparsity of ``masks`` approaches ``target`` from below.

    Sparsity counts mask entries, or with ``weights`` their cost (see :func:`unit_costs`), for
    example FLOPs.

    Units are pruned in ascending order of ``keys`` (lower = prune first; ties by group order, then
    unit index) while the entries they remove fit into what the target still allows, so the target
    is never overshot; a unit that does not fit ends the pass. Already pruned units stay pruned.
    Every group keeps at least ``max(1, ceil(min_density * units))`` units, its highest-keyed ones.

    With ``round_to`` > 1, every group this call prunes then keeps a multiple of ``round_to`` units
    (vector units and tensor cores run such widths faster), chosen by :func:`round_kept_units`
    from the selection above, so the per-layer allocation of ``keys`` survives the rounding.

    Args:
        groups: the unit groups.
        keys: per group name, one float per unit; lower means less important per entry removed.
        masks: the current element masks of every parameter the groups touch (``True`` = kept).
        target: the sparsity to reach over all of ``masks`` (of entries, or of their cost).
        min_density: the fraction of each group's units that is never pruned.
        weights: cost per entry of each parameter (``None``: 1 each).
        round_to: kept units per group pruned here are a multiple of this; 1 = any number.

    Returns:
        Per group name, a boolean vector: ``True`` for units that stay.

    Example:
        >>> from lightning_autoprune.structured import Slice, UnitGroup
        >>> g = UnitGroup("a", 4, (Slice("w", 0, torch.arange(4), torch.arange(4), "producer"),), 0.0)
        >>> m = {"w": torch.ones(4, 3, dtype=torch.bool)}
        >>> select_units([g], {"a": torch.tensor([0.3, 0.1, 0.4, 0.2])}, m, 0.5, min_density=0.0)["a"]
        tensor([ True, False,  True, False])
        >>> select_units([g], {"a": torch.tensor([0.3, 0.1, 0.4, 0.2])}, m, 0.75, min_density=0.0, round_to=2)["a"]
        tensor([ True, False,  True, False])
    """
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"`round_to` must be an integer >= 1, got {round_to!r}.")
    _, total = mask_cost(masks, weights)
    goal = float(pruned_count(target, int(total))) if weights is None else target * total * (1.0 + 1e-9)
    keep = {g.name: kept_units(g, masks) for g in groups}
    order: list[tuple[float, int, int]] = []  # (key, group position, unit)
    for position, group in enumerate(groups):
        key = keys[group.name].double().cpu()
        if key.numel() != group.units:
            raise ValueError(
                f"Scores for unit group {group.name!r} have {key.numel()} entries, expected {group.units}."
            )
        alive = keep[group.name].nonzero().view(-1).tolist()
        floor = min(len(alive), max(1, math.ceil(min_density * group.units - 1e-9)))
        ranked = sorted(alive, key=lambda u: (float(key[u]), u))
        order.extend((float(key[u]), position, u) for u in ranked[: len(ranked) - floor])
    order.sort()
    current = dict(masks)
    for _ in range(8):  # overlaps between units pruned in one pass make a pass undershoot; refill
        budget = goal - mask_cost(current, weights)[0]
        if budget <= 0 or not order:
            break
        costs = {g.name: unit_costs(g, current, weights) for g in groups}
        taken: list[tuple[float, int, int]] = []
        for entry in order:
            _, position, unit = entry
            cost = float(costs[groups[position].name][unit])
            if cost > budget:
                break
            budget -= cost
            keep[groups[position].name][unit] = False
            taken.append(entry)
        if not taken:
            break
        order = order[len(taken) :]
        current = unit_masks(groups, keep, masks)
    if round_to > 1:
        keep = round_kept_units(groups, keys, masks, keep, goal, round_to, min_density=min_density, weights=weights)
    return keep


def round_kept_units(
    groups: Sequence[UnitGroup],
    keys: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    keep: Mapping[str, Tensor],
    goal: float,
    round_to: int,
    *,
    min_density: float,
    weights: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Round each group's kept count, where ``keep`` prunes it, to a multiple of ``round_to``.

    A group that ``keep`` prunes (against ``masks``) keeps ``k`` units; it is rounded to the
    nearest multiple of ``round_to`` (ties up; never below its floor of ``min_density``, rounded
    up; never above its kept units in ``masks``, which may be its unrounded full width). It keeps
    its highest-keyed units. If the pruned cost then exceeds ``goal``, the rounded-down group whose
    extra units have the highest mean key is rounded up instead, until it fits; if it falls short,
    rounded-up groups go down while that fits, lowest mean key of the units it drops first.
    Groups ``keep`` does not prune are untouched, so widths left unrounded by earlier events of a
    run without rounding stay as they were.

    Example:
        >>> from lightning_autoprune.structured import Slice, UnitGroup
        >>> g = UnitGroup("a", 8, (Slice("w", 0, torch.arange(8), torch.arange(8), "producer"),), 0.0)
        >>> m = {"w": torch.ones(8, 2, dtype=torch.bool)}
        >>> keep = {"a": torch.tensor([True] * 5 + [False] * 3)}
        >>> keys = {"a": -torch.arange(8.0)}  # unit 0 is the most important
        >>> round_kept_units([g], keys, m, keep, goal=8.0, round_to=4, min_density=0.0)["a"].tolist()
        [True, True, True, True, False, False, False, False]
        >>> over = round_kept_units([g], keys, m, keep, goal=6.0, round_to=4, min_density=0.0)  # 4 kept overshoots
        >>> int(over["a"].sum())
        8
    """
    chosen = {name: value.clone() for name, value in keep.items()}
    options: dict[int, tuple[Tensor, Tensor, float]] = {}  # position -> (down, up, mean key of the extra units)
    rounded_down: set[int] = set()
    for position, group in enumerate(groups):
        alive = kept_units(group, masks)
        kept = int(keep[group.name].sum())
        available = int(alive.sum())
        floor = max(1, math.ceil(min_density * group.units - 1e-9))
        lowest = round_to * math.ceil(floor / round_to)
        if kept >= available or (kept % round_to == 0 and kept >= lowest):
            continue  # nothing pruned here, or already a multiple: keep the selection's own units
        key = keys[group.name].double().cpu()
        ranked = sorted(alive.nonzero().view(-1).tolist(), key=lambda u: (-float(key[u]), u))  # best first
        up = min(available, round_to * math.ceil(kept / round_to))
        down = round_to * (kept // round_to)

        def top(count: int, ranked: list[int] = ranked, units: int = group.units) -> Tensor:
            mask = torch.zeros(units, dtype=torch.bool)
            mask[ranked[:count]] = True
            return mask

        if down < lowest:
            chosen[group.name] = top(up)
            continue
        dropped = float(key[ranked[down:up]].mean())  # the units only rounding down removes
        options[position] = (top(down), top(up), dropped)
        if kept - down < up - kept:
            rounded_down.add(position)
        chosen[group.name] = options[position][0] if position in rounded_down else options[position][1]

    def cost() -> float:
        return mask_cost(unit_masks(groups, chosen, masks), weights)[0]

    while rounded_down and cost() > goal + 1e-9:
        position = max(rounded_down, key=lambda p: (options[p][2], p))
        rounded_down.remove(position)
        chosen[groups[position].name] = options[position][1]
    for position in sorted(options.keys() - rounded_down, key=lambda p: (options[p][2], p)):
        name = groups[position].name
        chosen[name] = options[position][0]
        if cost() > goal + 1e-9:
            chosen[name] = options[position][1]
    return chosen


class UnitSelector:
    """The engine's selector for whole units: :func:`select_units`, then the element masks of the kept units.

    Args:
        groups: the traced unit groups.
        min_density: every layer keeps at least this share of its units.
        weights: per parameter, what one entry costs towards the target (``None``: parameters).
        round_to: kept widths are multiples of this.

    Example:
        >>> from lightning_autoprune.structured.units import Slice, UnitGroup
        >>> index = torch.arange(4)
        >>> group = UnitGroup("fc", 4, (Slice("fc.weight", 0, index, index, "producer"),), depth=0.0)
        >>> select = UnitSelector([group], min_density=0.0, weights=None, round_to=1)
        >>> masks = {"fc.weight": torch.ones(4, 3, dtype=torch.bool)}
        >>> select({"fc": torch.tensor([4.0, 1.0, 3.0, 2.0])}, masks, 0.5)["fc.weight"][:, 0]
        tensor([ True, False,  True, False])
    """

    def __init__(
        self, groups: Sequence[UnitGroup], min_density: float, weights: Mapping[str, float] | None, round_to: int
    ) -> None:
        self.groups = list(groups)
        self.min_density = min_density
        self.weights = weights
        self.round_to = round_to

    def __call__(self, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """Masks that prune the lowest-keyed units until ``target`` is met."""
        keep = select_units(
            self.groups,
            scores,
            masks,
            target,
            min_density=self.min_density,
            weights=self.weights,
            round_to=self.round_to,
        )
        return unit_masks(self.groups, keep, masks)
