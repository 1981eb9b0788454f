"""Controllers: when to prune and how far, from epochs and validation values alone.

:class:`FixedSchedule` follows a sparsity schedule to a fixed target. :class:`ToleranceSearch`
(the automatic mode) raises sparsity step by step and accepts or rolls back each step against a
tolerance on the monitored validation metric. Neither sees a Trainer: the callback hands them
epochs and values, and two callables that copy and restore the training state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from lightning_autoprune.control import schedule as schedules
from lightning_autoprune.control import search
from lightning_autoprune.control.search import Mode, SearchState


class FixedSchedule:
    """Prune on a schedule towards ``target`` between ``start`` and ``end``.

    With ``wait_for_learning`` (the default start), the schedule begins only once the monitored
    metric has clearly left its starting value (:meth:`observe`): an accuracy more than
    ``max(max_drop, 2 standard errors)`` above chance level, any other metric better than its
    first validation by more than ``max_drop``. Pruning then starts at the later of ``start`` and
    the epoch after that validation, and ends at ``end`` (one step at the start if that is later).
    A metric that never moves starts the schedule at ``end``; a run that has validated nothing by
    ``start`` (no validation loop, or no monitored metric) starts it at ``start``.

    Args:
        target: the final sparsity.
        window: ``(start, end)`` epochs of the schedule.
        frequency: prune every this many epochs.
        kind: ``"cubic"``, ``"linear"`` or ``"one_shot"``.
        coarse: selections stop just below a target (whole units); such a run prunes again only
            when the schedule moves on, not at every later epoch.
        wait_for_learning: wait for the metric to move before the schedule starts.
        max_drop: the metric change (in its units) that counts as having moved.

    Example:
        >>> schedule = FixedSchedule(0.9, (1, 3), frequency=1, kind="linear")
        >>> [round(schedule.target_for(e), 2) for e in range(5)]
        [0.0, 0.3, 0.6, 0.9, 0.9]
        >>> schedule.due(2, progress=0.3, last_target=0.3), schedule.due(4, progress=0.9, last_target=0.9)
        (True, False)
        >>> waiting = FixedSchedule(0.9, (1, 5), kind="linear", wait_for_learning=True)
        >>> waiting.observe(Observation(0.11, 0, "max", "val_acc", 1000, {0: 100, 1: 100, 2: 800}))
        >>> waiting.observe(Observation(0.95, 2, "max", "val_acc", 1000, {0: 100, 1: 100, 2: 800}))
        3
        >>> [round(waiting.target_for(e), 2) for e in range(7)]
        [0.0, 0.0, 0.0, 0.3, 0.6, 0.9, 0.9]
    """

    def __init__(
        self,
        target: float,
        window: tuple[int, int],
        *,
        frequency: int = 1,
        kind: schedules.ScheduleKind = "cubic",
        coarse: bool = False,
        wait_for_learning: bool = False,
        max_drop: float = 0.01,
    ) -> None:
        self.target = target
        self.window = window
        self.frequency = frequency
        self.kind: schedules.ScheduleKind = kind
        self.coarse = coarse
        self.max_drop = max_drop
        #: The epoch the schedule starts (``None``: still waiting for the metric to move).
        self.started_at: int | None = None if wait_for_learning else window[0]
        self._first: float | None = None

    @property
    def waiting(self) -> bool:
        """Whether the schedule still waits for the monitored metric to leave its starting value."""
        return self.started_at is None

    def observe(self, seen: Observation) -> int | None:
        """Note a validation while waiting; returns the start epoch when this one starts the schedule."""
        if not self.waiting:
            return None
        first = self._first
        if first is None:
            self._first = seen.value
        chance = search.chance_level(seen.labels) if seen.labels else None
        if seen.mode == "max" and "acc" in seen.monitor.lower() and chance is not None and seen.samples:
            noise = search.accuracy_standard_error(chance, seen.samples)
            moved = not search.at_chance(seen.value, chance, self.max_drop, noise)
        else:
            moved = first is not None and search.metric_drop(first, seen.value, seen.mode) < -self.max_drop
        if not moved:
            return None
        self.started_at = max(self.window[0], seen.epoch + 1)
        return self.started_at

    def begin_epoch(self, epoch: int) -> None:
        """Stop waiting at ``start`` when no validation has been observed: there is nothing to wait for."""
        if self.waiting and self._first is None and epoch >= self.window[0]:
            self.started_at = self.window[0]

    def effective_window(self) -> tuple[int, int]:
        """``(start, end)`` as it runs: the start moved to when the metric moved, ``end`` while waiting."""
        end = self.window[1]
        if self.started_at is None:
            return end, end
        return self.started_at, max(end, self.started_at)

    def target_for(self, epoch: int) -> float:
        """The scheduled sparsity at the start of ``epoch``."""
        start, end = self.effective_window()
        return schedules.scheduled_sparsity(
            epoch, self.target, start=start, end=end, frequency=self.frequency, kind=self.kind
        )

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries every controller writes; the search state holds the start epoch."""
        state = SearchState(start_epoch=self.started_at).to_dict()
        return {"search": state, "snapshot": None, "snapshot_scores": None, "reuse_scores": False}

    def load_state_dict(self, state: Mapping[str, Any], devices: Mapping[str, Any]) -> None:
        """Restore the start epoch (a checkpoint without one started at the window's start)."""
        started = (state.get("search") or {}).get("start_epoch")
        self.started_at = int(started) if started is not None else self.window[0]

    def due(self, epoch: int, *, progress: float, last_target: float) -> bool:
        """Whether ``epoch`` prunes: the schedule asks for more than the masks hold (and moved, if coarse)."""
        scheduled = self.target_for(epoch)
        return scheduled > progress and scheduled > (last_target if self.coarse else 0.0)


@dataclass
class Verdict:
    """What :meth:`ToleranceSearch.on_validation` asks the caller to do.

    Attributes:
        roll_back: restore this snapshot (weights, optimizers, masks): the pending step broke the tolerance.
        keep_training: undo only the step's pruning: install the snapshot's masks and bring the weights
            the step removed back at zero (with zeroed optimizer buffers), keeping every other weight
            and the optimizers as trained since. Set while the reference follows a dense trend: the
            dense model would have kept improving over those epochs, and restoring the snapshot whole
            would throw that away.
    """

    roll_back: dict[str, Any] | None = None
    keep_training: bool = False


@dataclass(frozen=True)
class Observation:
    """One validation as the search sees it.

    Attributes:
        value: the monitored metric.
        epoch: the validated epoch.
        mode: ``"max"`` or ``"min"``.
        monitor: the metric's name (accuracy-like names get a binomial noise estimate).
        samples: validation samples behind ``value``, when known.
        labels: validation label counts (classification), when known: they give the chance level.
    """

    value: float
    epoch: int
    mode: Mode
    monitor: str = ""
    samples: int | None = None
    labels: Mapping[int, int] | None = None


class ToleranceSearch:
    """The automatic mode: raise sparsity while the monitored metric stays within ``max_drop``.

    Pure decisions live in :mod:`~lightning_autoprune.control.search`; this class holds the state
    between hooks: the search, the rollback snapshot, the latest in-tolerance state and the scores
    of the latest step (reused by the smaller step after a rollback: it then removes the lowest
    ranked part of what the broken step removed).

    The dense phase ends at the plateau of the monitored metric (``wait_for_plateau``), or before
    the window's first epoch when the caller fixed it; a metric still improving ``ROOM_EPOCHS``
    before the window's end starts the search anyway. Warnings for the user (too little room, a
    noisy or chance-level reference) queue in :attr:`warnings`.

    Args:
        window: ``(start, end)`` epochs of the search (``start``: the earliest, with ``wait_for_plateau``).
        frequency: a step every this many epochs.
        max_drop: the tolerance, in the metric's units.
        snapshot: copies the training state; called with ``with_optimizers``.
        reference: the dense reference, when the user knows it; ``None`` measures it (the mean of
            the plateau's validation values).
        wait_for_plateau: end the dense phase when the metric stops improving, not at ``window[0]``.
        regrow: whether the caller can undo only a step's pruning (``Verdict.keep_training``); where it
            cannot (structured steps also zero tensors the masks do not cover), rollbacks are whole.
        horizon: the last epoch of training (``max_epochs - 1``); under a dense trend the margin covers
            the prediction's uncertainty up to it. ``None``: the window's end.

    Example:
        >>> snaps = []
        >>> controller = ToleranceSearch((1, 5), 1, 0.01, snapshot=lambda with_optimizers: {"n": len(snaps)})
        >>> controller.on_validation(Observation(0.95, 0, "max"), pruned=False)
        Verdict(roll_back=None, keep_training=False)
        >>> controller.begin_epoch(1, ceiling=lambda: 0.99)
        0.5
        >>> controller.on_validation(Observation(0.90, 1, "max"), pruned=True).roll_back is None  # one more epoch
        True
        >>> controller.on_validation(Observation(0.90, 2, "max"), pruned=True).roll_back
        {'n': 0}
        >>> controller.state.step, controller.state.accepted
        (0.25, 0.0)
    """

    def __init__(
        self,
        window: tuple[int, int],
        frequency: int,
        max_drop: float,
        *,
        snapshot: Callable[[bool], dict[str, Any]],
        reference: float | None = None,
        wait_for_plateau: bool = False,
        regrow: bool = True,
        horizon: int | None = None,
    ) -> None:
        self.window = window
        self.frequency = frequency
        self.max_drop = max_drop
        self._snapshot_fn = snapshot
        self.given_reference = reference
        self.wait_for_plateau = wait_for_plateau
        self.regrow = regrow
        self.horizon = horizon if horizon is not None else window[1]
        self.state = SearchState(reference=reference)
        self.snapshot: dict[str, Any] | None = None  # last accepted state, for rollback (CPU memory)
        self.best_final: dict[str, Any] | None = None  # latest in-tolerance state after the search
        self.scores: dict[str, Tensor] | None = None  # scores of the latest step, at its snapshot's state
        self.reuse_scores = False
        self.last_value: float | None = None
        self.last_epoch: int | None = None  # the epoch of ``last_value``
        self.last_seen: Observation | None = None  # the latest dense-phase validation
        self.warnings: list[str] = []  # for the user, drained by the caller

    @property
    def target(self) -> float:
        """The sparsity the search is trying (pending) or holds (accepted)."""
        return self.state.pending if self.state.pending is not None else self.state.accepted

    @property
    def tolerance(self) -> float:
        """What a decision allows: ``max_drop`` less the noise margin."""
        return self.max_drop - self.state.margin

    @property
    def latest_start(self) -> int:
        """The epoch the search starts at the latest, to leave ``ROOM_EPOCHS`` before the window's end."""
        start, end = self.window
        return max(start, end - search.ROOM_EPOCHS + 1)

    def take_warnings(self) -> list[str]:
        """The queued warnings, once."""
        queued, self.warnings = self.warnings, []
        return queued

    def begin_epoch(self, epoch: int, *, ceiling: Callable[[], float]) -> float | None:
        """At an epoch start: the sparsity of a new step to apply now, or ``None``.

        A snapshot of the state before the step is taken first, so a broken step can be undone.

        Raises:
            ValueError: pruning is due but no validation value gave a reference.
        """
        start, end = self.window
        state = self.state
        if state.done or state.pending is not None or epoch < start:
            return None
        if state.start_epoch is None and (not self.wait_for_plateau or epoch > self.latest_start):
            # the fixed start, or the latest one: no plateau ended the dense phase in time
            if self.last_seen is None:
                raise ValueError(
                    f"The automatic mode needs the monitored metric before pruning starts at epoch {epoch}, but "
                    "no validation value was seen. HINT: make sure validation runs in the first epochs (or set "
                    "`target_sparsity`)."
                )
            self._end_dense_phase(epoch - 1, plateau=False)
        state = self.state
        if state.done or state.start_epoch is None or epoch < state.start_epoch:
            return None
        if epoch > end:
            self.state = search.stop(state, epoch, f"the search window ended at epoch {end}")
            return None
        if (epoch - state.start_epoch) % self.frequency:
            return None
        proposed = search.propose(state, epoch, ceiling=min(search.CEILING, ceiling()))
        if proposed.done:
            self.state = proposed
            return None
        self.snapshot = self._snapshot_fn(True)
        self.state = proposed
        return proposed.pending

    def on_validation(self, seen: Observation, *, pruned: bool) -> Verdict:
        """Record a dense-phase value (ending the phase at the plateau), or decide the pending step.

        Args:
            seen: the validation.
            pruned: whether any pruning event has happened yet.
        """
        value, epoch, mode = seen.value, seen.epoch, seen.mode
        self.last_value, self.last_epoch = value, epoch
        state = self.state
        if not pruned and state.pending is None and state.start_epoch is None:
            self.last_seen = seen
            state = replace(state, dense_values=(*state.dense_values, (epoch, value)))
            if self.given_reference is None:  # the best so far, until the plateau's mean replaces it
                state = search.update_reference(state, value, mode)
            self.state = state
            values = [v for _, v in state.dense_values]
            if self.wait_for_plateau and epoch >= self.window[0] - 1:
                if search.plateaued(values, mode, self.max_drop):
                    self._end_dense_phase(epoch, plateau=True)
                elif epoch >= self.latest_start - 1:
                    self._end_dense_phase(epoch, plateau=False)
            return Verdict()
        if search.ready_to_decide(state, value, mode, self.max_drop, epoch):
            decided = search.decide(state, value, mode, self.max_drop, epoch)
            rolled_back = any(r["decision"] == "rollback" for r in decided.decisions[len(state.decisions) :])
            if not decided.done and epoch >= self.window[1]:
                decided = search.stop(decided, epoch, f"the search window ended at epoch {self.window[1]}")
            self.state = decided
            if rolled_back:
                if self.snapshot is None:
                    raise ValueError("A step broke the tolerance, but no snapshot to roll back to was kept.")
                keep_training = self.regrow and decided.reference_rule == "trend"
                if not keep_training:
                    self.best_final = self.snapshot
                # The next, smaller step ranks with the broken step's scores and so removes the lowest
                # ranked part of what that step removed. A whole rollback restores exactly the state they
                # were computed at. A regrowth brings the step's removals back at zero, where every
                # formula scores them alike: scored again, their ties went by position, and on the
                # language model the next step took them all from the last tensors.
                self.reuse_scores = not decided.done
                return Verdict(roll_back=self.snapshot, keep_training=keep_training)
        reference = search.reference_at(self.state, epoch)
        if (
            self.state.pending is None
            and reference is not None
            and search.within_tolerance(reference, value, mode, self.tolerance)
        ):
            self.best_final = {**self._snapshot_fn(False), "value": value}
        return Verdict()

    def _end_dense_phase(self, epoch: int, *, plateau: bool) -> None:
        """Set the reference, noise and margin after ``epoch``'s validation; queue what the user must hear."""
        seen = self.last_seen
        if seen is None:
            return  # no value yet: begin_epoch raises if pruning is due
        state = search.end_dense_phase(
            self.state,
            epoch,
            monitor=seen.monitor,
            mode=seen.mode,
            max_drop=self.max_drop,
            samples=seen.samples,
            given_reference=self.given_reference,
            still_improving=self.wait_for_plateau and not plateau,
            horizon=self.horizon,
        )
        self.state = state
        assert state.reference is not None
        assert state.start_epoch is not None
        label, dense = seen.monitor or "the monitored metric", len(state.dense_values)
        room = max(self.window[1] - state.start_epoch + 1, 0)
        if self.wait_for_plateau and not plateau:
            if state.reference_rule == "trend" and state.reference_epochs is not None:
                first, last = state.reference_epochs
                ahead = search.reference_at(state, self.window[1])
                keeps = (
                    f"so every step keeps a margin of {state.margin:.4g} from `max_metric_drop`={self.max_drop}."
                    if state.trend_uncertainty <= state.margin + 1e-12
                    else f"more than the margin of {state.margin:.4g} a step can keep from `max_metric_drop`="
                    f"{self.max_drop} (half of it), so a step the prediction accepts can still end beyond the "
                    "tolerance."
                )
                follows = (
                    f"The reference follows the dense trend instead of standing still: {state.reference:.4f} at "
                    f"epoch {epoch} (a line fitted to epochs {first}-{last}, changing {state.trend_slope:+.4f} per "
                    f"epoch and slowing as training goes on), {ahead:.4f} predicted at epoch {self.window[1]}; a "
                    "prediction, so the tolerance holds only as far as it does. If the curve kept its slope, the "
                    f"dense model would be {state.trend_uncertainty:.4f} further ahead by epoch {self.horizon}, "
                    f"{keeps}"
                )
            else:
                follows = "The reference may be lower than the converged model's."
            self.warnings.append(
                f"AutoPrune's {label} was still improving at epoch {epoch}; the search starts at epoch "
                f"{state.start_epoch} anyway, after a dense phase of {state.start_epoch} epochs, to leave {room} "
                f"epoch(s) for it before `end_epoch`={self.window[1]}. {follows} HINT: raise max_epochs, "
                "start from a trained checkpoint, or pass `reference=` the value you expect the dense model to "
                "reach."
            )
        elif self.wait_for_plateau and room < search.ROOM_EPOCHS:
            self.warnings.append(
                f"AutoPrune's dense phase used {state.start_epoch} epochs ({label} reached its plateau at epoch "
                f"{epoch}, after {dense} validations), which leaves {room} epoch(s) for the search before "
                f"`end_epoch`={self.window[1]}; reaching 90% sparsity usually takes {search.ROOM_EPOCHS} or more. "
                "It prunes as far as that allows. HINT: raise max_epochs."
            )
        if plateau and state.reference_rule == "best" and state.reference_epochs is not None:
            swings = [v for _, v in state.dense_values[-search.PLATEAU_PATIENCE :] if math.isfinite(v)]
            first, last = state.reference_epochs
            self.warnings.append(
                f"AutoPrune's {label} is unsteady at the dense plateau: epochs {first}-{last} gave "
                f"{', '.join(f'{v:.4f}' for v in swings)} (standard deviation {search.spread(swings):.4f}, "
                f"more than `max_metric_drop`={self.max_drop}). Their mean would "
                f"understate the dense model, so the reference is their best value, {state.reference:.4f}, and "
                "single validations judge each step partly on that unsteadiness. HINT: a lower or decaying "
                "learning rate steadies the metric; `reference=` sets the reference directly."
            )
        if seen.samples is not None:
            noisy = search.noise_warning(label, seen.mode, state.reference, seen.samples, self.max_drop)
            if noisy is not None:
                self.warnings.append(noisy)
        chance = search.chance_level(seen.labels) if seen.labels and "acc" in label.lower() else None
        if seen.mode == "max" and search.at_chance(state.reference, chance, self.max_drop, state.noise):
            reason = f"the reference {label} {state.reference:.4f} is at chance level"
            self.state = search.stop(state, epoch, reason)
            counted = sum((seen.labels or {}).values())
            self.warnings.append(
                f"AutoPrune's reference {label} ({state.reference:.4f}) is no better than chance ({chance:.4f}, "
                f"the share of the most frequent of {counted:,} validation labels): the model has not learned, so "
                "no drop against it means anything. AutoPrune does not prune. HINT: train on more data or longer, "
                "or check the labels."
            )

    def finish(self, epoch: int, mode: Mode | None) -> tuple[bool, dict[str, Any] | None]:
        """At fit end: stop the search; whether the last value broke the tolerance, and the state to restore.

        Returns:
            ``(broken, restore)``: ``broken`` when the last validation is out of tolerance (judged
            against :attr:`SearchState.final_reference`); ``restore`` is the latest in-tolerance
            snapshot to go back to (``None`` if none was kept, or if its value was no better than the
            last one: with a reference that follows a dense trend, an earlier state judged against an
            earlier reference can be worse than the final one).
        """
        stepped = self.state.pending is not None or any(d["decision"] != "stop" for d in self.state.decisions)
        if not self.state.done:
            self.state = search.stop(self.state, epoch, "training ended")
        judged = self.last_epoch if self.last_epoch is not None else epoch
        self.state = replace(self.state, final_reference=search.reference_at(self.state, judged))
        value, reference = self.last_value, self.state.final_reference
        if not stepped or reference is None or value is None or mode is None:
            return False, None  # nothing was pruned, or nothing to judge it by
        if search.within_tolerance(reference, value, mode, self.tolerance):
            return False, None
        kept = self.best_final
        if kept is not None and "value" in kept and not search.better(kept["value"], value, mode):
            kept = None
        return True, kept

    def state_dict(self) -> dict[str, Any]:
        """The search, and the rollback snapshot and scores while a step awaits its decision."""
        pending = self.state.pending is not None
        return {
            "search": self.state.to_dict(),
            "snapshot": self.snapshot if pending else None,
            "snapshot_scores": _to_cpu(self.scores) if pending or self.reuse_scores else None,
            "reuse_scores": self.reuse_scores,
        }

    def load_state_dict(self, state: Mapping[str, Any], devices: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; scores go back to their tensors' ``devices`` (unit keys stay on CPU)."""
        if "search" in state:
            self.state = SearchState.from_dict(state["search"])
            if "start_epoch" not in state["search"] and (self.state.decisions or self.state.pending is not None):
                # written before the dense phase ended at a plateau: the search had started at the window's start
                self.state = replace(self.state, start_epoch=self.window[0])
            self.snapshot = state.get("snapshot")
            self.reuse_scores = bool(state.get("reuse_scores"))
        if state.get("snapshot_scores") is not None:
            scores = state["snapshot_scores"]
            self.scores = {n: v.to(devices[n]) if n in devices else v for n, v in scores.items()}


def _to_cpu(scores: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    return None if scores is None else {n: s.detach().to("cpu", copy=True) for n, s in scores.items()}
