from __future__ import annotations

import math
import statistics
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_autoprune.control.search import (
    CEILING,
    INITIAL_STEP,
    MARGIN_SHARE_CAP,
    MAX_CONSECUTIVE_ROLLBACKS,
    NOISE_WARNING_SHARE,
    RECOVERY_EPOCHS,
    Mode,
    SearchState,
    accuracy_standard_error,
    at_chance,
    chance_level,
    decide,
    default_window,
    dense_trend,
    end_dense_phase,
    plateaued,
    propose,
    ready_to_decide,
    reference_at,
    stop,
    tolerance_noise,
    trend_uncertainty,
    update_reference,
    within_tolerance,
)


def test_reference_is_the_best_dense_value_per_mode() -> None:
    state = SearchState()
    for value in (0.8, 0.9, 0.85, float("nan")):
        state = update_reference(state, value, "max")
    assert state.reference == 0.9
    state = SearchState()
    for value in (0.5, 0.3, 0.4):
        state = update_reference(state, value, "min")
    assert state.reference == 0.3


def test_accept_keeps_step_and_advances_geometrically() -> None:
    state = SearchState(reference=0.9)
    for expected in (0.5, 0.75, 0.875):
        state = propose(state, epoch=1)
        assert state.pending == pytest.approx(expected)
        state = decide(state, 0.9, "max", 0.01, epoch=1)
    assert state.accepted == pytest.approx(0.875)
    assert state.step == INITIAL_STEP


def test_rollback_halves_step_and_keeps_accepted() -> None:
    state = decide(propose(SearchState(reference=0.9, accepted=0.5), epoch=4), 0.5, "max", 0.01, epoch=4)
    assert state.accepted == 0.5
    assert state.step == INITIAL_STEP / 2
    assert state.decisions[-1]["decision"] == "rollback"
    assert state.decisions[-1]["drop"] == pytest.approx(0.4)


def test_repeated_rollbacks_stop_the_search() -> None:
    state = SearchState(reference=0.9, accepted=0.6)
    for _ in range(MAX_CONSECUTIVE_ROLLBACKS):
        state = decide(propose(state, epoch=5), 0.1, "max", 0.01, epoch=5)
    assert state.done
    assert state.accepted == 0.6
    assert "consecutive" in str(state.stop_reason)
    with pytest.raises(ValueError, match="the search is done"):
        propose(state, epoch=6)


def test_nan_metric_stops_instead_of_looping() -> None:
    state = decide(propose(SearchState(reference=0.9), epoch=2), float("nan"), "max", 0.01, epoch=2)
    assert state.done
    assert state.accepted == 0.0
    assert state.stop_reason == "the monitored metric is not finite"


def test_ceiling_stops() -> None:
    state = propose(SearchState(reference=1.0, accepted=CEILING), epoch=3)
    assert state.done
    assert "ceiling" in str(state.stop_reason)


def test_min_mode_tolerance() -> None:
    assert within_tolerance(0.30, 0.305, "min", 0.01)
    assert not within_tolerance(0.30, 0.32, "min", 0.01)
    assert not within_tolerance(0.30, math.inf, "min", 0.01)


def test_ready_to_decide_waits_for_recovery_only_when_out_of_tolerance() -> None:
    state = propose(SearchState(reference=0.9), epoch=4)
    assert ready_to_decide(state, 0.895, "max", 0.01, epoch=4)
    assert not ready_to_decide(state, 0.85, "max", 0.01, epoch=4)
    assert ready_to_decide(state, 0.85, "max", 0.01, epoch=4 + RECOVERY_EPOCHS - 1)
    assert not ready_to_decide(SearchState(reference=0.9), 0.9, "max", 0.01, epoch=4)


def test_state_round_trips_through_primitives() -> None:
    state = stop(decide(propose(SearchState(reference=0.9), epoch=1), 0.5, "max", 0.01, epoch=1), 2, "done")
    assert SearchState.from_dict(state.to_dict()) == state


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=25))
def test_accepted_sparsity_never_decreases_and_pending_is_above_it(values: list[float]) -> None:
    state = SearchState(reference=0.9)
    previous = 0.0
    for epoch, value in enumerate(values):
        if state.done:
            break
        state = propose(state, epoch)
        if state.pending is not None:
            assert state.pending > state.accepted
            state = decide(state, value, "max", 0.05, epoch)
        assert state.accepted >= previous
        previous = state.accepted
        assert state.accepted <= CEILING


@pytest.mark.parametrize(
    ("max_epochs", "window"), [(1, (0, 0)), (2, (1, 1)), (10, (6, 7)), (30, (6, 23)), (60, (6, 47))]
)
def test_default_window(max_epochs: int, window: tuple[int, int]) -> None:
    assert default_window(max_epochs) == window


def test_accuracy_standard_error_is_the_binomial_one() -> None:
    assert accuracy_standard_error(0.5, 100) == pytest.approx(0.05)
    assert accuracy_standard_error(1.0, 100) == 0.0
    with pytest.raises(ValueError, match="`samples` must be >= 1, got 0"):
        accuracy_standard_error(0.9, 0)


@pytest.mark.parametrize(
    ("monitor", "mode", "reference", "samples", "max_drop", "noisy"),
    [
        ("val_acc", "max", 0.97, 360, 0.01, True),  # the digits MLP: 0.9 points of noise against 1 point
        ("val_acc", "max", 0.97, 360, 0.05, False),  # a tolerance well above the noise
        ("val_acc", "max", 0.97, 100_000, 0.01, False),  # a large validation set
        ("val_accuracy", "max", 0.6, 800, 0.01, True),  # MNIST-1D: 1.7 points
        ("val_acc", "max", 97.0, 360, 1.0, False),  # accuracy in percent: no known scale, no claim
        ("val_loss", "min", 0.1, 360, 0.01, False),  # not an accuracy: no known sampling error
        ("val_f1", "max", 0.9, 360, 0.01, False),
    ],
)
def test_tolerance_noise_flags_only_accuracies_too_noisy_for_the_tolerance(
    monitor: str, mode: Mode, reference: float, samples: int, max_drop: float, noisy: bool
) -> None:
    error = tolerance_noise(monitor, mode, reference, samples, max_drop)
    assert (error is not None) is noisy
    if noisy:
        assert error is not None
        assert error == pytest.approx(accuracy_standard_error(reference, samples))
        assert error >= NOISE_WARNING_SHARE * max_drop


def test_a_climbing_metric_has_no_plateau_and_a_flat_one_has() -> None:
    rising = [0.50, 0.70, 0.80, 0.86, 0.90, 0.925, 0.94]
    assert not plateaued(rising, "max", 0.01)
    assert not plateaued([*rising, 0.944, 0.941, 0.943], "max", 0.01), "this mean still beats the one before"
    flat = [*rising, 0.944, 0.941, 0.943, 0.942, 0.944, 0.943]
    assert plateaued(flat, "max", 0.01), "the last three average what the three before did"
    assert not plateaued([0.9] * 5, "max", 0.01), "too few values to tell"
    assert plateaued([0.50, 0.45, 0.449, 0.451, 0.452, 0.450, 0.451], "min", 0.02)


def test_the_dense_phase_ends_on_the_plateau_mean_with_a_noise_margin() -> None:
    state = SearchState(dense_values=((0, 0.6), (1, 0.9), (2, 0.95), (3, 0.96), (4, 0.955), (5, 0.958)))
    ended = end_dense_phase(state, 5, monitor="val_acc", mode="max", max_drop=0.02, samples=800)
    assert ended.start_epoch == 6
    assert ended.reference_epochs == (3, 5)
    assert ended.reference == pytest.approx((0.96 + 0.955 + 0.958) / 3)
    assert ended.reference_rule == "mean"
    assert ended.reference is not None
    binomial = accuracy_standard_error(ended.reference, 800)
    assert ended.noise == pytest.approx(max(binomial, statistics.stdev([0.96, 0.955, 0.958])))
    assert ended.noise is not None
    assert ended.margin == pytest.approx(min(ended.noise, 0.01))
    loss = end_dense_phase(state, 5, monitor="val_loss", mode="min", max_drop=0.02, samples=800)
    assert loss.noise == pytest.approx(statistics.stdev([0.96, 0.955, 0.958])), "no binomial term for a loss"


def test_an_unsteady_plateau_is_judged_by_its_best_value_not_its_mean() -> None:
    # The realistic ResNet's seed 1 pattern: one validation of the plateau collapsed by 6 points.
    swings = SearchState(dense_values=((3, 0.95), (4, 0.991), (5, 0.93), (6, 0.988)))
    ended = end_dense_phase(swings, 6, monitor="val_acc", mode="max", max_drop=0.01, samples=5000)
    assert ended.reference_rule == "best"
    assert ended.reference == 0.991
    assert ended.reference_epochs == (4, 6)
    assert ended.margin == pytest.approx(0.005), "the margin stays capped at half the tolerance"
    loss = SearchState(dense_values=((0, 2.0), (1, 1.31), (2, 1.42), (3, 1.30)))
    ended = end_dense_phase(loss, 3, monitor="val_loss", mode="min", max_drop=0.02, samples=None)
    assert (ended.reference_rule, ended.reference) == ("best", 1.30), "for a loss the best value is the lowest"
    given = end_dense_phase(swings, 6, monitor="val_acc", mode="max", max_drop=0.01, samples=5000, given_reference=0.9)
    assert (given.reference, given.reference_rule) == (0.9, None)


def test_a_decision_keeps_the_margin_from_the_tolerance() -> None:
    state = replace(propose(SearchState(reference=0.95, margin=0.004), epoch=5), pending_epoch=5)
    assert decide(state, 0.944, "max", 0.01, epoch=6).decisions[-1]["decision"] == "accept"
    rolled = decide(state, 0.9405, "max", 0.01, epoch=6)
    assert rolled.decisions[-1]["decision"] == "rollback", "a drop of 0.0095 plus the margin 0.004 breaks 0.01"
    assert rolled.decisions[-1]["margin"] == 0.004


def test_chance_level_is_the_most_frequent_label_share() -> None:
    assert chance_level({0: 10, 1: 10, 2: 80}) == 0.8
    assert at_chance(0.81, 0.8, 0.01, 0.02)
    assert not at_chance(0.9, 0.8, 0.01, 0.02)


def test_a_search_state_written_before_the_plateau_fields_loads_with_defaults() -> None:
    old = {k: v for k, v in SearchState(reference=0.9, accepted=0.5).to_dict().items()}
    for new_field in ("dense_values", "start_epoch", "reference_epochs", "reference_rule", "noise", "margin"):
        old.pop(new_field)
    loaded = SearchState.from_dict(old)
    assert loaded.reference == 0.9
    assert loaded.margin == 0.0
    assert loaded.dense_values == ()
    assert loaded.reference_rule is None
    assert SearchState.from_dict(loaded.to_dict()) == loaded


# The realistic character GPT-2's seed 0: its dense validation loss in the automatic mode's dense phase
# (epochs 0-6, no plateau), then the dense fine-tune's loss at epochs 7-15 of the same run.
LM_DENSE = (2.71755, 2.641112, 2.60034, 2.569324, 2.548707, 2.524155, 2.50672)
LM_LATER = (2.509442, 2.483703, 2.476637, 2.45925, 2.442083, 2.425913, 2.411457, 2.401228, 2.378352)


def known_ref_at(state: SearchState, epoch: int) -> float:
    """:func:`reference_at` where the test expects a reference to be known."""
    value = reference_at(state, epoch)
    assert value is not None
    return value


def test_a_dense_phase_ended_still_improving_follows_the_dense_trend() -> None:
    state = SearchState(dense_values=tuple(enumerate(LM_DENSE)))
    ended = end_dense_phase(state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None, still_improving=True)
    assert ended.reference_rule == "trend"
    assert ended.reference_epochs == (3, 6), "the last half of the dense values, at least four"
    assert ended.trend_slope == pytest.approx(-0.0212, abs=1e-4)
    assert ended.margin < 0.005, "the spread around the line, not the fall along it, is the noise"
    # the prediction stays within 0.02 nats of the dense run it stands for, on the strict side at the end
    predicted = [known_ref_at(ended, epoch) for epoch in range(7, 16)]
    errors = [p - actual for p, actual in zip(predicted, LM_LATER, strict=True)]
    assert max(abs(e) for e in errors) < 0.025
    assert errors[-1] < 0
    assert predicted == sorted(predicted, reverse=True)
    # the plateau's rule, when the phase ended on a plateau, and a given reference, stand still
    plateau = end_dense_phase(state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None)
    assert plateau.reference_rule == "best"
    assert reference_at(plateau, 15) == plateau.reference
    given = end_dense_phase(
        state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None, given_reference=2.4, still_improving=True
    )
    assert (given.reference_rule, reference_at(given, 15)) == (None, 2.4)


def test_under_a_trend_the_margin_covers_the_prediction_up_to_the_last_epoch() -> None:
    state = SearchState(dense_values=tuple(enumerate(LM_DENSE)))

    def ended(horizon: int | None) -> SearchState:
        return end_dense_phase(
            state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None, still_improving=True, horizon=horizon
        )

    noise_only, to_the_end, next_epoch = ended(None), ended(15), ended(7)
    assert noise_only.trend_uncertainty == 0.0
    # a curve that kept its 0.021-nat slope to epoch 15 would end 0.056 nats below the slowing prediction
    assert to_the_end.trend_uncertainty == pytest.approx(trend_uncertainty(to_the_end, 15))
    assert to_the_end.trend_uncertainty > 0.04
    assert to_the_end.margin == pytest.approx(MARGIN_SHARE_CAP * 0.02), "capped like any margin"
    # one epoch ahead the two curves part by 0.003 nats, a little more than the residual noise
    assert noise_only.margin < next_epoch.trend_uncertainty < 0.005
    assert next_epoch.margin == pytest.approx(next_epoch.trend_uncertainty)
    # the held slope is the strict side: below the slowing prediction, itself below this seed's measured loss
    strict, central = reference_at(to_the_end, 15, power=0.0), reference_at(to_the_end, 15)
    assert strict is not None
    assert central is not None
    assert strict < central < LM_LATER[-1]
    # 0.016 nats behind the prediction is within 0.02 less the noise, not within 0.02 less the margin
    pending, reference = propose(to_the_end, epoch=7), reference_at(to_the_end, 7)
    assert reference is not None
    value = reference + 0.016
    assert within_tolerance(reference, value, "min", 0.02 - noise_only.margin)
    assert decide(pending, value, "min", 0.02, epoch=8).decisions[-1]["decision"] == "rollback"


def test_a_plateau_margin_ignores_the_horizon() -> None:
    state = SearchState(dense_values=((0, 0.8), (1, 0.95), (2, 0.953), (3, 0.949), (4, 0.951)))
    far = end_dense_phase(state, 4, monitor="val_acc", mode="max", max_drop=0.01, samples=5000, horizon=40)
    assert far == end_dense_phase(state, 4, monitor="val_acc", mode="max", max_drop=0.01, samples=5000)


def test_a_step_is_judged_against_the_reference_of_its_epoch() -> None:
    state = SearchState(dense_values=tuple(enumerate(LM_DENSE)))
    ended = end_dense_phase(state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None, still_improving=True)
    pending = propose(ended, epoch=7)
    # 2.5146 is what the search saw at 50% after one epoch: 0.008 above the epoch-6 value, 0.027 above the trend
    assert not ready_to_decide(pending, 2.5146, "min", 0.02, epoch=7), "one more epoch to recover"
    rolled = decide(pending, 2.5146, "min", 0.02, epoch=8)
    assert rolled.decisions[-1]["decision"] == "rollback"
    assert rolled.decisions[-1]["reference"] == pytest.approx(reference_at(ended, 8))


def test_no_trend_in_a_flat_or_worsening_metric() -> None:
    noisy_flat = [(e, 0.95 + (0.01 if e % 2 else -0.01)) for e in range(8)]
    assert dense_trend(noisy_flat, "max") is None
    assert dense_trend([(e, 0.9 - 0.01 * e) for e in range(8)], "max") is None, "falling accuracy is no improvement"
    assert dense_trend([(0, 0.5), (1, 0.6), (2, 0.7)], "max") is None, "three values are too few"
    slow = [(e, 0.90 + 0.002 * e) for e in range(8)]
    assert dense_trend(slow, "max") is not None, "a clean climb is a trend"
    assert dense_trend(slow, "max", noise_floor=0.01) is None, "but not within the sampling error of 0.01"


def test_reference_at_needs_a_trend_and_a_start() -> None:
    assert reference_at(SearchState(), 4) is None
    assert reference_at(SearchState(reference=0.9, trend_slope=0.01, trend_center=2.0), 9) == 0.9, "no start yet"
    state = SearchState(reference=0.9, start_epoch=5, trend_slope=0.01, trend_center=2.0)
    assert reference_at(state, 4) == 0.9
    assert 0.9 < known_ref_at(state, 5) < known_ref_at(state, 9) < 0.9 + 0.01 * 5, "slowing after the anchor"
