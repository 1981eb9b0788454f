"""The ``AutoPrune`` Lightning callback: hooks that gate and delegate to the parts of a pruning run.

The work is done by parts that never see a Trainer: :class:`~lightning_autoprune.run.PruningRun`
holds the run (the :class:`~lightning_autoprune.core.engine.PruningEngine` and its masks, the
controllers of :mod:`lightning_autoprune.control.controller` that decide when and how far, and the
event pipeline of :mod:`lightning_autoprune.event` that turns scores into masks).
:mod:`lightning_autoprune.trainer` adapts the running Trainer to them. ``docs/architecture.md``
draws the data flow.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_autoprune import reporting, scoring
from lightning_autoprune import trainer as adapter
from lightning_autoprune.config import make_config
from lightning_autoprune.control import search as tolerance
from lightning_autoprune.control.controller import Observation
from lightning_autoprune.core import targets as choose
from lightning_autoprune.core.masks import sparsity as tensor_sparsity
from lightning_autoprune.core.snapshot import restore_snapshot, set_rng_states, take_snapshot
from lightning_autoprune.event import TrainingAccess
from lightning_autoprune.outcome import close_run, run_record
from lightning_autoprune.reporting import record as report_record
from lightning_autoprune.run import PruningRun, check_state_version


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
    ``flops_sparsity``, ``automatic``, ``masks``, ``skipped`` (weight tensors the defaults left
    dense, with the reason), ``history`` (one entry per pruning event) and
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
            default) prunes as far as the monitored validation metric allows: the model trains
            dense until the metric's plateau (the mean of the last 3 validations gains at most a
            quarter of ``max_metric_drop`` on the 3 before), then sparsity rises in steps that must
            stay within ``max_metric_drop`` of the dense reference, less a noise margin; a step
            that breaks it is rolled back. A reference at chance level (classification batches
            whose labels show it) stops the search: nothing is pruned.
        max_metric_drop: automatic mode: allowed drop of the monitored metric in its own units
            (0.01 = 1 point of accuracy, 0.02 nats of a loss). Every step keeps a margin from it:
            the metric's noise (the binomial standard error of an accuracy on the counted
            validation samples, or the spread of the plateau's values, whichever is larger),
            capped at half of it; each decision line shows the margin. When the standard error is
            at least half of the tolerance a warning says so, as steps are then judged partly on
            noise.
        reference: automatic mode: the dense value of the monitored metric, when you know it (for
            example from the run that trained the checkpoint you fine-tune). ``None`` (the default)
            measures it: the mean of the plateau's validation values, or their best value when
            they spread by more than ``max_metric_drop`` (unsteady training; a warning shows the
            values). Steps are judged against it.
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
            (``|g * w|`` on calibration batches), ``"wanda"`` (``|w_ij| * ||x_j||``, the weight
            times the root mean square of its input unit over the samples and positions of a
            forward pass on calibration batches; Conv input channels cover the whole kernel, and
            tensors whose inputs are not recorded score ``|w|``) or ``"random"``.
        estimator: ``importance="learned"`` only: import path of a scikit-learn regressor or
            classifier fitted from scratch on the run's own labels (for example
            ``sklearn.ensemble.HistGradientBoostingRegressor``). ``None``: start from the shipped
            pretrained importance model and refine it during the run.
        label_groups: ``importance="learned"`` only: the most group ablations measured per pruning
            event (each is one forward pass over ``calibration_samples`` held-out training samples,
            over the first half of them on a model of more than 2^20 prunable weights).
        label_budget: ``importance="learned"`` only: the most its calibration forward passes
            (ablations and candidate steps) may cost, as a share of the training samples seen
            before each event; ``0.05`` keeps the learned scorer's measurements within about 5%
            of training's forward passes. An event the budget cannot label reuses the model
            fitted so far. ``None``: no limit (``label_groups`` ablations at every event).
        granularity: ``"unstructured"`` prunes single weights. ``"structured"`` prunes whole
            neurons (Linear and transformers ``Conv1D`` outputs) and channels (Conv outputs),
            with every coupled slice (bias, BatchNorm ``gamma``/``beta``, the next layer's input
            columns, branches joined by a residual addition) pruned together, traced with
            Torch-Pruning on what ``training_step`` passes the model for one training batch (or
            ``example_input_array``). Sparsity then counts the parameters of
            those tensors (or their FLOPs, see ``target_unit``); ``importance`` must be
            ``"magnitude"`` (the structured default: the unit's squared L2 norm over every coupled
            weight slice, layer-normalised), ``"taylor"`` (group Taylor per parameter or FLOP
            removed), ``"learned"`` (single-unit ablations near the frontier teach a
            scikit-learn model, checked against Taylor on held-out units) or ``"random"``.
            Attention projections (layers inside a module whose class name contains
            ``Attention``) are kept whole, as their channels form heads; a transformer's FFN
            hidden units are pruned. The units are traced when training starts, so a model with
            nothing to prune raises a ``ValueError`` naming each candidate and why it is kept.
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
            mode) as ``compacted_model.pt`` in ``report_dir``. The report is written first; if
            compaction fails, a warning names the blocking layers, the masked model is kept and
            the report records the failure.
        schedule: how sparsity grows between ``start_epoch`` and ``end_epoch``: ``"cubic"``
            (Zhu & Gupta 2017, fast early and gentle late), ``"linear"``, or ``"one_shot"`` (all
            at ``end_epoch``).
        start_epoch: first epoch whose start prunes. ``None``: about a tenth of ``max_epochs``
            (at least 1 when there is room) for a fixed target; in the automatic mode the epoch
            after the monitored metric's plateau (epoch 6 at the earliest, for a model fine-tuned
            from a trained state), and at the latest 6 epochs before ``end_epoch``, with a warning
            when the metric was still improving or little room is left.
        end_epoch: epoch at whose start the target is reached; later epochs fine-tune.
            ``None``: about two thirds of ``max_epochs`` (the automatic search: about 80%).
        frequency: prune every this many epochs between ``start_epoch`` and ``end_epoch``.
        include: glob patterns over parameter names (``"net.*.weight"``) selecting the tensors to
            prune (a tensor tied under several names matches any of them and counts once).
            ``None``: every trainable weight of Linear, Conv, LSTM/GRU/RNN and MultiheadAttention
            layers and of transformers' ``Conv1D``; never biases, normalisation layers,
            embeddings (nor output heads tied to them), frozen (``requires_grad=False``)
            parameters or LoRA adapters. Setup names the tensors so left dense (an info line
            with ``verbose``; ``callback.skipped`` holds them with the reasons), and warns when
            more than a tenth of the model's weights sit in layers no rule recognises.
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
        label_budget: float | None = 0.05,
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
        reference: float | None = None,
    ) -> None:
        arguments = {name: value for name, value in locals().items() if name not in ("self", "__class__")}
        super().__init__()
        self.config = make_config(**arguments)  # validated here, so a bad configuration fails at parse time
        config = self.config
        scorer = scoring.make_scorer(
            config.importance,
            granularity=config.granularity,
            estimator=config.estimator,
            label_groups=config.label_groups,
            label_budget=config.label_budget,
        )
        if verbose:
            scorer.progress = adapter.ProgressLine()
        self.run = PruningRun(config, scorer)
        self.monitor_metric = adapter.Monitor(monitor, mode)
        self.compacted_model: nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self._skipped: dict[str, str] = {}
        self._validated_epoch = -1
        self._tally = adapter.ValidationTally()  # automatic mode, dense phase: samples and labels

    # ------------------------------------------------------------------ read-outs
    def __getattr__(self, name: str) -> Any:
        """The constructor's arguments read back (``callback.target_sparsity``...), from the validated config."""
        config = self.__dict__.get("config")
        if config is not None and name in type(config).__dataclass_fields__:
            value = getattr(config, name)
            return list(value) if name in ("include", "exclude") and value is not None else value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def automatic(self) -> bool:
        """Whether sparsity is driven by the metric tolerance (``target_sparsity=None``)."""
        return self.config.automatic

    @property
    def sparsity(self) -> float:
        """Fraction of the prunable weights that are exactly zero right now."""
        return self.run.sparsity()

    @property
    def flops_sparsity(self) -> float | None:
        """Fraction of the pruned Linear/Conv layers' FLOPs per sample removed; ``None`` until all of them ran."""
        return self.run.flops_sparsity()

    @property
    def targets(self) -> list[choose.PruneTarget]:
        """The pruned tensors (resolved at setup)."""
        return self.run.engine.targets

    @property
    def skipped(self) -> dict[str, str]:
        """Weight-bearing tensors the defaults left dense at setup, with the reason (empty with ``include``)."""
        return dict(self._skipped)

    @property
    def masks(self) -> dict[str, Tensor]:
        """The current masks, ``True`` where a weight is kept."""
        return self.run.engine.masks

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per pruning event: epoch, target, sparsity before and after, the metric around it."""
        return self.run.history

    @property
    def search(self) -> tolerance.SearchState:
        """The automatic search's state (an empty state for a fixed target)."""
        return self.run.search_state

    @property
    def scorer(self) -> Any:
        """The importance scorer (replace it before fitting to score with your own)."""
        return self.run.scorer

    @scorer.setter
    def scorer(self, scorer: Any) -> None:
        self.run.scorer = scorer

    @property
    def seconds_pruning(self) -> float:
        """Seconds spent in pruning events (calibration, scoring, selection)."""
        return self.run.seconds_pruning

    @property
    def seconds_enforcing(self) -> float:
        """Seconds spent keeping pruned weights at zero around optimizer steps."""
        return self.run.engine.seconds_enforcing

    def summary(self) -> str:
        """A plain-text table of every pruned tensor: shape, density and weights kept, with totals."""
        return reporting.render_summary(self.report_record())

    def report_record(self, pl_module: pl.LightningModule | None = None) -> dict[str, Any]:
        """Everything the report shows, as JSON-ready primitives (what ``summary.json`` holds)."""
        return run_record(self.run, pl_module, self.monitor_metric.resolved or (self.config.monitor, self.config.mode))

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        """Identifies this callback's state in a checkpoint; distinct for distinct tensor selections."""
        return self._generate_state_key(include=self.include, exclude=self.exclude)

    def state_dict(self) -> dict[str, Any]:
        """Masks (packed bits), schedule progress, generators and RNG states: tensors and primitives only."""
        return self.run.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the global RNG states now; masks are checked against the model and applied at train start.

        The RNG states must be back before Lightning creates the resumed epoch's training iterator
        (which draws its seeds from the global RNG); ``load_state_dict`` runs early enough.
        """
        check_state_version(state_dict)
        self._pending_state = state_dict
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the tensors to prune and the schedule window; fail early on bad configuration."""
        if stage != "fit":
            return
        adapter.check_supported_strategy(trainer.strategy)
        others = [c.targets for c in trainer.callbacks if isinstance(c, AutoPrune) and c is not self]  # type: ignore[attr-defined]
        config = self.config
        selection = choose.targets_for_run(
            pl_module, self.include, self.exclude, structured=config.structured, others=others
        )
        self._skipped = dict(selection.skipped)
        said = choose.skipped_message(selection)
        if said is not None and config.verbose:
            adapter.rank_zero_info(said)

        def snapshot(with_optimizers: bool) -> dict[str, Any]:
            epoch = trainer.current_epoch
            return take_snapshot(epoch, pl_module, trainer.optimizers, self.masks, with_optimizers=with_optimizers)

        say = adapter.rank_zero_info if config.verbose else None
        self.run.start(selection.targets, trainer.max_epochs, snapshot, say)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply a resumed state, trace the structured units, then hook mask enforcement onto every optimizer step.

        ``granularity="structured"`` traces its unit groups here, before the first epoch trains:
        tracing runs the model on one training batch, and Lightning builds the training loader
        only after ``on_fit_start``, so this is the earliest hook that has one. A model with no
        prunable unit raises a ``ValueError`` here instead of at the first pruning event.
        """
        if self._pending_state is not None:
            self.run.load_state_dict(self._pending_state)
            self._pending_state = None
        self.run.prepare(self._access(trainer, pl_module))
        self.run.engine.start(trainer.optimizers)
        self.run.positions.watch(self.targets)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune if the schedule (or the search) asks for more sparsity this epoch; log sparsity every epoch."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        scheduled, target = self.run.epoch_target(epoch)
        self._warn_from_search()
        if target is not None:
            self._prune(trainer, pl_module, epoch, target)
        flops = self.flops_sparsity if self.config.target_unit == "flops" else None
        per_tensor = {t.name: tensor_sparsity(t.param.detach()) for t in self.targets}
        rows = report_record.sparsity_metrics(self.sparsity, flops, scheduled, self.run.shown_target(), per_tensor)
        adapter.log_metrics(pl_module, rows)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights (and note movement for trajectory-aware scorers)."""
        self.run.engine.before_optimizer_step()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before pruning starts: count this validation's samples and labels (noise, chance level)."""
        search = self.run.search
        before = search.state.start_epoch is None if search is not None else self.run.listens
        self._tally.start(before and not trainer.sanity_checking)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Count validation samples and labels while :meth:`on_validation_epoch_start` asked for it."""
        self._tally.add(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note the validated epoch; in automatic mode, update the reference or decide a pending step.

        Deciding here, before ``ModelCheckpoint`` saves (Lightning runs checkpoint callbacks last),
        means a checkpoint never holds a step that is about to be rolled back.
        """
        if trainer.sanity_checking or not self.targets:
            return
        self._validated_epoch = trainer.current_epoch
        if not self.run.listens:
            return
        samples, labels = self._tally.take()
        if samples is not None:
            samples *= trainer.world_size  # each rank validated its own shard
        # Every rank decides on rank 0's value, count and labels.
        value, samples, labels = adapter.broadcast(trainer, (self._monitored(trainer), samples, labels))
        monitor, mode = self.monitor_metric.label, self.monitor_metric.resolved_mode
        if value is None or mode is None:
            return
        seen = Observation(value, trainer.current_epoch, mode, monitor, samples, labels)
        search = self.run.search
        if search is None:
            self.run.observe(seen)
            return
        verdict = search.on_validation(seen, pruned=bool(self.history))
        self._warn_from_search()
        if verdict.roll_back is not None:
            if verdict.keep_training:
                self.run.engine.regrow(verdict.roll_back["masks"])
            else:
                self.run.engine.set_masks(restore_snapshot(verdict.roll_back, pl_module, trainer.optimizers))
            self.run.engine.reset_movement()

    def _monitored(self, trainer: pl.Trainer) -> float | None:
        """The monitored value; with a fixed target a metric that is not logged only means nothing to wait for."""
        if self.run.search is not None:
            return self.monitor_metric.value(trainer)
        try:
            return self.monitor_metric.value(trainer)
        except ValueError:
            return None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the metric after this epoch's event and any search decisions; print one line per event."""
        if not self.targets:
            return
        epoch = trainer.current_epoch
        value = self.monitor_metric.value(trainer) if self._validated_epoch == epoch else None
        event, decisions = self.run.end_epoch(epoch, value)
        if event is not None and value is not None:
            adapter.log(pl_module, "autoprune/metric_after", value)
        if self.automatic:
            reference = tolerance.reference_at(self.search, epoch)
            adapter.log_metrics(pl_module, report_record.search_metrics(self.search.to_dict(), decisions, reference))
        if self.config.verbose:
            label, importance = self.monitor_metric.label, self.config.importance
            for line in report_record.event_lines(epoch, event, decisions, label, importance, self.automatic):
                adapter.rank_zero_info(line)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In automatic mode, end on a state within tolerance; print a summary, write the report, then compact.

        The report is written before compacting, and a ``CompactionError`` only warns: the masked
        model stays in ``pl_module`` and the failure is recorded in ``report.md`` and
        ``summary.json``. (``ModelCheckpoint`` has saved the masked model already: Lightning
        calls ``on_fit_end`` after the last checkpoint.)
        """
        if not self.targets:
            return
        config = self.config
        if self.run.search is not None:
            monitor = self.monitor_metric
            lines, warning = self.run.finish_search(
                trainer.current_epoch, monitor.resolved_mode, monitor.label, pl_module
            )
            for line in lines:
                adapter.info(line)
            if warning is not None:
                warnings.warn(warning, UserWarning, stacklevel=2)
        # `trainer.log_dir` broadcasts, so every rank must ask for it; only rank 0 writes.
        writes = config.report or config.compact_on_fit_end
        directory = adapter.report_directory(trainer, config.report_dir) if writes else None
        if trainer.is_global_zero:
            # Only rank 0 compacts: collectives inside `forward` (e.g. sync_dist logging) would hang.
            self.compacted_model = close_run(
                self.run,
                record=lambda: self.report_record(pl_module),
                access=lambda: self._access(trainer, pl_module),
                directory=directory,
                say=adapter.info,
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer and forward hooks."""
        self.run.engine.stop()
        self.run.positions.remove()

    # ------------------------------------------------------------------ delegated work
    def _access(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int = 0) -> TrainingAccess:
        return adapter.training_access(trainer, pl_module, self.config.importance, self.config.seed, epoch)

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, target: float) -> None:
        """One event: masks computed once on rank 0 and broadcast (with the generator and scorer state)."""
        event = self.run.prune(
            self._access(trainer, pl_module, epoch),
            epoch,
            target,
            trainer.optimizers,
            metric_before=lambda: self.monitor_metric.value(trainer),
            exchange=functools.partial(adapter.on_rank_zero, trainer),
            is_rank_zero=trainer.is_global_zero,
        )
        if event is None:
            return
        if event["metric_before"] is not None:
            adapter.log(pl_module, "autoprune/metric_before", event["metric_before"])
        entry, step = self.run.new_diagnostics(epoch), self.run.new_step(epoch)
        if entry is not None:
            adapter.log_metrics(pl_module, report_record.importance_metrics(entry))
            if self.config.verbose:
                adapter.rank_zero_info(report_record.importance_line(epoch, entry))
        elif step is not None:  # an event without labels that still measured its step
            adapter.log_metrics(pl_module, report_record.step_metrics(step))
            if self.config.verbose:
                adapter.rank_zero_info(report_record.step_line(epoch, step))

    def _warn_from_search(self) -> None:
        """Give the automatic search's queued warnings (room, noise, chance level), each once."""
        search = self.run.search
        for message in search.take_warnings() if search is not None else ():
            warnings.warn(message, UserWarning, stacklevel=3)
