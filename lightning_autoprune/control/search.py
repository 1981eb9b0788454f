"""The automatic target: how far to prune, decided by a validation metric and a tolerance.

Pure decision logic, no Lightning: the callback feeds it validation values and applies what it
returns. The dense phase lasts until the monitored metric has stopped improving
(:func:`plateaued`); the reference is then the mean of the plateau's values (their best value when
they spread by more than the tolerance: :func:`unsteady`), and the metric's
noise (its binomial standard error where it is an accuracy on a known number of samples, and the
spread of the plateau's values) sets a margin that every decision keeps from the tolerance. A
reference at chance level is no reference: the search then does not start.

A metric still improving when the search must start (no plateau in time) has no steady reference:
the dense model would have gone on improving while the search prunes. The reference then follows
the dense trend (:func:`dense_trend`, :func:`reference_at`): the recent slope of the dense values,
slowing as ``1/sqrt(epochs trained)``, so each step is judged against where the dense model would be
at that epoch, not where it was when pruning began. That prediction is uncertain: a curve that keeps
its slope instead of slowing ends further ahead (:func:`trend_uncertainty`), and the pruned model,
learning more slowly, falls further behind after its step is accepted. The margin under a trend is
therefore the larger of the noise and that uncertainty at the last epoch of training, capped like
any margin.

The search raises sparsity in steps that each remove a fraction ``step`` of the weights still kept
(so the density shrinks geometrically, like the cubic schedule's front-loaded shape). After each
step and one epoch of recovery the monitored metric is compared with the reference: within
``max_metric_drop`` minus the margin the step is accepted; beyond it the run rolls back to the last
accepted state and the step is halved. Repeated rollbacks, a step too small to matter, the sparsity
ceiling or the end of the search window stop the search; the model then fine-tunes at the last
accepted sparsity.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
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

#: The dense phase ends once the mean of the last ``PLATEAU_PATIENCE`` validations beats the mean of
#: the ``PLATEAU_PATIENCE`` before them by at most ``PLATEAU_DELTA_SHARE * max_metric_drop``: the spirit
#: of EarlyStopping's patience and ``min_delta``, scaled to the tolerance, on means because single
#: validations of a few hundred samples move by more than the tolerance. On the digits MLP trained
#: from scratch (Adam 1e-3, 30 epochs) it ends the dense phase at epochs 15-20, 0.5-0.8 point below
#: the mean of the last five epochs; comparing best values instead ended it at epoch 8, 3 points below.
PLATEAU_PATIENCE = 3
PLATEAU_DELTA_SHARE = 0.25
#: Search epochs a run should have after the plateau. Reaching 90% takes about three accepted steps,
#: and a step takes one or two epochs. With fewer, the room warning says so; a metric still improving
#: this close to ``end_epoch`` starts the search anyway.
ROOM_EPOCHS = 6
#: The decision margin is the metric's noise, capped at this share of the tolerance (with more noise
#: than that the validation set cannot resolve the tolerance, and the noise warning says so).
MARGIN_SHARE_CAP = 0.5
#: A plateau whose values spread (standard deviation) by more than ``UNSTEADY_SHARE * max_metric_drop``
#: is unsteady: training, not sampling, moves the metric, and the plateau's mean understates the dense
#: model. Measured on the realistic ResNet fine-tuned with Adam at a constant 2e-3 (5,000 validation
#: signals, sampling error 0.0014) the plateau spread by 0.017-0.067 in 4 of 5 seeds, and in 3 of them its
#: mean sat 1.1-4.3 points below the test accuracy the dense fine-tune ended at. The reference is then the
#: plateau's best value, and a warning says why.
UNSTEADY_SHARE = 1.0
#: A reference within ``max(max_metric_drop, CHANCE_NOISE_SIGMAS * noise)`` of chance level (the share
#: of the most frequent validation label) is no reference: the search does not start.
CHANCE_NOISE_SIGMAS = 2.0
#: A dense phase that ends without a plateau fits its trend on the last half of its values, at least
#: this many (a slope and a residual spread need four).
TREND_MIN_POINTS = 4
#: The trend counts only when its slope is at least this many standard errors from zero (the noise
#: being the larger of the residual spread and the metric's sampling error): a noisy, flat metric
#: has no trend.
TREND_SIGNIFICANCE = 2.0
#: The predicted dense improvement per epoch falls as ``epochs_trained ** -TREND_DECAY_POWER`` from the
#: slope measured at the centre of the fitted values. Measured on the realistic character GPT-2 (16
#: epochs of 10 batches from a briefly trained state; a slope of 0.021-0.024 nats per epoch fitted on
#: epochs 3-6): the prediction for epoch 15 was 0.008, 0.019 and 0.007 nats below the dense fine-tune's
#: validation loss there (seeds 0-2; at epochs 7-15 between 0.033 below and 0.002 above: the strict
#: side), where a constant slope predicted 0.06-0.08 nats too low and a geometric decay of 0.8 per
#: epoch 0.07 nats too high (seeds 0, 1). Seeds 3 and 4 ran from 0.021 below to 0.042 above (seed 3's
#: dense curve did not slow): a prediction, not a measurement.
TREND_DECAY_POWER = 0.5
#: Under a trend the decision margin covers the prediction's own uncertainty: what the dense model
#: would gain by the last epoch beyond the prediction if its curve kept its slope (decay power 0).
#: On that character GPT-2 rerun on another VM (seeds 0-4, dense states trained there) the 1/sqrt
#: prediction for epoch 15 ran from 0.014 nats strict to 0.029 lenient (seeds 3 and 4 kept falling
#: about 0.015 nats per epoch to the end), and with the noise alone as the margin (0.0005-0.007) 3
#: of 5 runs ended 0.022-0.044 nats behind the dense fine-tune on test against a 0.02 tolerance.
STRICT_DECAY_POWER = 0.0

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
        decisions: one record per accept, rollback or stop.
        dense_values: ``(epoch, value)`` of every validation of the dense phase.
        start_epoch: the epoch whose start takes the first step, once the dense phase has ended.
        reference_epochs: the epochs whose values the reference averages (``None``: given, or not yet).
        reference_rule: how the reference was taken from the plateau: ``"mean"``, or ``"best"`` when the
            plateau was unsteady (see ``UNSTEADY_SHARE``); ``None`` when given, or not yet.
        noise: the monitored metric's estimated noise (see :func:`metric_noise`), once known.
        margin: what every decision keeps from the tolerance: ``min(noise, MARGIN_SHARE_CAP * max_drop)``, the
            noise being at least ``trend_uncertainty`` under a trend.
        trend_slope: the dense metric's change per epoch when the dense phase ended still improving
            (``reference_rule == "trend"``), in the metric's units (negative for a falling loss); 0 otherwise.
        trend_center: the epoch at which ``trend_slope`` was measured (the fitted values' mean epoch).
        trend_origin: the first dense epoch: epochs trained are counted from it.
        final_reference: the reference the final state was judged against at fit end (with a trend it
            has moved on from ``reference``), once fit has ended.
        trend_uncertainty: under a trend, what the dense model would gain by the last epoch beyond the
            prediction if it kept its slope (:func:`trend_uncertainty`); 0 otherwise.
    """

    reference: float | None = None
    accepted: float = 0.0
    step: float = INITIAL_STEP
    rollbacks: int = 0
    pending: float | None = None
    pending_epoch: int | None = None
    stop_reason: str | None = None
    decisions: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    dense_values: tuple[tuple[int, float], ...] = ()
    start_epoch: int | None = None
    reference_epochs: tuple[int, int] | None = None
    reference_rule: Literal["mean", "best", "trend"] | None = None
    noise: float | None = None
    margin: float = 0.0
    trend_slope: float = 0.0
    trend_center: float | None = None
    trend_origin: int = 0
    final_reference: float | None = None
    trend_uncertainty: float = 0.0

    @property
    def done(self) -> bool:
        """Whether the search has stopped."""
        return self.stop_reason is not None

    def to_dict(self) -> dict[str, Any]:
        """Primitives for a checkpoint."""
        state = asdict(self)
        state["decisions"] = [dict(d) for d in self.decisions]
        state["dense_values"] = [list(v) for v in self.dense_values]
        state["reference_epochs"] = list(self.reference_epochs) if self.reference_epochs is not None else None
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> SearchState:
        """Inverse of :meth:`to_dict` (a state written before a field existed gets its default)."""
        epochs = state.get("reference_epochs")
        return cls(
            **{
                **state,
                "decisions": tuple(dict(d) for d in state.get("decisions", ())),
                "dense_values": tuple((int(e), float(v)) for e, v in state.get("dense_values", ())),
                "reference_epochs": (int(epochs[0]), int(epochs[1])) if epochs is not None else None,
            }
        )


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


def better(a: float, b: float, mode: Mode) -> bool:
    """Whether ``a`` is a better value than ``b``.

    Example:
        >>> better(0.9, 0.8, "max"), better(0.9, 0.8, "min")
        (True, False)
    """
    return a > b if mode == "max" else a < b


def plateaued(values: Sequence[float], mode: Mode, max_drop: float, patience: int = PLATEAU_PATIENCE) -> bool:
    """Whether the mean of the last ``patience`` values beat the mean of the ``patience`` before by at most the delta.

    The delta is ``PLATEAU_DELTA_SHARE * max_drop``; non-finite values are left out.

    Example:
        >>> plateaued([0.80, 0.90, 0.93, 0.95, 0.96, 0.97], "max", 0.01)  # still climbing
        False
        >>> plateaued([0.80, 0.95, 0.953, 0.949, 0.951, 0.952, 0.95], "max", 0.01)
        True
        >>> plateaued([0.31, 0.30, 0.31, 0.30, 0.31, 0.305], "min", 0.02)  # a loss that stopped falling
        True
    """
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2 * patience:
        return False
    before = statistics.fmean(finite[-2 * patience : -patience])
    recent = statistics.fmean(finite[-patience:])
    return -metric_drop(before, recent, mode) <= PLATEAU_DELTA_SHARE * max_drop + 1e-9


def spread(values: Sequence[float]) -> float | None:
    """Standard deviation of the finite ``values``; ``None`` with fewer than two of them.

    Example:
        >>> round(spread([0.30, 0.32, 0.31, float("nan")]), 4), spread([0.3])
        (0.01, None)
    """
    finite = [v for v in values if math.isfinite(v)]
    return statistics.stdev(finite) if len(finite) >= 2 else None


def metric_noise(
    monitor: str, mode: Mode, reference: float, samples: int | None, plateau: Sequence[float]
) -> float | None:
    """The monitored metric's noise: the larger of its binomial standard error and the plateau's spread.

    The binomial standard error applies where the metric is an accuracy (``"acc"`` in the name,
    ``mode="max"``, a value in ``[0, 1]``) measured on a known number of ``samples``; the spread
    (standard deviation) of the plateau's values applies to any metric with two or more of them.

    Example:
        >>> round(metric_noise("val_acc", "max", 0.97, 360, [0.97, 0.97]), 4)
        0.009
        >>> round(metric_noise("val_loss", "min", 0.3, None, [0.30, 0.32, 0.31]), 4)
        0.01
        >>> metric_noise("val_loss", "min", 0.3, None, [0.3]) is None
        True
    """
    found = []
    if samples and mode == "max" and "acc" in monitor.lower() and 0.0 <= reference <= 1.0:
        found.append(accuracy_standard_error(reference, samples))
    plateau_spread = spread(plateau)
    if plateau_spread is not None:
        found.append(plateau_spread)
    return max(found) if found else None


@dataclass(frozen=True)
class Trend:
    """A still-improving dense metric's recent course (see :func:`dense_trend`).

    Attributes:
        slope: change per epoch, in the metric's units (negative for a falling loss).
        value: the fitted value at the last dense epoch (the reference's anchor).
        center: the mean epoch of the fitted values, where ``slope`` was measured.
        epochs: the first and last epoch of the fitted values.
        residual: standard deviation of the values around the fitted line.
    """

    slope: float
    value: float
    center: float
    epochs: tuple[int, int]
    residual: float


def dense_trend(values: Sequence[tuple[int, float]], mode: Mode, noise_floor: float = 0.0) -> Trend | None:
    """The linear trend of the last half of the dense ``(epoch, value)`` pairs, if it clearly improves.

    At least ``TREND_MIN_POINTS`` finite values are fitted; the slope must point the better way by
    more than ``TREND_SIGNIFICANCE`` standard errors, the noise being the larger of the residual
    spread and ``noise_floor`` (the metric's sampling error). ``None`` otherwise.

    Example:
        >>> trend = dense_trend([(0, 2.72), (1, 2.64), (2, 2.60), (3, 2.57), (4, 2.55), (5, 2.52), (6, 2.51)], "min")
        >>> round(trend.slope, 4), round(trend.value, 4), trend.center, trend.epochs
        (-0.021, 2.506, 4.5, (3, 6))
        >>> dense_trend([(0, 0.95), (1, 0.96), (2, 0.95), (3, 0.96)], "max") is None  # flat within noise
        True
    """
    finite = [(e, v) for e, v in values if math.isfinite(v)]
    recent = finite[-max(TREND_MIN_POINTS, len(finite) // 2) :]
    if len(recent) < TREND_MIN_POINTS:
        return None
    xs, ys = [float(e) for e, _ in recent], [v for _, v in recent]
    slope, intercept = statistics.linear_regression(xs, ys)
    center = statistics.fmean(xs)
    residual = math.sqrt(sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True)) / (len(xs) - 2))
    standard_error = max(residual, noise_floor) / math.sqrt(sum((x - center) ** 2 for x in xs))
    improving = slope > 0 if mode == "max" else slope < 0
    if not improving or abs(slope) <= TREND_SIGNIFICANCE * standard_error:
        return None
    last = recent[-1][0]
    return Trend(slope, intercept + slope * last, center, (recent[0][0], last), residual)


def reference_at(state: SearchState, epoch: int, power: float = TREND_DECAY_POWER) -> float | None:
    """The reference a validation at the end of ``epoch`` is judged against.

    It is :attr:`SearchState.reference`, except after a dense phase that ended still improving: the
    reference then follows the dense trend past the last dense epoch, its slope falling as
    ``epochs_trained ** -power`` (epochs trained counted from ``trend_origin``, so the validation
    after the first epoch has one; ``power=0`` keeps the slope).

    Example:
        >>> s = SearchState(reference=2.505, start_epoch=7, trend_slope=-0.021, trend_center=4.5)
        >>> reference_at(s, 6), round(reference_at(s, 7), 4), round(reference_at(s, 15), 4)
        (2.505, 2.487, 2.3716)
        >>> reference_at(SearchState(reference=0.97, start_epoch=5), 12)
        0.97
    """
    if state.reference is None or not state.trend_slope or state.start_epoch is None or state.trend_center is None:
        return state.reference
    anchor = state.start_epoch - 1
    if epoch <= anchor:
        return state.reference
    center, at_anchor, now = (max(e - state.trend_origin + 1, 1.0) for e in (state.trend_center, anchor, epoch))
    # the integral of trend_slope * (t / center) ** -power over the epochs trained from the anchor to now
    gained = center**power * (now ** (1 - power) - at_anchor ** (1 - power)) / (1 - power)
    return state.reference + state.trend_slope * gained


def trend_uncertainty(state: SearchState, horizon: int) -> float:
    """How much more the dense model gains by ``horizon`` than predicted, if its curve keeps its slope.

    The distance at ``horizon`` between :func:`reference_at` with the slope held
    (``STRICT_DECAY_POWER``) and with it slowing as predicted; 0 without a trend.

    Example:
        >>> s = SearchState(reference=2.505, start_epoch=7, trend_slope=-0.021, trend_center=4.5)
        >>> round(trend_uncertainty(s, 15), 4), trend_uncertainty(SearchState(reference=0.97, start_epoch=5), 12)
        (0.0556, 0.0)
    """
    central, strict = reference_at(state, horizon), reference_at(state, horizon, STRICT_DECAY_POWER)
    return abs(strict - central) if central is not None and strict is not None else 0.0


def end_dense_phase(
    state: SearchState,
    epoch: int,
    *,
    monitor: str,
    mode: Mode,
    max_drop: float,
    samples: int | None,
    given_reference: float | None = None,
    still_improving: bool = False,
    horizon: int | None = None,
) -> SearchState:
    """End the dense phase after the validation of ``epoch``: the search starts at the next epoch.

    The reference is ``given_reference``, or taken from the last ``PLATEAU_PATIENCE`` dense values
    (the plateau): their mean, or their best value when they spread by more than
    ``UNSTEADY_SHARE * max_drop`` (unsteady training, see :func:`unsteady`). The noise and the
    decision margin are estimated from them. A dense phase ended ``still_improving`` (no plateau in
    time) whose values have a clear trend (:func:`dense_trend`) takes the trend's fitted value at
    ``epoch`` as the reference, moving on with the trend (:func:`reference_at`), and the spread of
    the values around it as their noise; the margin then also covers the prediction's uncertainty at
    ``horizon``, the last epoch of training (:func:`trend_uncertainty`).

    Example:
        >>> s = SearchState(dense_values=((0, 0.8), (1, 0.95), (2, 0.953), (3, 0.949), (4, 0.951)))
        >>> s = end_dense_phase(s, 4, monitor="val_acc", mode="max", max_drop=0.01, samples=5000)
        >>> s.start_epoch, round(s.reference, 4), s.reference_epochs, s.reference_rule, round(s.margin, 4)
        (5, 0.951, (2, 4), 'mean', 0.0031)
        >>> s = SearchState(dense_values=((4, 0.99), (5, 0.93), (6, 0.985)))
        >>> s = end_dense_phase(s, 6, monitor="val_acc", mode="max", max_drop=0.01, samples=5000)
        >>> s.reference, s.reference_rule
        (0.99, 'best')
    """
    plateau = state.dense_values[-PLATEAU_PATIENCE:]
    values = [v for _, v in plateau if math.isfinite(v)]
    rule: Literal["mean", "best", "trend"] | None = None
    trend = None
    if given_reference is None and still_improving:
        sampling = metric_noise(monitor, mode, values[-1], samples, []) if values else None
        trend = dense_trend(state.dense_values, mode, sampling or 0.0)
    if trend is not None:
        rule, reference, epochs = "trend", trend.value, trend.epochs
        noise: float | None = max(trend.residual, sampling or 0.0)
    elif given_reference is not None:
        reference, epochs = given_reference, None
    elif values:
        rule = "best" if unsteady(values, max_drop) else "mean"
        best = max(values) if mode == "max" else min(values)
        reference, epochs = best if rule == "best" else statistics.fmean(values), (plateau[0][0], plateau[-1][0])
    else:
        reference, epochs = None, None
    if trend is None:
        noise = metric_noise(monitor, mode, reference, samples, values) if reference is not None else None
    ended = replace(
        state,
        start_epoch=epoch + 1,
        reference=reference,
        reference_epochs=epochs,
        reference_rule=rule,
        noise=noise,
        trend_slope=trend.slope if trend is not None else 0.0,
        trend_center=trend.center if trend is not None else None,
        trend_origin=state.dense_values[0][0] if trend is not None else 0,
    )
    uncertainty = trend_uncertainty(ended, horizon) if trend is not None and horizon is not None else 0.0
    spread_to_keep = max(noise or 0.0, uncertainty)
    margin = min(spread_to_keep, MARGIN_SHARE_CAP * max_drop) if noise is not None or uncertainty else 0.0
    return replace(ended, margin=margin, trend_uncertainty=uncertainty)


def unsteady(values: Sequence[float], max_drop: float) -> bool:
    """Whether plateau ``values`` spread (standard deviation) by more than ``UNSTEADY_SHARE * max_drop``.

    Example:
        >>> unsteady([0.99, 0.93, 0.985], 0.01), unsteady([0.951, 0.953, 0.949], 0.01), unsteady([0.9], 0.01)
        (True, False, False)
    """
    plateau_spread = spread(values)
    return plateau_spread is not None and plateau_spread > UNSTEADY_SHARE * max_drop


def chance_level(labels: Mapping[int, int]) -> float | None:
    """The accuracy of always predicting the most frequent label: ``max count / total``.

    Example:
        >>> chance_level({0: 30, 1: 50, 2: 20}), chance_level({})
        (0.5, None)
    """
    total = sum(labels.values())
    return max(labels.values()) / total if total else None


def at_chance(reference: float, chance: float | None, max_drop: float, noise: float | None) -> bool:
    """Whether an accuracy reference is no better than chance: within ``max(max_drop, 2 * noise)`` of it.

    Example:
        >>> at_chance(0.11, 0.10, 0.01, 0.02), at_chance(0.95, 0.10, 0.01, 0.01), at_chance(0.5, None, 0.01, None)
        (True, False, False)
    """
    if chance is None:
        return False
    return reference <= chance + max(max_drop, CHANCE_NOISE_SIGMAS * (noise or 0.0))


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
    reference = reference_at(state, epoch)
    if state.pending is None or state.pending_epoch is None or reference is None or epoch < state.pending_epoch:
        return False
    if within_tolerance(reference, value, mode, max_drop - state.margin) or not math.isfinite(value):
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
    """Default search window of the automatic mode for a run of ``max_epochs`` epochs: ``(earliest start, end)``.

    The dense phase ends when the monitored metric reaches its plateau (:func:`plateaued`), which
    takes at least ``2 * PLATEAU_PATIENCE`` validations, so the search starts at epoch
    ``2 * PLATEAU_PATIENCE`` at the earliest (a model fine-tuned from a trained state) and later
    for a model trained from scratch. It runs to about 80% of the run, and the rest fine-tunes.

    Example:
        >>> default_window(30), default_window(10), default_window(2)
        ((6, 23), (6, 7), (1, 1))
    """
    if max_epochs < 1:
        raise ValueError(f"`max_epochs` must be at least 1 to prune, got {max_epochs}.")
    end = min(max_epochs - 1, max(0, round(0.8 * max_epochs) - 1))
    start = min(end, max(1, 2 * PLATEAU_PATIENCE))
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
    reference = reference_at(state, epoch)
    if state.pending is None or reference is None:
        raise ValueError("Nothing to decide: no proposal is pending or no reference was recorded.")
    drop = metric_drop(reference, value, mode) if math.isfinite(value) else math.inf
    record = {
        "epoch": epoch,
        "proposed": state.pending,
        "value": value if math.isfinite(value) else None,
        "reference": reference,
        "drop": drop if math.isfinite(drop) else None,
        "step": state.step,
        "margin": state.margin,
    }
    if within_tolerance(reference, value, mode, max_drop - state.margin):
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
