"""Choosing a whole pruning step by its measured loss: each candidate's masks, one forward pass each.

The held-out check of the learned scorer compares rankings *within* each tensor's frontier band;
it cannot see how a scorer spreads a step over the tensors (its per-layer allocation). Measured on
the committed protocol, a prior that ranked the held-out groups best (Wanda, second-order Taylor)
could still allocate a step so badly that accuracy fell by ten points. So the scorer settles the
step itself on evidence: it builds the masks each candidate would give at this step (the same
global selection, with the same per-layer floor), measures the calibration loss of each with one
forward pass over the held-out calibration batches, and keeps the candidate with the lowest loss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_autoprune.core.selection import layer_floors, pruned_count, select_masks, top_k_mask
from lightning_autoprune.scoring.base import ScoreInputs
from lightning_autoprune.scoring.learned.priors import CUT_SAMPLE, sampled_quantile

#: Standard errors by which a candidate's step must beat the incumbent's to replace it.
NOISE_Z = 2.0


@dataclass(frozen=True)
class StepChoice:
    """The candidate a step was given to, its scores, and every candidate's measured loss.

    Attributes:
        name: the chosen candidate.
        scores: its scores (higher = keep).
        losses: per candidate, the calibration loss after its step, in the order measured.
        removed: per candidate, per tensor, the share of its kept weights the step removes (how
            the candidate allocates the step over layers).
        margin: how much lower than the incumbent's a loss had to be to replace it (0: no
            incumbent, or a single part).
    """

    name: str
    scores: dict[str, Tensor]
    losses: dict[str, float]
    removed: dict[str, dict[str, float]]
    margin: float = 0.0


def step_masks(scores: Mapping[str, Tensor], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Per tensor, the kept weights the step ``scores`` would remove (boolean, flat).

    On a model of at most :data:`~lightning_autoprune.scoring.learned.priors.CUT_SAMPLE` kept
    weights these are exactly the event's selection (global top-k with the per-layer floor
    ``inputs.min_density``). On a larger one the global cut is the quantile of a sample of that
    many kept scores, and a tensor that would fall below its floor keeps its highest-scoring
    weights up to the floor: an estimate that differs from the exact selection by a few weights
    in ten thousand, without a global sort or a copy of every score.
    """
    masks = inputs.masks
    total = sum(m.numel() for m in masks.values())
    kept_total = sum(int(m.sum()) for m in masks.values())
    if kept_total <= CUT_SAMPLE:
        new = select_masks(scores, masks, inputs.target_sparsity, min_density=inputs.min_density)
        return {name: masks[name].reshape(-1) & ~new[name].reshape(-1) for name in masks}
    remove = kept_total - (total - pruned_count(inputs.target_sparsity, total))
    kept = {name: int(mask.sum()) for name, mask in masks.items()}
    threshold = sampled_quantile(scores.__getitem__, masks, kept, remove / kept_total, inputs.generator)
    floors = layer_floors(masks, inputs.min_density)
    removed = {}
    for name, mask in masks.items():
        flat_mask = mask.reshape(-1)
        values = scores[name].reshape(-1).float()
        gone = flat_mask & (values <= threshold)
        keep_count = int(flat_mask.sum()) - int(gone.sum())
        if keep_count < floors[name]:
            ranked = torch.where(flat_mask, values, torch.tensor(-math.inf, device=values.device))
            gone = flat_mask & ~top_k_mask(ranked, floors[name])
        removed[name] = gone
    return removed


def step_loss(scores: Mapping[str, Tensor], inputs: ScoreInputs) -> float:
    """Calibration loss after the step ``scores`` would make (:func:`step_masks`), measured in place.

    The weights the step removes are zeroed for one call of ``inputs.loss_fn`` and restored bit
    for bit.

    Example:
        >>> w = {"a": torch.tensor([1.0, -3.0, 2.0, 0.5])}
        >>> inputs = ScoreInputs(w, {"a": torch.ones(4, dtype=torch.bool)}, target_sparsity=0.5, params=w)
        >>> inputs.loss_fn = lambda: float(w["a"].abs().sum())
        >>> step_loss({"a": w["a"].abs()}, inputs), w["a"].tolist()
        (5.0, [1.0, -3.0, 2.0, 0.5])
    """
    return _measure(scores, inputs)[0][0]


def _measure(
    scores: Mapping[str, Tensor], inputs: ScoreInputs, parts: Callable[[], Sequence[float]] | None = None
) -> tuple[list[float], dict[str, float]]:
    """The losses ``parts`` (default: ``inputs.loss_fn``) gives after the step, and each tensor's removed share."""
    if inputs.params is None or inputs.loss_fn is None:
        raise ValueError("A step's loss needs the live parameters (`params`) and a calibration loss (`loss_fn`).")
    loss_fn = inputs.loss_fn
    measure = parts if parts is not None else lambda: [loss_fn()]
    saved: list[tuple[Tensor, Tensor, Tensor]] = []
    shares: dict[str, float] = {}
    with torch.no_grad():
        try:
            for name, gone in step_masks(scores, inputs).items():
                flat = inputs.params[name].data.view(-1)
                gone = gone.to(flat.device)
                kept = int(torch.count_nonzero(inputs.masks[name]))
                shares[name] = int(torch.count_nonzero(gone)) / kept if kept else 0.0
                saved.append((flat, gone, flat[gone]))
                flat.masked_fill_(gone, 0)
            return [float(v) for v in measure()], shares
        finally:
            for flat, gone, values in saved:
                flat.masked_scatter_(gone, values)


def choose_step(
    candidates: Mapping[str, Callable[[], dict[str, Tensor]]],
    inputs: ScoreInputs,
    *,
    parts: Callable[[], Sequence[float]] | None = None,
    incumbent: str | None = None,
    z: float = NOISE_Z,
) -> StepChoice:
    """The candidate whose step has the lowest calibration loss; ties go to the earlier candidate.

    Args:
        candidates: per name, a function computing that candidate's scores. Each is called once
            to measure its step, and the winner once more to return its scores, so memory holds
            one score set at a time.
        inputs: the event's inputs (masks, target, floor, live parameters, calibration loss).
        parts: measures a step as the losses of disjoint parts of the calibration samples (a
            step's loss is their mean); default: one part, ``inputs.loss_fn``.
        incumbent: a candidate kept unless the lowest loss beats it by more than ``z`` standard
            errors of the paired per-part differences (needs at least two parts). ``None``: the
            lowest loss wins outright.
        z: that margin, in standard errors.

    Example:
        >>> w = {"a": torch.tensor([1.0, -3.0, 2.0, 0.5])}
        >>> inputs = ScoreInputs(w, {"a": torch.ones(4, dtype=torch.bool)}, target_sparsity=0.5, params=w)
        >>> inputs.loss_fn = lambda: float((w["a"] - torch.tensor([1.0, -3.0, 0.0, 0.0])).abs().sum())
        >>> choice = choose_step({"magnitude": lambda: {"a": w["a"].abs()}, "first": lambda: {"a": -torch.arange(4.0)}},
        ...                      inputs)
        >>> choice.name, choice.losses
        ('first', {'magnitude': 3.0, 'first': 0.0})
    """
    if not candidates:
        raise ValueError("`candidates` is empty: there is no step to choose.")
    measured = {name: _measure(compute(), inputs, parts) for name, compute in candidates.items()}
    losses = {name: statistics.fmean(values) for name, (values, _) in measured.items()}
    best = min(losses, key=losses.__getitem__)  # the first of equal losses
    margin = 0.0
    if incumbent in measured and best != incumbent:
        gains = [a - b for a, b in zip(measured[incumbent][0], measured[best][0], strict=True)]
        if len(gains) > 1:
            margin = z * statistics.stdev(gains) / math.sqrt(len(gains))
            if statistics.fmean(gains) <= margin:
                best = incumbent
    removed = {name: shares for name, (_, shares) in measured.items()}
    return StepChoice(best, candidates[best](), losses, removed, margin)
