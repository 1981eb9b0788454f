"""Labels for the learned importance models: measured loss changes of ablations near the pruning frontier.

A single-weight ablation is almost exactly the second-order Taylor term, so a model trained on
those relearns a formula. The decision a pruning event makes is different: remove *many* weights
at once, on top of the ones already pruned, near the frontier of what is about to go. The labels
measure exactly that:

1. :func:`frontier_groups` draws stratified groups of kept weights. For every tensor it takes its
   frontier band (the kept weights the learned model re-ranks, ordered by a prior score; see
   :func:`~lightning_autoprune.scoring.learned.priors.frontier_bands`), splits it into equal-count
   score bins, and draws groups from each bin. Every group is the same fraction of its tensor's
   kept weights, so the loss change per removed weight is measured at the same relative depth in
   every tensor and is comparable across tensors of very different sizes.
2. :func:`ablation_labels` zeroes each group on top of the current masks, measures the mean loss
   on held-out calibration batches (training data, never validation or test) in float64, restores
   the weights, and returns the loss change *per removed weight*.

For structured pruning, :func:`frontier_units` picks single units near the frontier and
:func:`unit_ablation_labels` measures each one's loss change per parameter (or FLOP) it removes.
Both kinds of label come from one zero/measure/restore loop, :func:`measure_ablations`.

Everything random comes from the caller's generator, so a resumed run draws the same groups.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import overload

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.core.masks import mask_cost
from lightning_autoprune.core.selection import pruned_count
from lightning_autoprune.scoring.base import AblationLoss, ScoreInputs
from lightning_autoprune.structured import UnitGroup, unit_costs

#: One ablation: ``(view, positions)`` pairs; each zeroes ``view[positions]`` (positions along dim 0).
Ablation = Sequence[tuple[Tensor, Tensor]]
#: Called as ``progress(done, total, seconds)`` while ablations are measured.
AblationProgress = Callable[[int, int, float], None]

#: The largest group an ablation zeroes (see :func:`frontier_groups`).
MAX_GROUP_SIZE = 65536


class Group:
    """One ablation: flat entries of one tensor.

    Args:
        name: the tensor's parameter name.
        index: flat indices of the weights the ablation zeroes (all currently kept), or a
            :class:`Draw` that draws them again, the same ones, at each access of :attr:`index`
            (:func:`frontier_groups`' groups, so that an event never holds every group's indices).
        stratum: the score bin it was drawn from (0 = lowest prior scores).

    Example:
        >>> group = Group("w", torch.tensor([3, 5]), 1)
        >>> group.name, group.index.tolist(), group.stratum, group.size
        ('w', [3, 5], 1, 2)
    """

    __slots__ = ("_index", "name", "size", "stratum")

    def __init__(self, name: str, index: Tensor | Draw, stratum: int) -> None:
        self.name = name
        self.stratum = stratum
        self._index = index
        #: How many weights the ablation zeroes.
        self.size = index.size if isinstance(index, Draw) else len(index)

    @property
    def index(self) -> Tensor:
        """The flat indices, ascending (a :class:`Draw` draws them again at every access)."""
        return self._index() if isinstance(self._index, Draw) else self._index


class Draw:
    """``size`` of ``members``, drawn at random from a saved generator state: the same draw every call.

    Args:
        members: the candidates (a view of a frontier band).
        size: how many to draw.
        generator: advanced past the draw, as one ``randperm(len(members))`` would.

    Example:
        >>> draw = Draw(torch.arange(10, 20), 3, torch.Generator().manual_seed(0))
        >>> torch.equal(draw(), draw()), len(draw())
        (True, 3)
    """

    __slots__ = ("_state", "members", "size")

    def __init__(self, members: Tensor, size: int, generator: torch.Generator) -> None:
        self.members, self.size = members, size
        self._state = generator.get_state()
        torch.randperm(len(members), generator=generator)  # the shared generator moves on as if drawn here

    def __call__(self) -> Tensor:
        """The drawn entries of :attr:`members`, ascending."""
        generator = torch.Generator()
        generator.set_state(self._state)
        pick = torch.randperm(len(self.members), generator=generator)[: self.size]
        return self.members[pick.to(self.members.device)].sort().values


def step_size(masks: Mapping[str, Tensor], target_sparsity: float) -> int:
    """Weights the next step removes: those to prune for ``target_sparsity`` that are still kept.

    Example:
        >>> step_size({"a": torch.tensor([True, True, False, True])}, 0.5)
        1
    """
    total = sum(m.numel() for m in masks.values())
    already = total - sum(int(torch.count_nonzero(m)) for m in masks.values())
    return max(0, pruned_count(target_sparsity, total) - already)


def frontier_groups(
    bands: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    target_sparsity: float,
    budget: int,
    generator: torch.Generator,
    *,
    bins: int = 4,
) -> list[Group]:
    """Draw about ``budget`` stratified groups of kept weights from each tensor's frontier band.

    Args:
        bands: per tensor, flat indices of kept weights near its pruning frontier, in ascending
            prior order (:func:`~lightning_autoprune.scoring.learned.priors.frontier_bands`).
        masks: current masks (``True`` = kept).
        target_sparsity: the sparsity the next step prunes to; sets the group size.
        budget: number of groups (ablations) in total, spread evenly over tensors and bins.
        generator: the caller's seeded generator.
        bins: equal-count bins of each band, from its lowest prior scores up.

    Every group is the same fraction of its tensor's kept weights: the fraction ``p`` of all kept
    weights that the step removes, but at most half a bin (so the groups of one bin are different
    draws) and at most :data:`MAX_GROUP_SIZE` weights in the largest tensor.

    Returns:
        The groups, tensor by tensor and bin by bin; empty if the step removes nothing.

    Example:
        >>> bands = {"a": torch.arange(8), "b": torch.arange(8)}
        >>> masks = {k: torch.ones(16, dtype=torch.bool) for k in bands}
        >>> groups = frontier_groups(bands, masks, 0.25, 4, torch.Generator().manual_seed(0), bins=2)
        >>> [(g.name, g.stratum, len(g.index)) for g in groups]
        [('a', 0, 2), ('a', 1, 2), ('b', 0, 2), ('b', 1, 2)]
    """
    if budget < 1:
        raise ValueError(f"`label_groups` must be >= 1, got {budget}.")
    step = step_size(masks, target_sparsity)
    kept = {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}
    kept_total = sum(kept.values())
    names = [n for n, band in bands.items() if len(band) and kept[n]]
    if step == 0 or kept_total == 0 or not names:
        return []
    # Group sizes are the same fraction of every tensor, so their per-weight loss changes are
    # comparable; on large models that fraction shrinks so that no group exceeds MAX_GROUP_SIZE.
    group_fraction = min(
        step / kept_total,
        MAX_GROUP_SIZE / max(kept[n] for n in names),
        min(len(bands[n]) / kept[n] for n in names) / (2 * bins),
    )
    per_tensor = _spread(budget, len(names))
    plan: list[tuple[str, Tensor, int, int]] = []  # (tensor, bin members, stratum, group size), one per group
    for name, count in zip(names, per_tensor, strict=True):
        band = bands[name]
        group_size = max(1, round(group_fraction * kept[name]))
        edges = torch.linspace(0, len(band), bins + 1).round().long().tolist()
        per_bin = _spread(count, bins)
        for stratum in range(bins):
            members = band[edges[stratum] : edges[stratum + 1]]
            if len(members):
                plan += [(name, members, stratum, min(group_size, len(members)))] * per_bin[stratum]
    # Each group keeps its draw, not its indices: 128 groups of a large model's frontier would
    # hold 13 MB of int64 indices through the event, and each is needed only a few times.
    return [Group(name, Draw(members, size, generator), stratum) for name, members, stratum, size in plan]


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def measure_ablations(
    ablations: Sequence[Ablation],
    loss_fn: Callable[[], float],
    progress: AblationProgress | None = None,
    every: float = 5.0,
    *,
    replay: AblationLoss | None = None,
    touched: Sequence[Collection[str]] | None = None,
    flat: bool = False,
) -> np.ndarray:
    """Loss change of each ablation: zero its entries in place, measure, restore them bit for bit.

    Args:
        ablations: each a sequence of ``(view, positions)``: the ablation zeroes
            ``view[positions]`` (views of the live parameters), all at once, on top of the
            current (already masked) parameters.
        loss_fn: mean loss on held-out calibration batches at the live parameters, as a float.
        replay: the same loss, measured with the layers before the ablated tensors replayed
            (:class:`~lightning_autoprune.core.replay.LayerReplay`); used with ``touched``.
        touched: per ablation, the names of the tensors it zeroes entries of.
        flat: each ablation is one ``(view, positions)`` with ``view`` the whole flat tensor that
            ``touched`` names: the replay is then told which entries were zeroed (and may correct
            that tensor's layer's recorded output instead of running it).
        progress: called as ``progress(done, total, seconds)`` at most every ``every`` seconds
            while the ablations run, and once at the end if it was called before (long events
            show progress; short ones stay quiet).
        every: seconds between progress calls.

    Returns:
        ``(len(ablations),)`` float64: ``loss(with the ablation) - loss(now)``.

    Example:
        >>> w = torch.tensor([1.0, 2.0, 3.0])
        >>> measure_ablations([[(w, torch.tensor([0, 2]))], [(w, torch.tensor([1]))]], lambda: float(w.sum())).tolist()
        [-4.0, -2.0]
        >>> w.tolist()
        [1.0, 2.0, 3.0]
    """
    start = last = time.perf_counter()
    if touched is not None and len(touched) != len(ablations):
        raise ValueError(f"`touched` needs one entry per ablation ({len(ablations)}), got {len(touched)}.")
    base = replay.record() if replay is not None and touched is not None else float(loss_fn())
    deltas = np.empty(len(ablations), dtype=np.float64)
    reported = False
    try:
        with torch.no_grad():
            for i, ablation in enumerate(ablations):
                now = time.perf_counter()
                if progress is not None and now - last >= every:
                    progress(i, len(ablations), now - start)
                    last, reported = now, True
                saved = []
                for view, positions in ablation:
                    saved.append(view[positions].clone())
                    view[positions] = 0
                try:
                    if replay is not None and touched is not None:
                        zeroed = {next(iter(touched[i])): (ablation[0][1], saved[0])} if flat else None
                        deltas[i] = replay.changing(touched[i], zeroed) - base
                    else:
                        deltas[i] = float(loss_fn()) - base
                finally:
                    for (view, positions), values in zip(ablation, saved, strict=False):
                        view[positions] = values
    finally:
        if replay is not None:
            replay.clear()
    if progress is not None and reported:
        progress(len(ablations), len(ablations), time.perf_counter() - start)
    return deltas


def ablation_labels(
    groups: list[Group],
    params: Mapping[str, Tensor],
    loss_fn: Callable[[], float],
    progress: AblationProgress | None = None,
    every: float = 5.0,
    replay: AblationLoss | None = None,
) -> np.ndarray:
    """Loss change per removed weight of zeroing each group, measured in float64.

    Each group is zeroed in place on top of the current (already masked) parameters, the
    calibration loss is measured, and the weights are restored bit for bit before the next group
    (:func:`measure_ablations`).

    Args:
        groups: from :func:`frontier_groups`.
        params: the live parameters, by name (modified in place and restored).
        loss_fn: mean loss on held-out calibration batches at the live parameters, as a float.
        progress: see :func:`measure_ablations`.
        every: seconds between progress calls.
        replay: see :func:`measure_ablations` (each group touches its own tensor).

    Returns:
        ``(len(groups),)`` float64: ``(loss(with the group zeroed) - loss(now)) / group size``.

    Example:
        >>> p = {"w": torch.tensor([1.0, 2.0, 3.0])}
        >>> loss = lambda: float(p["w"].sum())
        >>> ablation_labels([Group("w", torch.tensor([0, 2]), 0)], p, loss).tolist()
        [-2.0]
        >>> p["w"].tolist()
        [1.0, 2.0, 3.0]
    """
    touched = [(group.name,) for group in groups]
    deltas = measure_ablations(
        _Ablations(groups, params), loss_fn, progress, every, replay=replay, touched=touched, flat=True
    )
    return deltas / np.array([group.size for group in groups], dtype=np.int64)


class _Ablations(Sequence[Ablation]):
    """The ablation of each group, its indices drawn when it is measured (see :class:`Draw`)."""

    def __init__(self, groups: Sequence[Group], params: Mapping[str, Tensor]) -> None:
        self.groups, self.params = groups, params

    def __len__(self) -> int:
        return len(self.groups)

    @overload
    def __getitem__(self, i: int) -> Ablation: ...

    @overload
    def __getitem__(self, i: slice) -> list[Ablation]: ...

    def __getitem__(self, i: int | slice) -> Ablation | list[Ablation]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        group = self.groups[i]
        flat = self.params[group.name].data.view(-1)
        return [(flat, group.index.to(flat.device))]


def frontier_units(
    groups: Sequence[UnitGroup],
    inputs: ScoreInputs,
    prior: np.ndarray,
    alive: np.ndarray,
    budget: int,
    *,
    window: float = 3.0,
) -> np.ndarray:
    """Flat indices (over the units of every group, in order) of up to ``budget`` kept units near the frontier.

    The frontier window holds the ``max(budget, window * step)`` kept units with the lowest
    ``prior`` keys, where ``step`` is the number of average units the event removes; when it
    holds more than ``budget`` units, ``budget`` of them are drawn from ``inputs.generator``.

    Args:
        groups: the unit groups.
        inputs: the event's inputs (masks, cost weights, target sparsity, generator).
        prior: one key per unit of every group (higher = keep).
        alive: whether each unit is still kept.
        budget: the most units returned.
        window: the frontier window, in multiples of the step.

    Returns:
        int64 flat unit indices, lowest prior first (sorted by index when drawn); empty when no
        unit is kept.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 4, (Slice("w", 0, torch.arange(4), torch.arange(4), "producer"),), 0.0)
        >>> keep = {"w": torch.ones(4, 1, dtype=torch.bool)}
        >>> inputs = ScoreInputs({"w": torch.ones(4, 1)}, keep, target_sparsity=0.5)
        >>> frontier_units([g], inputs, np.array([4.0, 3.0, 2.0, 1.0]), np.ones(4, dtype=bool), budget=4).tolist()
        [3, 2, 1, 0]
    """
    costs = torch.cat([unit_costs(g, inputs.masks, inputs.cost_weights) for g in groups]).numpy()
    candidates = np.flatnonzero(alive)
    if not len(candidates):
        return np.zeros(0, dtype=np.int64)
    pruned, total = mask_cost(inputs.masks, inputs.cost_weights)
    step_units = (inputs.target_sparsity * total - pruned) / max(1.0, float(costs[candidates].mean()))
    size = max(budget, math.ceil(window * max(1.0, step_units)))
    frontier = candidates[np.argsort(prior[candidates], kind="stable")[:size]]
    if len(frontier) > budget:
        pick = torch.randperm(len(frontier), generator=inputs.generator)[:budget].numpy()
        frontier = np.sort(frontier[pick])
    return frontier.astype(np.int64)


def unit_ablation_labels(
    groups: Sequence[UnitGroup],
    units: np.ndarray,
    inputs: ScoreInputs,
    progress: AblationProgress | None = None,
) -> np.ndarray:
    """Loss change per parameter (or FLOP) removed of zeroing each of ``units``, one at a time.

    Every weight slice that carries a unit is zeroed at once (:func:`measure_ablations`).

    Args:
        groups: the unit groups.
        units: flat unit indices over the units of every group, in order (:func:`frontier_units`).
        inputs: the event's inputs; needs ``params`` and ``loss_fn``.
        progress: see :func:`measure_ablations`.

    Returns:
        ``(len(units),)`` float64: ``(loss(with the unit zeroed) - loss(now)) / max(1, cost)``.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 4, (Slice("w", 0, torch.arange(4), torch.arange(4), "producer"),), 0.0)
        >>> w = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
        >>> inputs = ScoreInputs({"w": w}, {"w": torch.ones(4, 1, dtype=torch.bool)}, params={"w": w})
        >>> inputs.loss_fn = lambda: float(w.sum())
        >>> unit_ablation_labels([g], np.array([1, 3]), inputs).tolist(), w.flatten().tolist()
        ([-2.0, -4.0], [1.0, 2.0, 3.0, 4.0])
    """
    if inputs.params is None or inputs.loss_fn is None:
        raise ValueError("Unit ablations need the live parameters (`params`) and a calibration loss (`loss_fn`).")
    costs = torch.cat([unit_costs(g, inputs.masks, inputs.cost_weights) for g in groups]).numpy()
    owners: list[tuple[UnitGroup, int]] = []
    for g in groups:
        owners.extend((g, u) for u in range(g.units))
    ablations, touched = [], []
    for flat in units:
        group, unit = owners[int(flat)]
        ablations.append([(inputs.params[s.param].movedim(s.dim, 0), s.index[s.unit == unit]) for s in group.slices])
        touched.append({s.param for s in group.slices})
    deltas = measure_ablations(ablations, inputs.loss_fn, progress, replay=inputs.ablation_loss, touched=touched)
    return deltas / np.maximum(1.0, costs[units].astype(np.float64))
