"""The controllers decide with no Trainer: epochs, validation values and fake snapshot callables."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from lightning_autoprune.control.controller import FixedSchedule, Observation, ToleranceSearch


def make_search(window: tuple[int, int] = (2, 8), max_drop: float = 0.01) -> tuple[ToleranceSearch, list[bool]]:
    taken: list[bool] = []

    def snapshot(with_optimizers: bool) -> dict[str, Any]:
        taken.append(with_optimizers)
        return {"id": len(taken), "optimizers": with_optimizers}

    return ToleranceSearch(window, 1, max_drop, snapshot=snapshot), taken


def always(value: float) -> Any:
    return lambda: value


def test_fixed_schedule_reaches_its_target_at_the_end_and_holds() -> None:
    schedule = FixedSchedule(0.8, (1, 4), kind="cubic")
    targets = [schedule.target_for(epoch) for epoch in range(7)]
    assert targets[0] == 0.0
    assert targets[4] == pytest.approx(0.8)
    assert targets[5] == targets[6] == pytest.approx(0.8)
    assert targets == sorted(targets)


def test_fixed_schedule_is_not_due_once_the_masks_hold_the_target() -> None:
    schedule = FixedSchedule(0.5, (1, 1), kind="one_shot")
    assert schedule.due(1, progress=0.0, last_target=0.0)
    assert not schedule.due(2, progress=0.5, last_target=0.5)


def test_coarse_schedule_prunes_again_only_when_the_schedule_moves() -> None:
    schedule = FixedSchedule(0.5, (1, 1), kind="one_shot", coarse=True)
    # whole units stopped just below the target: a fine schedule would prune at every later epoch
    assert not schedule.due(2, progress=0.49, last_target=0.5)
    assert FixedSchedule(0.5, (1, 1), kind="one_shot").due(2, progress=0.49, last_target=0.5)


def test_dense_phase_sets_the_reference_and_takes_no_snapshot() -> None:
    search, taken = make_search(window=(3, 8))
    for epoch, value in enumerate([0.90, 0.95, 0.94]):
        search.on_validation(Observation(value, epoch, "max"), pruned=False)
    assert search.state.reference == 0.95
    assert taken == []


def test_a_step_snapshots_first_and_is_accepted_within_tolerance() -> None:
    search, taken = make_search()
    search.on_validation(Observation(0.95, 1, "max"), pruned=False)
    assert search.begin_epoch(2, ceiling=always(0.99)) == 0.5
    assert taken == [True]
    verdict = search.on_validation(Observation(0.945, 2, "max"), pruned=True)
    assert verdict.roll_back is None
    assert search.state.accepted == 0.5
    assert taken == [True, False], "an accepted state is kept as the latest in tolerance, without optimizers"


def test_a_broken_step_gets_a_recovery_epoch_then_rolls_back_to_its_snapshot() -> None:
    search, _ = make_search()
    search.on_validation(Observation(0.95, 1, "max"), pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    first = search.on_validation(Observation(0.90, 2, "max"), pruned=True)
    assert first.roll_back is None
    assert search.state.pending == 0.5
    assert search.begin_epoch(3, ceiling=always(0.99)) is None, "no new step while one awaits its decision"
    second = search.on_validation(Observation(0.90, 3, "max"), pruned=True)
    assert second.roll_back == {"id": 1, "optimizers": True}
    assert search.state.step == 0.25
    assert search.reuse_scores, "the restored state is the one the broken step scored"
    assert search.best_final is second.roll_back


def test_reference_missing_when_pruning_is_due_is_an_error() -> None:
    search, _ = make_search()
    with pytest.raises(ValueError, match="needs the monitored metric before pruning starts"):
        search.begin_epoch(2, ceiling=always(0.99))


def test_a_loss_monitor_in_min_mode_rolls_back_when_the_loss_rises() -> None:
    search, _ = make_search(max_drop=0.02)
    search.on_validation(Observation(0.50, 1, "min"), pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(Observation(0.515, 2, "min"), pruned=True)
    assert search.state.accepted == 0.5
    search.begin_epoch(3, ceiling=always(0.99))
    search.on_validation(Observation(0.60, 3, "min"), pruned=True)
    verdict = search.on_validation(Observation(0.60, 4, "min"), pruned=True)
    assert verdict.roll_back is not None


def test_the_window_end_stops_the_search() -> None:
    search, _ = make_search(window=(2, 3))
    search.on_validation(Observation(0.95, 1, "max"), pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(Observation(0.95, 2, "max"), pruned=True)
    search.begin_epoch(3, ceiling=always(0.99))
    search.on_validation(Observation(0.95, 3, "max"), pruned=True)
    assert search.state.done
    assert "window ended" in str(search.state.stop_reason)


def test_finish_restores_the_latest_state_within_tolerance() -> None:
    search, _ = make_search()
    search.on_validation(Observation(0.95, 1, "max"), pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    search.on_validation(Observation(0.95, 2, "max"), pruned=True)
    kept = search.best_final
    search.last_value = 0.80  # a later validation broke the tolerance
    broken, restore = search.finish(9, "max")
    assert broken
    assert restore is kept
    assert search.state.stop_reason == "training ended"


def test_state_round_trips_with_the_pending_snapshot() -> None:
    search, _ = make_search()
    search.on_validation(Observation(0.95, 1, "max"), pruned=False)
    search.begin_epoch(2, ceiling=always(0.99))
    state = search.state_dict()
    assert state["snapshot"] == {"id": 1, "optimizers": True}
    fresh, _ = make_search()
    fresh.load_state_dict(state, devices={})
    assert fresh.state == search.state
    assert fresh.snapshot == search.snapshot


def test_a_given_reference_is_kept_through_the_dense_phase() -> None:
    search = ToleranceSearch((3, 8), 1, 0.01, snapshot=lambda with_optimizers: {}, reference=0.97)
    for epoch, value in enumerate([0.90, 0.99, 0.95]):
        search.on_validation(Observation(value, epoch, "max"), pruned=False)
    assert search.state.reference == 0.97


def plateau_search(window: tuple[int, int] = (4, 23), reference: float | None = None) -> ToleranceSearch:
    return ToleranceSearch(
        window,
        1,
        0.01,
        snapshot=lambda with_optimizers: {"optimizers": with_optimizers},
        reference=reference,
        wait_for_plateau=True,
    )


def test_the_search_starts_after_the_plateau_not_at_the_window_start() -> None:
    search = plateau_search()
    climbing = [0.60, 0.80, 0.88, 0.92, 0.94, 0.955, 0.962, 0.963, 0.961]
    for epoch, value in enumerate(climbing):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
        assert search.begin_epoch(epoch + 1, ceiling=always(0.99)) is None, "still climbing: no pruning"
    for epoch, value in enumerate([0.962, 0.963], start=len(climbing)):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    # epoch 10: the mean of 0.961, 0.962, 0.963 gains 0.2 point (< a quarter of 1 point) on 0.955, 0.962, 0.963
    assert search.state.start_epoch == 11
    assert search.state.reference == pytest.approx((0.961 + 0.962 + 0.963) / 3)
    assert search.state.reference_epochs == (8, 10)
    assert 0 < search.state.margin <= 0.005
    assert search.take_warnings() == [], "room enough, validation large enough, far from chance"
    assert search.begin_epoch(11, ceiling=always(0.99)) == 0.5


def test_a_plateau_late_in_the_run_warns_about_the_room_left() -> None:
    search = plateau_search(window=(6, 9))  # max_epochs=12: a fine-tune plateaus at once, yet 4 epochs are few
    for epoch, value in enumerate([0.95, 0.951, 0.95, 0.952, 0.95, 0.951]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.start_epoch == 6
    (warning,) = search.take_warnings()
    assert "dense phase used 6 epochs" in warning
    assert "leaves 4 epoch(s) for the search before `end_epoch`=9" in warning


def test_a_metric_still_improving_starts_the_search_in_time_and_says_so() -> None:
    search = plateau_search(window=(4, 9))
    for epoch in range(4):  # 0.5, 0.6, 0.7, 0.8
        search.on_validation(Observation(0.5 + 0.1 * epoch, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.start_epoch == 4, "the latest start leaves ROOM_EPOCHS before the window's end"
    warning = next(w for w in search.take_warnings() if "still improving" in w)
    assert "still improving at epoch 3; the search starts at epoch 4 anyway" in warning
    assert "leave 6 epoch(s)" in warning


def test_a_trend_whose_uncertainty_the_margin_covers_says_so() -> None:
    search = ToleranceSearch((4, 9), 1, 0.2, snapshot=lambda with_optimizers: {}, wait_for_plateau=True)
    for epoch, value in enumerate([0.80, 0.84, 0.87, 0.90, 0.92]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.reference_rule == "trend"
    assert 0 < search.state.trend_uncertainty <= search.state.margin < 0.1, "covered, under the cap"
    warning = next(w for w in search.take_warnings() if "still improving" in w)
    assert f"so every step keeps a margin of {search.state.margin:.4g} from `max_metric_drop`=0.2." in warning


def test_under_a_dense_trend_a_rollback_keeps_the_training_and_judges_by_the_moving_reference() -> None:
    search = plateau_search(window=(4, 9))
    for epoch, value in enumerate([0.80, 0.84, 0.87, 0.90, 0.92]):  # still climbing 2-3 points per epoch
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.reference_rule == "trend"
    warning = next(w for w in search.take_warnings() if "still improving" in w)
    assert "The reference follows the dense trend" in warning
    assert "further ahead by epoch 9" in warning, "the horizon defaults to the window's end"
    assert search.state.margin == pytest.approx(0.005), "the prediction's uncertainty, capped at half the tolerance"
    assert search.state.trend_uncertainty > search.state.margin
    # The cap leaves part of the uncertainty uncovered, and the warning says so instead of promising a margin.
    assert "more than the margin of 0.005 a step can keep from `max_metric_drop`=0.01 (half of it)" in warning
    assert "every step keeps a margin" not in warning
    assert "pass `reference=`" in warning
    assert search.begin_epoch(4, ceiling=always(0.99)) == 0.5
    search.on_validation(Observation(0.90, 4, "max", "val_acc", 5000), pruned=True)  # one more epoch
    verdict = search.on_validation(Observation(0.905, 5, "max", "val_acc", 5000), pruned=True)
    (decision,) = [d for d in search.state.decisions if d["decision"] == "rollback"]
    assert decision["reference"] > 0.93, "judged against where the dense model would be at epoch 5"
    assert verdict.roll_back is not None
    assert verdict.keep_training, "the dense model would have kept learning: only the step is undone"
    assert search.reuse_scores, "the regrown weights are back at zero: the broken step's scores still rank them"
    # At fit end a state judged against an earlier, lower reference is not brought back if it is worse.
    search.best_final = {"epoch": 3, "value": 0.89}
    search.on_validation(Observation(0.91, 9, "max", "val_acc", 5000), pruned=True)
    broken, restore = search.finish(10, "max")
    assert broken
    assert restore is None
    assert search.state.final_reference is not None
    assert search.state.final_reference > decision["reference"]


def test_a_reference_at_chance_level_stops_the_search_before_it_starts() -> None:
    search = plateau_search()
    labels = {digit: 36 for digit in range(10)}
    for epoch, value in enumerate([0.10, 0.11, 0.10, 0.10, 0.11, 0.10]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 360, labels), pruned=False)
    assert search.state.done
    assert "chance level" in str(search.state.stop_reason)
    assert any("no better than chance (0.1000" in w for w in search.take_warnings())
    assert search.begin_epoch(search.state.start_epoch or 5, ceiling=always(0.99)) is None


def test_a_small_validation_set_warns_once_the_reference_is_known() -> None:
    search = plateau_search()
    for epoch, value in enumerate([0.96, 0.97, 0.97, 0.965, 0.97, 0.968]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 128), pruned=False)
    assert any("comes from 128 samples" in w for w in search.take_warnings())


def test_an_unsteady_plateau_takes_its_best_value_and_says_why() -> None:
    search = plateau_search()
    for epoch, value in enumerate([0.97, 0.99, 0.95, 0.985, 0.93, 0.99]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.start_epoch == 6
    assert search.state.reference == 0.99
    (warning,) = search.take_warnings()
    assert "val_acc is unsteady at the dense plateau: epochs 3-5 gave 0.9850, 0.9300, 0.9900" in warning
    assert "standard deviation 0.0333" in warning
    assert "the reference is their best value, 0.9900" in warning


def test_a_given_reference_still_waits_for_the_plateau_and_is_kept() -> None:
    search = plateau_search(reference=0.97)
    for epoch, value in enumerate([0.95, 0.951, 0.95, 0.952, 0.951, 0.95]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.start_epoch == 6, "a fine-tuned model plateaus at once: after 2 x 3 validations"
    assert search.state.reference == 0.97
    assert search.state.reference_epochs is None


def test_a_loss_monitor_plateaus_and_keeps_its_margin_in_nats() -> None:
    search = ToleranceSearch((4, 23), 1, 0.02, snapshot=lambda with_optimizers: {}, wait_for_plateau=True)
    for epoch, value in enumerate([2.0, 1.5, 1.3, 1.29, 1.3, 1.295, 1.29, 1.3]):
        search.on_validation(Observation(value, epoch, "min", "val_loss"), pruned=False)
    assert search.state.start_epoch == 8
    assert search.state.reference == pytest.approx(1.295)
    assert search.state.margin == pytest.approx(statistics.stdev([1.295, 1.29, 1.3]))
    assert search.begin_epoch(8, ceiling=always(0.99)) == 0.5
    search.on_validation(Observation(1.30, 8, "min", "val_loss"), pruned=True)
    assert search.state.accepted == 0.5


LABELS = {0: 90, 1: 110, 2: 800}  # chance level 0.8 on 1,000 validation samples


def test_a_default_start_waits_until_the_accuracy_leaves_chance_level() -> None:
    schedule = FixedSchedule(0.9, (2, 6), kind="linear", wait_for_learning=True, max_drop=0.01)
    assert schedule.waiting
    for epoch in range(4):  # at chance: 0.80 and 0.82 are within two standard errors (0.0126) of it
        assert schedule.observe(Observation(0.80 + 0.005 * (epoch % 2), epoch, "max", "val_acc", 1000, LABELS)) is None
        schedule.begin_epoch(epoch + 1)
        assert schedule.target_for(epoch + 1) == 0.0
    assert schedule.observe(Observation(0.9, 4, "max", "val_acc", 1000, LABELS)) == 5
    assert [round(schedule.target_for(e), 2) for e in range(4, 8)] == [0.0, 0.45, 0.9, 0.9]
    restored = FixedSchedule(0.9, (2, 6), kind="linear", wait_for_learning=True)
    restored.load_state_dict(schedule.state_dict(), {})
    assert restored.started_at == 5


def test_a_metric_that_moves_early_starts_the_schedule_at_its_start() -> None:
    schedule = FixedSchedule(0.9, (2, 6), wait_for_learning=True)
    assert schedule.observe(Observation(0.95, 0, "max", "val_acc", 1000, LABELS)) == 2
    assert schedule.effective_window() == (2, 6)


def test_a_loss_monitor_moves_when_it_improves_on_its_first_value() -> None:
    schedule = FixedSchedule(0.9, (1, 6), wait_for_learning=True, max_drop=0.02)
    assert schedule.observe(Observation(2.30, 0, "min", "val_loss")) is None
    assert schedule.observe(Observation(2.29, 1, "min", "val_loss")) is None  # within max_drop
    assert schedule.observe(Observation(2.10, 2, "min", "val_loss")) == 3


def test_without_any_validation_the_schedule_starts_at_its_start_and_a_stuck_metric_at_its_end() -> None:
    blind = FixedSchedule(0.9, (2, 6), wait_for_learning=True)
    blind.begin_epoch(1)
    assert blind.waiting
    blind.begin_epoch(2)
    assert blind.effective_window() == (2, 6)
    stuck = FixedSchedule(0.9, (2, 6), kind="linear", wait_for_learning=True)
    stuck.observe(Observation(0.8, 0, "max", "val_acc", 1000, LABELS))
    stuck.begin_epoch(5)
    assert stuck.waiting
    assert stuck.target_for(5) == 0.0
    assert stuck.target_for(6) == pytest.approx(0.9)  # one step at the window's end


def test_a_caller_that_cannot_regrow_gets_whole_rollbacks_under_a_trend() -> None:
    search = ToleranceSearch(
        (4, 9), 1, 0.01, snapshot=lambda with_optimizers: {"n": 0}, wait_for_plateau=True, regrow=False
    )
    for epoch, value in enumerate([0.80, 0.84, 0.87, 0.90, 0.92]):
        search.on_validation(Observation(value, epoch, "max", "val_acc", 5000), pruned=False)
    assert search.state.reference_rule == "trend"
    search.begin_epoch(4, ceiling=always(0.99))
    search.on_validation(Observation(0.90, 4, "max", "val_acc", 5000), pruned=True)
    verdict = search.on_validation(Observation(0.905, 5, "max", "val_acc", 5000), pruned=True)
    assert verdict.roll_back is not None
    assert not verdict.keep_training
    assert search.reuse_scores, "a whole rollback restores the state the step was scored at"
