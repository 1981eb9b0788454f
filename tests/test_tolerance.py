from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_autoprune.tolerance import (
    CEILING,
    INITIAL_STEP,
    MAX_CONSECUTIVE_ROLLBACKS,
    RECOVERY_EPOCHS,
    SearchState,
    decide,
    default_window,
    propose,
    ready_to_decide,
    stop,
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
