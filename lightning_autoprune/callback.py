"""The ``AutoPrune`` Lightning callback: gates, delegation, state and logging calls only.

All maths lives in pure modules: :mod:`~lightning_autoprune.core.targets` (which tensors),
:mod:`~lightning_autoprune.scoring` (scores), :mod:`~lightning_autoprune.core.selection` (masks from
scores), :mod:`~lightning_autoprune.control.schedule` (when and how much) and
:mod:`~lightning_autoprune.core.masks` (enforcement and packing).
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_autoprune import reporting, scoring, structured
from lightning_autoprune.control import schedule as schedules
from lightning_autoprune.control import search as tolerance
from lightning_autoprune.core import calibration, masks, selection
from lightning_autoprune.core.targets import PruneTarget, resolve_targets, structured_targets
from lightning_autoprune.scoring import StatefulScorer

#: Version of the layout of :meth:`AutoPrune.state_dict`. Bump on incompatible changes.
STATE_VERSION = 1
#: Batch size of the held-out calibration batches the learned scorer's ablations run on: every
#: ablation evaluates all of them, so few large batches cost far less than many small ones.
LABEL_BATCH_SIZE = 512
#: Calibration samples per set when ``calibration_samples=None`` and the training set is large enough.
DEFAULT_CALIBRATION_SAMPLES = 512

_GRANULARITIES = ("unstructured", "structured")
_TARGET_UNITS = ("params", "flops")
#: Layers whose weights cost FLOPs per output position (``2 * weights * positions`` per sample).
_FLOP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MODES = ("max", "min")


class AutoPrune(Callback):
    r"""Prune a LightningModule while it trains: scores, masks and a schedule, from one callback.

    At the start of each scheduled epoch (that is, after the previous epoch trained and was
    validated) the callback scores every prunable weight, prunes the lowest-scoring ones globally
    until the scheduled sparsity is met, and keeps them at exactly zero after every optimizer step.
    Sparsity grows on the schedule from ``start_epoch`` to ``target_sparsity`` at ``end_epoch``,
    then holds while the model fine-tunes. The checkpointed ``state_dict`` keeps the model's own
    keys (pruned entries are zeros), and the callback's own state holds the masks, so
    ``trainer.fit(..., ckpt_path=...)`` resumes exactly.

    Logged through ``pl_module.log``, so every Lightning logger receives them:
    ``autoprune/sparsity`` (fraction of prunable weights that are exactly zero),
    ``autoprune/target_sparsity``, ``autoprune/scheduled_sparsity``, one
    ``autoprune/sparsity/<parameter name>`` per pruned tensor, and at each pruning event
    ``autoprune/metric_before`` and ``autoprune/metric_after`` (the monitored metric at the last
    validation before the event, and at the first validation after it).

    Args:
        target_sparsity: fraction of the prunable weights to remove, in ``[0, 1)``. ``None`` (the
            default) prunes as far as the monitored validation metric allows: within
            ``max_metric_drop`` of the dense reference, with rollback of steps that break it.
        max_metric_drop: automatic mode: allowed drop of the monitored metric in its own units
            (0.01 = 1 point of accuracy). Before the first step a warning says when the monitored
            accuracy's sampling standard error on the validation samples is at least half of it,
            because steps are then judged partly on noise.
        monitor: the validation metric to report around pruning events. ``None`` picks a
            validation accuracy-like metric (``val_acc``...) if one is logged, else ``val_loss``.
        mode: whether larger (``"max"``) or smaller (``"min"``) ``monitor`` values are better.
            ``None`` infers it: ``"min"`` for names containing ``loss`` or ``error``, else ``"max"``.
        importance: how weights are scored. ``None`` (the default): ``"learned"`` for
            unstructured pruning and ``"magnitude"`` (the group norm) for structured pruning, where
            it measured best and the learned unit scorer worst (BENCHMARKS.md, structured track).
            ``"learned"``: a scikit-learn model predicts each weight's loss change from its features
            (magnitude, gradients, movement, activations, layer context), trained on group
            ablations measured during the run on calibration batches, checked against the formulas
            below on held-out ablations and blended with (or replaced by) the best of them. A
            path to a ``.skops`` file starts from that importance model instead of the shipped
            one. Formulas: ``"lamp"``
            (layer-adaptive magnitude), ``"magnitude"`` (global ``|w|``), ``"taylor"``
            (``|g * w|`` on calibration batches) or ``"random"``.
        estimator: ``importance="learned"`` only: import path of a scikit-learn regressor or
            classifier fitted from scratch on the run's own labels (for example
            ``sklearn.ensemble.HistGradientBoostingRegressor``). ``None``: start from the shipped
            pretrained importance model and refine it during the run.
        label_groups: ``importance="learned"`` only: group ablations measured per pruning event
            (each is one forward pass over ``calibration_samples`` held-out training samples).
        granularity: ``"unstructured"`` prunes single weights. ``"structured"`` prunes whole
            neurons (Linear outputs) and channels (Conv outputs), with every coupled slice
            (bias, BatchNorm ``gamma``/``beta``, the next layer's input columns, branches joined
            by a residual addition) pruned together, traced with Torch-Pruning on what
            ``training_step`` passes the model for one training batch (or
            ``example_input_array``). Sparsity then counts the parameters of
            those tensors (or their FLOPs, see ``target_unit``); ``importance`` must be
            ``"magnitude"`` (the structured default: the unit's squared L2 norm over every coupled
            weight slice, layer-normalised), ``"taylor"`` (group Taylor per parameter or FLOP
            removed), ``"learned"`` (single-unit ablations near the frontier teach a
            scikit-learn model, checked against Taylor on held-out units) or ``"random"``.
        target_unit: what ``target_sparsity`` (and the automatic mode's sparsity) counts:
            ``"params"``, the prunable parameters removed, or ``"flops"`` (``granularity="structured"``
            only), the multiply-accumulates of the pruned Linear and Conv layers removed per sample,
            measured from their output sizes on the first forward pass. With ``"flops"`` the
            ``"taylor"`` and ``"learned"`` unit keys are per FLOP saved (``"magnitude"`` keys do
            not depend on cost); ``autoprune/flops_sparsity`` is logged.
        round_to: ``granularity="structured"`` only: every pruned layer keeps a multiple of this
            many neurons or channels (layers of at most ``round_to`` units stay whole), because
            CPU vector units and GPU tensor cores run such widths faster: on the MNIST-1D CNN at
            batch 256 and 1 thread, ``round_to=8`` models with 2.12x fewer FLOPs ran 2.53x faster
            than dense and unrounded ones with 2.39x fewer ran 2.39x faster (BENCHMARKS.md,
            structured track).
            Each event's selection is rounded per layer to the nearest multiple that keeps the
            target from being overshot, so it is met more coarsely. 1: any width.
        compact_on_fit_end: ``granularity="structured"`` only: at the end of fit, physically
            remove the pruned units (:func:`lightning_autoprune.compact`), keep the smaller model
            as ``callback.compacted_model`` and save it (``torch.save`` of the module, in eval
            mode) as ``compacted_model.pt`` in ``report_dir``.
        schedule: how sparsity grows between ``start_epoch`` and ``end_epoch``: ``"cubic"``
            (Zhu & Gupta 2017, fast early and gentle late), ``"linear"``, or ``"one_shot"`` (all
            at ``end_epoch``).
        start_epoch: first epoch whose start prunes. ``None``: about a tenth of ``max_epochs``
            (at least 1 when there is room).
        end_epoch: epoch at whose start the target is reached; later epochs fine-tune.
            ``None``: about two thirds of ``max_epochs``.
        frequency: prune every this many epochs between ``start_epoch`` and ``end_epoch``.
        include: glob patterns over parameter names (``"net.*.weight"``) selecting the tensors to
            prune. ``None``: every weight of Linear, Conv, Embedding, LSTM/GRU/RNN and
            MultiheadAttention layers; never biases or normalisation layers.
        exclude: glob patterns removed from the selection.
        min_layer_density: every pruned tensor keeps at least this fraction of its weights, so
            global ranking cannot empty a layer.
        calibration_samples: training samples drawn (with ``seed``) for gradient-based scorers.
            They are run through ``training_step`` in eval mode, with logging muted. The learned
            scorer draws twice as many: one set for features, a disjoint one for its labels.
            ``None``: 512, or as many as a small training set allows (half of it for the learned
            scorer). An explicit number the training set cannot supply is an error.
        seed: seeds the callback's own generator (calibration sampling, the random scorer).
        verbose: print a line at each pruning event and a summary table at the end of fit.
        report: at the end of fit, write ``report.md`` (with PNG plots) and ``summary.json`` to
            ``report_dir``.
        report_dir: where the report goes. ``None``: an ``autoprune`` folder in the Trainer's log
            directory (or its ``default_root_dir`` without a logger).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> callback = AutoPrune(target_sparsity=0.9, importance="lamp", schedule="cubic")
        >>> trainer = Trainer(max_epochs=30, callbacks=[callback], logger=False)
        >>> AutoPrune(target_sparsity=1.5)
        Traceback (most recent call last):
        ...
        ValueError: `target_sparsity` must be in [0, 1) or None, got 1.5.
    """

    def __init__(
        self,
        target_sparsity: float | None = None,
        max_metric_drop: float = 0.01,
        monitor: str | None = None,
        mode: Literal["max", "min"] | None = None,
        importance: str | None = None,
        estimator: str | None = None,
        label_groups: int = 128,
        granularity: Literal["unstructured", "structured"] = "unstructured",
        target_unit: Literal["params", "flops"] = "params",
        round_to: int = 1,
        compact_on_fit_end: bool = False,
        schedule: Literal["cubic", "linear", "one_shot"] = "cubic",
        start_epoch: int | None = None,
        end_epoch: int | None = None,
        frequency: int = 1,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        min_layer_density: float = 0.002,
        calibration_samples: int | None = None,
        seed: int = 0,
        verbose: bool = True,
        report: bool = True,
        report_dir: str | None = None,
    ) -> None:
        super().__init__()
        if importance is None:
            importance = "magnitude" if granularity == "structured" else "learned"
        _validate_arguments(
            target_sparsity=target_sparsity,
            max_metric_drop=max_metric_drop,
            mode=mode,
            granularity=granularity,
            importance=importance,
            target_unit=target_unit,
            round_to=round_to,
            compact_on_fit_end=compact_on_fit_end,
            schedule=schedule,
            start_epoch=start_epoch,
            end_epoch=end_epoch,
            frequency=frequency,
            min_layer_density=min_layer_density,
            calibration_samples=calibration_samples,
        )
        self.target_sparsity = target_sparsity
        self.max_metric_drop = max_metric_drop
        self.monitor = monitor
        self.mode = mode
        self.importance = importance
        self.estimator = estimator
        self.label_groups = label_groups
        self.granularity = granularity
        self.target_unit = target_unit
        self.round_to = round_to
        self.compact_on_fit_end = compact_on_fit_end
        self.schedule: schedules.ScheduleKind = schedule
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.frequency = frequency
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude) if exclude is not None else None
        self.min_layer_density = min_layer_density
        self.calibration_samples = calibration_samples
        self.seed = seed
        self.verbose = verbose
        self.report = report
        self.report_dir = report_dir

        self.scorer: Any = scoring.make_scorer(
            importance, granularity=granularity, estimator=estimator, label_groups=label_groups
        )
        if verbose:
            self.scorer.progress = rank_zero_info
        self.generator = torch.Generator().manual_seed(seed)
        self.targets: list[PruneTarget] = []
        self.masks: dict[str, Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.timeline: list[dict[str, Any]] = []  # one entry per trained epoch, for the report
        self.window: tuple[int, int] | None = None
        self.seconds_pruning = 0.0
        self.seconds_enforcing = 0.0
        self._handles: list[RemovableHandle] = []
        self._pending_state: dict[str, Any] | None = None
        self._resolved_monitor: tuple[str, tolerance.Mode] | None = None
        self._validated_epoch = -1
        self._pruned_any = False  # skip mask enforcement until something is pruned
        self._keep: dict[str, Tensor] = {}  # masks as 0/1 factors in each parameter's dtype (hot path)
        self._initial_weights: dict[str, Tensor] = {}  # only for scorers that need trajectory context
        self._movement: dict[str, Tensor] = {}
        self.search = tolerance.SearchState()  # the automatic mode's progress (target_sparsity=None)
        self._snapshot: dict[str, Any] | None = None  # last accepted state, for rollback (CPU memory)
        self._best_final: dict[str, Any] | None = None  # latest in-tolerance state after the search
        # Scores (or structured unit keys) of the latest automatic step, computed at the state its
        # rollback snapshot holds; after a rollback they are reused instead of scoring that state again.
        self._snapshot_scores: dict[str, Tensor] | None = None
        self._reuse_scores = False
        self._last_value: float | None = None
        # Automatic mode, dense phase: samples seen by the current validation run (None: not counting).
        self._validation_samples: int | None = None
        self._positions: dict[str, int] = {}  # output positions per sample of Linear/Conv targets (FLOPs)
        self._position_hooks: list[RemovableHandle] = []
        self._logged_decisions = 0
        self.unit_groups: list[structured.UnitGroup] | None = None  # structured: traced at the first event
        self._example: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.compacted_model: nn.Module | None = None

    # ------------------------------------------------------------------ identity and state
    def __getstate__(self) -> dict[str, Any]:
        """Pickle support (``ddp_spawn`` sends callbacks to new processes): the generator travels as bytes."""
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
        state["_handles"] = []
        state["_position_hooks"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update({**state, "generator": generator})

    @property
    def state_key(self) -> str:
        """Identifies this callback's state in a checkpoint; distinct for distinct tensor selections."""
        return self._generate_state_key(include=self.include, exclude=self.exclude)

    def state_dict(self) -> dict[str, Any]:
        """Masks (packed bits), schedule progress, generators and RNG states: tensors and primitives only.

        The global RNG states are saved too and restored when a resumed fit loads this state,
        so the resumed run draws the same data order and dropout as an uninterrupted one; that is
        what makes its later masks identical.
        """
        return {
            "version": STATE_VERSION,
            "masks": {name: masks.pack_mask(mask) for name, mask in self.masks.items()},
            "shapes": {name: list(mask.shape) for name, mask in self.masks.items()},
            "history": [dict(event) for event in self.history],
            "timeline": [dict(entry) for entry in self.timeline],
            "generator": self.generator.get_state(),
            "rng": _collect_rng_states(),
            "initial_weights": {name: t.detach().cpu() for name, t in self._initial_weights.items()},
            "movement": {name: t.detach().cpu() for name, t in self._movement.items()},
            "search": self.search.to_dict(),
            "positions": dict(self._positions),
            "scorer": self.scorer.state_dict() if isinstance(self.scorer, StatefulScorer) else None,
            # The rollback snapshot is needed after a resume only while a step awaits its decision.
            "snapshot": self._snapshot if self.search.pending is not None else None,
            "snapshot_scores": _to_cpu(self._snapshot_scores)
            if self.search.pending is not None or self._reuse_scores
            else None,
            "reuse_scores": self._reuse_scores,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the global RNG states now; masks are checked against the model and applied at train start.

        The RNG states must be back before Lightning creates the resumed epoch's training iterator
        (which draws its seeds from the global RNG); ``load_state_dict`` runs early enough.
        """
        version = state_dict.get("version")
        if not isinstance(version, int) or version > STATE_VERSION:
            raise ValueError(
                f"This checkpoint's AutoPrune state has version {version!r}; this lightning_autoprune reads "
                f"versions up to {STATE_VERSION}. HINT: upgrade lightning_autoprune to resume it."
            )
        self._pending_state = state_dict
        if "rng" in state_dict:
            _set_rng_states(state_dict["rng"])

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the tensors to prune and the schedule window; fail early on bad configuration."""
        if stage != "fit":
            return
        check_supported_strategy(trainer.strategy)
        self.targets = resolve_targets(pl_module, self.include, self.exclude)
        if self.granularity == "structured":
            self.targets, skipped = structured_targets(pl_module, self.targets)
            if skipped:
                warnings.warn(
                    "AutoPrune (granularity='structured') leaves these selected tensors unpruned: structured "
                    f"pruning handles Linear and ordinary Conv layers only: {', '.join(skipped)}.",
                    UserWarning,
                    stacklevel=2,
                )
        _check_no_overlap(self, trainer)
        self.masks = {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in self.targets}
        self.window = self._resolve_window(trainer)
        if self.automatic:
            self._check_search_budget(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply a resumed state, then hook mask enforcement onto every optimizer step."""
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        if self.scorer.needs_context and self.granularity == "unstructured" and not self._initial_weights:
            self._initial_weights = {t.name: t.param.detach().clone() for t in self.targets}
            self._movement = {t.name: torch.zeros_like(t.param, dtype=torch.float32) for t in self.targets}
        self._enforce()
        self._watch_output_positions()
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
            for target in self.targets:
                masks.zero_optimizer_state_(optimizer, target.param, self.masks[target.name])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune if the schedule asks for more sparsity this epoch; log sparsity every epoch."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if self.automatic:
            scheduled = self._search_step(trainer, pl_module, epoch)
        else:
            scheduled = self._scheduled(epoch)
            # Whole units rarely sum to the target exactly, so structured masks stop just below it;
            # they are pruned again only when the schedule moves on, not at every later epoch.
            last_target = self.history[-1]["target"] if self.history and self.granularity == "structured" else 0.0
            if scheduled > self._progress() and scheduled > last_target:
                self._prune_with_context(trainer, pl_module, epoch, scheduled)
        self._log_sparsity(pl_module, scheduled)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights, so no optimizer state builds up behind them.

        For scorers that learn from the training trajectory, also accumulate movement ``-w * g``.
        """
        start = time.perf_counter()
        if self._pruned_any:
            for target in self.targets:
                grad = target.param.grad
                if grad is not None:
                    masks.multiply_mask_(grad, self._keep[target.name])
        if self._movement:
            with torch.no_grad():
                for target in self.targets:
                    grad = target.param.grad
                    if grad is not None:
                        self._movement[target.name].sub_(target.param.detach().float() * grad.float())
        self.seconds_enforcing += time.perf_counter() - start

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Automatic mode, before the first step: count this validation's samples (for the noise check)."""
        before_first_step = not self.search.decisions and self.search.pending is None
        counting = self.automatic and not trainer.sanity_checking and before_first_step
        self._validation_samples = 0 if counting else None

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count validation samples while :meth:`on_validation_epoch_start` asked for it."""
        if self._validation_samples is not None:
            try:
                self._validation_samples += extract_batch_size(batch)
            except (MisconfigurationException, RecursionError):
                self._validation_samples = None  # an opaque batch: the noise check is skipped

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the validated epoch; in automatic mode, update the reference or decide a pending step.

        Deciding here, before ``ModelCheckpoint`` saves (Lightning runs checkpoint callbacks last),
        means a checkpoint never holds a step that is about to be rolled back.
        """
        if trainer.sanity_checking or not self.targets:
            return
        self._validated_epoch = trainer.current_epoch
        if self.automatic:
            self._search_validation(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metric after this epoch's event and any search decisions; print one line per event."""
        if not self.targets:
            return
        epoch = trainer.current_epoch
        validated = self._validated_epoch == epoch
        value = self._monitored_value(trainer) if validated else None
        event = self.history[-1] if self.history and self.history[-1]["epoch"] == epoch else None
        if event is not None and value is not None:
            event["metric_after"] = value
            _log(pl_module, "autoprune/metric_after", value)
        decisions = self._new_decisions()
        if self.automatic:
            self._log_search(pl_module, decisions)
        self.timeline.append(
            {
                "epoch": epoch,
                "sparsity": self.sparsity(),
                "target": self._shown_target(epoch),
                "metric": value,
                "decisions": [d["decision"] for d in decisions],
            }
        )
        if self.verbose:
            lines = _event_lines(epoch, event, decisions, self._monitor_name(), self.importance, self.automatic)
            for line in lines:
                rank_zero_info(line)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In automatic mode, end on a state within tolerance; print a summary of what was pruned."""
        if not self.targets:
            return
        if self.automatic:
            self._finish_search(trainer, pl_module)
        # `trainer.log_dir` broadcasts, so every rank must ask for it; only rank 0 writes.
        directory = self._report_directory(trainer) if self.report or self.compact_on_fit_end else None
        compaction = None
        if self.compact_on_fit_end and trainer.is_global_zero:
            assert directory is not None
            compaction = self._compact(trainer, pl_module, directory)
        if not (self.verbose or self.report) or not trainer.is_global_zero:
            return  # nothing shows the record; its feature importances alone cost a third of a second
        record = self.report_record(pl_module)
        if compaction is not None:
            record["compaction"] = compaction
        if self.verbose and trainer.is_global_zero:
            reporting.print_summary(record)
        if self.report and directory is not None and trainer.is_global_zero:
            reporting.write_report(record, directory)
            if self.verbose:
                rank_zero_info(f"[AutoPrune] report written to {directory / 'report.md'}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer hooks."""
        for handle in [*self._handles, *self._position_hooks]:
            handle.remove()
        self._handles.clear()
        self._position_hooks.clear()

    def _compact(self, trainer: pl.Trainer, pl_module: pl.LightningModule, directory: Path) -> dict[str, Any]:
        """Remove the pruned units physically; keep the result and save it atomically."""
        from lightning_autoprune.compact import compact, count_parameters

        self._ensure_example_inputs(trainer, pl_module)
        assert self._example is not None
        args, kwargs = self._example
        if kwargs:
            raise ValueError(
                "compact_on_fit_end traces positional inputs only, but the model was called with keyword "
                f"arguments {sorted(kwargs)}. HINT: call compact(model, example_inputs) yourself."
            )
        # Only rank 0 gets here: collectives inside `forward` (e.g. sync_dist logging) would hang.
        small = compact(pl_module, args).eval()  # a deployment artifact: call .train() to train it further
        self.compacted_model = small
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "compacted_model.pt"
        partial = path.with_name(path.name + ".partial")
        torch.save(small, partial)
        partial.replace(path)
        before, after = count_parameters(pl_module), count_parameters(small)
        if self.verbose:
            rank_zero_info(
                f"[AutoPrune] compacted model: {before:,} -> {after:,} parameters ({after / before:.1%}), saved to "
                f"{path} (load with torch.load(path, weights_only=False))"
            )
        return {"params_before": before, "params_after": after, "path": str(path)}

    # ------------------------------------------------------------------ public helpers
    @property
    def automatic(self) -> bool:
        """Whether sparsity is driven by the metric tolerance (``target_sparsity=None``)."""
        return self.target_sparsity is None

    def sparsity(self) -> float:
        """Fraction of the prunable weights that are exactly zero right now."""
        zeros, total = masks.count_zeros(t.param.detach() for t in self.targets)
        return zeros / total if total else 0.0

    def flops_sparsity(self) -> float | None:
        """Fraction of the pruned Linear/Conv layers' FLOPs per sample removed by the masks.

        ``None`` until every such layer has run once (its output size gives its FLOPs per weight).
        """
        weights = self._flops_per_weight()
        return masks.mask_sparsity(self.masks, weights) if weights is not None else None

    def _flop_targets(self) -> list[PruneTarget]:
        """The pruned Linear/Conv weights: the tensors that cost FLOPs (biases and norms do not count)."""
        return [t for t in self.targets if t.param_name == "weight" and isinstance(t.module, _FLOP_LAYERS)]

    def _flops_per_weight(self) -> dict[str, float] | None:
        """Per pruned Linear/Conv weight, the FLOPs one entry costs per sample; ``None`` until all of them ran."""
        targets = self._flop_targets()
        if not targets or any(t.name not in self._positions for t in targets):
            return None
        return {t.name: 2.0 * self._positions[t.name] for t in targets}

    def _cost_weights(self) -> dict[str, float] | None:
        """What one mask entry of each tensor costs towards the target: ``None`` (1 each) for ``"params"``."""
        if self.target_unit == "params":
            return None
        weights = self._flops_per_weight()
        if weights is None:
            missing = [t.name for t in self._flop_targets() if t.name not in self._positions]
            raise ValueError(
                "target_unit='flops' needs the output size of every pruned Linear/Conv layer, but these never ran "
                f"a forward pass: {', '.join(missing) or 'none is a Linear/Conv layer'}. HINT: use "
                "target_unit='params', or exclude the layers the model does not call."
            )
        return weights

    def _progress(self) -> float:
        """The masks' sparsity in the unit of the target (parameters or FLOPs)."""
        if not any(bool((~m).any()) for m in self.masks.values()):
            return 0.0
        return masks.mask_sparsity(self.masks, self._cost_weights())

    def summary(self) -> str:
        """A plain-text table of every pruned tensor: shape, density and weights kept, with totals."""
        return reporting.render_summary(self.report_record())

    def report_record(self, pl_module: pl.LightningModule | None = None) -> dict[str, Any]:
        """Everything the report shows, as JSON-ready primitives (what ``summary.json`` holds)."""
        layers: list[dict[str, Any]] = []
        for target in self.targets:
            param = target.param.detach()
            kept = int((param != 0).sum())
            layers.append(
                {
                    "name": target.name,
                    "shape": list(param.shape),
                    "numel": param.numel(),
                    "kept": kept,
                    "density": kept / param.numel() if param.numel() else 0.0,
                }
            )
        prunable = sum(layer["numel"] for layer in layers)
        kept_total = sum(layer["kept"] for layer in layers)
        totals: dict[str, Any] = {"params_prunable": prunable, "params_kept": kept_total}
        # Structured runs also mask biases and BatchNorm affines, which cost no FLOPs; unstructured runs
        # report FLOPs only when every pruned tensor is a Linear/Conv weight.
        per_weight = self._flops_per_weight()
        if per_weight is not None and (self.granularity == "structured" or len(per_weight) == len(self.targets)):
            totals["flops_before"] = int(
                sum(per_weight[layer["name"]] * layer["numel"] for layer in layers if layer["name"] in per_weight)
            )
            totals["flops_after"] = int(
                sum(per_weight[layer["name"]] * layer["kept"] for layer in layers if layer["name"] in per_weight)
            )
        if pl_module is not None:
            model_params = sum(p.numel() for p in pl_module.parameters())
            totals["params_model"] = model_params
            totals["params_model_nonzero"] = model_params - (prunable - kept_total)
        monitor, monitor_mode = self._resolved_monitor if self._resolved_monitor else (self.monitor, self.mode)
        final = next((e["metric"] for e in reversed(self.timeline) if e["metric"] is not None), None)
        reference = self.search.reference
        if reference is None and self.history:
            reference = self.history[0]["metric_before"]
        return {
            "version": 1,
            "mode": "automatic" if self.automatic else "fixed",
            "importance": self.importance,
            "granularity": self.granularity,
            "schedule": self.schedule,
            "monitor": monitor,
            "monitor_mode": monitor_mode,
            "max_metric_drop": self.max_metric_drop,
            "target_sparsity": self.target_sparsity,
            "reference": reference,
            "final_metric": final,
            "sparsity": 1.0 - kept_total / prunable if prunable else 0.0,
            "stop_reason": self.search.stop_reason,
            "timeline": [dict(entry) for entry in self.timeline],
            "events": [dict(event) for event in self.history],
            "decisions": [dict(d) for d in self.search.decisions],
            "layers": layers,
            "totals": totals,
            "importance_diagnostics": self._importance_diagnostics(),
            "overhead_seconds": {"pruning": self.seconds_pruning, "enforcing": self.seconds_enforcing},
        }

    def _importance_diagnostics(self) -> Any:
        """Per-event diagnostics of the learned scorer, the last with its feature importances."""
        diagnostics = self.scorer.diagnostics
        if not diagnostics:
            return None
        entries = [dict(entry) for entry in diagnostics]
        importances = self.scorer.feature_importances()
        if importances is not None:
            entries[-1]["feature_importances"] = importances
        return _jsonable(entries)

    def _watch_output_positions(self) -> None:
        """Record, on the first forward pass, how many output positions each Linear/Conv target computes.

        FLOPs of a pruned tensor per sample are then ``2 * kept weights * positions`` (a multiply and
        an add per weight and position); ``report_record`` totals them when every target is
        Linear or Conv.
        """
        for target in self._flop_targets():
            if target.name in self._positions:
                continue

            def hook(mod: nn.Module, args: Any, output: Any, name: str = target.name) -> None:
                if name in self._positions or not isinstance(output, Tensor) or output.ndim == 0:
                    return
                if output.ndim == 1:  # an unbatched Linear call
                    self._positions[name] = 1
                    return
                channels = output.shape[-1] if isinstance(mod, nn.Linear) else output.shape[1]
                self._positions[name] = max(1, output.numel() // max(1, output.shape[0] * channels))

            self._position_hooks.append(target.module.register_forward_hook(hook))

    def _report_directory(self, trainer: pl.Trainer) -> Path:
        if self.report_dir is not None:
            return Path(self.report_dir)
        base = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
        return Path(base) / "autoprune"

    # ------------------------------------------------------------------ automatic mode
    def _check_search_budget(self, trainer: pl.Trainer) -> None:
        assert self.window is not None
        start, end = self.window
        events = len(range(start, end + 1, self.frequency))
        if start < 1:
            warnings.warn(
                "AutoPrune's automatic mode needs at least one validated dense epoch before pruning for its "
                f"reference, but pruning starts at epoch {start}. HINT: set `start_epoch` >= 1 or raise "
                "`max_epochs`.",
                UserWarning,
                stacklevel=2,
            )
        if events < 8:
            warnings.warn(
                f"AutoPrune's automatic search has only {events} pruning epoch(s) (epochs {start}..{end}); each "
                "step needs one, and reaching 90%+ sparsity usually takes about 8-10 with rollbacks. "
                f"HINT: use max_epochs >= {tolerance.suggested_max_epochs(10)} or widen `start_epoch`..`end_epoch`.",
                UserWarning,
                stacklevel=2,
            )

    def _search_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> float:
        """At an epoch start: propose and apply the next sparsity if the search wants one."""
        assert self.window is not None
        start, end = self.window
        state = self.search
        if state.done or state.pending is not None or epoch < start:
            return state.pending if state.pending is not None else state.accepted
        if epoch > end:
            self.search = tolerance.stop(state, epoch, f"the search window ended at epoch {end}")
            return self.search.accepted
        if (epoch - start) % self.frequency:
            return state.accepted
        if state.reference is None:
            raise ValueError(
                f"The automatic mode needs the monitored metric before pruning starts at epoch {start}, but no "
                "validation value was seen. HINT: make sure validation runs in the first epochs (or set "
                "`target_sparsity`)."
            )
        if not state.decisions:
            self._check_tolerance_noise(trainer)
        ceiling = min(tolerance.CEILING, self._feasible_ceiling())
        proposed = tolerance.propose(state, epoch, ceiling=ceiling)
        if proposed.done:
            self.search = proposed
            return proposed.accepted
        self._snapshot = self._take_snapshot(trainer, pl_module)
        assert proposed.pending is not None
        self.search = proposed
        self._prune_with_context(trainer, pl_module, epoch, proposed.pending)
        return proposed.pending

    def _check_tolerance_noise(self, trainer: pl.Trainer) -> None:
        """Warn once, before the first step, when validation is too small to resolve ``max_metric_drop``."""
        samples, self._validation_samples = self._validation_samples, None
        if samples is None or self._resolved_monitor is None or self.search.reference is None:
            return
        samples *= trainer.world_size  # each rank validated its own shard
        monitor, mode = self._resolved_monitor
        error = tolerance.tolerance_noise(monitor, mode, self.search.reference, samples, self.max_metric_drop)
        if error is not None:
            warnings.warn(
                f"AutoPrune's validation {monitor} comes from {samples} samples: at the dense reference "
                f"{self.search.reference:.4f} its sampling standard error is {error:.4f}, comparable to "
                f"`max_metric_drop`={self.max_metric_drop}. Steps are then accepted or rolled back partly on "
                "noise, and on unseen data the final model often loses more than the tolerance (on the digits "
                "MLP with 360 validation samples, 4 of 10 seeds lost more than 1 point on the test set). "
                "HINT: validate on more samples, or lower `max_metric_drop` to keep a margin.",
                UserWarning,
                stacklevel=2,
            )

    def _search_validation(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At a validation end: fold the value into the reference, or decide the pending step.

        Every rank decides from global rank 0's value, so the search stays identical across ranks.
        """
        value = self._monitored_value(trainer)
        if trainer.world_size > 1:
            value = trainer.strategy.broadcast(value, src=0)
        if value is None:
            return
        self._last_value = value
        assert self.window is not None
        assert self._resolved_monitor is not None
        mode = self._resolved_monitor[1]
        epoch = trainer.current_epoch
        state = self.search
        if not self.history and state.pending is None and epoch < self.window[0]:
            self.search = tolerance.update_reference(state, value, mode)
            return
        if tolerance.ready_to_decide(state, value, mode, self.max_metric_drop, epoch):
            decided = tolerance.decide(state, value, mode, self.max_metric_drop, epoch)
            rolled_back = any(r["decision"] == "rollback" for r in decided.decisions[len(state.decisions) :])
            if not decided.done and epoch >= self.window[1]:
                decided = tolerance.stop(decided, epoch, f"the search window ended at epoch {self.window[1]}")
            self.search = decided
            if rolled_back:
                self._roll_back(trainer, pl_module)
                self._best_final = self._snapshot
                # The weights, masks and optimizer state are now exactly those the rolled-back step was
                # scored at, so the next (smaller) step ranks with the same scores instead of paying
                # for a second calibration and scoring of one state.
                self._reuse_scores = not decided.done
                return
        reference = self.search.reference
        if (
            self.search.pending is None
            and reference is not None
            and tolerance.within_tolerance(reference, value, mode, self.max_metric_drop)
        ):
            self._best_final = self._take_snapshot(trainer, pl_module, with_optimizers=False)

    def _roll_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._snapshot is None:
            raise ValueError("A step broke the tolerance, but no snapshot to roll back to was kept.")
        snapshot = self._snapshot
        pl_module.load_state_dict(snapshot["model"])
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"], strict=True):
            optimizer.load_state_dict(state)
        self._set_masks(snapshot["masks"])
        for moved in self._movement.values():
            moved.zero_()

    def _take_snapshot(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, with_optimizers: bool = True
    ) -> dict[str, Any]:
        """Weights, optimizer states and masks, copied to CPU memory (tensors and primitives only)."""
        return {
            "epoch": trainer.current_epoch,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()},
            "optimizers": [_to_cpu(copy.deepcopy(o.state_dict())) for o in trainer.optimizers]
            if with_optimizers
            else [],
            "masks": {n: m.detach().to("cpu", copy=True) for n, m in self.masks.items()},
        }

    def _feasible_ceiling(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        floors = sum(
            selection.layer_floors(
                {n: torch.ones_like(m) for n, m in self.masks.items()}, self.min_layer_density
            ).values()
        )
        return max(0.0, 1.0 - (floors + 1) / total) if total else 0.0

    def _new_decisions(self) -> list[dict[str, Any]]:
        new = [dict(d) for d in self.search.decisions[self._logged_decisions :]]
        self._logged_decisions = len(self.search.decisions)
        return new

    def _log_search(self, pl_module: pl.LightningModule, decisions: list[dict[str, Any]]) -> None:
        codes = {"accept": 1.0, "rollback": -1.0, "stop": 0.0}
        for record in decisions:
            _log(pl_module, "autoprune/decision", codes[record["decision"]])
        if self.search.reference is not None:
            _log(pl_module, "autoprune/reference", self.search.reference)
        _log(pl_module, "autoprune/accepted_sparsity", self.search.accepted)
        _log(pl_module, "autoprune/step", self.search.step)

    def _finish_search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.search
        if not state.done:
            self.search = state = tolerance.stop(state, trainer.current_epoch, "training ended")
        assert self._resolved_monitor is not None or state.reference is None
        value = self._last_value
        if state.reference is None or value is None or self._resolved_monitor is None:
            return
        mode = self._resolved_monitor[1]
        if not tolerance.within_tolerance(state.reference, value, mode, self.max_metric_drop):
            if self._best_final is not None:
                pl_module.load_state_dict(self._best_final["model"])
                self._set_masks(self._best_final["masks"])
                rank_zero_info(
                    f"[AutoPrune] the last validation ({value:.4f}) broke the tolerance; restored the weights of "
                    f"epoch {self._best_final['epoch']}, the latest state within it."
                )
            else:
                warnings.warn(
                    f"AutoPrune's final {self._monitor_name()} ({value:.4f}) is more than {self.max_metric_drop} "
                    f"worse than the dense reference ({state.reference:.4f}), and no state within tolerance "
                    "was kept at this sparsity.",
                    UserWarning,
                    stacklevel=2,
                )
        if self.verbose:
            rank_zero_info(
                f"[AutoPrune] automatic mode finished at sparsity {self.sparsity():.4f}: the most-pruned state whose "
                f"{self._monitor_name()} stayed within {self.max_metric_drop} of the dense reference "
                f"{state.reference:.4f} on validation. Stopped because {state.stop_reason}."
            )

    # ------------------------------------------------------------------ internals
    def _resolve_window(self, trainer: pl.Trainer) -> tuple[int, int]:
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            if self.end_epoch is None:
                raise ValueError(
                    "`end_epoch` must be set when the Trainer has no finite `max_epochs` "
                    f"(got max_epochs={max_epochs})."
                )
            start = self.start_epoch if self.start_epoch is not None else min(1, self.end_epoch)
            return start, self.end_epoch
        window_fn = tolerance.default_window if self.automatic else schedules.default_window
        default_start, default_end = window_fn(max_epochs)
        end = self.end_epoch if self.end_epoch is not None else max(default_end, self.start_epoch or 0)
        start = self.start_epoch if self.start_epoch is not None else min(default_start, end)
        if end > max_epochs - 1:
            raise ValueError(
                f"`end_epoch`={end} is never reached: the Trainer runs epochs 0..{max_epochs - 1} "
                f"(max_epochs={max_epochs}). HINT: raise `max_epochs` or lower `end_epoch`."
            )
        if end < start:
            raise ValueError(f"`end_epoch` must be >= `start_epoch`, got end_epoch={end} < start_epoch={start}.")
        if start == 0:
            warnings.warn(
                f"AutoPrune prunes at the start of epoch 0, before any training (max_epochs={max_epochs}). "
                "Scores of untrained weights are mostly noise. HINT: set `start_epoch` >= 1 or train longer.",
                UserWarning,
                stacklevel=2,
            )
        return start, end

    def _scheduled(self, epoch: int) -> float:
        if self.target_sparsity is None or self.window is None:
            return 0.0
        start, end = self.window
        return schedules.scheduled_sparsity(
            epoch, self.target_sparsity, start=start, end=end, frequency=self.frequency, kind=self.schedule
        )

    def _prune_with_context(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float
    ) -> None:
        start = time.perf_counter()
        try:
            self._prune(trainer, pl_module, epoch, target)
        except Exception as err:
            raise RuntimeError(
                f"AutoPrune failed while pruning at the start of epoch {epoch} towards sparsity {target:.4f} "
                f"(importance={self.importance!r}, tensors: {', '.join(self.masks)}): {err}"
            ) from err
        finally:
            self.seconds_pruning += time.perf_counter() - start

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float) -> None:
        # Scores and masks are computed once, on global rank 0, and broadcast with the generator
        # state, so every rank holds bit-identical masks and calibration work is not repeated.
        # A failure on rank 0 is broadcast too, so the other ranks raise instead of hanging.
        if trainer.world_size == 1:
            new_masks = self._compute_masks(trainer, pl_module, epoch, target)
        else:
            outcome: tuple[str, Any] = ("ok", None)
            if trainer.is_global_zero:
                try:
                    outcome = ("ok", self._compute_masks(trainer, pl_module, epoch, target))
                except Exception as err:  # re-raised on every rank below
                    outcome = ("error", f"{type(err).__name__}: {err}")
            scorer = self.scorer if isinstance(self.scorer, StatefulScorer) else None
            scorer_state = scorer.state_dict() if scorer is not None and trainer.is_global_zero else None
            outcome, generator_state, scorer_state = trainer.strategy.broadcast(
                (outcome, self.generator.get_state(), scorer_state), src=0
            )
            self.generator.set_state(generator_state)
            if scorer is not None and not trainer.is_global_zero and scorer_state is not None:
                scorer.load_state_dict(scorer_state)
            status, new_masks = outcome
            if status == "error":
                raise RuntimeError(f"on global rank 0: {new_masks}")
        for moved in self._movement.values():
            moved.zero_()
        if new_masks is None:
            return
        previous = self.sparsity()
        self._set_masks(new_masks)
        for optimizer in trainer.optimizers:
            for t in self.targets:
                masks.zero_optimizer_state_(optimizer, t.param, self.masks[t.name])

        before = self._monitored_value(trainer)
        event = {
            "epoch": epoch,
            "target": target,
            "sparsity_before": previous,
            "sparsity": self.sparsity(),
            "flops_sparsity": self.flops_sparsity(),
            "metric_before": before,
            "metric_after": None,
        }
        self.history.append(event)
        if before is not None:
            _log(pl_module, "autoprune/metric_before", before)
        self._log_importance(pl_module, epoch)

    def _log_importance(self, pl_module: pl.LightningModule, epoch: int) -> None:
        """Log the learned scorer's held-out fidelity at this event, next to the formulas'."""
        diagnostics = self.scorer.diagnostics
        if not diagnostics or "epoch" in diagnostics[-1]:
            return
        entry = diagnostics[-1]
        entry["epoch"] = epoch
        for method, numbers in entry["fidelity"].items():
            _log(pl_module, f"autoprune/fidelity/spearman_{method}", numbers["spearman"])
            _log(pl_module, f"autoprune/fidelity/precision_at_k_{method}", numbers["precision_at_k"])
        _log(pl_module, "autoprune/importance/blend_weight", entry["blend_weight"])
        _log(pl_module, "autoprune/importance/fell_back", float(entry["fell_back"]))
        if self.verbose:
            learned = entry["fidelity"]["learned"]["spearman"]
            prior = entry["fidelity"][entry["best_prior"]]["spearman"]
            verdict = (
                f"fell back to {entry['best_prior']}"
                if entry["fell_back"]
                else f"blend {entry['blend_weight']:.2f} learned + {1 - entry['blend_weight']:.2f} "
                f"{entry['best_prior']}"
            )
            rank_zero_info(
                f"AutoPrune epoch {epoch}: learned importance held-out Spearman {learned:.3f} vs "
                f"{entry['best_prior']} {prior:.3f} on {entry['held_out']} group ablations; {verdict}"
            )

    def _compute_masks(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float
    ) -> dict[str, Tensor] | None:
        """Score and select: the new masks, or ``None`` if the event must be skipped (non-finite inputs)."""
        weights = {t.name: t.param.detach() for t in self.targets}
        bad = _first_non_finite(weights)
        if bad is not None:
            warnings.warn(
                f"AutoPrune skipped the pruning event of epoch {epoch}: tensor {bad!r} holds NaN or inf.",
                UserWarning,
                stacklevel=2,
            )
            return None
        if self._reuse_scores and self._snapshot_scores is not None:
            self._reuse_scores = False
            if self.verbose:
                rank_zero_info(
                    "[AutoPrune] reusing the scores of the rolled-back step: the rollback restored the weights "
                    "they were computed from."
                )
            return self._select(trainer, pl_module, self._snapshot_scores, target)
        self._reuse_scores = False
        self._snapshot_scores = None
        inputs = scoring.ScoreInputs(
            weights=weights,
            masks=self.masks,
            generator=self.generator,
            target_sparsity=target,
            progress=epoch / trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0.0,
        )
        if self.scorer.needs_gradients or self.scorer.needs_context:
            self._calibrate(trainer, pl_module, inputs)
            assert inputs.grad_sq_mean is not None
            bad = _first_non_finite(inputs.grad_sq_mean)
            if bad is not None:
                warnings.warn(
                    f"AutoPrune skipped the pruning event of epoch {epoch}: the calibration gradient of {bad!r} "
                    "holds NaN or inf.",
                    UserWarning,
                    stacklevel=2,
                )
                return None
        # Scorers that measure ablations call `inputs.loss_fn` many times: enter eval mode and mute
        # logging once around the whole scoring, not around every call. Their scikit-learn fits
        # run on one BLAS thread: small matrix products gain nothing from more, and BLAS threads
        # spinning against torch's own thread pool made a 10 ms ridge fit take 0.5 s.
        scoring_context = contextlib.ExitStack()
        if self.scorer.needs_context:
            from threadpoolctl import threadpool_limits

            scoring_context.enter_context(calibration.evaluation_mode(pl_module))
            scoring_context.enter_context(calibration.muted_logging(pl_module))
            scoring_context.enter_context(threadpool_limits(limits=1, user_api="blas"))
        with scoring_context:
            if self.granularity == "structured":
                groups = self._traced_groups(trainer, pl_module)
                inputs.cost_weights = self._cost_weights()
                scores = self.scorer.score_units(groups, inputs)
            else:
                scores = self.scorer.score(inputs)
        if self.automatic:
            self._snapshot_scores = {name: score.detach().clone() for name, score in scores.items()}
        return self._select(trainer, pl_module, scores, target)

    def _select(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        scores: Mapping[str, Tensor],
        target: float,
    ) -> dict[str, Tensor]:
        """Masks from scores (per weight) or keys (per structured unit), at ``target`` sparsity."""
        if self.granularity == "structured":
            groups = self._traced_groups(trainer, pl_module)
            keep = structured.select_units(
                groups,
                scores,
                self.masks,
                target,
                min_density=self.min_layer_density,
                weights=self._cost_weights(),
                round_to=self.round_to,
            )
            return structured.unit_masks(groups, keep, self.masks)
        return selection.select_masks(scores, self.masks, target, min_density=self.min_layer_density)

    def _ensure_example_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find what the model is called with: ``example_input_array``, else the inputs ``training_step`` passes.

        One training batch, drawn with a generator of its own (the callback's generator, and so a
        resumed run, stay unaffected), goes through ``training_step`` in eval mode without
        gradients or logging, and the first call of the module's ``forward`` is recorded. Called
        directly, not through the Trainer: under DDP, Lightning redirects ``forward`` to
        ``training_step`` while its wrapper runs.
        """
        if self._example is not None:
            return
        example = pl_module.example_input_array
        if example is not None:
            if isinstance(example, Mapping):
                self._example = ((), dict(example))
            else:
                self._example = (tuple(example) if isinstance(example, tuple) else (example,), {})
            return
        loader = trainer.train_dataloader
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise ValueError(
                "granularity='structured' traces the model on one training batch, but the training loader is "
                f"{type(loader).__name__}, not a DataLoader. HINT: set `self.example_input_array` in your "
                "LightningModule."
            )

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._example is None:
                self._example = (_detached(args), _detached(kwargs))

        batches = calibration.calibration_batches(loader, 1, torch.Generator().manual_seed(self.seed))
        assert isinstance(batches, list)
        handle = pl_module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with calibration.evaluation_mode(pl_module), calibration.muted_logging(pl_module), torch.no_grad():
                pl_module.training_step(trainer.strategy.batch_to_device(batches[0]), 0)
        finally:
            handle.remove()
        if self._example is None:
            raise ValueError(
                "granularity='structured' traces the model to find coupled layers, but `training_step` never "
                "called the module itself. HINT: set `self.example_input_array` in your LightningModule, or "
                "call `self(x)` in `training_step`."
            )

    def _traced_groups(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[structured.UnitGroup]:
        """The unit groups, traced once with Torch-Pruning on the model's own inputs."""
        if self.unit_groups is not None:
            return self.unit_groups
        self._ensure_example_inputs(trainer, pl_module)
        assert self._example is not None
        args, kwargs = self._example
        prunable = {t.name for t in self.targets if t.param_name == "weight"}
        groups, kept = structured.find_unit_groups(
            pl_module, args, prunable=prunable, forward_fn=lambda m, a: m(*a, **kwargs)
        )
        if kept:
            warnings.warn(
                f"AutoPrune (granularity='structured') keeps every unit of: {', '.join(kept)}.",
                UserWarning,
                stacklevel=2,
            )
        if not groups:
            raise ValueError(
                "granularity='structured' found no unit it can prune: every selected layer produces the model's "
                "output or is coupled to a layer it cannot handle. HINT: use granularity='unstructured'."
            )
        self.unit_groups = groups
        return groups

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: scoring.ScoreInputs) -> None:
        """Fill the calibration fields of ``inputs``: gradient statistics, and the context a learned scorer uses."""
        loader = trainer.train_dataloader
        if not isinstance(loader, torch.utils.data.DataLoader):
            raise ValueError(
                f"importance={self.importance!r} needs one training DataLoader for calibration, got "
                f"{type(loader).__name__}."
            )

        def loss_fn(batch: Any, batch_idx: int) -> Tensor:
            batch = trainer.strategy.batch_to_device(batch)
            out = pl_module.training_step(batch, batch_idx)
            loss = out["loss"] if isinstance(out, Mapping) else out
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                raise ValueError(
                    f"importance={self.importance!r} needs `training_step` to return the scalar loss (or a dict "
                    f"with 'loss'), got {type(out).__name__}."
                )
            return loss

        params = {t.name: t.param for t in self.targets}
        samples = self._calibration_size(loader)
        if not self.scorer.needs_context:
            batches = calibration.calibration_batches(loader, samples, self.generator)
            assert isinstance(batches, list)
            with calibration.evaluation_mode(pl_module), calibration.muted_logging(pl_module):
                inputs.grad_mean, inputs.grad_sq_mean = calibration.gradient_statistics(loss_fn, batches, params)
            return

        drawn = calibration.calibration_batches(
            loader,
            samples,
            self.generator,
            holdout=samples,
            holdout_batch_size=max(loader.batch_size or 1, LABEL_BATCH_SIZE),
        )
        assert isinstance(drawn, tuple)
        feature_batches, label_batches = drawn
        recorder = calibration.ActivationRecorder({t.name: t.module for t in self.targets if t.param_name == "weight"})
        with calibration.evaluation_mode(pl_module), calibration.muted_logging(pl_module), recorder:
            inputs.grad_mean, inputs.grad_sq_mean = calibration.gradient_statistics(loss_fn, feature_batches, params)
        inputs.input_norms = recorder.input_norms()
        inputs.output_norms = recorder.output_norms()
        inputs.initial_weights = self._initial_weights
        inputs.movement = self._movement
        inputs.params = {name: p.data for name, p in params.items()}
        inputs.exp_avg_sq = _optimizer_second_moments(trainer, params)

        def label_loss() -> float:  # called inside the eval-mode, muted context of `_compute_masks`
            return calibration.mean_loss(loss_fn, label_batches)

        inputs.loss_fn = label_loss

    def _calibration_size(self, loader: torch.utils.data.DataLoader) -> int:
        """``calibration_samples``, or the default: 512, capped by what the training set can supply."""
        if self.calibration_samples is not None:
            return self.calibration_samples
        try:
            size = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset: batches are taken from the loader
            return DEFAULT_CALIBRATION_SAMPLES
        sets = 2 if self.scorer.needs_context else 1
        return max(1, min(DEFAULT_CALIBRATION_SAMPLES, size // sets))

    def _set_masks(self, new_masks: Mapping[str, Tensor]) -> None:
        """Install new masks, zero the pruned weights exactly, and cache the hot-path factors."""
        self.masks = {t.name: new_masks[t.name].to(t.param.device) for t in self.targets}
        self._pruned_any = any(not bool(mask.all()) for mask in self.masks.values())
        self._keep = {t.name: self.masks[t.name].to(t.param.dtype) for t in self.targets}
        for target in self.targets:
            masks.apply_mask_(target.param.data, self.masks[target.name])

    def _enforce(self) -> None:
        if not self._pruned_any:
            return
        for target in self.targets:
            masks.multiply_mask_(target.param.data, self._keep[target.name])

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        self._enforce()
        self.seconds_enforcing += time.perf_counter() - start

    def _shown_target(self, epoch: int) -> float:
        """The target to show: the fixed target, or the sparsity the search is trying or holds."""
        if self.target_sparsity is not None:
            return self.target_sparsity
        return self.search.pending if self.search.pending is not None else self.search.accepted

    def _log_sparsity(self, pl_module: pl.LightningModule, scheduled: float) -> None:
        _log(pl_module, "autoprune/sparsity", self.sparsity(), prog_bar=True)
        flops = self.flops_sparsity() if self.target_unit == "flops" else None
        if flops is not None:
            _log(pl_module, "autoprune/flops_sparsity", flops, prog_bar=True)
        _log(pl_module, "autoprune/scheduled_sparsity", scheduled)
        _log(pl_module, "autoprune/target_sparsity", self._shown_target(pl_module.current_epoch), prog_bar=True)
        for target in self.targets:
            _log(
                pl_module,
                f"autoprune/sparsity/{target.name}",
                masks.sparsity(target.param.detach()),
            )

    def _monitor_name(self) -> str:
        return self._resolved_monitor[0] if self._resolved_monitor else str(self.monitor)

    def _monitored_value(self, trainer: pl.Trainer) -> float | None:
        metrics = trainer.callback_metrics
        if self._resolved_monitor is None:
            if self.monitor is not None:
                if self.monitor not in metrics:
                    if not metrics:
                        return None
                    available = ", ".join(sorted(metrics)) or "none"
                    raise ValueError(
                        f"`monitor`={self.monitor!r} is not logged. Logged metrics: {available}. "
                        "HINT: log it in `validation_step` with `self.log(...)`."
                    )
                self._resolved_monitor = (self.monitor, self.mode or infer_mode(self.monitor))
            else:
                detected = detect_monitor(metrics)
                if detected is None:
                    return None
                self._resolved_monitor = (detected, self.mode or infer_mode(detected))
                rank_zero_info(
                    f"[AutoPrune] monitoring {detected!r} (mode={self._resolved_monitor[1]}); set `monitor` to choose."
                )
        value = metrics.get(self._resolved_monitor[0])
        return float(value) if value is not None else None

    def _restore(self, state: dict[str, Any]) -> None:
        shapes = state.get("shapes", {})
        packed = state.get("masks", {})
        expected = {name: list(mask.shape) for name, mask in self.masks.items()}
        if set(packed) != set(expected) or any(list(shapes[n]) != expected[n] for n in packed):
            raise ValueError(
                "The checkpoint's AutoPrune masks do not fit this model: checkpoint has "
                f"{ {n: tuple(shapes[n]) for n in packed} }, the model's pruned tensors are "
                f"{ {n: tuple(s) for n, s in expected.items()} }. HINT: resume with the model and the "
                "`include`/`exclude` that wrote the checkpoint."
            )
        self._set_masks({name: masks.unpack_mask(packed[name], shapes[name]) for name in packed})
        self.history = [dict(event) for event in state.get("history", [])]
        self.timeline = [dict(entry) for entry in state.get("timeline", [])]
        self.generator.set_state(state["generator"])
        self._positions.update({str(n): int(v) for n, v in state.get("positions", {}).items()})
        if "search" in state:
            self.search = tolerance.SearchState.from_dict(state["search"])
            self._snapshot = state.get("snapshot")
            self._reuse_scores = bool(state.get("reuse_scores"))
            self._logged_decisions = len(self.search.decisions)
        devices = {t.name: t.param.device for t in self.targets}
        if state.get("snapshot_scores") is not None:  # per tensor, or per structured unit group (kept on CPU)
            scores = state["snapshot_scores"]
            self._snapshot_scores = {n: v.to(devices[n]) if n in devices else v for n, v in scores.items()}
        self._initial_weights = {n: v.to(devices[n]) for n, v in state.get("initial_weights", {}).items()}
        self._movement = {n: v.to(devices[n]) for n, v in state.get("movement", {}).items()}
        if isinstance(self.scorer, StatefulScorer) and state.get("scorer") is not None:
            self.scorer.load_state_dict(state["scorer"])


def check_supported_strategy(strategy: object) -> None:
    """Refuse sharded strategies: masks address whole parameters, which those split or flatten.

    Under FSDP, DeepSpeed or tensor/model parallelism a rank holds a flattened shard, so a mask
    computed for the full tensor would prune the wrong entries. Lightning runs FSDP on GPUs only.

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
        >>> check_supported_strategy(DDPStrategy())
        >>> check_supported_strategy(FSDPStrategy())
        Traceback (most recent call last):
        ...
        ValueError: AutoPrune does not support the sharded strategy `FSDPStrategy`: ...
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise ValueError(
            f"AutoPrune does not support the sharded strategy `{type(strategy).__name__}`: its masks address "
            "whole parameters, and this strategy splits or flattens them across ranks, so the wrong entries "
            "would be pruned. HINT: use strategy='ddp' (or 'ddp_spawn'), which keeps a full copy on every rank."
        )


def detect_monitor(metrics: Mapping[str, Any]) -> str | None:
    """Pick the metric to monitor from those logged: validation accuracy-like first, then ``val_loss``.

    Example:
        >>> detect_monitor({"train_loss": 1.0, "val_loss": 0.5, "val_acc": 0.9})
        'val_acc'
        >>> detect_monitor({"val_loss": 0.5}), detect_monitor({"train_loss": 1.0})
        ('val_loss', None)
    """
    names = sorted(metrics)
    validation = [n for n in names if "val" in n.lower() and not n.startswith("autoprune/")]
    for name in validation:
        lowered = name.lower()
        if "acc" in lowered:
            return name
    if "val_loss" in metrics:
        return "val_loss"
    losses = [n for n in validation if "loss" in n.lower()]
    return losses[0] if losses else None


def infer_mode(metric: str) -> Literal["max", "min"]:
    """``"min"`` for loss- or error-like metric names, else ``"max"``.

    Example:
        >>> infer_mode("val_loss"), infer_mode("val_acc")
        ('min', 'max')
    """
    lowered = metric.lower()
    return "min" if any(word in lowered for word in ("loss", "error", "err", "perplexity", "mse", "mae")) else "max"


def _validate_arguments(
    *,
    target_sparsity: float | None,
    max_metric_drop: float,
    mode: str | None,
    granularity: str,
    importance: str,
    target_unit: str,
    round_to: int,
    compact_on_fit_end: bool,
    schedule: str,
    start_epoch: int | None,
    end_epoch: int | None,
    frequency: int,
    min_layer_density: float,
    calibration_samples: int | None,
) -> None:
    if target_sparsity is not None and not (isinstance(target_sparsity, (int, float)) and 0.0 <= target_sparsity < 1.0):
        raise ValueError(f"`target_sparsity` must be in [0, 1) or None, got {target_sparsity!r}.")
    if not (isinstance(max_metric_drop, (int, float)) and max_metric_drop >= 0 and math.isfinite(max_metric_drop)):
        raise ValueError(f"`max_metric_drop` must be a finite number >= 0, got {max_metric_drop!r}.")
    if mode is not None and mode not in _MODES:
        raise ValueError(f"`mode` must be one of 'max', 'min' or None, got {mode!r}.")
    if granularity not in _GRANULARITIES:
        raise ValueError(f"`granularity` must be one of 'unstructured', 'structured', got {granularity!r}.")
    if granularity == "structured" and importance not in scoring.UNIT_SCORERS:
        allowed = ", ".join(repr(s) for s in scoring.UNIT_SCORERS)
        raise ValueError(f"With granularity='structured', `importance` must be one of {allowed}, got {importance!r}.")
    if target_unit not in _TARGET_UNITS:
        raise ValueError(f"`target_unit` must be one of 'params', 'flops', got {target_unit!r}.")
    if target_unit == "flops" and granularity != "structured":
        raise ValueError(
            "`target_unit`='flops' needs granularity='structured' (zeroed single weights save no FLOPs in dense "
            f"kernels), got granularity={granularity!r}."
        )
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"`round_to` must be an integer >= 1, got {round_to!r}.")
    if round_to > 1 and granularity != "structured":
        raise ValueError(
            f"`round_to`={round_to} rounds the widths of structured pruning and needs granularity='structured', "
            f"got granularity={granularity!r}."
        )
    if not isinstance(compact_on_fit_end, bool):
        raise ValueError(f"`compact_on_fit_end` must be True or False, got {compact_on_fit_end!r}.")
    if compact_on_fit_end and granularity != "structured":
        raise ValueError(
            "`compact_on_fit_end`=True needs granularity='structured' (unstructured sparsity removes no whole "
            f"unit; save it with lightning_autoprune.save_sparse instead), got granularity={granularity!r}."
        )
    if schedule not in schedules.SCHEDULES:
        allowed = ", ".join(repr(s) for s in schedules.SCHEDULES)
        raise ValueError(f"`schedule` must be one of {allowed}, got {schedule!r}.")
    for name, value in (("start_epoch", start_epoch), ("end_epoch", end_epoch)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"`{name}` must be an integer >= 0 or None, got {value!r}.")
    if start_epoch is not None and end_epoch is not None and end_epoch < start_epoch:
        raise ValueError(
            f"`end_epoch` must be >= `start_epoch`, got end_epoch={end_epoch} < start_epoch={start_epoch}."
        )
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"`frequency` must be an integer >= 1, got {frequency!r}.")
    if not (isinstance(min_layer_density, (int, float)) and 0.0 <= min_layer_density <= 1.0):
        raise ValueError(f"`min_layer_density` must be in [0, 1], got {min_layer_density!r}.")
    if target_sparsity is not None and min_layer_density > 1.0 - target_sparsity:
        raise ValueError(
            f"`min_layer_density`={min_layer_density} keeps more weights than `target_sparsity`={target_sparsity} "
            f"allows ({1.0 - target_sparsity:.4f} of them). Lower `min_layer_density`."
        )
    if calibration_samples is not None and (not isinstance(calibration_samples, int) or calibration_samples < 1):
        raise ValueError(f"`calibration_samples` must be an integer >= 1 or None, got {calibration_samples!r}.")


def _check_no_overlap(callback: AutoPrune, trainer: pl.Trainer) -> None:
    mine = {t.name for t in callback.targets}
    for other in trainer.callbacks:  # type: ignore[attr-defined]
        if other is callback or not isinstance(other, AutoPrune) or not other.targets:
            continue
        shared = sorted(mine & {t.name for t in other.targets})
        if shared:
            raise ValueError(
                f"Two AutoPrune callbacks claim the same tensors: {', '.join(shared)}. "
                "HINT: give each callback disjoint `include`/`exclude` patterns."
            )


def _log(pl_module: pl.LightningModule, name: str, value: float, prog_bar: bool = False) -> None:
    """Log an epoch-level value through the module, so every Lightning logger receives it.

    The callback's values are the same on every rank (rank 0 decides and broadcasts), so under DDP
    the mean that ``sync_dist`` takes is that value; syncing also tells Lightning it is reduced.
    """
    sync = pl_module.trainer.world_size > 1
    pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=sync, prog_bar=prog_bar)


def _event_lines(
    epoch: int,
    event: Mapping[str, Any] | None,
    decisions: list[dict[str, Any]],
    monitor: str,
    importance: str,
    automatic: bool,
) -> list[str]:
    """One line per pruning event (sparsity and metric before -> after, and the verdict), plus search lines."""
    lines = []
    verdicts = {"accept": "accepted", "rollback": "rolled back"}
    if event is not None:
        before, after = event.get("metric_before"), event.get("metric_after")
        metric = ""
        if before is not None or after is not None:
            fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
            metric = f" | {monitor} {fmt(before)} -> {fmt(after)}"
        same = [d for d in decisions if d["decision"] != "stop" and d["epoch"] == epoch]
        if same:
            verdict = verdicts[same[0]["decision"]]
        else:
            verdict = "out of tolerance, one more recovery epoch" if automatic else "on schedule"
        lines.append(
            f"[AutoPrune] epoch {epoch} | sparsity {event.get('sparsity_before', 0.0):.4f} -> {event['sparsity']:.4f}"
            f" ({importance}){metric} | {verdict}"
        )
        decisions = [d for d in decisions if d not in same]
    lines.extend(_describe_decision(d, monitor) for d in decisions)
    return lines


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _describe_decision(record: Mapping[str, Any], monitor: str) -> str:
    if record["decision"] == "stop":
        return (
            f"[AutoPrune] epoch {record['epoch']}: search stopped at sparsity {record['accepted']:.4f} "
            f"({record['reason']})"
        )
    value = "nan" if record["value"] is None else f"{record['value']:.4f}"
    verdict = "accepted" if record["decision"] == "accept" else "rolled back, step halved"
    return (
        f"[AutoPrune] epoch {record['epoch']}: sparsity {record['proposed']:.4f} {verdict} "
        f"({monitor} {value} vs reference {record['reference']:.4f}, step {record['step']:.3f})"
    )


def _detached(obj: Any) -> Any:
    """A detached copy of the tensors in ``obj`` (nested tuples, lists, dicts); other values as they are."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_detached(v) for v in obj)
    if isinstance(obj, list):
        return [_detached(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    return obj


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _optimizer_second_moments(trainer: pl.Trainer, params: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    moments: dict[str, Tensor] = {}
    for optimizer in trainer.optimizers:
        for name, param in params.items():
            value = optimizer.state.get(param, {}).get("exp_avg_sq")
            if isinstance(value, Tensor) and value.shape == param.shape:
                moments[name] = value.detach()
    return moments or None


def _first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            return name
    return None


def _collect_rng_states() -> dict[str, Any]:
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
