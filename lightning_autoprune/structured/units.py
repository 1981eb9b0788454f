"""Units of structured pruning and the pure tensor code on them.

A *unit* is a ``Linear`` output neuron or a convolution output channel. Pruning it zeroes, as one
decision, every slice that carries it: its weight slice and bias entry in each layer that produces
it (several layers when a residual addition joins their outputs), its ``gamma`` and ``beta`` in any
BatchNorm it passes through, and its input columns in every layer that consumes it (re-indexed
through flattening and concatenation). Such a unit outputs exact zeros and is read by nobody, so
:func:`lightning_autoprune.structured.compact` can remove it physically without changing the model's outputs.

A :class:`UnitGroup` lists those slices (:func:`lightning_autoprune.structured.find_unit_groups` finds
them); this module turns kept-unit vectors into element masks (:func:`unit_masks`) and measures what a
unit holds (:func:`unit_sums`) and costs (:func:`unit_costs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Slice", "UnitGroup", "kept_units", "unit_costs", "unit_masks", "unit_sums"]


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
    """Per unit: whether it is still kept, that is, some producer entry of it is unmasked.

    Example:
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.tensor([0, 1]), torch.tensor([0, 1]), "producer"),), 0.0)
        >>> kept_units(g, {"w": torch.tensor([[False, True], [False, False]])})
        tensor([ True, False])
    """
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
