"""The controllers decide with no Trainer: epochs, validation values and fake snapshot callables."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_autoprune.control.controller import FixedSchedule, ToleranceSearch


def make_search(window: tuple[int, int] = (2, 8), max_drop: float = 0.01) -> tuple[ToleranceSearch, list[bool]]:
    taken: list[bool] = []

    def snapshot(with_optimizers: bool) -> dict[str, Any]:
        taken.append(with_optimizers)
        return {"id": len(taken), "optimizers": with_optimizers}

    return ToleranceSearch(window, 1, max_drop, snapshot=snapshot), taken


def always(value: float) -> Any:
    return lambda: value


def test_fixed_schedule_reaches_its_target_at_the_end_and_holds():
    schedule = FixedSchedule(0.8, (1, 4), kind="cubic")
    targets = [schedule.target_for(epoch) for epoch in range(7)]
    assert targets[0] == 0.0
    assert targets[4] == pytest.approx(0.8)
    assert targets[5] == targets[6] == pytest.approx(0.8)
    assert targets == sorted(targets)


def test_fixed_schedule_is_not_due_once_the_masks_hold_the_target():
    schedule = FixedSchedule(0.5, (1, 1), kind="one_shot")
    assert schedule.due(1, progress=0.0, last_target=0.0)
    assert not schedule.due(2, progress=0.5, last_target=0.5)


def test_coarse_schedule_prunes_again_only_when_the_schedule_moves():
    schedule = FixedSchedule(0.5, (1, 1), kind="one_shot", coarse=True)
    # whole units stopped just below the target: a fine schedule would prune at every later epoch
    assert not schedule.due(2, progress=0.49, last_target=0.5)
    assert FixedSchedule(0.5, (1, 1), kind="one_shot").due(2, progress=0.49, last_target=0.5)


def test_dense_phase_sets_the_reference_and_takes_no_snapshot():
    search, taken = make_search(window=(3, 8))
    for epoch, value in enumerate([0.90, 0.95, 0.94]):
        search.on_validation(value, epoch=epoch, mode="max", pruned=False)
    assert search.state.reference == 0.95
    assert taken == []


def test_a_step_snapshots_first_and_is_accepted_within_tolerance():
    search, taken = make_search()
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    assert search.begin_epoch(2, ceiling=always(0.99)) == 0.5
    assert taken == [True]
    verdict = search.on_validation(0.945, epoch=2, mode="max", pruned=True)
    assert verdict.roll_back is None
    assert search.state.accepted == 0.5
    assert taken == [True, False], "an accepted state is kept as the latest in tolerance, without optimizers"


def test_a_broken_step_gets_a_recovery_epoch_then_rolls_back_to_its_snapshot():
    search, _ = make_search()
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    first = search.on_validation(0.90, epoch=2, mode="max", pruned=True)
    assert first.roll_back is None
    assert search.state.pending == 0.5
    assert search.begin_epoch(3, ceiling=always(0.99)) is None, "no new step while one awaits its decision"
    second = search.on_validation(0.90, epoch=3, mode="max", pruned=True)
    assert second.roll_back == {"id": 1, "optimizers": True}
    assert search.state.step == 0.25
    assert search.reuse_scores, "the restored state is the one the broken step scored"
    assert search.best_final is second.roll_back


def test_reference_missing_when_pruning_is_due_is_an_error():
    search, _ = make_search()
    with pytest.raises(ValueError, match="needs the monitored metric before pruning starts"):
        search.begin_epoch(2, ceiling=always(0.99))


def test_the_first_step_runs_the_noise_check_once():
    search, _ = make_search()
    calls: list[int] = []
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99), before_first_step=lambda: calls.append(2))
    search.on_validation(0.95, epoch=2, mode="max", pruned=True)
    search.begin_epoch(3, ceiling=always(0.99), before_first_step=lambda: calls.append(3))
    assert calls == [2]


def test_a_loss_monitor_in_min_mode_rolls_back_when_the_loss_rises():
    search, _ = make_search(max_drop=0.02)
    search.on_validation(0.50, epoch=1, mode="min", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(0.515, epoch=2, mode="min", pruned=True)
    assert search.state.accepted == 0.5
    search.begin_epoch(3, ceiling=always(0.99))
    search.on_validation(0.60, epoch=3, mode="min", pruned=True)
    verdict = search.on_validation(0.60, epoch=4, mode="min", pruned=True)
    assert verdict.roll_back is not None


def test_the_window_end_stops_the_search():
    search, _ = make_search(window=(2, 3))
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(0.95, epoch=2, mode="max", pruned=True)
    search.begin_epoch(3, ceiling=always(0.99))
    search.on_validation(0.95, epoch=3, mode="max", pruned=True)
    assert search.state.done
    assert "window ended" in str(search.state.stop_reason)


def test_finish_restores_the_latest_state_within_tolerance():
    search, _ = make_search()
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(0.95, epoch=2, mode="max", pruned=True)
    kept = search.best_final
    search.last_value = 0.80  # a later validation broke the tolerance
    broken, restore = search.finish(9, "max")
    assert broken
    assert restore is kept
    assert search.state.stop_reason == "training ended"


def test_state_round_trips_with_the_pending_snapshot():
    search, _ = make_search()
    search.on_validation(0.95, epoch=1, mode="max", pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    state = search.state_dict()
    assert state["snapshot"] == {"id": 1, "optimizers": True}
    fresh, _ = make_search()
    fresh.load_state_dict(state, devices={})
    assert fresh.state == search.state
    assert fresh.snapshot == search.snapshot


def test_a_given_reference_is_kept_through_the_dense_phase():
    search = ToleranceSearch((3, 8), 1, 0.01, snapshot=lambda with_optimizers: {}, reference=0.97)
    for epoch, value in enumerate([0.90, 0.99, 0.95]):
        search.on_validation(value, epoch=epoch, mode="max", pruned=False)
    assert search.state.reference == 0.97


def test_the_noise_warning_needs_a_reference_and_too_few_samples():
    search, _ = make_search(max_drop=0.01)
    assert search.noise_warning("val_acc", "max", 360) is None  # no reference yet
    search.on_validation(0.97, epoch=0, mode="max", pruned=False)
    message = search.noise_warning("val_acc", "max", 360)
    assert message is not None
    assert "comes from 360 samples" in message
    assert search.noise_warning("val_acc", "max", 1_000_000) is None
