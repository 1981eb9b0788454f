"""How important each weight is: one scoring contract, several scorers behind it.

A scorer maps a :class:`ScoreInputs` (weights, current masks and, for gradient scorers, calibration
gradient statistics) to one score tensor per target, shaped like its weight. Higher means more
important. Scores are comparable *across* tensors, because :mod:`lightning_autoprune.core.selection`
ranks them globally: a scorer whose raw values differ in scale between layers normalises them
itself (LAMP does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

#: Baseline scorer names accepted by ``AutoPrune(importance=...)``.
BASELINE_SCORERS = ("magnitude", "lamp", "taylor", "random")
#: Every name ``AutoPrune(importance=...)`` accepts (besides a path to a ``.skops`` model file).
SCORERS = ("learned", *BASELINE_SCORERS)


@dataclass
class ScoreInputs:
    """Everything a scorer may look at, keyed by parameter name (in the model's parameter order).

    The fields after ``generator`` are filled only for scorers whose ``needs_context`` is true
    (the learned scorer); baseline scorers see ``None`` there.

    Attributes:
        weights: the current weights (already masked), detached.
        masks: ``True`` where a weight is still kept.
        grad_mean: mean calibration gradient per weight, if gathered.
        grad_sq_mean: mean squared per-batch calibration gradient (a Fisher diagonal), if gathered.
        generator: the caller's seeded generator, for scorers that draw random numbers.
        target_sparsity: the overall sparsity this pruning event must reach.
        progress: training progress at the event, ``current_epoch / max_epochs`` in ``[0, 1]``.
        exp_avg_sq: the optimizer's second-moment estimate per weight (Adam-style), if it has one.
        initial_weights: the weights when fitting started.
        movement: ``-sum_t w_t * g_t`` over the optimizer steps since the previous event
            (movement pruning, Sanh et al. 2020).
        input_norms: per tensor, the L2 norm over calibration samples of each input unit feeding
            it, shaped ``(fan_in,)`` (Linear inputs, Conv input channels); missing where unknown.
        output_norms: per tensor, the L2 norm over calibration samples of each output unit,
            shaped ``(fan_out,)``; missing where unknown.
        params: the live parameters. A scorer may zero entries in place to measure an ablation,
            but must restore them before returning.
        loss_fn: mean loss, accumulated in float64, on held-out calibration batches (drawn from the
            training data, disjoint from the gradient batches) at the live parameters.
        cost_weights: structured pruning towards a FLOPs target: per parameter, what one of its
            entries costs (FLOPs per sample); ``None`` when the target counts parameters.
    """

    weights: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]
    grad_mean: Mapping[str, Tensor] | None = None
    grad_sq_mean: Mapping[str, Tensor] | None = None
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    target_sparsity: float = 0.0
    progress: float = 0.0
    exp_avg_sq: Mapping[str, Tensor] | None = None
    initial_weights: Mapping[str, Tensor] | None = None
    movement: Mapping[str, Tensor] | None = None
    input_norms: Mapping[str, Tensor] | None = None
    output_norms: Mapping[str, Tensor] | None = None
    params: Mapping[str, Tensor] | None = None
    loss_fn: Callable[[], float] | None = None
    cost_weights: Mapping[str, float] | None = None


class Scorer(Protocol):
    """The one contract every importance scorer meets."""

    #: Whether :meth:`score` needs ``grad_mean``/``grad_sq_mean`` (calibration batches).
    needs_gradients: bool
    #: Whether :meth:`score` needs the context fields of :class:`ScoreInputs` (trajectory,
    #: activations, optimizer state, live parameters and the calibration loss).
    needs_context: bool

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Return one float score tensor per weight in ``inputs.weights``, higher = keep."""
        ...


@runtime_checkable
class StatefulScorer(Protocol):
    """A scorer with state that must travel in checkpoints (the learned scorer's labelled rows)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (checkpoints are loaded with ``weights_only``)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


class MagnitudeScorer:
    """Global magnitude ``|w|`` (Han et al., 2015).

    Example:
        >>> w = {"a": torch.tensor([0.5, -2.0]), "b": torch.tensor([1.0])}
        >>> m = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
        >>> MagnitudeScorer().score(ScoreInputs(w, m))
        {'a': tensor([0.5000, 2.0000]), 'b': tensor([1.])}
    """

    needs_gradients = False
    needs_context = False

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Absolute weight values."""
        return {name: w.detach().abs().float() for name, w in inputs.weights.items()}


class LampScorer:
    """Layer-adaptive magnitude-based pruning (LAMP; Lee et al., ICLR 2021).

    Within a layer, sort the kept weights by ``w**2`` ascending; a weight's score is its ``w**2``
    divided by the sum of ``w**2`` over itself and every larger weight of the same layer. The
    largest kept weight of every layer scores 1, so global ranking never empties a layer, and
    layers get sparsity in proportion to how much distortion pruning them causes. Pruned weights
    score 0.

    Example:
        >>> w = {"a": torch.tensor([1.0, 2.0, 2.0]), "b": torch.tensor([3.0])}
        >>> m = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
        >>> LampScorer().score(ScoreInputs(w, m))
        {'a': tensor([0.1111, 0.5000, 1.0000]), 'b': tensor([1.])}
    """

    needs_gradients = False
    needs_context = False

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """LAMP scores, 0 for already pruned weights."""
        return {name: lamp_scores(w, inputs.masks[name]) for name, w in inputs.weights.items()}


def lamp_scores(weight: Tensor, mask: Tensor) -> Tensor:
    """LAMP score of every entry of one layer; see :class:`LampScorer`.

    Ties are ordered by index (a stable sort), so equal weights get distinct but deterministic
    scores.
    """
    sq = weight.detach().float().pow(2).reshape(-1) * mask.reshape(-1).to(weight.device)
    order = torch.sort(sq, stable=True).indices
    sorted_sq = sq[order]
    suffix = sorted_sq.flip(0).cumsum(0).flip(0)
    sorted_scores = torch.where(suffix > 0, sorted_sq / suffix.clamp_min(torch.finfo(sq.dtype).tiny), 0.0)
    scores = torch.empty_like(sq)
    scores[order] = sorted_scores
    return scores.view_as(weight)


class TaylorScorer:
    """First-order Taylor importance (Molchanov et al., 2019), from calibration batches.

    The root mean square over calibration batches of ``|g_b * w|``, that is
    ``|w| * sqrt(E_b[g_b ** 2])``: the expected first-order change of the loss when the weight is
    removed, estimated per batch so that gradients which cancel on average still count.

    Example:
        >>> w = {"a": torch.tensor([1.0, -2.0])}
        >>> m = {"a": torch.tensor([True, True])}
        >>> TaylorScorer().score(ScoreInputs(w, m, grad_sq_mean={"a": torch.tensor([4.0, 0.25])}))
        {'a': tensor([2., 1.])}
    """

    needs_gradients = True
    needs_context = False

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Taylor scores; needs ``grad_sq_mean``."""
        if inputs.grad_sq_mean is None:
            raise ValueError("The `taylor` scorer needs calibration gradients (`grad_sq_mean`), got None.")
        fisher = inputs.grad_sq_mean
        return {name: taylor_scores(w.detach().float(), fisher[name].float()) for name, w in inputs.weights.items()}


def taylor_scores(weight: Tensor, fisher: Tensor) -> Tensor:
    """First-order Taylor score of one tensor, ``|w| * sqrt(F)``; see :class:`TaylorScorer`.

    Example:
        >>> taylor_scores(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25]))
        tensor([2., 1.])
    """
    return weight.abs() * fisher.sqrt()


class RandomScorer:
    """Uniform random scores from the caller's seeded generator: the control every method must beat."""

    needs_gradients = False
    needs_context = False

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Random scores in ``[0, 1)``; reproducible given the generator state."""
        return {
            name: torch.rand(w.shape, generator=inputs.generator).to(w.device) for name, w in inputs.weights.items()
        }


def make_scorer(importance: str, *, estimator: str | None = None, label_groups: int = 128) -> Scorer:
    """Build the scorer named ``importance`` (or the learned scorer from a ``.skops`` model file).

    Args:
        importance: one of :data:`SCORERS`, or a path ending in ``.skops``.
        estimator: for ``"learned"`` only: import path of a scikit-learn estimator to fit from scratch.
        label_groups: for the learned scorer only: group ablations per pruning event.

    Example:
        >>> type(make_scorer("lamp")).__name__
        'LampScorer'
        >>> make_scorer("l1")
        Traceback (most recent call last):
        ...
        ValueError: `importance` must be one of 'learned', 'magnitude', 'lamp', 'taylor', 'random' or a path to a ...
    """
    scorers: dict[str, type[Scorer]] = {
        "magnitude": MagnitudeScorer,
        "lamp": LampScorer,
        "taylor": TaylorScorer,
        "random": RandomScorer,
    }
    learned = importance == "learned" or importance.endswith(".skops")
    if not learned and importance not in scorers:
        allowed = ", ".join(repr(name) for name in SCORERS)
        raise ValueError(
            f"`importance` must be one of {allowed} or a path to a .skops importance model, got {importance!r}."
        )
    if not learned and estimator is not None:
        raise ValueError(
            f"`estimator` only applies to importance='learned', got estimator={estimator!r} with "
            f"importance={importance!r}."
        )
    if learned:
        from lightning_autoprune.learned import LearnedScorer

        model_path = None if importance == "learned" else importance
        return LearnedScorer(estimator=estimator, model_path=model_path, label_groups=label_groups)
    return scorers[importance]()
