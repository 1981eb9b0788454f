"""The ``AutoPrune`` Lightning callback: hooks that gate and delegate, and the state they compose.

The work is done by parts that never see a Trainer: :class:`~lightning_autoprune.core.engine.PruningEngine`
(masks and their enforcement), the controllers of :mod:`lightning_autoprune.control.controller` (when
and how far), the scorers of :mod:`lightning_autoprune.scoring` (which weights) and
:mod:`lightning_autoprune.structured` (which units). :mod:`lightning_autoprune.trainer` adapts the
running Trainer to them. ``docs/architecture.md`` draws the data flow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_autoprune import importance as _weight_scoring
from lightning_autoprune import report_record, reporting, structured
from lightning_autoprune import trainer as adapter
from lightning_autoprune import unit_importance as _unit_scoring
from lightning_autoprune.config import AutoPruneConfig, check_search_budget, make_config, resolve_window
from lightning_autoprune.control import search as tolerance
from lightning_autoprune.control.controller import FixedSchedule, ToleranceSearch
from lightning_autoprune.core import calibration
from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.files import atomic_torch_save
from lightning_autoprune.core.flops import OutputPositions, flop_targets, flops_per_weight
from lightning_autoprune.core.masks import mask_sparsity
from lightning_autoprune.core.masks import sparsity as tensor_sparsity
from lightning_autoprune.core.snapshot import collect_rng_states, restore_snapshot, set_rng_states, take_snapshot
from lightning_autoprune.core.targets import resolve_targets, structured_targets
from lightning_autoprune.importance import ScoreInputs, StatefulScorer

#: Version of the layout of :meth:`AutoPrune.state_dict`. Bump on incompatible changes.
STATE_VERSION = 1
#: Batch size of the held-out calibration batches the learned scorer's ablations run on: every
#: ablation evaluates all of them, so few large batches cost far less than many small ones.
LABEL_BATCH_SIZE = 512
#: Calibration samples per set when ``calibration_samples=None`` and the training set is large enough.
DEFAULT_CALIBRATION_SAMPLES = 512
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(AutoPruneConfig))


class AutoPrune(Callback):
    r"""Prune a LightningModule while it trains: scores, masks and a schedule, from one callback.

    At the start of each scheduled epoch (that is, after the previous epoch trained and was
    validated) the callback scores every prunable weight, prunes the lowest-scoring ones globally
    until the scheduled sparsity is met, and keeps them at exactly zero after every optimizer step.
    Sparsity grows on the schedule from ``start_epoch`` to ``target_sparsity`` at ``end_epoch``,
    then holds while the model fine-tunes. The checkpointed ``state_dict`` keeps the model's own
    keys (pruned entries are zeros), and the callback's own state holds the masks, so
    ``trainer.fit(..., ckpt_path=...)`` resumes exactly.

    Read-outs, all properties: ``sparsity`` (the fraction of prunable weights that are zero now),
    ``flops_sparsity``, ``automatic``, ``masks``, ``history`` (one entry per pruning event) and
    ``search`` (the automatic mode's state); ``summary()`` renders a table and ``report_record()``
    returns what ``summary.json`` holds.

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
            CPU vector units and GPU tensor cores run such widths faster (BENCHMARKS.md, structured
            track, has the measured latencies).
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
        self.config = make_config(
            target_sparsity=target_sparsity,
            max_metric_drop=max_metric_drop,
            monitor=monitor,
            mode=mode,
            importance=importance,
            estimator=estimator,
            label_groups=label_groups,
            granularity=granularity,
            target_unit=target_unit,
            round_to=round_to,
            compact_on_fit_end=compact_on_fit_end,
            schedule=schedule,
            start_epoch=start_epoch,
            end_epoch=end_epoch,
            frequency=frequency,
            include=include,
            exclude=exclude,
            min_layer_density=min_layer_density,
            calibration_samples=calibration_samples,
            seed=seed,
            verbose=verbose,
            report=report,
            report_dir=report_dir,
        )
        config = self.config
        self.scorer = make_any_scorer(config.importance, config.granularity, config.estimator, config.label_groups)
        if verbose:
            self.scorer.progress = adapter.rank_zero_info
        self.generator = torch.Generator().manual_seed(seed)
        self.engine = PruningEngine([], WeightSelector(min_layer_density))
        self.controller: FixedSchedule | ToleranceSearch | None = None
        self.monitor_metric = adapter.Monitor(monitor, mode)
        self.positions = OutputPositions({})
        self.history: list[dict[str, Any]] = []  # one entry per pruning event
        self.timeline: list[dict[str, Any]] = []  # one entry per trained epoch, for the report
        self.window: tuple[int, int] | None = None
        self.seconds_pruning = 0.0
        self.unit_groups: list[structured.UnitGroup] | None = None  # structured: traced at the first event
        self.compacted_model: nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self._validated_epoch = -1
        self._validation_samples: int | None = None  # automatic mode, dense phase: samples of this validation
        self._logged_decisions = 0
        self._example: tuple[tuple[Any, ...], dict[str, Any]] | None = None

    def __getattr__(self, name: str) -> Any:
        """The constructor's arguments read back (``callback.target_sparsity``...), from the validated config."""
        config = self.__dict__.get("config")
        if config is not None and name in _CONFIG_FIELDS:
            value = getattr(config, name)
            return list(value) if name in ("include", "exclude") and value is not None else value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ read-outs
    @property
    def automatic(self) -> bool:
        """Whether sparsity is driven by the metric tolerance (``target_sparsity=None``)."""
        return self.config.automatic

    @property
    def targets(self) -> list[Any]:
        """The pruned tensors (resolved at setup)."""
        return self.engine.targets

    @property
    def masks(self) -> dict[str, Tensor]:
        """The current masks, ``True`` where a weight is kept."""
        return self.engine.masks

    @property
    def search(self) -> tolerance.SearchState:
        """The automatic search's state (an empty state in fixed-target mode)."""
        return self.controller.state if isinstance(self.controller, ToleranceSearch) else tolerance.SearchState()

    @property
    def seconds_enforcing(self) -> float:
        """Seconds spent keeping pruned weights at zero around optimizer steps."""
        return self.engine.seconds_enforcing

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are exactly zero right now."""
        return self.engine.sparsity()

    @property
    def flops_sparsity(self) -> float | None:
        """Fraction of the pruned Linear/Conv layers' FLOPs per sample removed; ``None`` until all of them ran."""
        weights = flops_per_weight(self.targets, self.positions.positions)
        return mask_sparsity(self.masks, weights) if weights is not None else None

    def summary(self) -> str:
        """A plain-text table of every pruned tensor: shape, density and weights kept, with totals."""
        return reporting.render_summary(self.report_record())

    def report_record(self, pl_module: pl.LightningModule | None = None) -> dict[str, Any]:
        """Everything the report shows, as JSON-ready primitives (what ``summary.json`` holds)."""
        config = self.config
        resolved = self.monitor_metric.resolved
        return report_record.build_record(
            settings={
                "mode": "automatic" if config.automatic else "fixed",
                "importance": config.importance,
                "granularity": config.granularity,
                "schedule": config.schedule,
                "max_metric_drop": config.max_metric_drop,
                "target_sparsity": config.target_sparsity,
            },
            targets=self.targets,
            per_weight=flops_per_weight(self.targets, self.positions.positions),
            model_params=sum(p.numel() for p in pl_module.parameters()) if pl_module is not None else None,
            monitor=resolved if resolved else (config.monitor, config.mode),
            timeline=self.timeline,
            events=self.history,
            search=self.search,
            diagnostics=self._importance_diagnostics(),
            overhead={"pruning": self.seconds_pruning, "enforcing": self.seconds_enforcing},
        )

    # ------------------------------------------------------------------ identity and state
    def __getstate__(self) -> dict[str, Any]:
        """Pickle support (``ddp_spawn`` sends callbacks to new processes): the generator travels as bytes."""
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
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
        engine = self.engine.state_dict()
        search = self.controller if isinstance(self.controller, ToleranceSearch) else None
        searching = search.state_dict() if search is not None else {}
        return {
            "version": STATE_VERSION,
            "masks": engine["masks"],
            "shapes": engine["shapes"],
            "history": [dict(event) for event in self.history],
            "timeline": [dict(entry) for entry in self.timeline],
            "generator": self.generator.get_state(),
            "rng": collect_rng_states(),
            "initial_weights": engine["initial_weights"],
            "movement": engine["movement"],
            "search": searching.get("search", tolerance.SearchState().to_dict()),
            "positions": dict(self.positions.positions),
            "scorer": self.scorer.state_dict() if isinstance(self.scorer, StatefulScorer) else None,
            "snapshot": searching.get("snapshot"),
            "snapshot_scores": searching.get("snapshot_scores"),
            "reuse_scores": searching.get("reuse_scores", False),
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
            set_rng_states(state_dict["rng"])

    def _restore(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)
        self.history = [dict(event) for event in state.get("history", [])]
        self.timeline = [dict(entry) for entry in state.get("timeline", [])]
        self.generator.set_state(state["generator"])
        self.positions.positions.update({str(n): int(v) for n, v in state.get("positions", {}).items()})
        if isinstance(self.controller, ToleranceSearch):
            self.controller.load_state_dict(state, self.engine.devices)
            self._logged_decisions = len(self.controller.state.decisions)
        if isinstance(self.scorer, StatefulScorer) and state.get("scorer") is not None:
            self.scorer.load_state_dict(state["scorer"])

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the tensors to prune and the schedule window; fail early on bad configuration."""
        if stage != "fit":
            return
        config = self.config
        adapter.check_supported_strategy(trainer.strategy)
        targets = resolve_targets(pl_module, self.include, self.exclude)
        if config.structured:
            targets, skipped = structured_targets(pl_module, targets)
            if skipped:
                warnings.warn(
                    "AutoPrune (granularity='structured') leaves these selected tensors unpruned: structured "
                    f"pruning handles Linear and ordinary Conv layers only: {', '.join(skipped)}.",
                    UserWarning,
                    stacklevel=2,
                )
        self._check_no_overlap(trainer, {t.name for t in targets})
        track = self.scorer.needs_context and not config.structured
        self.engine = PruningEngine(targets, WeightSelector(config.min_layer_density), track_trajectory=track)
        self.window = resolve_window(config, trainer.max_epochs)
        if config.automatic:
            check_search_budget(self.window, config.frequency)
            self.controller = ToleranceSearch(
                self.window, config.frequency, config.max_metric_drop, snapshot=self._snapshot_for(trainer, pl_module)
            )
        else:
            assert config.target_sparsity is not None
            self.controller = FixedSchedule(
                config.target_sparsity,
                self.window,
                frequency=config.frequency,
                kind=config.schedule,
                coarse=config.structured,
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply a resumed state, then hook mask enforcement onto every optimizer step."""
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        self.engine.start(trainer.optimizers)
        self.positions.watch(self.targets)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune if the schedule (or the search) asks for more sparsity this epoch; log sparsity every epoch."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        controller = self.controller
        if isinstance(controller, ToleranceSearch):
            proposed = controller.begin_epoch(
                epoch,
                ceiling=lambda: self.engine.feasible_ceiling(self.config.min_layer_density),
                before_first_step=lambda: self._warn_noise(trainer),
            )
            if proposed is not None:
                self._prune_with_context(trainer, pl_module, epoch, proposed)
            scheduled = controller.target
        else:
            assert controller is not None
            scheduled = controller.target_for(epoch)
            last = self.history[-1]["target"] if self.history else 0.0
            if controller.due(epoch, progress=self._progress(), last_target=last):
                self._prune_with_context(trainer, pl_module, epoch, scheduled)
        self._log_sparsity(pl_module, scheduled)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights (and note movement for trajectory-aware scorers)."""
        self.engine.before_optimizer_step()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Automatic mode, before the first step: count this validation's samples (for the noise check)."""
        search = self.controller if isinstance(self.controller, ToleranceSearch) else None
        before_first_step = search is not None and not search.state.decisions and search.state.pending is None
        self._validation_samples = 0 if before_first_step and not trainer.sanity_checking else None

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
            samples = adapter.batch_samples(batch)  # None: an opaque batch, the noise check is skipped
            self._validation_samples = None if samples is None else self._validation_samples + samples

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the validated epoch; in automatic mode, update the reference or decide a pending step.

        Deciding here, before ``ModelCheckpoint`` saves (Lightning runs checkpoint callbacks last),
        means a checkpoint never holds a step that is about to be rolled back.
        """
        if trainer.sanity_checking or not self.targets:
            return
        self._validated_epoch = trainer.current_epoch
        if not isinstance(self.controller, ToleranceSearch):
            return
        value = adapter.broadcast(trainer, self.monitor_metric.value(trainer))  # every rank decides on rank 0's
        mode = self.monitor_metric.resolved_mode
        if value is None or mode is None:
            return
        verdict = self.controller.on_validation(
            value, epoch=trainer.current_epoch, mode=mode, pruned=bool(self.history)
        )
        if verdict.roll_back is not None:
            self.engine.set_masks(restore_snapshot(verdict.roll_back, pl_module, trainer.optimizers))
            self.engine.reset_movement()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metric after this epoch's event and any search decisions; print one line per event."""
        if not self.targets:
            return
        epoch = trainer.current_epoch
        value = self.monitor_metric.value(trainer) if self._validated_epoch == epoch else None
        event = self.history[-1] if self.history and self.history[-1]["epoch"] == epoch else None
        if event is not None and value is not None:
            event["metric_after"] = value
            adapter.log(pl_module, "autoprune/metric_after", value)
        decisions = [dict(d) for d in self.search.decisions[self._logged_decisions :]]
        self._logged_decisions = len(self.search.decisions)
        if self.automatic:
            self._log_search(pl_module, decisions)
        self.timeline.append(
            {
                "epoch": epoch,
                "sparsity": self.sparsity,
                "target": self._shown_target(),
                "metric": value,
                "decisions": [d["decision"] for d in decisions],
            }
        )
        if self.config.verbose:
            lines = report_record.event_lines(
                epoch, event, decisions, self.monitor_metric.label, self.config.importance, self.automatic
            )
            for line in lines:
                adapter.rank_zero_info(line)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In automatic mode, end on a state within tolerance; compact, print a summary and write the report."""
        if not self.targets:
            return
        config = self.config
        if isinstance(self.controller, ToleranceSearch):
            self._finish_search(trainer, pl_module, self.controller)
        # `trainer.log_dir` broadcasts, so every rank must ask for it; only rank 0 writes.
        directory = (
            adapter.report_directory(trainer, config.report_dir) if config.report or config.compact_on_fit_end else None
        )
        compaction = None
        if config.compact_on_fit_end and trainer.is_global_zero:
            assert directory is not None
            compaction = self._compact(trainer, pl_module, directory)
        if not (config.verbose or config.report) or not trainer.is_global_zero:
            return  # nothing shows the record; its feature importances alone cost a third of a second
        record = self.report_record(pl_module)
        if compaction is not None:
            record["compaction"] = compaction
        if config.verbose:
            reporting.print_summary(record)
        if config.report and directory is not None:
            reporting.write_report(record, directory)
            if config.verbose:
                adapter.info(f"report written to {directory / 'report.md'}")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer and forward hooks."""
        self.engine.stop()
        self.positions.remove()

    # ------------------------------------------------------------------ one pruning event
    def _prune_with_context(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float
    ) -> None:
        start = time.perf_counter()
        try:
            self._prune(trainer, pl_module, epoch, target)
        except Exception as err:
            raise RuntimeError(
                f"AutoPrune failed while pruning at the start of epoch {epoch} towards sparsity {target:.4f} "
                f"(importance={self.config.importance!r}, tensors: {', '.join(self.masks)}): {err}"
            ) from err
        finally:
            self.seconds_pruning += time.perf_counter() - start

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float) -> None:
        # Scores and masks are computed once, on global rank 0, and broadcast with the generator and
        # scorer state, so every rank holds bit-identical masks and calibration work is not repeated.
        scorer = self.scorer if isinstance(self.scorer, StatefulScorer) else None
        new_masks, sent = adapter.on_rank_zero(
            trainer,
            lambda: self._compute_masks(trainer, pl_module, epoch, target),
            lambda: (self.generator.get_state(), scorer.state_dict() if scorer is not None else None),
        )
        if sent is not None:
            self.generator.set_state(sent[0])
            if scorer is not None and not trainer.is_global_zero and sent[1] is not None:
                scorer.load_state_dict(sent[1])
        self.engine.reset_movement()
        if new_masks is None:
            return
        previous = self.sparsity
        self.engine.apply(new_masks, trainer.optimizers)
        before = self.monitor_metric.value(trainer)
        self.history.append(
            {
                "epoch": epoch,
                "target": target,
                "sparsity_before": previous,
                "sparsity": self.sparsity,
                "flops_sparsity": self.flops_sparsity,
                "metric_before": before,
                "metric_after": None,
            }
        )
        if before is not None:
            adapter.log(pl_module, "autoprune/metric_before", before)
        self._log_importance(pl_module, epoch)

    def _compute_masks(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float
    ) -> dict[str, Tensor] | None:
        """Score and select: the new masks, or ``None`` if the event must be skipped (non-finite inputs)."""
        weights = self.engine.weights
        if _skip_non_finite(weights, epoch, "tensor"):
            return None
        search = self.controller if isinstance(self.controller, ToleranceSearch) else None
        if search is not None and search.reuse_scores and search.scores is not None:
            search.reuse_scores = False
            if self.config.verbose:
                adapter.info(
                    "reusing the scores of the rolled-back step: the rollback restored the weights they were "
                    "computed from."
                )
            return self._select(trainer, pl_module, search.scores, target)
        if search is not None:
            search.reuse_scores = False
            search.scores = None
        inputs = ScoreInputs(
            weights=weights,
            masks=self.masks,
            generator=self.generator,
            target_sparsity=target,
            progress=adapter.progress(trainer, epoch),
        )
        if self.scorer.needs_gradients or self.scorer.needs_context:
            self._calibrate(trainer, pl_module, inputs)
            assert inputs.grad_sq_mean is not None
            if _skip_non_finite(inputs.grad_sq_mean, epoch, "the calibration gradient of"):
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
            if self.config.structured:
                groups = self._traced_groups(trainer, pl_module)
                inputs.cost_weights = self._cost_weights()
                scores = self.scorer.score_units(groups, inputs)
            else:
                scores = self.scorer.score(inputs)
        if search is not None:
            search.scores = {name: score.detach().clone() for name, score in scores.items()}
        return self._select(trainer, pl_module, scores, target)

    def _select(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, scores: Mapping[str, Tensor], target: float
    ) -> dict[str, Tensor]:
        """Masks from scores (per weight) or keys (per structured unit), at ``target`` sparsity."""
        if self.config.structured:
            self._traced_groups(trainer, pl_module)  # installs the unit selector on first use
            self.engine.selector = _UnitSelector(
                self.unit_groups or [], self.config.min_layer_density, self._cost_weights(), self.config.round_to
            )
        return self.engine.select(scores, target)

    def _calibrate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: ScoreInputs) -> None:
        """Fill the calibration fields of ``inputs``: gradient statistics, and the context a learned scorer uses."""
        config = self.config
        loader = adapter.training_loader(trainer, f"importance={config.importance!r}")
        loss_fn = adapter.loss_closure(trainer, pl_module, config.importance)
        params = {t.name: t.param for t in self.targets}
        sets = 2 if self.scorer.needs_context else 1
        samples = adapter.calibration_size(loader, config.calibration_samples, sets, DEFAULT_CALIBRATION_SAMPLES)
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
        inputs.initial_weights = self.engine.initial_weights
        inputs.movement = self.engine.movement
        inputs.params = {name: p.data for name, p in params.items()}
        inputs.exp_avg_sq = adapter.optimizer_second_moments(trainer, params)
        inputs.loss_fn = lambda: calibration.mean_loss(loss_fn, label_batches)  # inside the scoring context

    def _traced_groups(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[structured.UnitGroup]:
        """The unit groups, traced once with Torch-Pruning on the model's own inputs."""
        if self.unit_groups is not None:
            return self.unit_groups
        args, kwargs = self._example_inputs(trainer, pl_module)
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

    def _example_inputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self._example is None:
            self._example = adapter.example_inputs(trainer, pl_module, self.config.seed)
        return self._example

    def _cost_weights(self) -> dict[str, float] | None:
        """What one mask entry of each tensor costs towards the target: ``None`` (1 each) for ``"params"``."""
        if self.config.target_unit == "params":
            return None
        weights = flops_per_weight(self.targets, self.positions.positions)
        if weights is None:
            missing = [t.name for t in flop_targets(self.targets) if t.name not in self.positions.positions]
            raise ValueError(
                "target_unit='flops' needs the output size of every pruned Linear/Conv layer, but these never ran "
                f"a forward pass: {', '.join(missing) or 'none is a Linear/Conv layer'}. HINT: use "
                "target_unit='params', or exclude the layers the model does not call."
            )
        return weights

    def _progress(self) -> float:
        """The masks' sparsity in the unit of the target (parameters or FLOPs)."""
        return self.engine.mask_progress(self._cost_weights()) if self.engine.pruned else 0.0

    # ------------------------------------------------------------------ automatic mode
    def _snapshot_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        def snapshot(with_optimizers: bool) -> dict[str, Any]:
            return take_snapshot(
                trainer.current_epoch, pl_module, trainer.optimizers, self.masks, with_optimizers=with_optimizers
            )

        return snapshot

    def _warn_noise(self, trainer: pl.Trainer) -> None:
        """Warn once, before the first step, when validation is too small to resolve ``max_metric_drop``."""
        samples, self._validation_samples = self._validation_samples, None
        reference = self.search.reference
        resolved = self.monitor_metric.resolved
        if samples is None or resolved is None or reference is None:
            return
        samples *= trainer.world_size  # each rank validated its own shard
        drop = self.config.max_metric_drop
        error = tolerance.tolerance_noise(resolved[0], resolved[1], reference, samples, drop)
        if error is not None:
            warnings.warn(
                f"AutoPrune's validation {resolved[0]} comes from {samples} samples: at the dense reference "
                f"{reference:.4f} its sampling standard error is {error:.4f}, comparable to "
                f"`max_metric_drop`={drop}. Steps are then accepted or rolled back partly on noise, and on unseen "
                "data the final model often loses more than the tolerance (BENCHMARKS.md, automatic mode). "
                "HINT: validate on more samples, or lower `max_metric_drop` to keep a margin.",
                UserWarning,
                stacklevel=2,
            )

    def _finish_search(self, trainer: pl.Trainer, pl_module: pl.LightningModule, search: ToleranceSearch) -> None:
        broken, restore = search.finish(trainer.current_epoch, self.monitor_metric.resolved_mode)
        state, value, label, drop = (
            search.state,
            search.last_value,
            self.monitor_metric.label,
            self.config.max_metric_drop,
        )
        if state.reference is None or value is None or self.monitor_metric.resolved is None:
            return
        if broken and restore is not None:
            pl_module.load_state_dict(restore["model"])
            self.engine.set_masks(restore["masks"])
            adapter.info(
                f"the last validation ({value:.4f}) broke the tolerance; restored the weights of epoch "
                f"{restore['epoch']}, the latest state within it."
            )
        elif broken:
            warnings.warn(
                f"AutoPrune's final {label} ({value:.4f}) is more than {drop} worse than the dense reference "
                f"({state.reference:.4f}), and no state within tolerance was kept at this sparsity.",
                UserWarning,
                stacklevel=2,
            )
        if self.config.verbose:
            adapter.info(
                f"automatic mode finished at sparsity {self.sparsity:.4f}: the most-pruned state whose {label} "
                f"stayed within {drop} of the dense reference {state.reference:.4f} on validation. Stopped because "
                f"{state.stop_reason}."
            )

    # ------------------------------------------------------------------ logging and output
    def _shown_target(self) -> float:
        """The target to show: the fixed target, or the sparsity the search is trying or holds."""
        if isinstance(self.controller, ToleranceSearch):
            return self.controller.target
        return self.config.target_sparsity or 0.0

    def _log_sparsity(self, pl_module: pl.LightningModule, scheduled: float) -> None:
        adapter.log(pl_module, "autoprune/sparsity", self.sparsity, prog_bar=True)
        flops = self.flops_sparsity if self.config.target_unit == "flops" else None
        if flops is not None:
            adapter.log(pl_module, "autoprune/flops_sparsity", flops, prog_bar=True)
        adapter.log(pl_module, "autoprune/scheduled_sparsity", scheduled)
        adapter.log(pl_module, "autoprune/target_sparsity", self._shown_target(), prog_bar=True)
        for target in self.targets:
            adapter.log(pl_module, f"autoprune/sparsity/{target.name}", tensor_sparsity(target.param.detach()))

    def _log_search(self, pl_module: pl.LightningModule, decisions: list[dict[str, Any]]) -> None:
        codes = {"accept": 1.0, "rollback": -1.0, "stop": 0.0}
        for record in decisions:
            adapter.log(pl_module, "autoprune/decision", codes[record["decision"]])
        if self.search.reference is not None:
            adapter.log(pl_module, "autoprune/reference", self.search.reference)
        adapter.log(pl_module, "autoprune/accepted_sparsity", self.search.accepted)
        adapter.log(pl_module, "autoprune/step", self.search.step)

    def _log_importance(self, pl_module: pl.LightningModule, epoch: int) -> None:
        """Log the learned scorer's held-out fidelity at this event, next to the formulas'."""
        diagnostics = getattr(self.scorer, "diagnostics", None)  # TEMPORARY until scoring/ lands
        if not diagnostics or "epoch" in diagnostics[-1]:
            return
        entry = diagnostics[-1]
        entry["epoch"] = epoch
        for method, numbers in entry["fidelity"].items():
            adapter.log(pl_module, f"autoprune/fidelity/spearman_{method}", numbers["spearman"])
            adapter.log(pl_module, f"autoprune/fidelity/precision_at_k_{method}", numbers["precision_at_k"])
        adapter.log(pl_module, "autoprune/importance/blend_weight", entry["blend_weight"])
        adapter.log(pl_module, "autoprune/importance/fell_back", float(entry["fell_back"]))
        if self.config.verbose:
            adapter.rank_zero_info(report_record.importance_line(epoch, entry))

    def _importance_diagnostics(self) -> Any:
        """Per-event diagnostics of the learned scorer, the last with its feature importances."""
        diagnostics = getattr(self.scorer, "diagnostics", None)  # TEMPORARY until scoring/ lands
        if not diagnostics:
            return None
        entries = [dict(entry) for entry in diagnostics]
        importances = getattr(self.scorer, "feature_importances", None)  # TEMPORARY until scoring/ lands
        if callable(importances):
            entries[-1]["feature_importances"] = importances()
        return report_record.jsonable(entries)

    def _compact(self, trainer: pl.Trainer, pl_module: pl.LightningModule, directory: Path) -> dict[str, Any]:
        """Remove the pruned units physically; keep the result and save it atomically."""
        args, kwargs = self._example_inputs(trainer, pl_module)
        if kwargs:
            raise ValueError(
                "compact_on_fit_end traces positional inputs only, but the model was called with keyword "
                f"arguments {sorted(kwargs)}. HINT: call compact(model, example_inputs) yourself."
            )
        # Only rank 0 gets here: collectives inside `forward` (e.g. sync_dist logging) would hang.
        from lightning_autoprune.compact import compact, count_parameters  # TEMPORARY until structured/ lands

        small = compact(pl_module, args).eval()  # a deployment artifact: call .train() to train it further
        self.compacted_model = small
        directory.mkdir(parents=True, exist_ok=True)
        path = atomic_torch_save(small, directory / "compacted_model.pt")
        before, after = count_parameters(pl_module), count_parameters(small)
        if self.config.verbose:
            adapter.info(
                f"compacted model: {before:,} -> {after:,} parameters ({after / before:.1%}), saved to "
                f"{path} (load with torch.load(path, weights_only=False))"
            )
        return {"params_before": before, "params_after": after, "path": str(path)}

    def _check_no_overlap(self, trainer: pl.Trainer, mine: set[str]) -> None:
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is self or not isinstance(other, AutoPrune) or not other.targets:
                continue
            shared = sorted(mine & {t.name for t in other.targets})
            if shared:
                raise ValueError(
                    f"Two AutoPrune callbacks claim the same tensors: {', '.join(shared)}. "
                    "HINT: give each callback disjoint `include`/`exclude` patterns."
                )


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


def make_any_scorer(importance: str, granularity: str, estimator: str | None, label_groups: int) -> Any:
    """TEMPORARY until scoring/ lands: the weight or unit scorer."""
    if granularity == "structured":
        return _unit_scoring.make_unit_scorer(importance, estimator=estimator, label_groups=label_groups)
    return _weight_scoring.make_scorer(importance, estimator=estimator, label_groups=label_groups)


class _UnitSelector:
    """TEMPORARY until structured/ lands."""

    def __init__(self, groups: Any, min_density: float, weights: Any, round_to: int) -> None:
        self.groups, self.min_density, self.weights, self.round_to = groups, min_density, weights, round_to

    def __call__(self, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        keep = structured.select_units(
            self.groups,
            scores,
            masks,
            target,
            min_density=self.min_density,
            weights=self.weights,
            round_to=self.round_to,
        )
        return structured.unit_masks(self.groups, keep, masks)
