"""The automatic target: how far to prune, decided by a validation metric and a tolerance.

Pure decision logic, no Lightning: the callback feeds it validation values and applies what it
returns. The search raises sparsity in steps that each remove a fraction ``step`` of the weights
still kept (so the density shrinks geometrically, like the cubic schedule's front-loaded shape).
After each step and one epoch of recovery the monitored metric is compared with the dense
reference: within ``max_metric_drop`` the step is accepted; beyond it the run rolls back to the
last accepted state and the step is halved. Repeated rollbacks, a step too small to matter, the
sparsity ceiling or the end of the search window stop the search; the model then fine-tunes at
the last accepted sparsity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: First step: prune half of the weights still kept.
INITIAL_STEP = 0.5
#: Stop once a step would remove less than this fraction of the weights still kept.
MIN_STEP = 0.03
#: Stop after this many consecutive rollbacks.
MAX_CONSECUTIVE_ROLLBACKS = 3
#: Never propose more sparsity than this.
CEILING = 0.995
#: Epochs a step may take to recover before it is rolled back. A step that is within tolerance
#: after its first epoch is accepted at once; one that is not gets a second epoch, because right
#: after a large cut the metric is still climbing back (on the digits MLP the second epoch of
#: recovery recovered most of the remaining gap), and only then counts as broken.
RECOVERY_EPOCHS = 2
#: Warn when the sampling standard error of the monitored accuracy is at least this share of the
#: tolerance: the search then accepts or rejects steps on noise. On the digits MLP (360
#: validation samples, standard error 0.9 points at 97%) the final model's test drop differed
#: from its validation drop by 1.1 points (standard deviation over 10 seeds).
NOISE_WARNING_SHARE = 0.5

Mode = Literal["max", "min"]


@dataclass(frozen=True)
class SearchState:
    """Where the automatic search stands. Primitives only, so it checkpoints as is.

    Attributes:
        reference: best monitored value seen before pruning started (the dense reference).
        accepted: the last sparsity whose validation stayed within tolerance.
        step: fraction of the kept weights the next proposal removes.
        rollbacks: consecutive rollbacks so far.
        pending: the proposed sparsity awaiting its validation, if any.
        pending_epoch: the epoch whose start applied ``pending``.
        stop_reason: why the search ended; ``None`` while it goes on.
    """

    reference: float | None = None
    accepted: float = 0.0
    step: float = INITIAL_STEP
    rollbacks: int = 0
    pending: float | None = None
    pending_epoch: int | None = None
    stop_reason: str | None = None
    decisions: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def done(self) -> bool:
        """Whether the search has stopped."""
        return self.stop_reason is not None

    def to_dict(self) -> dict[str, Any]:
        """Primitives for a checkpoint."""
        state = asdict(self)
        state["decisions"] = [dict(d) for d in self.decisions]
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SearchState:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**state, "decisions": tuple(dict(d) for d in state.get("decisions", ()))})


def metric_drop(reference: float, value: float, mode: Mode) -> float:
    """How much worse ``value`` is than ``reference``, in the metric's units (negative = better).

    Example:
        >>> round(metric_drop(0.97, 0.95, "max"), 6), round(metric_drop(0.30, 0.25, "min"), 6)
        (0.02, -0.05)
    """
    return reference - value if mode == "max" else value - reference


def within_tolerance(reference: float, value: float, mode: Mode, max_drop: float) -> bool:
    """Whether ``value`` lost at most ``max_drop`` against ``reference`` (NaN never is).

    Example:
        >>> within_tolerance(0.97, 0.96, "max", 0.01), within_tolerance(0.97, 0.959, "max", 0.01)
        (True, False)
    """
    if not math.isfinite(value):
        return False
    return metric_drop(reference, value, mode) <= max_drop + 1e-9


def update_reference(state: SearchState, value: float, mode: Mode) -> SearchState:
    """Fold one dense-phase validation value into the reference (the best seen).

    Example:
        >>> update_reference(update_reference(SearchState(), 0.9, "max"), 0.8, "max").reference
        0.9
    """
    if not math.isfinite(value):
        return state
    if state.reference is None:
        return replace(state, reference=value)
    better = value > state.reference if mode == "max" else value < state.reference
    return replace(state, reference=value) if better else state


def propose(state: SearchState, epoch: int, ceiling: float = CEILING) -> SearchState:
    """Propose the next sparsity: remove ``step`` of the weights kept at the accepted sparsity.

    Example:
        >>> s = propose(SearchState(reference=0.97), epoch=3)
        >>> s.pending, s.pending_epoch
        (0.5, 3)
        >>> propose(SearchState(reference=0.97, accepted=0.5, step=0.5), epoch=4).pending
        0.75
    """
    if state.done or state.pending is not None:
        raise ValueError(f"Cannot propose: the search is {'done' if state.done else 'waiting for a decision'}.")
    if state.accepted >= ceiling - 1e-12:
        return stop(state, epoch, f"reached the sparsity ceiling {ceiling}")
    proposal = min(ceiling, 1.0 - (1.0 - state.accepted) * (1.0 - state.step))
    return replace(state, pending=proposal, pending_epoch=epoch)


def ready_to_decide(state: SearchState, value: float, mode: Mode, max_drop: float, epoch: int) -> bool:
    """Whether the pending step can be judged now: it is within tolerance, or out of recovery time.

    Example:
        >>> s = propose(SearchState(reference=0.97), epoch=3)
        >>> ready_to_decide(s, 0.95, "max", 0.01, epoch=3), ready_to_decide(s, 0.95, "max", 0.01, epoch=4)
        (False, True)
        >>> ready_to_decide(s, 0.965, "max", 0.01, epoch=3)
        True
    """
    if state.pending is None or state.pending_epoch is None or state.reference is None or epoch < state.pending_epoch:
        return False
    if within_tolerance(state.reference, value, mode, max_drop) or not math.isfinite(value):
        return True
    return epoch >= state.pending_epoch + RECOVERY_EPOCHS - 1


def accuracy_standard_error(accuracy: float, samples: int) -> float:
    """Binomial sampling standard error of an accuracy measured on ``samples`` examples.

    Example:
        >>> round(accuracy_standard_error(0.97, 360), 4), round(accuracy_standard_error(0.6, 800), 4)
        (0.009, 0.0173)
    """
    if samples < 1:
        raise ValueError(f"`samples` must be >= 1, got {samples}.")
    p = min(1.0, max(0.0, accuracy))
    return math.sqrt(p * (1.0 - p) / samples)


def tolerance_noise(monitor: str, mode: Mode, reference: float, samples: int, max_drop: float) -> float | None:
    """The reference's standard error when it is too large for ``max_drop`` to be judged reliably.

    Only accuracy-like metrics (``"acc"`` in the name, ``mode="max"``, a value in ``[0, 1]``) have
    a known sampling error; for anything else this returns ``None``. So does a standard error
    below ``NOISE_WARNING_SHARE * max_drop``.

    Example:
        >>> round(tolerance_noise("val_acc", "max", 0.97, 360, 0.01), 4)
        0.009
        >>> tolerance_noise("val_acc", "max", 0.97, 36000, 0.01), tolerance_noise("val_loss", "min", 0.1, 360, 0.01)
        (None, None)
    """
    if mode != "max" or "acc" not in monitor.lower() or not 0.0 <= reference <= 1.0 or samples < 1:
        return None
    error = accuracy_standard_error(reference, samples)
    return error if error >= NOISE_WARNING_SHARE * max_drop else None


def default_window(max_epochs: int) -> tuple[int, int]:
    """Default search window of the automatic mode for a run of ``max_epochs`` epochs.

    The dense phase is longer than the fixed schedule's (about 30% of the run) because it sets the
    reference every later step is held to; the search runs to about 80%, and the rest fine-tunes.

    Example:
        >>> default_window(30), default_window(10), default_window(2)
        ((9, 23), (3, 7), (1, 1))
    """
    if max_epochs < 1:
        raise ValueError(f"`max_epochs` must be at least 1 to prune, got {max_epochs}.")
    end = min(max_epochs - 1, max(0, round(0.8 * max_epochs) - 1))
    start = min(end, max(1, round(0.3 * max_epochs)))
    return start, max(start, end)


def decide(state: SearchState, value: float, mode: Mode, max_drop: float, epoch: int) -> SearchState:
    """Accept or roll back the pending proposal, given the validation value after its recovery.

    Returns the new state; its last ``decisions`` entry says what happened (``accept`` or
    ``rollback``, and ``stop`` if the search ended with it).

    Example:
        >>> s = propose(SearchState(reference=0.97), epoch=3)
        >>> s = decide(s, 0.965, "max", 0.01, epoch=3)
        >>> s.accepted, s.decisions[-1]["decision"]
        (0.5, 'accept')
        >>> s = decide(propose(s, epoch=4), 0.90, "max", 0.01, epoch=4)
        >>> s.accepted, s.step, s.decisions[-1]["decision"]
        (0.5, 0.25, 'rollback')
    """
    if state.pending is None or state.reference is None:
        raise ValueError("Nothing to decide: no proposal is pending or no reference was recorded.")
    drop = metric_drop(state.reference, value, mode) if math.isfinite(value) else math.inf
    record = {
        "epoch": epoch,
        "proposed": state.pending,
        "value": value if math.isfinite(value) else None,
        "reference": state.reference,
        "drop": drop if math.isfinite(drop) else None,
        "step": state.step,
    }
    if within_tolerance(state.reference, value, mode, max_drop):
        accepted = replace(
            state,
            accepted=state.pending,
            rollbacks=0,
            pending=None,
            pending_epoch=None,
            decisions=(*state.decisions, {**record, "decision": "accept"}),
        )
        return accepted
    step = state.step / 2
    rolled = replace(
        state,
        step=step,
        rollbacks=state.rollbacks + 1,
        pending=None,
        pending_epoch=None,
        decisions=(*state.decisions, {**record, "decision": "rollback"}),
    )
    if not math.isfinite(value):
        return stop(rolled, epoch, "the monitored metric is not finite")
    if rolled.rollbacks >= MAX_CONSECUTIVE_ROLLBACKS:
        return stop(rolled, epoch, f"{rolled.rollbacks} consecutive steps broke the tolerance")
    if step < MIN_STEP:
        return stop(rolled, epoch, f"the step shrank below {MIN_STEP}")
    return rolled


def stop(state: SearchState, epoch: int, reason: str) -> SearchState:
    """End the search at the accepted sparsity, recording why.

    Example:
        >>> stop(SearchState(accepted=0.9), 12, "the search window ended").stop_reason
        'the search window ended'
    """
    record = {"epoch": epoch, "decision": "stop", "reason": reason, "accepted": state.accepted}
    return replace(state, pending=None, pending_epoch=None, stop_reason=reason, decisions=(*state.decisions, record))


def suggested_max_epochs(events_needed: int = 10) -> int:
    """Smallest ``max_epochs`` whose default search window holds ``events_needed`` pruning epochs.

    Example:
        >>> suggested_max_epochs(10)
        20
    """
    epochs = 2
    while True:
        start, end = default_window(epochs)
        if end - start + 1 >= events_needed:
            return epochs
        epochs += 1


def noise_warning(monitor: str, mode: Mode, reference: float, samples: int, max_drop: float) -> str | None:
    """The warning to give before the first step when validation is too small to resolve ``max_drop``, or ``None``.

    Example:
        >>> noise_warning("val_acc", "max", 0.97, 360, 0.01)[:60]
        "AutoPrune's validation val_acc comes from 360 samples: at th"
        >>> noise_warning("val_acc", "max", 0.97, 100_000, 0.01) is None
        True
    """
    error = tolerance_noise(monitor, mode, reference, samples, max_drop)
    if error is None:
        return None
    return (
        f"AutoPrune's validation {monitor} comes from {samples} samples: at the dense reference "
        f"{reference:.4f} its sampling standard error is {error:.4f}, comparable to "
        f"`max_metric_drop`={max_drop}. Steps are then accepted or rolled back partly on noise, and on unseen "
        "data the final model often loses more than the tolerance (BENCHMARKS.md, automatic mode). "
        "HINT: validate on more samples, or lower `max_metric_drop` to keep a margin."
    )
