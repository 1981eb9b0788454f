"""Importance of whole units (neurons, channels) for structured pruning: the formulas.

Every unit scorer returns, per unit group, one float64 key per unit: higher means keep. The formulas:

* ``"magnitude"``: the group norm: the unit's squared L2 norm in each coupled weight slice
  (producing weight rows, BatchNorm ``gamma``, consuming input columns), averaged over the slices
  and divided by the mean over the layer's kept units, so layers of different scale compete
  fairly (Fang et al. 2023; Torch-Pruning's ``MagnitudeImportance(p=2)``).
* ``"taylor"``: the unit's estimated loss increase per parameter it removes. The loss change of
  zeroing all of a unit's slices at once is estimated to second order with the calibration
  gradient ``g`` and Fisher diagonal ``F``: ``|sum g*w| + 1/2 sum w^2 F`` (Molchanov et al. 2019's
  group Taylor, plus the curvature term), divided by the entries the unit removes.
* ``"random"``: the control.

The learned unit scorer (``importance="learned"``) lives in
:mod:`lightning_autoprune.scoring.learned.units`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_autoprune.scoring.base import FormulaMixin, ScoreInputs
from lightning_autoprune.structured import UnitGroup, kept_units, unit_costs, unit_sums

__all__ = [
    "BASELINE_UNIT_SCORERS",
    "EPS",
    "UNIT_FORMULAS",
    "UnitFormulaScorer",
    "magnitude_keys",
    "random_keys",
    "taylor_keys",
    "taylor_parts",
]

#: Formula unit scorer names accepted by ``AutoPrune(importance=..., granularity="structured")``.
BASELINE_UNIT_SCORERS = ("taylor", "magnitude", "random")
#: Floor of the layer normaliser here and of the unit features' logarithms.
EPS = 1e-12


def taylor_parts(group: UnitGroup, inputs: ScoreInputs) -> tuple[Tensor, Tensor]:
    """The two terms of a unit's second-order loss change, float64: ``|sum g*w|`` and ``1/2 sum w^2 F``.

    This is the *grouped* form (the sums run over every entry the unit removes, the first-order
    term is summed before its absolute value is taken), not the per-weight
    :func:`~lightning_autoprune.scoring.formulas.taylor2_scores`.

    Raises:
        ValueError: the inputs carry no calibration gradients.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.arange(2), torch.arange(2), "producer"),), 0.0)
        >>> w = {"w": torch.tensor([[1.0, 1.0], [2.0, 0.0]])}
        >>> inputs = ScoreInputs(w, {"w": torch.ones(2, 2, dtype=torch.bool)})
        >>> inputs.grad_mean, inputs.grad_sq_mean = {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}
        >>> taylor_parts(g, inputs)
        (tensor([2., 2.], dtype=torch.float64), tensor([1., 2.], dtype=torch.float64))
    """
    if inputs.grad_mean is None or inputs.grad_sq_mean is None:
        raise ValueError("The unit `taylor` key needs calibration gradients (`grad_mean`, `grad_sq_mean`), got None.")
    gw = {n: inputs.grad_mean[n].double() * inputs.weights[n].double() for n in inputs.weights}
    w2f = {n: inputs.weights[n].double().pow(2) * inputs.grad_sq_mean[n].double() for n in inputs.weights}
    return unit_sums(group, gw).abs(), 0.5 * unit_sums(group, w2f)


def magnitude_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Group magnitude: each unit's squared L2 norm per coupled weight slice, averaged, layer-normalised.

    Every weight slice that carries the unit counts (the producing layers' weight rows, BatchNorm
    ``gamma``, the consuming layers' input columns), so a channel that the next layer ignores
    ranks low even if its own filter is large (the group norm of Fang et al. 2023, as in
    Torch-Pruning's ``MagnitudeImportance(p=2)`` with mean reduction and mean normaliser). Biases
    and BatchNorm ``beta`` (parameters named ``*bias``) do not count. Divided by the mean over
    the group's kept units, so layers of different scale compete fairly.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.arange(2), torch.arange(2), "producer"),), 0.0)
        >>> w = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}
        >>> magnitude_keys([g], ScoreInputs(w, {"w": torch.ones(2, 2, dtype=torch.bool)}))["a"]
        tensor([1.9231, 0.0769], dtype=torch.float64)
    """
    out = {}
    for group in groups:
        per_slice = [
            unit_sums(
                UnitGroup(group.name, group.units, (s,), group.depth),
                {s.param: inputs.weights[s.param].double().pow(2)},
            )
            for s in group.slices
            if not s.param.endswith("bias") and s.param in inputs.weights
        ]
        norm = torch.stack(per_slice).mean(dim=0) if per_slice else torch.zeros(group.units, dtype=torch.float64)
        alive = kept_units(group, inputs.masks)
        scale = norm[alive].mean() if bool(alive.any()) else torch.tensor(1.0, dtype=torch.float64)
        out[group.name] = norm / scale.clamp_min(EPS)
    return out


def taylor_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Estimated loss increase per removed parameter (or FLOP), ``(|sum g*w| + 1/2 sum w^2 F) / cost``.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.arange(2), torch.arange(2), "producer"),), 0.0)
        >>> w = {"w": torch.tensor([[1.0, 1.0], [2.0, 0.0]])}
        >>> inputs = ScoreInputs(w, {"w": torch.ones(2, 2, dtype=torch.bool)})
        >>> inputs.grad_mean, inputs.grad_sq_mean = {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}
        >>> taylor_keys([g], inputs)["a"]
        tensor([1.5000, 2.0000], dtype=torch.float64)
    """
    out = {}
    for group in groups:
        first, second = taylor_parts(group, inputs)
        out[group.name] = (first + second) / unit_costs(group, inputs.masks, inputs.cost_weights).clamp_min(1.0)
    return out


def random_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Uniform random keys from the caller's seeded generator.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 3, (Slice("w", 0, torch.arange(3), torch.arange(3), "producer"),), 0.0)
        >>> random_keys([g], ScoreInputs({}, {}))["a"].shape
        torch.Size([3])
    """
    return {g.name: torch.rand(g.units, generator=inputs.generator, dtype=torch.float64) for g in groups}


class UnitFormulaScorer(FormulaMixin):
    """A unit scorer from one key formula; it meets :class:`~lightning_autoprune.scoring.base.UnitScorer`.

    Args:
        keys: the formula, ``keys(groups, inputs) -> {group name: keys}``.
        gradients: whether the formula needs calibration gradients.

    Example:
        >>> UnitFormulaScorer(taylor_keys, gradients=True).needs_gradients
        True
    """

    def __init__(self, keys: Callable[[Sequence[UnitGroup], ScoreInputs], dict[str, Tensor]], gradients: bool) -> None:
        super().__init__()
        self._keys = keys
        self.needs_gradients = gradients

    def score_units(self, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
        """The formula's keys for every group."""
        return self._keys(groups, inputs)


#: The formula unit scorer of each name in :data:`BASELINE_UNIT_SCORERS`.
UNIT_FORMULAS: dict[str, tuple[Callable[[Sequence[UnitGroup], ScoreInputs], dict[str, Tensor]], bool]] = {
    "taylor": (taylor_keys, True),
    "magnitude": (magnitude_keys, False),
    "random": (random_keys, False),
}
