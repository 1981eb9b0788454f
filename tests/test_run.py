"""A pruning run's parts and history, without a Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoprune.config import make_config
from lightning_autoprune.control.controller import Observation
from lightning_autoprune.core.targets import resolve_targets
from lightning_autoprune.run import STATE_VERSION, PruningRun, check_state_version
from lightning_autoprune.scoring import make_scorer
from tests.conftest import plain_access


def started(**arguments: object) -> tuple[nn.Module, PruningRun]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2))
    config = make_config(importance="magnitude", **arguments)
    run = PruningRun(config, make_scorer("magnitude"))
    run.start(resolve_targets(model, None, None), max_epochs=6, snapshot=lambda with_optimizers: {"epoch": 0})
    return model, run


def test_a_fixed_run_is_due_on_its_schedule_and_records_events() -> None:
    _, run = started(target_sparsity=0.6, schedule="linear", start_epoch=1, end_epoch=3)
    scheduled, target = run.epoch_target(1)
    assert target == scheduled
    assert scheduled == pytest.approx(0.2)
    masks = run.engine.select({n: w.abs() for n, w in run.engine.weights.items()}, target)
    run.apply(1, target, masks, [], metric_before=0.9)
    assert run.history[-1]["sparsity"] == run.sparsity()
    event, decisions = run.end_epoch(1, value=0.91)
    assert event is run.history[-1]
    assert event["metric_after"] == 0.91
    assert decisions == []
    assert run.timeline[-1]["target"] == 0.6


def test_the_automatic_run_has_a_search_and_shows_its_target() -> None:
    _, run = started()
    assert run.search is not None
    assert run.shown_target() == 0.0
    assert run.epoch_target(0) == (0.0, None)  # the dense phase


def test_state_round_trips_into_a_fresh_run() -> None:
    _, run = started(target_sparsity=0.5, start_epoch=1, end_epoch=1)
    masks = run.engine.select({n: w.abs() for n, w in run.engine.weights.items()}, 0.5)
    run.apply(1, 0.5, masks, [], metric_before=None)
    run.end_epoch(1, None)
    state = run.state_dict()
    check_state_version(state)
    assert state["version"] == STATE_VERSION
    _, fresh = started(target_sparsity=0.5, start_epoch=1, end_epoch=1)
    fresh.load_state_dict(state)
    assert fresh.history == run.history
    assert fresh.timeline == run.timeline
    assert all(torch.equal(fresh.engine.masks[n], m) for n, m in run.engine.masks.items())
    assert torch.equal(fresh.generator.get_state(), run.generator.get_state())


def test_a_newer_state_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="upgrade lightning_autoprune"):
        check_state_version({"version": STATE_VERSION + 1})


def test_a_run_pickles_with_its_generator() -> None:
    import pickle

    _, run = started(target_sparsity=0.5)
    run.generator.manual_seed(7)
    copy = pickle.loads(pickle.dumps(run))
    assert torch.equal(copy.generator.get_state(), run.generator.get_state())


def alone(compute, state):  # type: ignore[no-untyped-def]
    """The single-process exchange: compute here, share with nobody."""
    return compute(), state()


def test_an_event_installs_its_masks_records_the_metric_and_times_itself() -> None:
    model, run = started(target_sparsity=0.5, start_epoch=1, end_epoch=1)
    event = run.prune(plain_access(model, 6, 2), 1, 0.5, [], metric_before=lambda: 0.8, exchange=alone)
    assert event is run.history[-1]
    assert event["metric_before"] == 0.8
    assert event["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert run.sparsity() == event["sparsity"]
    assert run.seconds_pruning > 0


def test_a_failing_event_names_the_epoch_target_and_tensors() -> None:
    model, run = started(target_sparsity=0.5, start_epoch=1, end_epoch=1)

    def broken(compute, state):  # type: ignore[no-untyped-def]
        raise OSError("disk gone")

    with pytest.raises(RuntimeError, match=r"epoch 3 towards sparsity 0.5000 .*0.weight, 2.weight\): disk gone"):
        run.prune(plain_access(model, 6, 2), 3, 0.5, [], metric_before=lambda: None, exchange=broken)
    assert run.history == []


def test_finishing_the_search_says_where_it_ended() -> None:
    model, run = started(verbose=True)
    search = run.search
    assert search is not None
    search.on_validation(Observation(0.9, 0, "max"), pruned=False)
    lines, warning = run.finish_search(1, "max", "val_acc", model)
    assert warning is None
    assert lines[-1].startswith("automatic mode finished at sparsity 0.0000")
    assert "dense reference 0.9000" in lines[-1]
    quiet_model, quiet = started(verbose=False)
    assert quiet.finish_search(1, None, "val_acc", quiet_model) == ([], None)
