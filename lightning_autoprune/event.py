"""One pruning event, without a Trainer: calibrate, score, select.

:class:`EventPipeline` turns the state of training into the masks of the next step. It draws
calibration batches, gathers gradient statistics (and, for the learned scorer, activations, the
trajectory and a held-out loss), asks the scorer for scores (per weight) or keys (per structured
unit), and lets the engine's selector pick the masks. What it needs from the running training
comes as a :class:`TrainingAccess`, which :mod:`lightning_autoprune.trainer` builds from the
Trainer; tests and benchmarks can build one from a plain module and loader.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_autoprune import structured
from lightning_autoprune.config import AutoPruneConfig
from lightning_autoprune.control.controller import ToleranceSearch
from lightning_autoprune.core import calibration
from lightning_autoprune.core.engine import PruningEngine
from lightning_autoprune.core.flops import flop_targets, macs_per_weight
from lightning_autoprune.core.replay import LayerReplay
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned.priors import CUT_SAMPLE

#: Batch size of the held-out calibration batches the learned scorer's ablations run on: every
#: ablation evaluates all of them, so few large batches cost far less than many small ones.
LABEL_BATCH_SIZE = 512
#: Calibration samples per set when ``calibration_samples=None`` and the training set is large enough.
DEFAULT_CALIBRATION_SAMPLES = 512
#: On a model of more prunable weights than this, the learned scorer's group ablations run on the first
#: half of the held-out samples (:func:`ablation_samples`). The same bound as the exact cuts
#: (:data:`~lightning_autoprune.scoring.learned.priors.CUT_SAMPLE`): a model below it keeps every result.
HALF_ABLATIONS_ABOVE = CUT_SAMPLE


def ablation_samples(held_out: int, prunable_weights: int) -> int:
    """How many of the ``held_out`` samples the learned scorer's group ablations run on: the first ones.

    All of them on a model of at most :data:`HALF_ABLATIONS_ABOVE` prunable weights; the first half
    (at least one) on a larger one, where the ablation passes are most of an event's time (on 2 CPU
    threads, 8 of the 12 s of a 25M-weight event with 512; 4.9-6.4 of 8.2-11.5 s with 256). The cost in
    precision was measured on the protocol's MNIST-1D models with every ablation on 256 of the 512
    samples (unbudgeted, 98%, 10 seeds): the MLP 0.58 and 0.53 points lower on the mean (two draws
    of the calibration samples; not significant), the CNN 1.77 and 0.47 higher, each smaller than
    the change that another draw of 512 samples made (per-seed standard deviation 3.1 and 10.3
    points). Candidate steps are still measured on every held-out sample.

    Example:
        >>> ablation_samples(512, 1_000_000), ablation_samples(512, 25_000_000), ablation_samples(1, 25_000_000)
        (512, 256, 1)
    """
    if prunable_weights <= HALF_ABLATIONS_ABOVE:
        return held_out
    return max(1, held_out // 2)


Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class TrainingAccess:
    """What one event needs from the running training.

    Attributes:
        module: the model being trained (a LightningModule under the callback).
        loader: returns the training ``DataLoader``; its argument names what needs it, for the error.
        loss_fn: ``loss(batch, batch_idx)``, the scalar training loss of a batch.
        second_moments: Adam-style ``exp_avg_sq`` of the given parameters, or ``None``.
        example_inputs: what the model is called with, ``(args, kwargs)``.
        progress: training progress at the event, in ``[0, 1]``.
        trained_samples: training samples seen before the event (every epoch so far), or
            ``None`` where unknown; the learned scorer's label budget is a share of it.
    """

    module: nn.Module
    loader: Callable[[str], DataLoader]
    loss_fn: Callable[[Any, int], Tensor]
    second_moments: Callable[[Mapping[str, Tensor]], dict[str, Tensor] | None]
    example_inputs: Callable[[], Inputs]
    progress: float
    trained_samples: int | None = None


class EventPipeline:
    """Scores and selects the masks of pruning events; see the module docstring.

    Args:
        config: the callback's configuration.
        engine: the masks, and the selector that turns scores into masks.
        scorer: a weight scorer, or a unit scorer for ``granularity="structured"``.
        positions: output positions of each Linear/Conv target, by parameter name (FLOPs).
        say: prints a progress line (``None``: quiet).
    """

    def __init__(
        self,
        config: AutoPruneConfig,
        engine: PruningEngine,
        scorer: Any,
        positions: Mapping[str, int],
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.scorer = scorer
        self.positions = positions
        self.say = say
        self.unit_groups: list[structured.UnitGroup] | None = None  # structured: traced before training
        self._example: Inputs | None = None

    def example_inputs(self, access: TrainingAccess) -> Inputs:
        """The model's example inputs, found once."""
        if self._example is None:
            self._example = access.example_inputs()
        return self._example

    def compute_masks(
        self,
        access: TrainingAccess,
        epoch: int,
        target: float,
        generator: torch.Generator,
        search: ToleranceSearch | None = None,
    ) -> dict[str, Tensor] | None:
        """Score and select: the new masks, or ``None`` if the event must be skipped (non-finite inputs).

        ``generator`` (the callback's, seeded) draws the calibration batches and random scores.

        In the automatic mode (``search``), the scores are kept with the search, and after a
        rollback the next step reuses them instead of scoring again (see
        :class:`~lightning_autoprune.control.controller.ToleranceSearch`).
        """
        weights = self.engine.weights
        if _skip_non_finite(weights, epoch, "tensor"):
            return None
        if search is not None and search.reuse_scores and search.scores is not None:
            search.reuse_scores = False
            if self.say is not None:
                self.say(
                    "[AutoPrune] reusing the scores of the rolled-back step: this smaller step removes the "
                    "lowest-ranked part of what it removed."
                )
            return self.select(access, search.scores, target)
        if search is not None:
            search.reuse_scores = False
            search.scores = None
        inputs = ScoreInputs(
            weights=weights,
            masks=self.engine.masks,
            generator=generator,
            target_sparsity=target,
            progress=access.progress,
            min_density=self.config.min_layer_density,
            transposed=frozenset(t.name for t in self.engine.targets if t.transposed),
        )
        if self.scorer.needs_gradients or self.scorer.needs_context:
            self._calibrate(access, inputs, generator)
            assert inputs.grad_sq_mean is not None
            if _skip_non_finite(inputs.grad_sq_mean, epoch, "the calibration gradient of"):
                return None
        elif self.scorer.needs_activations:
            self._record_activations(access, inputs, generator)
        # Scorers that measure ablations call `inputs.loss_fn` many times: enter eval mode and mute
        # logging once around the whole scoring, not around every call. Their scikit-learn fits
        # run on one BLAS thread: small matrix products gain nothing from more, and BLAS threads
        # spinning against torch's own thread pool made a 10 ms ridge fit take 0.5 s.
        scoring_context = contextlib.ExitStack()
        if self.scorer.needs_context:
            from threadpoolctl import threadpool_limits

            scoring_context.enter_context(calibration.evaluation_mode(access.module))
            scoring_context.enter_context(calibration.muted_logging(access.module))
            scoring_context.enter_context(threadpool_limits(limits=1, user_api="blas"))
        with scoring_context:
            if self.config.structured:
                groups = self.traced_groups(access)
                inputs.cost_weights = self.cost_weights()
                scores = self.scorer.score_units(groups, inputs)
            else:
                scores = self.scorer.score(inputs)
        if search is not None:
            search.scores = {name: score.detach().clone() for name, score in scores.items()}
        return self.select(access, scores, target)

    def select(self, access: TrainingAccess, scores: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """Masks from scores (per weight) or keys (per structured unit), at ``target`` sparsity."""
        if self.config.structured:
            self.engine.selector = structured.UnitSelector(
                self.traced_groups(access), self.config.min_layer_density, self.cost_weights(), self.config.round_to
            )
        return self.engine.select(scores, target)

    def cost_weights(self) -> dict[str, float] | None:
        """What one mask entry of each tensor costs towards the target: ``None`` (1 each) for ``"params"``."""
        if self.config.target_unit == "params":
            return None
        targets = self.engine.targets
        weights = macs_per_weight(targets, self.positions)
        if weights is None:
            missing = [t.name for t in flop_targets(targets) if t.name not in self.positions]
            raise ValueError(
                "target_unit='flops' needs the output size of every pruned Linear/Conv layer, but these never ran "
                f"a forward pass: {', '.join(missing) or 'none is a Linear/Conv layer'}. HINT: use "
                "target_unit='params', or exclude the layers the model does not call."
            )
        return weights

    def progress(self) -> float:
        """The masks' sparsity in the unit of the target (parameters or FLOPs)."""
        return self.engine.mask_progress(self.cost_weights()) if self.engine.pruned else 0.0

    def traced_groups(self, access: TrainingAccess) -> list[structured.UnitGroup]:
        """The unit groups, traced once with Torch-Pruning on the model's own inputs.

        The callback calls this before the first epoch trains (``on_train_start``), so a model
        with nothing to prune fails there, not at the first pruning event.

        Raises:
            ValueError: if no unit can be pruned (the message names every candidate layer and
                why it is kept), or if Torch-Pruning cannot trace the model.
        """
        if self.unit_groups is not None:
            return self.unit_groups
        args, kwargs = self.example_inputs(access)
        prunable = {t.name for t in self.engine.targets if t.param_name == "weight"}
        try:
            groups, kept = structured.find_unit_groups(
                access.module, args, prunable=prunable, forward_fn=lambda m, a: m(*a, **kwargs)
            )
        except ValueError as err:
            raise ValueError(
                f"granularity='structured' cannot prune this model: {err} HINT: use granularity='unstructured'."
            ) from err
        if not groups:
            unsupported = structured.unsupported_layers(access.module)
            raise ValueError(
                "granularity='structured' found no unit it can prune. The candidates, and why each is kept: "
                f"{', '.join(kept) or 'none (no selected Linear, Conv1D or ordinary Conv layer)'}."
                + (f" Layers structured pruning does not handle: {'; '.join(unsupported)}." if unsupported else "")
                + " HINT: use granularity='unstructured'."
            )
        if kept:
            warnings.warn(
                f"AutoPrune (granularity='structured') keeps every unit of: {', '.join(kept)}.",
                UserWarning,
                stacklevel=2,
            )
        self.unit_groups = groups
        return groups

    def _record_activations(self, access: TrainingAccess, inputs: ScoreInputs, generator: torch.Generator) -> None:
        """Fill ``input_norms``/``output_norms`` from forward passes over calibration batches (no gradients)."""
        loader = access.loader(f"importance={self.config.importance!r}")
        batches = calibration.calibration_batches(loader, self._calibration_size(loader), generator)
        assert isinstance(batches, list)
        recorder = calibration.ActivationRecorder(self._weight_layers())
        with calibration.evaluation_mode(access.module), calibration.muted_logging(access.module), recorder:
            calibration.mean_loss(access.loss_fn, batches)
        inputs.input_norms = recorder.input_norms()
        inputs.output_norms = recorder.output_norms()
        inputs.input_rms = recorder.input_rms()

    def _weight_layers(self) -> dict[str, nn.Module]:
        """The module owning each ``weight`` target, by parameter name (what activation hooks attach to)."""
        return {t.name: t.module for t in self.engine.targets if t.param_name == "weight"}

    def _calibrate(self, access: TrainingAccess, inputs: ScoreInputs, generator: torch.Generator) -> None:
        """Fill the calibration fields of ``inputs``: gradient statistics, and the context a learned scorer uses."""
        module = access.module
        loader = access.loader(f"importance={self.config.importance!r}")
        params = {t.name: t.param for t in self.engine.targets}
        samples = self._calibration_size(loader)
        if not self.scorer.needs_context:
            batches = calibration.calibration_batches(loader, samples, generator)
            assert isinstance(batches, list)
            with calibration.evaluation_mode(module), calibration.muted_logging(module):
                inputs.grad_mean, inputs.grad_sq_mean = calibration.gradient_statistics(access.loss_fn, batches, params)
            return
        drawn = calibration.calibration_batches(
            loader,
            samples,
            generator,
            holdout=samples,
            holdout_batch_size=max(loader.batch_size or 1, LABEL_BATCH_SIZE),
        )
        assert isinstance(drawn, tuple)
        feature_batches, label_batches = drawn
        recorder = calibration.ActivationRecorder(self._weight_layers())
        with calibration.evaluation_mode(module), calibration.muted_logging(module), recorder:
            inputs.grad_mean, inputs.grad_sq_mean = calibration.gradient_statistics(
                access.loss_fn, feature_batches, params
            )
        inputs.input_norms = recorder.input_norms()
        inputs.output_norms = recorder.output_norms()
        inputs.input_rms = recorder.input_rms()
        inputs.initial_weights = self.engine.initial_weights
        inputs.movement = self.engine.movement
        inputs.params = {name: p.data for name, p in params.items()}
        inputs.exp_avg_sq = access.second_moments(params)
        loss_fn = access.loss_fn
        inputs.loss_fn = lambda: calibration.mean_loss(loss_fn, label_batches)  # inside the scoring context
        inputs.loss_samples = samples
        inputs.ablation_samples = ablation_samples(samples, sum(p.numel() for p in params.values()))
        halved = inputs.ablation_samples < samples
        ablated_on = calibration.first_samples(label_batches, inputs.ablation_samples) if halved else label_batches
        inputs.ablation_loss = LayerReplay(module, loss_fn, ablated_on, params)

        def probe_fn(count: int, start: int = 0) -> Callable[[], float]:
            probe = calibration.first_samples(label_batches, count, start)
            if len(probe) > 1 and calibration.batch_size(probe[-1]) == 1:
                probe = probe[:-1]  # BatchNorm cannot take a batch's statistics from one sample

            def probe_loss() -> float:
                with calibration.batch_statistics(module):
                    return calibration.mean_loss(loss_fn, probe)

            return probe_loss

        inputs.probe_fn = probe_fn
        inputs.trained_samples = access.trained_samples

    def _calibration_size(self, loader: DataLoader) -> int:
        """``calibration_samples``, or the default: 512, capped by what the training set can supply."""
        if self.config.calibration_samples is not None:
            return self.config.calibration_samples
        try:
            size = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset: batches are taken from the loader
            return DEFAULT_CALIBRATION_SAMPLES
        sets = 2 if self.scorer.needs_context else 1
        return max(1, min(DEFAULT_CALIBRATION_SAMPLES, size // sets))


def _skip_non_finite(tensors: Mapping[str, Tensor], epoch: int, what: str) -> bool:
    """Warn and return ``True`` when a tensor holds NaN or inf (the event is then skipped)."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            warnings.warn(
                f"AutoPrune skipped the pruning event of epoch {epoch}: {what} {name!r} holds NaN or inf.",
                UserWarning,
                stacklevel=3,
            )
            return True
    return False
