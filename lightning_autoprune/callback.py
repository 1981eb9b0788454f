"""The ``AutoPrune`` Lightning callback: hooks that gate and delegate, and the state they compose.

The work is done by parts that never see a Trainer: :class:`~lightning_autoprune.core.engine.PruningEngine`
(masks and their enforcement), the controllers of :mod:`lightning_autoprune.control.controller` (when
and how far), the scorers of :mod:`lightning_autoprune.scoring` (which weights) and
:mod:`lightning_autoprune.structured` (which units). :mod:`lightning_autoprune.trainer` adapts the
running Trainer to them. ``docs/architecture.md`` draws the data flow.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_autoprune import importance as _weight_scoring
from lightning_autoprune import reporting, structured
from lightning_autoprune import trainer as adapter
from lightning_autoprune import unit_importance as _unit_scoring
from lightning_autoprune.config import AutoPruneConfig, check_search_budget, make_config, resolve_window
from lightning_autoprune.control import search as tolerance
from lightning_autoprune.control.controller import FixedSchedule, ToleranceSearch
from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.files import atomic_torch_save
from lightning_autoprune.core.flops import OutputPositions, flops_per_weight
from lightning_autoprune.core.masks import mask_sparsity
from lightning_autoprune.core.masks import sparsity as tensor_sparsity
from lightning_autoprune.core.snapshot import collect_rng_states, restore_snapshot, set_rng_states, take_snapshot
from lightning_autoprune.core.targets import resolve_targets, structured_targets
from lightning_autoprune.event import EventPipeline, TrainingAccess
from lightning_autoprune.importance import StatefulScorer
from lightning_autoprune.reporting import record as report_record

#: Version of the layout of :meth:`AutoPrune.state_dict`. Bump on incompatible changes.
STATE_VERSION = 1
_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(AutoPruneConfig))
_NO_CONTROLLER = FixedSchedule(0.0, (0, 0))  # checkpoint entries before setup: no search


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
        self.events = EventPipeline(self.config, self.engine, self.scorer, {})
        self.monitor_metric = adapter.Monitor(monitor, mode)
        self.positions = OutputPositions({})
        self.history: list[dict[str, Any]] = []  # one entry per pruning event
        self.timeline: list[dict[str, Any]] = []  # one entry per trained epoch, for the report
        self.window: tuple[int, int] | None = None
        self.seconds_pruning = 0.0
        self.compacted_model: nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self._validated_epoch = -1
        self._validation_samples: int | None = None  # automatic mode, dense phase: samples of this validation
        self._logged_decisions = 0

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
        return self._search.state if self._search is not None else tolerance.SearchState()

    @property
    def unit_groups(self) -> list[structured.UnitGroup] | None:
        """Structured pruning: the coupled unit groups, traced at the first event."""
        return self.events.unit_groups

    @property
    def _search(self) -> ToleranceSearch | None:
        return self.controller if isinstance(self.controller, ToleranceSearch) else None

    def _access(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> TrainingAccess:
        return adapter.training_access(trainer, pl_module, self.config.importance, self.config.seed, epoch)

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
            settings=config.settings(),
            targets=self.targets,
            per_weight=flops_per_weight(self.targets, self.positions.positions),
            model_params=sum(p.numel() for p in pl_module.parameters()) if pl_module is not None else None,
            monitor=resolved if resolved else (config.monitor, config.mode),
            timeline=self.timeline,
            events=self.history,
            search=self.search.to_dict(),
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
        control = (self.controller or _NO_CONTROLLER).state_dict()
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
            "search": control["search"],
            "positions": dict(self.positions.positions),
            "scorer": self.scorer.state_dict() if isinstance(self.scorer, StatefulScorer) else None,
            "snapshot": control["snapshot"],
            "snapshot_scores": control["snapshot_scores"],
            "reuse_scores": control["reuse_scores"],
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
        if self.controller is not None:
            self.controller.load_state_dict(state, self.engine.devices)
        self._logged_decisions = len(self.search.decisions)
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
        say = adapter.rank_zero_info if config.verbose else None
        self.events = EventPipeline(config, self.engine, self.scorer, self.positions.positions, say)
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
            if controller.due(epoch, progress=self.events.progress(), last_target=last):
                self._prune_with_context(trainer, pl_module, epoch, scheduled)
        self._log_sparsity(pl_module, scheduled)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights (and note movement for trajectory-aware scorers)."""
        self.engine.before_optimizer_step()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Automatic mode, before the first step: count this validation's samples (for the noise check)."""
        search = self._search
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
        search = self._search
        if search is None:
            return
        value = adapter.broadcast(trainer, self.monitor_metric.value(trainer))  # every rank decides on rank 0's
        mode = self.monitor_metric.resolved_mode
        if value is None or mode is None:
            return
        verdict = search.on_validation(value, epoch=trainer.current_epoch, mode=mode, pruned=bool(self.history))
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
            adapter.log_metrics(pl_module, report_record.search_metrics(self.search.to_dict(), decisions))
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
        if self._search is not None:
            self._finish_search(trainer, pl_module, self._search)
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
            lambda: self.events.compute_masks(
                self._access(trainer, pl_module, epoch), epoch, target, self.generator, self._search
            ),
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
        reference, resolved = self.search.reference, self.monitor_metric.resolved
        if samples is not None and resolved is not None and reference is not None:
            # each rank validated its own shard
            message = tolerance.noise_warning(
                *resolved, reference, samples * trainer.world_size, self.config.max_metric_drop
            )
            if message is not None:
                warnings.warn(message, UserWarning, stacklevel=2)

    def _finish_search(self, trainer: pl.Trainer, pl_module: pl.LightningModule, search: ToleranceSearch) -> None:
        broken, restore = search.finish(trainer.current_epoch, self.monitor_metric.resolved_mode)
        reference, value, label = search.state.reference, search.last_value, self.monitor_metric.label
        if reference is None or value is None or self.monitor_metric.resolved is None:
            return
        if restore is not None:
            pl_module.load_state_dict(restore["model"])
            self.engine.set_masks(restore["masks"])
        drop = self.config.max_metric_drop
        said, warning = report_record.finish_lines(
            label=label,
            value=value,
            reference=reference,
            drop=drop,
            restored_epoch=restore["epoch"] if restore is not None else None,
            broken=broken,
        )
        if said is not None:
            adapter.rank_zero_info(said)
        if warning is not None:
            warnings.warn(warning, UserWarning, stacklevel=2)
        if self.config.verbose:
            adapter.info(
                f"automatic mode finished at sparsity {self.sparsity:.4f}: the most-pruned state whose {label} "
                f"stayed within {drop} of the dense reference {reference:.4f} on validation. Stopped because "
                f"{search.state.stop_reason}."
            )

    # ------------------------------------------------------------------ logging and output
    def _shown_target(self) -> float:
        """The target to show: the fixed target, or the sparsity the search is trying or holds."""
        return self._search.target if self._search is not None else self.config.target_sparsity or 0.0

    def _log_sparsity(self, pl_module: pl.LightningModule, scheduled: float) -> None:
        flops = self.flops_sparsity if self.config.target_unit == "flops" else None
        per_tensor = {t.name: tensor_sparsity(t.param.detach()) for t in self.targets}
        rows = report_record.sparsity_metrics(self.sparsity, flops, scheduled, self._shown_target(), per_tensor)
        adapter.log_metrics(pl_module, rows)

    def _log_importance(self, pl_module: pl.LightningModule, epoch: int) -> None:
        """Log the learned scorer's held-out fidelity at this event, next to the formulas'."""
        diagnostics = getattr(self.scorer, "diagnostics", None)  # TEMPORARY until scoring/ lands
        if not diagnostics or "epoch" in diagnostics[-1]:
            return
        entry = diagnostics[-1]
        entry["epoch"] = epoch
        adapter.log_metrics(pl_module, report_record.importance_metrics(entry))
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
        args, kwargs = self.events.example_inputs(self._access(trainer, pl_module, trainer.current_epoch))
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


def make_any_scorer(importance: str, granularity: str, estimator: str | None, label_groups: int) -> Any:
    """TEMPORARY until scoring/ lands: the weight or unit scorer."""
    if granularity == "structured":
        return _unit_scoring.make_unit_scorer(importance, estimator=estimator, label_groups=label_groups)
    return _weight_scoring.make_scorer(importance, estimator=estimator, label_groups=label_groups)
