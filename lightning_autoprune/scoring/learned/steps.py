"""Choosing a whole pruning step by its measured loss: each candidate's masks, one forward pass each.

The held-out check of the learned scorer compares rankings *within* each tensor's frontier band;
it cannot see how a scorer spreads a step over the tensors (its per-layer allocation). Measured on
the committed protocol, a prior that ranked the held-out groups best (Wanda, second-order Taylor)
could still allocate a step so badly that accuracy fell by ten points. So the scorer settles the
step itself on evidence: it builds the masks each candidate would give at this step (the same
global selection, with the same per-layer floor), measures the calibration loss of each with one
forward pass over the held-out calibration batches, and keeps the candidate with the lowest loss.

A candidate whose step would take some tensor down to its per-layer floor (``min_density``) is
passed over while another candidate's step would not: the floor stops a global ranking from
emptying a layer, and a layer left at its floor is a bottleneck that fine-tuning does not repair
(layer collapse; Tanaka et al. 2020, Lee et al. 2021). Near the end of a steep schedule every step's
loss right after its cut is close to chance, so the loss alone cannot see it. On the protocol's
MNIST-1D CNN (10 seeds), the runs whose magnitude or Wanda steps took the middle convolutions to
their floor ended at 14-26% test accuracy at 98% and 12-19% at 99%, the other seeds' at 31-54% and
24-39%.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_autoprune.core.selection import layer_floors, pruned_count, select_masks, top_k_mask
from lightning_autoprune.scoring.base import ScoreInputs
from lightning_autoprune.scoring.learned.priors import KeptSample, exact_cuts

#: Standard errors by which a candidate's step must beat the incumbent's to replace it.
NOISE_Z = 2.0
#: From this many weights (kept or pruned) a model's candidate steps are restored from one copy of
#: the weights (:func:`_backup`); below it, from each step's saved removed values. The copy is for
#: time: at 25M weights (five candidates over five 5M-entry tensors) it saves about 0.9 s of an
#: event, 4 ms against 40 ms per tensor and step. It costs the weights once more: at 5M weights it
#: took the event's peak extra memory from 2.2-2.5x to 2.6-2.7x the weights (three readings each,
#: first step and 0.8 -> 0.9) for no time difference beyond the readings' spread.
COPY_MIN_WEIGHTS = 1 << 24
#: A candidate's scores, one tensor at a time: called with a tensor's name, returns its scores
#: (higher = keep). A step is measured from these without every tensor's scores in memory at once.
TensorScores = Callable[[str], Tensor]


@dataclass(frozen=True)
class SampledScores:
    """A candidate's scores one tensor at a time, which can also be read at a few entries of a tensor.

    A large model's step is cut at a quantile of a sample of the kept scores (:func:`step_masks`);
    ``at`` reads the sample without scoring each tensor in full, once more than the masks need.

    Attributes:
        tensor: a tensor's scores, from its name (:data:`TensorScores`).
        at: a tensor's scores at the given flat entries, the same values as ``tensor``'s there.

    Example:
        >>> w = {"a": torch.tensor([1.0, -3.0, 2.0])}
        >>> scores = SampledScores(lambda name: w[name].abs(), lambda name, index: w[name][index].abs())
        >>> scores("a").tolist(), scores.at("a", torch.tensor([1])).tolist()
        ([1.0, 3.0, 2.0], [3.0])
    """

    tensor: TensorScores
    at: Callable[[str, Tensor], Tensor]

    def __call__(self, name: str) -> Tensor:
        """The scores of tensor ``name``."""
        return self.tensor(name)


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
        collapsing: the candidates passed over because their step would take a tensor down to
            its floor (:func:`collapsed_tensors`); empty when none would, or when every one would.
    """

    name: str
    scores: dict[str, Tensor]
    losses: dict[str, float]
    removed: dict[str, dict[str, float]]
    margin: float = 0.0
    collapsing: tuple[str, ...] = ()


def step_masks(
    scores: Mapping[str, Tensor] | TensorScores, inputs: ScoreInputs, sample: KeptSample | None = None
) -> dict[str, Tensor]:
    """Per tensor, the kept weights the step ``scores`` would remove (boolean, flat).

    ``scores`` is every tensor's scores, or a function giving one tensor's at a time (then a
    large model's tensors are scored twice, once for the cut and once for the masks, and never
    held all at once; once, when it is :class:`SampledScores`).

    On a model of at most :data:`~lightning_autoprune.scoring.learned.priors.CUT_SAMPLE`
    weights, kept or pruned (:func:`~lightning_autoprune.scoring.learned.priors.exact_cuts`),
    these are exactly the event's selection (global top-k with the per-layer floor
    ``inputs.min_density``). On a larger one the global cut is the quantile of a sample of the
    kept scores (at ``sample``'s positions, drawn here if not given; an event draws one for
    all its candidates), and a tensor that would fall below its floor keeps its highest-scoring
    weights up to the floor: an estimate that differs from the exact selection by a few weights
    in ten thousand, without a global sort or a copy of every score.
    """
    return dict(_removals(scores, inputs, sample))


def _removals(
    scores: Mapping[str, Tensor] | TensorScores, inputs: ScoreInputs, sample: KeptSample | None
) -> Iterator[tuple[str, Tensor]]:
    """:func:`step_masks` one tensor at a time: on a large model each tensor is scored only when its turn comes."""
    masks = inputs.masks
    scores_of = scores.__getitem__ if isinstance(scores, Mapping) else scores
    total = sum(m.numel() for m in masks.values())
    kept_total = sum(inputs.kept.values())
    if exact_cuts(masks):
        every = {name: scores_of(name) for name in masks}
        new = select_masks(every, masks, inputs.target_sparsity, min_density=inputs.min_density)
        del every
        for name in masks:
            yield name, masks[name].reshape(-1) & ~new[name].reshape(-1)
        return
    remove = kept_total - (total - pruned_count(inputs.target_sparsity, total))
    sample = sample if sample is not None else KeptSample(masks, inputs.generator)
    if isinstance(scores, SampledScores):
        scores_at = scores.at
    else:

        def scores_at(name: str, where: Tensor) -> Tensor:
            return scores_of(name).reshape(-1)[where]

    threshold = sample.quantile(scores_at, remove / kept_total)
    floors = layer_floors(masks, inputs.min_density, inputs.kept)
    for name, mask in masks.items():
        flat_mask = mask.reshape(-1)
        values = scores_of(name).reshape(-1).float()
        gone = flat_mask & (values <= threshold)
        keep_count = inputs.kept[name] - int(torch.count_nonzero(gone))
        if keep_count < floors[name]:
            ranked = torch.where(flat_mask, values, torch.tensor(-math.inf, device=values.device))
            gone = flat_mask & ~top_k_mask(ranked, floors[name])
        del values  # before the next tensor is scored: one tensor's scores in memory at a time
        yield name, gone


def collapsed_tensors(removed: Mapping[str, Tensor], inputs: ScoreInputs) -> list[str]:
    """The tensors that the step ``removed`` (:func:`step_masks`) takes down to their floor, in order.

    A tensor collapses when it keeps more than its floor (``ceil(min_density * numel)``, see
    :func:`~lightning_autoprune.core.selection.layer_floors`) before the step and no more after it.

    Example:
        >>> masks = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
        >>> inputs = ScoreInputs(masks, masks, target_sparsity=0.5, min_density=0.25)
        >>> collapsed_tensors({"a": torch.tensor([1, 1, 1, 0]).bool(), "b": torch.zeros(4).bool()}, inputs)
        ['a']
    """
    floors = layer_floors(inputs.masks, inputs.min_density, inputs.kept)
    return [
        name
        for name, gone in removed.items()
        if _collapses(inputs.kept[name], int(torch.count_nonzero(gone)), floors[name])
    ]


def _collapses(kept: int, removed: int, floor: int) -> bool:
    """Whether removing ``removed`` of a tensor's ``kept`` weights takes it from above ``floor`` down to it."""
    return kept > floor and kept - removed <= floor


def step_collapses(scores: Mapping[str, Tensor] | TensorScores, inputs: ScoreInputs) -> bool:
    """Whether the step ``scores`` would make (:func:`step_masks`) takes some tensor down to its floor.

    Example:
        >>> w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
        >>> masks = {n: torch.ones(4, dtype=torch.bool) for n in w}
        >>> inputs = ScoreInputs(w, masks, target_sparsity=0.375, min_density=0.25)
        >>> step_collapses(w, inputs), step_collapses({"a": w["b"], "b": w["a"]}, inputs)
        (True, True)
        >>> step_collapses({"a": torch.tensor([1.0, 5.0, 6.0, 7.0]), "b": torch.tensor([2.0, 3.0, 8.0, 9.0])}, inputs)
        False
    """
    return bool(collapsed_tensors(step_masks(scores, inputs), inputs))


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
    scores: Mapping[str, Tensor] | TensorScores,
    inputs: ScoreInputs,
    parts: Callable[[], Sequence[float]] | None = None,
    sample: KeptSample | None = None,
    backup: Mapping[str, Tensor] | None = None,
) -> tuple[list[float], dict[str, float], bool]:
    """The step's losses by ``parts`` (default: ``inputs.loss_fn``), removed shares, and whether it collapses.

    The removed weights are zeroed in place for the measurement and restored bit for bit: copied
    back from ``backup`` (:func:`_backup`) when given, else from their values saved here. Each
    tensor's removed weights are chosen and zeroed in turn (:func:`_removals`), so a tensor's
    scores must not read another tensor's weights (no formula prior does).
    """
    if inputs.params is None or inputs.loss_fn is None:
        raise ValueError("A step's loss needs the live parameters (`params`) and a calibration loss (`loss_fn`).")
    params, loss_fn = inputs.params, inputs.loss_fn
    measure = parts if parts is not None else lambda: [loss_fn()]
    undo: list[Callable[[], object]] = []
    shares: dict[str, float] = {}
    floors = layer_floors(inputs.masks, inputs.min_density, inputs.kept)
    collapsed = False
    with torch.no_grad():
        try:
            for name, gone in _removals(scores, inputs, sample):
                flat = params[name].data.view(-1)
                gone = gone.to(flat.device)
                if backup is not None:
                    undo.append(functools.partial(flat.copy_, backup[name].view(-1)))
                    count = int(torch.count_nonzero(gone))
                else:
                    # The boolean mask, not positions: 8 bytes per removed weight would hold, at a large
                    # model's first step, as much again as the weights (int64 positions of half of them).
                    # ``index_put_`` is 2 ms faster than ``masked_scatter_`` per 5M-entry tensor on CPU.
                    values = flat[gone]
                    undo.append(functools.partial(flat.index_put_, (gone,), values))
                    count = values.numel()
                flat.masked_fill_(gone, 0)
                kept = inputs.kept[name]
                shares[name] = count / kept if kept else 0.0
                collapsed = collapsed or _collapses(kept, count, floors[name])
            return [float(v) for v in measure()], shares, collapsed
        finally:
            _restore(undo)


def _backup(inputs: ScoreInputs) -> dict[str, Tensor]:
    """A copy of the live parameters of the event's tensors, to copy back after each measured step.

    One copy serves every candidate of an event on a model of at least :data:`COPY_MIN_WEIGHTS`
    weights (:func:`choose_step`): copying a 5M-entry tensor back takes about 4 ms on CPU, where
    saving its removed values and scattering them back took about 40 ms. It holds the weights once
    more, where the saved values hold the removed ones (about half of them at a first step).
    """
    assert inputs.params is not None
    with torch.no_grad():
        return {name: inputs.params[name].detach().clone() for name in inputs.masks}


def _restore(undo: Sequence[Callable[[], object]]) -> None:
    """Run every restoring write of ``undo``, each tried; the first failure is raised after them all.

    A write can fail (``index_put_`` turns its mask into positions first, an allocation): the other
    tensors are still restored.
    """
    failure: BaseException | None = None
    for write in undo:
        try:
            write()
        except BaseException as error:  # restore the rest before raising
            failure = failure or error
    if failure is not None:
        raise failure


def choose_step(
    candidates: Mapping[str, TensorScores],
    inputs: ScoreInputs,
    *,
    parts: Callable[[], Sequence[float]] | None = None,
    incumbent: str | None = None,
    z: float = NOISE_Z,
) -> StepChoice:
    """The candidate whose step has the lowest calibration loss; ties go to the earlier candidate.

    Candidates whose step would take a tensor down to its floor (:func:`collapsed_tensors`) are
    passed over unless every candidate's would.

    Args:
        candidates: per name, that candidate's scores, one tensor at a time. Each tensor is
            scored once or twice to measure a step (:func:`step_masks`), and the winner's once
            more to return its scores, so memory holds one tensor's scores of a candidate at a
            time, and all of them only for the winner.
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
        >>> choice = choose_step({"magnitude": lambda name: w[name].abs(), "first": lambda name: -torch.arange(4.0)},
        ...                      inputs)
        >>> choice.name, choice.losses
        ('first', {'magnitude': 3.0, 'first': 0.0})
    """
    if not candidates:
        raise ValueError("`candidates` is empty: there is no step to choose.")
    sample = None if exact_cuts(inputs.masks) else KeptSample(inputs.masks, inputs.generator)
    # A large model's steps are restored from one copy of the weights (time); a smaller one's from
    # each step's removed values (memory: the copy holds the weights once more). See COPY_MIN_WEIGHTS.
    copies = sum(mask.numel() for mask in inputs.masks.values()) >= COPY_MIN_WEIGHTS
    backup = _backup(inputs) if copies else None
    measured = {name: _measure(scores_of, inputs, parts, sample, backup) for name, scores_of in candidates.items()}
    del backup, sample  # before the winner's scores are built, every tensor's at once
    losses = {name: statistics.fmean(values) for name, (values, _, _) in measured.items()}
    collapsing = tuple(name for name, (_, _, collapsed) in measured.items() if collapsed)
    if len(collapsing) == len(measured):
        collapsing = ()  # every step would: the loss decides
    eligible = [name for name in losses if name not in collapsing]
    best = min(eligible, key=losses.__getitem__)  # the first of equal losses
    margin = 0.0
    if incumbent in eligible and best != incumbent:
        gains = [a - b for a, b in zip(measured[incumbent][0], measured[best][0], strict=True)]
        if len(gains) > 1:
            margin = z * statistics.stdev(gains) / math.sqrt(len(gains))
            if statistics.fmean(gains) <= margin:
                best = incumbent
    removed = {name: shares for name, (_, shares, _) in measured.items()}
    scores = {name: candidates[best](name) for name in inputs.masks}
    return StepChoice(best, scores, losses, removed, margin, collapsing)


def unmeasured_step(
    candidates: Mapping[str, TensorScores], incumbent: str, inputs: ScoreInputs, last_losses: Mapping[str, float]
) -> tuple[str, dict[str, Tensor], tuple[str, ...]]:
    """The step of an event that measures none: its candidate, its scores, and the candidates passed over.

    The incumbent, unless its step would take a tensor down to its floor (:func:`step_collapses`):
    then the first candidate, in the order of ``last_losses`` (the last measured event's; a
    candidate without one comes last), whose step would not; the incumbent again if every one
    would. Each candidate checked is scored once, and its scores serve both the check and the
    step; checking costs a selection, no forward pass.

    Example:
        >>> w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
        >>> inputs = ScoreInputs(w, {n: torch.ones(4, dtype=torch.bool) for n in w}, target_sparsity=0.375,
        ...                      min_density=0.25)
        >>> spread = {"a": torch.tensor([1.0, 5.0, 6.0, 7.0]), "b": torch.tensor([2.0, 3.0, 8.0, 9.0])}
        >>> name, scores, passed = unmeasured_step(
        ...     {"magnitude": w.__getitem__, "spread": spread.__getitem__}, "magnitude", inputs, {})
        >>> name, passed, scores == spread
        ('spread', ('magnitude',), True)
    """
    others = sorted(candidates, key=lambda c: last_losses.get(c, math.inf))  # stable: candidate order on ties
    order = [incumbent, *(name for name in others if name != incumbent)]
    for checked, name in enumerate(order):
        scores = {tensor: candidates[name](tensor) for tensor in inputs.masks}
        if not step_collapses(scores, inputs):
            return name, scores, tuple(order[:checked])
    return incumbent, {tensor: candidates[incumbent](tensor) for tensor in inputs.masks}, ()
