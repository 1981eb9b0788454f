"""Structured pruning: whole neurons and channels, with every coupled parameter pruned together.

A *unit* is a ``Linear`` output neuron or a convolution output channel. Pruning it zeroes, as one
decision, every slice that carries it: its weight slice and bias entry in each layer that produces
it (several layers when a residual addition joins their outputs), its ``gamma`` and ``beta`` in any
BatchNorm it passes through, and its input columns in every layer that consumes it (re-indexed
through flattening and concatenation). Such a unit outputs exact zeros and is read by nobody, so
:func:`lightning_autoprune.compact` can remove it physically without changing the model's outputs.

Which slices belong together is read from Torch-Pruning's dependency graph (:func:`find_unit_groups`);
the rest of this module is pure tensor code: turning kept-unit vectors into element masks
(:func:`unit_masks`), measuring what a unit costs (:func:`unit_costs`) and choosing the units to
prune for a target (:func:`select_units`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from lightning_autoprune.core.masks import mask_cost
from lightning_autoprune.core.selection import pruned_count

__all__ = [
    "Slice",
    "UnitGroup",
    "find_unit_groups",
    "round_kept_units",
    "select_units",
    "unit_costs",
    "unit_masks",
    "unit_sums",
]


@dataclass(frozen=True)
class Slice:
    """Positions of one parameter that carry the units of a group.

    Attributes:
        param: fully qualified parameter name, e.g. ``"net.0.weight"``.
        dim: the dimension along which ``index`` runs (0: output slices, 1: consumer input columns).
        index: positions along ``dim`` (``int64``).
        unit: the group unit each position carries (``int64``, same length as ``index``).
        role: ``"producer"`` (weight or bias of a layer that outputs the unit), ``"norm"``
            (BatchNorm ``gamma``/``beta``) or ``"consumer"`` (input columns of a layer that reads it).
    """

    param: str
    dim: int
    index: Tensor
    unit: Tensor
    role: str


@dataclass(frozen=True)
class UnitGroup:
    """Units that are pruned as one: the outputs of one layer, or of layers joined by additions.

    Attributes:
        name: the producing layers' module names joined by ``"+"``, e.g. ``"net.0"``.
        units: number of units.
        slices: every parameter slice that carries them.
        depth: position of the first producer among the model's prunable layers, in ``[0, 1]``.
    """

    name: str
    units: int
    slices: tuple[Slice, ...]
    depth: float


def _module_param(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _plain_layer(module: object) -> bool:
    """A Linear, or an ordinary (not transposed, not grouped) convolution: layouts this module handles."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _ConvNd) and not module.transposed and module.groups == 1


def find_unit_groups(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    prunable: set[str],
    forward_fn: Callable[[nn.Module, tuple[Any, ...]], Any] | None = None,
) -> tuple[list[UnitGroup], list[str]]:
    """Trace ``model`` with Torch-Pruning and return its prunable unit groups.

    Args:
        model: the model to trace; it is run once on ``example_inputs`` (in eval mode, without
            changing any state) and left as it was.
        example_inputs: positional arguments of one forward call.
        prunable: weight names of the layers whose units may be pruned; a group is prunable only
            if the weight of every layer that produces it is in this set.
        forward_fn: how to call the model; ``None`` calls ``model(*example_inputs)``.

    Returns:
        The prunable groups, and a list of ``"'layer' (reason)"`` strings for selected layers
        whose units must stay (the model's output, an unsupported coupled layer, ...).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups, kept = find_unit_groups(net, (torch.zeros(1, 4),), prunable={"0.weight", "2.weight"})
        >>> [(g.name, g.units, [(s.param, s.dim, s.role) for s in g.slices]) for g in groups]
        [('0', 8, [('0.weight', 0, 'producer'), ('0.bias', 0, 'producer'), ('2.weight', 1, 'consumer')])]
        >>> kept
        ["'2' (produces the model's output)"]
    """
    import torch_pruning as tp

    names = {id(m): name for name, m in model.named_modules()}
    call = forward_fn or (lambda m, args: m(*args))
    captured: dict[str, Any] = {}

    def traced(m: nn.Module, args: tuple[Any, ...]) -> Any:
        captured["output"] = call(m, args)
        return captured["output"]

    training = {name: m.training for name, m in model.named_modules()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in grad_flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=traced, verbose=False
            )
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for name, m in model.named_modules():
            m.training = training[name]
    outputs = _output_grad_fns(captured.get("output"))
    optype = tp.ops.OPTYPE
    layers = [m for m in model.modules() if _plain_layer(m)]
    order = {id(m): i for i, m in enumerate(layers)}

    groups: list[UnitGroup] = []
    kept: list[str] = []
    visited: set[int] = set()
    for root in layers:
        if id(root) in visited or root not in graph.module2node:
            continue
        root_name = names[id(root)]
        pruner = graph.get_pruner_of_module(root)
        units = int(pruner.get_out_channels(root))
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(units)))
        slices: list[Slice] = []
        producers: list[nn.Module] = []
        block: str | None = None
        for item in group:
            dep, node = item.dep, item.dep.target
            m = node.module
            is_out = graph.is_out_channel_pruning_fn(dep.handler)
            roots = list(item.root_idxs or [])
            if len(roots) != len(item.idxs) or any(r is None for r in roots):
                block = block or "Torch-Pruning cannot map its channels"
                continue
            index = torch.tensor(list(item.idxs), dtype=torch.long)
            unit = torch.tensor(roots, dtype=torch.long)
            if node.type == optype.OUTPUT or (is_out and id(node.grad_fn) in outputs):
                block = block or "produces the model's output"
            elif _plain_layer(m):
                name = names.get(id(m), "?")
                if is_out:
                    producers.append(m)
                    if _module_param(name, "weight") not in prunable:
                        block = block or f"coupled to '{name}', which is not selected for pruning"
                    slices.append(Slice(_module_param(name, "weight"), 0, index, unit, "producer"))
                    if getattr(m, "bias", None) is not None:
                        slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "producer"))
                else:
                    slices.append(Slice(_module_param(name, "weight"), 1, index, unit, "consumer"))
            elif isinstance(m, _BatchNorm):
                name = names.get(id(m), "?")
                if not m.affine:
                    block = block or f"passes through '{name}', a BatchNorm without affine parameters"
                    continue
                slices.append(Slice(_module_param(name, "weight"), 0, index, unit, "norm"))
                slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "norm"))
            elif node.type in (optype.ELEMENTWISE, optype.RESHAPE, optype.CONCAT):
                continue
            else:
                label = names.get(id(m), type(m).__name__) if isinstance(m, nn.Module) else str(node.type.name)
                block = block or f"coupled to '{label}' ({type(m).__name__}), which structured pruning does not handle"
        visited.update(id(p) for p in producers)
        if block is not None:
            if any(_module_param(names[id(p)], "weight") in prunable for p in producers) or not producers:
                kept.append(f"'{root_name}' ({block})")
            continue
        first = min((order[id(p)] for p in producers), default=order[id(root)])
        groups.append(
            UnitGroup(
                name="+".join(dict.fromkeys(names[id(p)] for p in producers)),
                units=units,
                slices=tuple(_merge(slices)),
                depth=first / max(1, len(layers) - 1),
            )
        )
    return groups, kept


def _output_grad_fns(output: object) -> set[int]:
    found: set[int] = set()
    stack = [output]
    while stack:
        obj = stack.pop()
        if isinstance(obj, Tensor):
            if obj.grad_fn is not None:
                found.add(id(obj.grad_fn))
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, Mapping):
            stack.extend(obj.values())
    return found


def _merge(slices: Sequence[Slice]) -> list[Slice]:
    """One slice per (param, dim, role): Torch-Pruning may list a layer twice (e.g. both sides of an add)."""
    merged: dict[tuple[str, int, str], Slice] = {}
    for s in slices:
        key = (s.param, s.dim, s.role)
        if key in merged:
            old = merged[key]
            pairs = torch.unique(torch.stack([torch.cat([old.index, s.index]), torch.cat([old.unit, s.unit])]), dim=1)
            merged[key] = Slice(s.param, s.dim, pairs[0], pairs[1], s.role)
        else:
            merged[key] = s
    return list(merged.values())


def _rows(tensor: Tensor, s: Slice) -> Tensor:
    """The entries of ``tensor`` at the slice's positions, one row per position."""
    return tensor.movedim(s.dim, 0).index_select(0, s.index.to(tensor.device)).reshape(s.index.numel(), -1)


def unit_sums(
    group: UnitGroup,
    values: Mapping[str, Tensor],
    *,
    roles: Sequence[str] = ("producer", "norm", "consumer"),
) -> Tensor:
    """Per unit of ``group``: the sum of ``values`` (tensors shaped like the parameters) over its slices.

    Only slices whose role is in ``roles`` and whose parameter is in ``values`` count. Returns
    a float64 vector of length ``group.units``.

    Example:
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.tensor([0, 1]), torch.tensor([1, 0]), "producer"),), 0.0)
        >>> unit_sums(g, {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
        tensor([7., 3.], dtype=torch.float64)
    """
    total = torch.zeros(group.units, dtype=torch.float64)
    for s in group.slices:
        if s.role not in roles or s.param not in values:
            continue
        per_position = _rows(values[s.param].detach(), s).double().sum(dim=1).cpu()
        total.index_add_(0, s.unit, per_position)
    return total


def unit_costs(group: UnitGroup, masks: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """Per unit: what pruning it would remove of the still-kept mask entries (overlaps with other units counted).

    ``weights`` gives each parameter a cost per entry (its FLOPs per weight and sample, for a
    FLOPs target); parameters it does not name cost nothing. ``None`` counts every entry once.

    Example:
        >>> g = UnitGroup("a", 2, (Slice("w", 1, torch.tensor([0, 1]), torch.tensor([0, 1]), "consumer"),), 0.0)
        >>> unit_costs(g, {"w": torch.tensor([[True, True], [False, True]])})
        tensor([1., 2.], dtype=torch.float64)
        >>> unit_costs(g, {"w": torch.tensor([[True, True], [False, True]])}, {"w": 5.0})
        tensor([ 5., 10.], dtype=torch.float64)
    """
    if weights is None:
        return unit_sums(group, {name: mask.double() for name, mask in masks.items()})
    return unit_sums(group, {name: mask.double() * weights[name] for name, mask in masks.items() if name in weights})


def kept_units(group: UnitGroup, masks: Mapping[str, Tensor]) -> Tensor:
    """Per unit: whether it is still kept, that is, some producer entry of it is unmasked."""
    producer = {s.param: masks[s.param].double() for s in group.slices if s.role == "producer"}
    return unit_sums(group, producer, roles=("producer",)) > 0


def unit_masks(
    groups: Sequence[UnitGroup], keep: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Element masks: ``masks`` with every slice of every unit that ``keep`` drops set to ``False``.

    Example:
        >>> g = UnitGroup("a", 2, (Slice("w", 1, torch.tensor([0, 1]), torch.tensor([0, 1]), "consumer"),), 0.0)
        >>> unit_masks([g], {"a": torch.tensor([True, False])}, {"w": torch.ones(2, 2, dtype=torch.bool)})["w"]
        tensor([[ True, False],
                [ True, False]])
    """
    out = {name: mask.clone() for name, mask in masks.items()}
    for group in groups:
        dropped = ~keep[group.name].cpu()
        if not bool(dropped.any()):
            continue
        for s in group.slices:
            positions = s.index[dropped[s.unit]]
            if positions.numel():
                mask = out[s.param]
                mask.index_fill_(s.dim, positions.to(mask.device), False)
    return out


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
