"""The pruning engine on plain torch modules and optimizers: no Trainer."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.targets import resolve_targets


def make_engine(track: bool = False) -> tuple[nn.Sequential, PruningEngine]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, PruningEngine(resolve_targets(model, None, None), WeightSelector(0.0), track_trajectory=track)


def train_steps(model: nn.Module, engine: PruningEngine, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(32, 8)).pow(2).mean().backward()
        engine.before_optimizer_step()
        optimizer.step()


def test_applied_masks_zero_weights_and_optimizer_buffers() -> None:
    model, engine = make_engine()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine.start([optimizer])
    train_steps(model, engine, optimizer, 2)
    new = engine.select({n: w.abs() for n, w in engine.weights.items()}, 0.75)
    engine.apply(new, [optimizer])
    weight = cast(nn.Linear, model[0]).weight
    assert bool((weight[~engine.masks["0.weight"]] == 0).all())
    assert bool((optimizer.state[weight]["exp_avg"][~engine.masks["0.weight"]] == 0).all())
    assert engine.sparsity() == engine.mask_progress()


def test_regrow_undoes_a_step_at_zero_and_keeps_the_training_since() -> None:
    model, engine = make_engine()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    engine.start([optimizer])
    engine.apply(engine.select({n: w.abs() for n, w in engine.weights.items()}, 0.5), [optimizer])
    train_steps(model, engine, optimizer, 2)
    masks = {name: mask.clone() for name, mask in engine.masks.items()}
    engine.apply(engine.select({n: w.abs() for n, w in engine.weights.items()}, 0.8), [optimizer])
    train_steps(model, engine, optimizer, 3)
    trained = cast(nn.Linear, model[0]).weight.detach().clone()
    x = torch.randn(16, 8)
    with torch.no_grad():
        out_before = model(x)
    engine.regrow(masks)
    weight, kept_both = cast(nn.Linear, model[0]).weight, masks["0.weight"] & (trained != 0)
    assert torch.equal(engine.masks["0.weight"], masks["0.weight"])
    assert torch.equal(weight[kept_both], trained[kept_both]), "weights both masks keep keep their training"
    removed = masks["0.weight"] & (trained == 0)
    assert bool(removed.any())
    assert bool((weight[removed] == 0).all()), "the step's removals come back at zero"
    with torch.no_grad():
        assert torch.equal(model(x), out_before), "regrowing at zero leaves the function unchanged"
    for key in ("exp_avg", "exp_avg_sq"):
        assert bool((optimizer.state[weight][key][removed] == 0).all()), f"{key} stays as zeroed while pruned"
    # A unit whose outgoing weights all came back at zero passes no gradient to its incoming ones
    # until those move, so the first layer's regrown weights start training on the second step.
    train_steps(model, engine, optimizer, 2)
    assert bool((cast(nn.Linear, model[0]).weight[removed] != 0).any()), "regrown weights train again"


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(["adam", "sgd"]), st.floats(0.1, 0.95))
def test_pruned_weights_stay_exactly_zero_through_optimizer_steps(kind: str, target: float) -> None:
    model, engine = make_engine()
    if kind == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-3)
    engine.start([optimizer])
    train_steps(model, engine, optimizer, 1)
    engine.apply(engine.select({n: w.abs() for n, w in engine.weights.items()}, target), [optimizer])
    before = {n: m.clone() for n, m in engine.masks.items()}
    train_steps(model, engine, optimizer, 3)
    for target_ in engine.targets:
        param = target_.param.detach()
        assert bool((param[~before[target_.name]] == 0).all())
        assert not bool(torch.signbit(param[~before[target_.name]]).any()), "pruned weights are +0.0"
    engine.stop()


def test_masks_never_unprune_when_scores_change() -> None:
    _model, engine = make_engine()
    engine.apply(engine.select({n: w.abs() for n, w in engine.weights.items()}, 0.5), [])
    first = {n: m.clone() for n, m in engine.masks.items()}
    flipped = {n: -w.abs() for n, w in engine.weights.items()}
    engine.apply(engine.select(flipped, 0.7), [])
    for name, mask in engine.masks.items():
        assert not bool((mask & ~first[name]).any())


def test_movement_accumulates_and_resets() -> None:
    model, engine = make_engine(track=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    engine.start([optimizer])
    assert set(engine.initial_weights) == {"0.weight", "2.weight"}
    train_steps(model, engine, optimizer, 2)
    assert float(engine.movement["0.weight"].abs().sum()) > 0
    engine.reset_movement()
    assert float(engine.movement["0.weight"].abs().sum()) == 0


def test_state_round_trips_into_a_fresh_engine() -> None:
    _model, engine = make_engine(track=True)
    engine.start([])
    engine.apply(engine.select({n: w.abs() for n, w in engine.weights.items()}, 0.6), [])
    state = engine.state_dict()
    _, fresh = make_engine()
    fresh.load_state_dict(state)
    for name in engine.masks:
        assert torch.equal(fresh.masks[name], engine.masks[name])
    assert set(fresh.initial_weights) == set(engine.initial_weights)


def test_masks_of_another_model_are_refused_with_both_shapes() -> None:
    _, engine = make_engine()
    state = engine.state_dict()
    other = nn.Sequential(nn.Linear(8, 3))
    foreign = PruningEngine(resolve_targets(other, None, None), WeightSelector(0.0))
    with pytest.raises(ValueError, match=r"do not fit this model.*\(3, 8\)"):
        foreign.load_state_dict(state)


def test_feasible_ceiling_respects_the_floors() -> None:
    _, engine = make_engine()
    total = 8 * 16 + 16 * 4
    assert engine.feasible_ceiling(0.0) == 1.0 - 1 / total
    assert engine.feasible_ceiling(0.5) < 0.5
