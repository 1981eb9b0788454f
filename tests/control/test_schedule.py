from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lightning_autoprune.control.schedule import (
    SCHEDULES,
    ScheduleKind,
    default_window,
    event_epochs,
    scheduled_sparsity,
)

windows = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(1, 5)).map(
    lambda t: (min(t[0], t[1]), max(t[0], t[1]), t[2])
)


@given(windows, st.floats(0.0, 0.999), st.sampled_from(SCHEDULES))
def test_never_decreases_never_exceeds_and_reaches_target(
    window: tuple[int, int, int], final: float, kind: ScheduleKind
) -> None:
    start, end, frequency = window
    values = [
        scheduled_sparsity(e, final, start=start, end=end, frequency=frequency, kind=kind) for e in range(end + 5)
    ]
    assert values == sorted(values)
    assert all(0.0 <= v <= final for v in values)
    assert values[end] == final
    assert all(v == final for v in values[end:])
    assert all(v == 0.0 for v in values[: min(start, end)])


@given(windows, st.sampled_from(SCHEDULES))
def test_sparsity_changes_only_at_events(window: tuple[int, int, int], kind: ScheduleKind) -> None:
    start, end, frequency = window
    events = set(event_epochs(start, end, frequency, kind))
    for epoch in range(1, end + 3):
        before = scheduled_sparsity(epoch - 1, 0.9, start=start, end=end, frequency=frequency, kind=kind)
        now = scheduled_sparsity(epoch, 0.9, start=start, end=end, frequency=frequency, kind=kind)
        if now != before:
            assert epoch in events


def test_cubic_is_front_loaded_against_linear() -> None:
    cubic = scheduled_sparsity(2, 0.9, start=0, end=9, kind="cubic")
    linear = scheduled_sparsity(2, 0.9, start=0, end=9, kind="linear")
    assert cubic > linear


@pytest.mark.parametrize(
    ("max_epochs", "window"), [(1, (0, 0)), (2, (1, 1)), (10, (1, 7)), (30, (3, 20)), (100, (10, 67))]
)
def test_default_window(max_epochs: int, window: tuple[int, int]) -> None:
    assert default_window(max_epochs) == window


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 3, 1), r"`start_epoch` must be >= 0, got -1"),
        ((4, 3, 1), r"`end_epoch` must be >= `start_epoch`, got end_epoch=3 < start_epoch=4"),
        ((0, 3, 0), r"`frequency` must be >= 1, got 0"),
    ],
)
def test_bad_window(args: tuple[int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        event_epochs(*args, "cubic")


def test_default_window_needs_an_epoch() -> None:
    with pytest.raises(ValueError, match="`max_epochs` must be at least 1"):
        default_window(0)
