"""The state of one pruning run across a fit, without a Trainer.

:class:`PruningRun` composes the parts: the scorer, the engine (masks), the controller (when and
how far), the event pipeline (scores to masks), the FLOPs watcher, and the run's history. It
answers the callback's questions ("prune now? to what?"), records what happened, and writes and
reads the callback's checkpoint state. The callback only adapts Lightning's hooks to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_autoprune.config import AutoPruneConfig, check_search_budget, resolve_window
from lightning_autoprune.control.controller import FixedSchedule, Observation, ToleranceSearch
from lightning_autoprune.control.search import SearchState
from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.flops import OutputPositions, macs_per_weight
from lightning_autoprune.core.masks import mask_sparsity
from lightning_autoprune.core.snapshot import collect_rng_states
from lightning_autoprune.core.targets import PruneTarget
from lightning_autoprune.event import EventPipeline, TrainingAccess
from lightning_autoprune.reporting import record as report_record
from lightning_autoprune.scoring import StatefulScorer

#: Version of the layout of :meth:`PruningRun.state_dict`. Bump on incompatible changes.
STATE_VERSION = 1

Snapshot = Callable[[bool], dict[str, Any]]
#: Runs a computation on rank 0 and shares its result and a state with every rank.
Exchange = Callable[[Callable[[], Any], Callable[[], Any]], tuple[Any, Any]]


class PruningRun:
    """One run's parts and history; see the module docstring.

    Args:
        config: the validated configuration.
        scorer: the weight or unit scorer.

    Example:
        >>> from lightning_autoprune.config import make_config
        >>> from lightning_autoprune.core.targets import resolve_targets
        >>> from lightning_autoprune.scoring import make_scorer
        >>> model = nn.Linear(8, 4)
        >>> config = make_config(target_sparsity=0.5, importance="magnitude", schedule="one_shot")
        >>> run = PruningRun(config, make_scorer("magnitude"))
        >>> run.start(resolve_targets(model, None, None), max_epochs=4, snapshot=lambda with_optimizers: {})
        >>> run.window, run.epoch_target(1), run.epoch_target(3)
        ((1, 3), (0.0, None), (0.5, 0.5))
    """

    def __init__(self, config: AutoPruneConfig, scorer: Any) -> None:
        self.config = config
        self.scorer = scorer
        self.generator = torch.Generator().manual_seed(config.seed)
        self.engine = PruningEngine([], WeightSelector(config.min_layer_density))
        self.positions = OutputPositions({})
        self.events = EventPipeline(config, self.engine, scorer, self.positions.positions)
        self.controller: FixedSchedule | ToleranceSearch = FixedSchedule(config.target_sparsity or 0.0, (0, 0))
        self.window: tuple[int, int] | None = None
        self.say: Callable[[str], None] | None = None
        self.history: list[dict[str, Any]] = []  # one entry per pruning event
        self.timeline: list[dict[str, Any]] = []  # one entry per trained epoch, for the report
        self.seconds_pruning = 0.0
        self._logged_decisions = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickle support (``ddp_spawn`` sends callbacks to new processes): the generator travels as bytes."""
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["generator"]), dtype=torch.uint8))
        self.__dict__.update({**state, "generator": generator})

    def start(
        self,
        targets: Sequence[PruneTarget],
        max_epochs: int | None,
        snapshot: Snapshot,
        say: Callable[[str], None] | None = None,
    ) -> None:
        """Set up for a fit: the engine over ``targets``, the window and the controller.

        Args:
            targets: the tensors to prune.
            max_epochs: the Trainer's ``max_epochs``.
            snapshot: copies the training state (the automatic mode's rollback).
            say: prints progress lines (``None``: quiet).
        """
        config = self.config
        track = self.scorer.needs_context and not config.structured
        self.engine = PruningEngine(targets, WeightSelector(config.min_layer_density), track_trajectory=track)
        self.events = EventPipeline(config, self.engine, self.scorer, self.positions.positions, say)
        self.say = say
        self.window = resolve_window(config, max_epochs)
        if config.target_sparsity is None:
            check_search_budget(self.window, config.frequency)
            self.controller = ToleranceSearch(
                self.window,
                config.frequency,
                config.max_metric_drop,
                snapshot=snapshot,
                reference=config.reference,
                wait_for_plateau=config.start_epoch is None,
                # structured steps also zero coupled tensors that only the whole snapshot restores
                regrow=config.granularity == "unstructured",
                horizon=max_epochs - 1 if max_epochs is not None and max_epochs > 0 else None,
            )
        else:
            self.controller = FixedSchedule(
                config.target_sparsity,
                self.window,
                frequency=config.frequency,
                kind=config.schedule,
                coarse=config.structured,
                wait_for_learning=config.start_epoch is None,
                max_drop=config.max_metric_drop,
            )

    # ------------------------------------------------------------------------------ read-outs
    @property
    def search(self) -> ToleranceSearch | None:
        """The automatic mode's controller, ``None`` for a fixed target."""
        return self.controller if isinstance(self.controller, ToleranceSearch) else None

    @property
    def search_state(self) -> SearchState:
        """The automatic search's state (an empty state for a fixed target)."""
        return self.search.state if self.search is not None else SearchState()

    def sparsity(self) -> float:
        """Fraction of the prunable weights that are exactly zero right now."""
        return self.engine.sparsity()

    def flops_sparsity(self) -> float | None:
        """Fraction of the pruned Linear/Conv layers' FLOPs per sample removed; ``None`` until all of them ran."""
        weights = macs_per_weight(self.engine.targets, self.positions.positions)
        return mask_sparsity(self.engine.masks, weights) if weights is not None else None

    @property
    def listens(self) -> bool:
        """Whether the controller wants this validation: the automatic search, or a schedule waiting to start."""
        return self.search is not None or (isinstance(self.controller, FixedSchedule) and self.controller.waiting)

    def observe(self, seen: Observation) -> None:
        """A fixed schedule waiting to start sees a validation; says when the metric moved and pruning starts."""
        if not isinstance(self.controller, FixedSchedule):
            return
        started = self.controller.observe(seen)
        nominal = self.controller.window[0]
        if started is not None and started > nominal and self.say is not None:
            self.say(
                f"[AutoPrune] {seen.monitor} {seen.value:.4f} at epoch {seen.epoch} has left its starting value: "
                f"pruning starts at epoch {started} (the default start, epoch {nominal}, came before "
                "the model had learned anything)."
            )

    def shown_target(self) -> float:
        """The target to show: the fixed target, or the sparsity the search is trying or holds."""
        return self.search.target if self.search is not None else self.config.target_sparsity or 0.0

    # ------------------------------------------------------------------------------ decisions
    def epoch_target(self, epoch: int) -> tuple[float, float | None]:
        """At an epoch start: ``(scheduled sparsity, sparsity to prune to now or None)``."""
        controller = self.controller
        if isinstance(controller, ToleranceSearch):
            ceiling = lambda: self.engine.feasible_ceiling(self.config.min_layer_density)  # noqa: E731
            return controller.target, controller.begin_epoch(epoch, ceiling=ceiling)
        controller.begin_epoch(epoch)
        scheduled = controller.target_for(epoch)
        last = self.history[-1]["target"] if self.history else 0.0
        return scheduled, scheduled if controller.due(
            epoch, progress=self.events.progress(), last_target=last
        ) else None

    def prepare(self, access: TrainingAccess) -> None:
        """Before the first epoch trains: trace the structured unit groups, so nothing to prune fails now.

        Raises:
            ValueError: for ``granularity="structured"``, if no unit can be pruned or the model
                cannot be traced (see :meth:`EventPipeline.traced_groups`).
        """
        if self.config.structured:
            self.events.traced_groups(access)

    def compute_masks(self, access: TrainingAccess, epoch: int, target: float) -> dict[str, Tensor] | None:
        """The masks of a step to ``target`` (``None``: skip the event); see :class:`EventPipeline`."""
        return self.events.compute_masks(access, epoch, target, self.generator, self.search)

    def sync_state(self) -> tuple[Any, Any]:
        """What rank 0 sends with an event's masks: the generator state and the scorer state."""
        stateful = isinstance(self.scorer, StatefulScorer)
        return self.generator.get_state(), self.scorer.state_dict() if stateful else None

    def load_sync_state(self, sent: tuple[Any, Any], *, is_rank_zero: bool) -> None:
        """Take rank 0's generator (and, on the other ranks, scorer) state after an event."""
        self.generator.set_state(sent[0])
        if isinstance(self.scorer, StatefulScorer) and not is_rank_zero and sent[1] is not None:
            self.scorer.load_state_dict(sent[1])

    def prune(
        self,
        access: TrainingAccess,
        epoch: int,
        target: float,
        optimizers: Sequence[torch.optim.Optimizer],
        metric_before: Callable[[], float | None],
        exchange: Exchange,
        *,
        is_rank_zero: bool = True,
    ) -> dict[str, Any] | None:
        """One event: masks computed once (on rank 0, through ``exchange``), installed and recorded.

        Args:
            access: the training state the event reads.
            epoch: the epoch whose start prunes.
            target: the sparsity to prune to.
            optimizers: the optimizers whose state of pruned weights is cleared.
            metric_before: reads the monitored metric before the event (recorded with it).
            exchange: ``exchange(compute, sync_state)`` runs ``compute`` on rank 0 and returns its
                result and ``sync_state()`` on every rank (``lambda c, s: (c(), s())`` on one process).
            is_rank_zero: whether this process is global rank 0.

        Returns:
            The event's history entry, or ``None`` when the event was skipped.

        Raises:
            RuntimeError: naming the epoch, target, importance and tensors, from any failure.
        """
        start = time.perf_counter()
        try:
            new_masks, sent = exchange(lambda: self.compute_masks(access, epoch, target), self.sync_state)
            if sent is not None:
                self.load_sync_state(sent, is_rank_zero=is_rank_zero)
            self.engine.reset_movement()
            if new_masks is None:
                return None
            self.apply(epoch, target, new_masks, optimizers, metric_before())
            return self.history[-1]
        except Exception as err:
            raise RuntimeError(
                f"AutoPrune failed while pruning at the start of epoch {epoch} towards sparsity {target:.4f} "
                f"(importance={self.config.importance!r}, tensors: {', '.join(self.engine.masks)}): {err}"
            ) from err
        finally:
            self.seconds_pruning += time.perf_counter() - start

    def apply(
        self,
        epoch: int,
        target: float,
        new_masks: dict[str, Tensor],
        optimizers: Sequence[torch.optim.Optimizer],
        metric_before: float | None,
    ) -> None:
        """Install a step's masks and record the event."""
        previous = self.sparsity()
        self.engine.apply(new_masks, optimizers)
        self.history.append(
            {
                "epoch": epoch,
                "target": target,
                "sparsity_before": previous,
                "sparsity": self.sparsity(),
                "flops_sparsity": self.flops_sparsity(),
                "metric_before": metric_before,
                "metric_after": None,
            }
        )

    def end_epoch(self, epoch: int, value: float | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Record a trained epoch: the event it started with (if any) and the search's new decisions."""
        event = self.history[-1] if self.history and self.history[-1]["epoch"] == epoch else None
        if event is not None and value is not None:
            event["metric_after"] = value
        decisions = [dict(d) for d in self.search_state.decisions[self._logged_decisions :]]
        self._logged_decisions = len(self.search_state.decisions)
        self.timeline.append(
            {
                "epoch": epoch,
                "sparsity": self.sparsity(),
                "target": self.shown_target(),
                "metric": value,
                "decisions": [d["decision"] for d in decisions],
            }
        )
        return event, decisions

    def new_diagnostics(self, epoch: int) -> dict[str, Any] | None:
        """The scorer's diagnostics of the event just taken at ``epoch``, stamped with it; ``None`` if none."""
        diagnostics = self.scorer.diagnostics
        if not diagnostics or "epoch" in diagnostics[-1]:
            return None
        diagnostics[-1]["epoch"] = epoch
        return diagnostics[-1]

    def new_step(self, epoch: int) -> dict[str, Any] | None:
        """The learned scorer's record of the step just applied at ``epoch`` (stamped), if it measured one."""
        steps = getattr(self.scorer, "steps", None)
        if not steps or "epoch" in steps[-1]:
            return None
        steps[-1]["epoch"] = epoch
        return steps[-1] if steps[-1]["samples"] else None

    def finish_search(
        self, epoch: int, mode: Literal["max", "min"] | None, label: str, model: nn.Module
    ) -> tuple[list[str], str | None]:
        """End the automatic search: restore the latest in-tolerance state if the last one broke it.

        ``mode`` and ``label`` are the monitored metric's (``mode=None``: it was never seen).

        Returns:
            ``(info lines, warning)`` to show (the last info line, with ``verbose``, says where the
            search ended and why); the warning may be ``None``.
        """
        search = self.search
        assert search is not None
        broken, restore = search.finish(epoch, mode)
        reference, value, drop = search.state.final_reference, search.last_value, self.config.max_metric_drop
        lines: list[str] = []
        warning = None
        if reference is not None and value is not None and mode is not None:
            if restore is not None:
                model.load_state_dict(restore["model"])
                self.engine.set_masks(restore["masks"])
            restored = restore["epoch"] if restore is not None else None
            said, warning = report_record.finish_lines(
                label=label, value=value, reference=reference, drop=drop, restored_epoch=restored, broken=broken
            )
            lines += [said] if said is not None else []
        if self.config.verbose and reference is not None and mode is not None:
            stop = search.state.stop_reason
            lines.append(
                report_record.finished_line(
                    label=label, sparsity=self.sparsity(), reference=reference, drop=drop, stop_reason=stop
                )
            )
        return lines, warning

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Masks (packed bits), schedule progress, generators and RNG states: tensors and primitives only.

        The global RNG states are saved too, so a resumed run draws the same data order and dropout
        as an uninterrupted one; that is what makes its later masks identical.
        """
        engine = self.engine.state_dict()
        control = self.controller.state_dict()
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`start`); masks that do not fit the model are refused."""
        self.engine.load_state_dict(state)
        self.history = [dict(event) for event in state.get("history", [])]
        self.timeline = [dict(entry) for entry in state.get("timeline", [])]
        self.generator.set_state(state["generator"])
        self.positions.positions.update({str(n): int(v) for n, v in state.get("positions", {}).items()})
        self.controller.load_state_dict(state, self.engine.devices)
        self._logged_decisions = len(self.search_state.decisions)
        if isinstance(self.scorer, StatefulScorer) and state.get("scorer") is not None:
            self.scorer.load_state_dict(state["scorer"])


def check_state_version(state: dict[str, Any]) -> None:
    """Refuse a checkpoint state written by a newer layout than this version reads."""
    version = state.get("version")
    if not isinstance(version, int) or version > STATE_VERSION:
        raise ValueError(
            f"This checkpoint's AutoPrune state has version {version!r}; this lightning_autoprune reads "
            f"versions up to {STATE_VERSION}. HINT: upgrade lightning_autoprune to resume it."
        )
