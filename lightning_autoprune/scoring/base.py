"""The scoring contract: what a scorer is given (:class:`ScoreInputs`) and what it must offer.

A scorer maps a :class:`ScoreInputs` (weights, current masks and, for gradient scorers, calibration
gradient statistics) to one score tensor per target, shaped like its weight (:class:`Scorer`), or,
for structured pruning, one key per unit of every unit group (:class:`UnitScorer`). Higher means
more important. Scores are comparable *across* tensors, because
:mod:`lightning_autoprune.core.selection` ranks them globally: a scorer whose raw values differ in
scale between layers normalises them itself (LAMP does).

Every scorer offers the same members, so its caller never has to probe it: whether it needs
calibration gradients or context, a settable ``progress`` callable for long measurements, its
per-event ``diagnostics`` and its ``feature_importances()``. Formula scorers fill them trivially
(:class:`FormulaMixin`). Scorers whose state must travel in checkpoints also meet
:class:`StatefulScorer`; formula scorers do not, so their checkpoint entry stays ``None``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from lightning_autoprune.structured import UnitGroup

#: Receives the current progress of long work as ``progress(message, done)``; ``done`` is true on the
#: last call of that work, so a caller can keep one updating line (the callback does, when verbose).
Progress = Callable[[str, bool], None]


class AblationLoss(Protocol):
    """``loss_fn``'s loss, cheaper in passes where only a few tensors differ from a recorded state.

    :class:`lightning_autoprune.core.replay.LayerReplay` is the implementation an event provides.
    """

    def record(self) -> float:
        """The loss now; later :meth:`changing` passes start from this state."""

    def changing(self, names: Collection[str], zeroed: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> float:
        """The loss now, when only the tensors ``names`` differ from their state at :meth:`record`.

        ``zeroed``, when given: the difference is these entries set to zero (per tensor, the flat
        positions and the values they held).
        """

    def clear(self) -> None:
        """Forget the recorded state."""


@dataclass
class ScoreInputs:
    """Everything a scorer may look at, keyed by parameter name (in the model's parameter order).

    The fields after ``generator`` are filled only for scorers whose ``needs_context`` is true
    (the learned scorers); formula scorers see ``None`` there, except ``input_norms``,
    ``output_norms`` and ``input_rms``, which a scorer whose ``needs_activations`` is true (``wanda``)
    also gets.

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
        input_rms: per tensor, the root mean square of each input unit over the rows its layer
            saw (samples, times positions for a Conv or a sequence), shaped like ``input_norms``.
        params: the live parameters. A scorer may zero entries in place to measure an ablation,
            but must restore them before returning.
        loss_fn: mean loss, accumulated in float64, on held-out calibration batches (drawn from the
            training data, disjoint from the gradient batches) at the live parameters.
        cost_weights: structured pruning towards a FLOPs target: per parameter, what one of its
            entries costs (FLOPs per sample); ``None`` when the target counts parameters.
        min_density: the per-layer floor of the event's selection (``min_layer_density``), for
            scorers that build the masks of candidate steps.
        trained_samples: training samples the fit has seen before this event (every epoch so
            far), for scorers whose measurements are budgeted against training; ``None``: unknown.
        loss_samples: calibration samples one call of ``loss_fn`` evaluates; ``None``: unknown.
        ablation_loss: the loss of ``loss_fn`` on its first ``ablation_samples`` samples, for passes
            that change only a few tensors from a recorded state (ablations): it skips the layers
            that run before them. ``None``: ablations call ``loss_fn``.
        ablation_samples: calibration samples one call of ``ablation_loss`` evaluates; ``None``: as
            many as ``loss_fn`` (``loss_samples``).
        probe_fn: ``probe_fn(n, start=0)`` is the loss of a whole step: like ``loss_fn`` on (at
            most) ``n`` of its samples from ``start`` on, the same ones at every call, with
            BatchNorm layers using each batch's statistics (the loss after they are
            re-estimated). ``None``: unavailable.
        transposed: names of the 2-D weights stored ``[in, out]`` (transformers' ``Conv1D``):
            their output units run along dim 1 and their input units along dim 0. Every other
            weight has output units along dim 0 and input units along dim 1.

    Example:
        >>> inputs = ScoreInputs({"a": torch.ones(2)}, {"a": torch.ones(2, dtype=torch.bool)})
        >>> inputs.grad_sq_mean is None, inputs.target_sparsity
        (True, 0.0)
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
    input_rms: Mapping[str, Tensor] | None = None
    params: Mapping[str, Tensor] | None = None
    loss_fn: Callable[[], float] | None = None
    cost_weights: Mapping[str, float] | None = None
    min_density: float = 0.0
    trained_samples: int | None = None
    loss_samples: int | None = None
    ablation_loss: AblationLoss | None = None
    ablation_samples: int | None = None
    probe_fn: Callable[..., Callable[[], float]] | None = None
    transposed: Set[str] = frozenset()

    @property
    def samples_per_ablation(self) -> int | None:
        """Calibration samples one ablation pass evaluates: ``ablation_samples``, else ``loss_samples``.

        Example:
            >>> ScoreInputs({}, {}, loss_samples=512).samples_per_ablation
            512
            >>> ScoreInputs({}, {}, loss_samples=512, ablation_samples=256).samples_per_ablation
            256
        """
        return self.ablation_samples if self.ablation_samples is not None else self.loss_samples

    @functools.cached_property
    def kept(self) -> dict[str, int]:
        """Weights still kept per tensor, counted once (the masks do not change during an event).

        Example:
            >>> ScoreInputs({"a": torch.ones(3)}, {"a": torch.tensor([True, False, True])}).kept
            {'a': 2}
        """
        return {name: int(torch.count_nonzero(mask)) for name, mask in self.masks.items()}


class ScorerBase(Protocol):
    """The members every scorer offers, weight or unit, formula or learned."""

    #: Whether scoring needs ``grad_mean``/``grad_sq_mean`` (calibration batches).
    needs_gradients: bool
    #: Whether scoring needs the context fields of :class:`ScoreInputs` (trajectory, activations,
    #: optimizer state, live parameters and the calibration loss).
    needs_context: bool
    #: Whether scoring needs ``input_norms``/``output_norms`` (a forward pass over calibration
    #: batches with activation hooks). Implied by ``needs_context``.
    needs_activations: bool
    #: Receives progress lines during long measurements; ``None``: quiet.
    progress: Progress | None
    #: One dict per pruning event that checked a learned model (empty for formulas). The caller
    #: may add keys (the callback adds ``"epoch"``) to the last one.
    diagnostics: list[dict[str, Any]]

    def feature_importances(self) -> dict[str, float] | None:
        """Importance of each input feature of a learned model, for the report's last diagnostics entry.

        ``{}`` for formulas and before any fit; ``None`` where a scorer reports none at all (the
        learned unit scorer), so that the caller adds nothing to its diagnostics.
        """
        ...


class Scorer(ScorerBase, Protocol):
    """The one contract every weight (unstructured) importance scorer meets."""

    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Return one float score tensor per weight in ``inputs.weights``, higher = keep."""
        ...


class UnitScorer(ScorerBase, Protocol):
    """The contract of unit (structured) importance scorers."""

    def score_units(self, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
        """Return, per unit group, one float64 key per unit, higher = keep."""
        ...


@runtime_checkable
class StatefulScorer(Protocol):
    """A scorer with state that must travel in checkpoints (the learned scorers' labelled rows)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (checkpoints are loaded with ``weights_only``)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


class FormulaMixin:
    """The scorer members a formula fills trivially: no progress lines, no diagnostics, no features.

    It deliberately has no ``state_dict``, so a formula scorer is not a :class:`StatefulScorer`.

    Example:
        >>> formula = FormulaMixin()
        >>> formula.diagnostics, formula.feature_importances(), isinstance(formula, StatefulScorer)
        ([], {}, False)
    """

    needs_gradients: bool = False
    needs_context: bool = False
    needs_activations: bool = False

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.diagnostics: list[dict[str, Any]] = []

    def feature_importances(self) -> dict[str, float]:
        """Formulas have no input features: ``{}``."""
        return {}
