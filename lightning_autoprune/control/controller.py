"""Controllers: when to prune and how far, from epochs and validation values alone.

:class:`FixedSchedule` follows a sparsity schedule to a fixed target. :class:`ToleranceSearch`
(the automatic mode) raises sparsity step by step and accepts or rolls back each step against a
tolerance on the monitored validation metric. Neither sees a Trainer: the callback hands them
epochs and values, and two callables that copy and restore the training state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_autoprune.control import schedule as schedules
from lightning_autoprune.control import search
from lightning_autoprune.control.search import Mode, SearchState


class FixedSchedule:
    """Prune on a schedule towards ``target`` between ``start`` and ``end``.

    Args:
        target: the final sparsity.
        window: ``(start, end)`` epochs of the schedule.
        frequency: prune every this many epochs.
        kind: ``"cubic"``, ``"linear"`` or ``"one_shot"``.
        coarse: selections stop just below a target (whole units); such a run prunes again only
            when the schedule moves on, not at every later epoch.

    Example:
        >>> schedule = FixedSchedule(0.9, (1, 3), frequency=1, kind="linear")
        >>> [round(schedule.target_for(e), 2) for e in range(5)]
        [0.0, 0.3, 0.6, 0.9, 0.9]
        >>> schedule.due(2, progress=0.3, last_target=0.3), schedule.due(4, progress=0.9, last_target=0.9)
        (True, False)
    """

    def __init__(
        self,
        target: float,
        window: tuple[int, int],
        *,
        frequency: int = 1,
        kind: schedules.ScheduleKind = "cubic",
        coarse: bool = False,
    ) -> None:
        self.target = target
        self.window = window
        self.frequency = frequency
        self.kind: schedules.ScheduleKind = kind
        self.coarse = coarse

    def target_for(self, epoch: int) -> float:
        """The scheduled sparsity at the start of ``epoch``."""
        start, end = self.window
        return schedules.scheduled_sparsity(
            epoch, self.target, start=start, end=end, frequency=self.frequency, kind=self.kind
        )

    def state_dict(self) -> dict[str, Any]:
        """A fixed schedule keeps no state of its own; it writes the empty search the checkpoint format holds."""
        return {"search": SearchState().to_dict(), "snapshot": None, "snapshot_scores": None, "reuse_scores": False}

    def load_state_dict(self, state: Mapping[str, Any], devices: Mapping[str, Any]) -> None:
        """Nothing to restore: the schedule is a function of the epoch."""

    def due(self, epoch: int, *, progress: float, last_target: float) -> bool:
        """Whether ``epoch`` prunes: the schedule asks for more than the masks hold (and moved, if coarse)."""
        scheduled = self.target_for(epoch)
        return scheduled > progress and scheduled > (last_target if self.coarse else 0.0)


@dataclass
class Verdict:
    """What :meth:`ToleranceSearch.on_validation` asks the caller to do.

    Attributes:
        roll_back: restore this snapshot (weights, optimizers, masks): the pending step broke the tolerance.
    """

    roll_back: dict[str, Any] | None = None


class ToleranceSearch:
    """The automatic mode: raise sparsity while the monitored metric stays within ``max_drop``.

    Pure decisions live in :mod:`~lightning_autoprune.control.search`; this class holds the state
    between hooks: the search, the rollback snapshot, the latest in-tolerance state and the scores
    of the latest step (reused after a rollback, since the restored state is the one they scored).

    Args:
        window: ``(start, end)`` epochs of the search.
        frequency: a step every this many epochs.
        max_drop: the tolerance, in the metric's units.
        snapshot: copies the training state; called with ``with_optimizers``.
        reference: the dense reference, when the user knows it; ``None`` measures it (the best
            validation value before pruning starts).

    Example:
        >>> snaps = []
        >>> controller = ToleranceSearch((1, 5), 1, 0.01, snapshot=lambda with_optimizers: {"n": len(snaps)})
        >>> controller.on_validation(0.95, epoch=0, mode="max", pruned=False)
        Verdict(roll_back=None)
        >>> controller.begin_epoch(1, ceiling=lambda: 0.99)
        0.5
        >>> controller.on_validation(0.90, epoch=1, mode="max", pruned=True).roll_back is None  # one more epoch
        True
        >>> controller.on_validation(0.90, epoch=2, mode="max", pruned=True).roll_back
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
    ) -> None:
        self.window = window
        self.frequency = frequency
        self.max_drop = max_drop
        self._snapshot_fn = snapshot
        self.given_reference = reference
        self.state = SearchState(reference=reference)
        self.snapshot: dict[str, Any] | None = None  # last accepted state, for rollback (CPU memory)
        self.best_final: dict[str, Any] | None = None  # latest in-tolerance state after the search
        self.scores: dict[str, Tensor] | None = None  # scores of the latest step, at its snapshot's state
        self.reuse_scores = False
        self.last_value: float | None = None

    @property
    def target(self) -> float:
        """The sparsity the search is trying (pending) or holds (accepted)."""
        return self.state.pending if self.state.pending is not None else self.state.accepted

    def noise_warning(self, monitor: str, mode: Mode, samples: int) -> str | None:
        """Before the first step: a warning when ``samples`` validation samples cannot resolve ``max_drop``.

        ``None`` when they can, or while there is no reference (see :func:`search.noise_warning`).
        """
        reference = self.state.reference
        return None if reference is None else search.noise_warning(monitor, mode, reference, samples, self.max_drop)

    def begin_epoch(
        self, epoch: int, *, ceiling: Callable[[], float], before_first_step: Callable[[], None] | None = None
    ) -> float | None:
        """At an epoch start: the sparsity of a new step to apply now, or ``None``.

        A snapshot of the state before the step is taken first, so a broken step can be undone.

        Raises:
            ValueError: pruning is due but no validation value gave a reference.
        """
        start, end = self.window
        state = self.state
        if state.done or state.pending is not None or epoch < start:
            return None
        if epoch > end:
            self.state = search.stop(state, epoch, f"the search window ended at epoch {end}")
            return None
        if (epoch - start) % self.frequency:
            return None
        if state.reference is None:
            raise ValueError(
                f"The automatic mode needs the monitored metric before pruning starts at epoch {start}, but no "
                "validation value was seen. HINT: make sure validation runs in the first epochs (or set "
                "`target_sparsity`)."
            )
        if not state.decisions and before_first_step is not None:
            before_first_step()
        proposed = search.propose(state, epoch, ceiling=min(search.CEILING, ceiling()))
        if proposed.done:
            self.state = proposed
            return None
        self.snapshot = self._snapshot_fn(True)
        self.state = proposed
        return proposed.pending

    def on_validation(self, value: float, *, epoch: int, mode: Mode, pruned: bool) -> Verdict:
        """Fold ``value`` into the reference (dense phase), or decide the pending step.

        Args:
            value: the monitored metric at this validation.
            epoch: the validated epoch.
            mode: ``"max"`` or ``"min"``.
            pruned: whether any pruning event has happened yet.
        """
        self.last_value = value
        state = self.state
        if not pruned and state.pending is None and epoch < self.window[0]:
            if self.given_reference is None:
                self.state = search.update_reference(state, value, mode)
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
                self.best_final = self.snapshot
                # The rollback restores exactly the state the broken step was scored at, so the next
                # (smaller) step ranks with the same scores instead of scoring one state twice.
                self.reuse_scores = not decided.done
                return Verdict(roll_back=self.snapshot)
        reference = self.state.reference
        if (
            self.state.pending is None
            and reference is not None
            and search.within_tolerance(reference, value, mode, self.max_drop)
        ):
            self.best_final = self._snapshot_fn(False)
        return Verdict()

    def finish(self, epoch: int, mode: Mode | None) -> tuple[bool, dict[str, Any] | None]:
        """At fit end: stop the search; whether the last value broke the tolerance, and the state to restore.

        Returns:
            ``(broken, restore)``: ``broken`` when the last validation is out of tolerance;
            ``restore`` is the latest in-tolerance snapshot to go back to (``None`` if none was kept).
        """
        if not self.state.done:
            self.state = search.stop(self.state, epoch, "training ended")
        value = self.last_value
        if self.state.reference is None or value is None or mode is None:
            return False, None
        if search.within_tolerance(self.state.reference, value, mode, self.max_drop):
            return False, None
        return True, self.best_final

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
            self.snapshot = state.get("snapshot")
            self.reuse_scores = bool(state.get("reuse_scores"))
        if state.get("snapshot_scores") is not None:
            scores = state["snapshot_scores"]
            self.scores = {n: v.to(devices[n]) if n in devices else v for n, v in scores.items()}


def _to_cpu(scores: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    return None if scores is None else {n: s.detach().to("cpu", copy=True) for n, s in scores.items()}
