"""Labels for the learned importance model: measured loss changes of group ablations at the frontier.

A single-weight ablation is almost exactly the second-order Taylor term, so a model trained on
those relearns a formula. The decision a pruning event makes is different: remove *many* weights
at once, on top of the ones already pruned, near the frontier of what is about to go. The labels
measure exactly that (DESIGN.md §3):

1. :func:`frontier_groups` draws stratified groups of kept weights. For every tensor it takes its
   lowest-ranked kept weights under a prior score (the frontier window: about twice the share of
   the tensor that the next step removes on average), splits them into equal-count score bins, and
   draws groups from each bin. A group is the tensor's proportional share of the next step (the
   fraction ``p`` of all kept weights that the step removes, times the tensor's kept weights), so
   the loss change per removed weight is measured at the same relative depth in every tensor and
   is comparable across tensors of very different sizes.
2. :func:`ablation_labels` zeroes each group on top of the current masks, measures the mean loss
   on held-out calibration batches (training data, never validation or test) in float64, restores
   the weights, and returns the loss change *per removed weight*.

Everything random comes from the caller's generator, so a resumed run draws the same groups.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.core.selection import pruned_count

#: The largest group an ablation zeroes (see :func:`frontier_groups`).
MAX_GROUP_SIZE = 65536


@dataclass(frozen=True)
class Group:
    """One ablation: flat entries of one tensor.

    Attributes:
        name: the tensor's parameter name.
        index: flat indices of the weights the ablation zeroes (all currently kept).
        stratum: the score bin it was drawn from (0 = lowest prior scores).
    """

    name: str
    index: Tensor
    stratum: int


def step_size(masks: Mapping[str, Tensor], target_sparsity: float) -> int:
    """Weights the next step removes: those to prune for ``target_sparsity`` that are still kept.

    Example:
        >>> step_size({"a": torch.tensor([True, True, False, True])}, 0.5)
        1
    """
    total = sum(m.numel() for m in masks.values())
    already = total - sum(int(m.sum()) for m in masks.values())
    return max(0, pruned_count(target_sparsity, total) - already)


def frontier_groups(
    prior: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    target_sparsity: float,
    budget: int,
    generator: torch.Generator,
    *,
    bins: int = 4,
    window: float = 2.0,
) -> list[Group]:
    """Draw about ``budget`` stratified groups of kept weights near each tensor's pruning frontier.

    Args:
        prior: a score per weight (higher = keep) that defines the frontier within each tensor.
        masks: current masks (``True`` = kept); only kept weights are drawn.
        target_sparsity: the sparsity the next step prunes to; sets the group size and window.
        budget: number of groups (ablations) in total, spread evenly over tensors and bins.
        generator: the caller's seeded generator.
        bins: equal-count score bins per tensor inside the window.
        window: the window holds the ``window * p`` lowest-scoring kept weights of each tensor,
            where ``p`` is the fraction of all kept weights the step removes.

    Returns:
        The groups, tensor by tensor and bin by bin; empty if the step removes nothing.

    Example:
        >>> prior = {"a": torch.arange(8.0), "b": torch.arange(8.0)}
        >>> masks = {k: torch.ones(8, dtype=torch.bool) for k in prior}
        >>> groups = frontier_groups(prior, masks, 0.5, 4, torch.Generator().manual_seed(0), bins=2)
        >>> [(g.name, g.stratum, len(g.index)) for g in groups]
        [('a', 0, 4), ('a', 1, 4), ('b', 0, 4), ('b', 1, 4)]
    """
    if budget < 1:
        raise ValueError(f"`label_groups` must be >= 1, got {budget}.")
    step = step_size(masks, target_sparsity)
    kept_total = sum(int(m.sum()) for m in masks.values())
    if step == 0 or kept_total == 0:
        return []
    share = step / kept_total
    fraction = min(1.0, window * share)
    names = [n for n in prior if int(masks[n].sum()) > 0]
    # Group sizes are the same fraction of every tensor; on large models that fraction shrinks so
    # that no group exceeds MAX_GROUP_SIZE weights (memory and time stay bounded, and groups of
    # different tensors stay proportional, so their per-weight loss changes stay comparable).
    largest = max(int(masks[n].sum()) for n in names)
    group_fraction = min(share, MAX_GROUP_SIZE / largest)
    per_tensor = _spread(budget, len(names))
    groups: list[Group] = []
    for name, count in zip(names, per_tensor, strict=True):
        kept_index = masks[name].reshape(-1).nonzero().squeeze(1)
        group_size = max(1, round(group_fraction * len(kept_index)))
        scores = prior[name].reshape(-1)[kept_index].float()
        order = kept_index[torch.sort(scores, stable=True).indices]
        frontier = order[: max(1, math.ceil(fraction * len(order)))]
        edges = torch.linspace(0, len(frontier), bins + 1).round().long().tolist()
        per_bin = _spread(count, bins)
        for stratum in range(bins):
            members = frontier[edges[stratum] : edges[stratum + 1]]
            if len(members) == 0:
                continue
            size = min(group_size, len(members))
            for _ in range(per_bin[stratum]):
                pick = torch.randperm(len(members), generator=generator)[:size]
                groups.append(Group(name, members[pick.to(members.device)].sort().values, stratum))
    return groups


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal non-negative integers, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def ablation_labels(
    groups: list[Group],
    params: Mapping[str, Tensor],
    loss_fn: Callable[[], float],
    progress: Callable[[int, int, float], None] | None = None,
    every: float = 5.0,
) -> np.ndarray:
    """Loss change per removed weight of zeroing each group, measured in float64.

    Each group is zeroed in place on top of the current (already masked) parameters, the
    calibration loss is measured, and the weights are restored bit for bit before the next group.

    Args:
        groups: from :func:`frontier_groups`.
        params: the live parameters, by name (modified in place and restored).
        loss_fn: mean loss on held-out calibration batches at the live parameters, as a float.
        progress: called as ``progress(done, total, seconds)`` at most every ``every`` seconds
            while the ablations run, and once at the end if it was called before (long events
            show progress; short ones stay quiet).
        every: seconds between progress calls.

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
    start = last = time.perf_counter()
    base = float(loss_fn())
    labels = np.empty(len(groups), dtype=np.float64)
    reported = False
    with torch.no_grad():
        for i, group in enumerate(groups):
            now = time.perf_counter()
            if progress is not None and now - last >= every:
                progress(i, len(groups), now - start)
                last, reported = now, True
            flat = params[group.name].data.view(-1)
            index = group.index.to(flat.device)
            saved = flat[index].clone()
            flat[index] = 0
            try:
                labels[i] = (float(loss_fn()) - base) / len(index)
            finally:
                flat[index] = saved
    if progress is not None and reported:
        progress(len(groups), len(groups), time.perf_counter() - start)
    return labels
