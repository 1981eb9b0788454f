from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_autoprune.control.search import (
    CEILING,
    INITIAL_STEP,
    MAX_CONSECUTIVE_ROLLBACKS,
    NOISE_WARNING_SHARE,
    RECOVERY_EPOCHS,
    SearchState,
    accuracy_standard_error,
    decide,
    default_window,
    propose,
    ready_to_decide,
    stop,
    tolerance_noise,
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
    ("max_epochs", "window"), [(1, (0, 0)), (2, (1, 1)), (10, (3, 7)), (30, (9, 23)), (60, (18, 47))]
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
    monitor: str, mode: str, reference: float, samples: int, max_drop: float, noisy: bool
) -> None:
    error = tolerance_noise(monitor, mode, reference, samples, max_drop)  # type: ignore[arg-type]
    assert (error is not None) is noisy
    if noisy:
        assert error == pytest.approx(accuracy_standard_error(reference, samples))
        assert error >= NOISE_WARNING_SHARE * max_drop
