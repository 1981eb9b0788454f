from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import pytest
import torch
from torch import nn

from lightning_autoprune.core.selection import select_masks
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned import priors as priors_module
from lightning_autoprune.scoring.learned import steps
from lightning_autoprune.scoring.learned.steps import choose_step, step_loss


def network_inputs(min_density: float = 0.0) -> tuple[nn.Sequential, ScoreInputs]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    params = {"0.weight": cast(nn.Linear, net[0]).weight, "2.weight": cast(nn.Linear, net[2]).weight}

    def loss() -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(net(x), y).double())

    inputs = ScoreInputs(
        {n: p.detach() for n, p in params.items()},
        {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()},
        target_sparsity=0.6,
        params={n: p.data for n, p in params.items()},
        loss_fn=loss,
        min_density=min_density,
    )
    return net, inputs


@pytest.mark.parametrize("min_density", [0.0, 0.3])
def test_step_loss_is_the_loss_of_the_selected_masks_and_restores_the_weights(min_density: float) -> None:
    net, inputs = network_inputs(min_density)
    before = {n: p.clone() for n, p in net.state_dict().items()}
    scores = {n: w.abs() for n, w in inputs.weights.items()}
    measured = step_loss(scores, inputs)
    assert all(torch.equal(before[n], p) for n, p in net.state_dict().items())
    masks = select_masks(scores, inputs.masks, 0.6, min_density=min_density)
    with torch.no_grad():
        for name, mask in masks.items():
            inputs.params[name].mul_(mask)  # type: ignore[index]
    assert measured == inputs.loss_fn()  # type: ignore[misc]


def test_a_failing_loss_leaves_every_weight_bit_for_bit() -> None:
    w = {"a": torch.tensor([1.0, -0.0, float("nan"), 0.5, -3.0, 2.0]), "b": torch.tensor([-0.0, 4.0, 0.25, 1.5])}
    before = {n: t.clone() for n, t in w.items()}
    inputs = ScoreInputs(
        w, {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}, target_sparsity=0.5, params=w
    )

    def broken() -> float:
        assert any(bool((t == 0).any()) for t in w.values())  # the step's weights are zeroed now
        raise RuntimeError("calibration pass failed")

    inputs.loss_fn = broken
    scores = {"a": torch.arange(6.0), "b": torch.arange(4.0)}
    with pytest.raises(RuntimeError, match="calibration pass failed"):
        step_loss(scores, inputs)
    for name, tensor in w.items():  # bits, so -0.0 against 0.0 and NaN count
        assert torch.equal(tensor.view(torch.int32), before[name].view(torch.int32))


def test_restore_tries_every_tensor_before_raising() -> None:
    # Both kinds of restoring write: saved values put back at their mask, and a copy from the backup.
    good, bad = torch.zeros(4), torch.zeros(3)
    copied, bad_copy = torch.zeros(4), torch.zeros(3)
    gone = torch.tensor([True, False, True, False])
    undo = [
        functools.partial(bad.index_put_, (torch.tensor([True, True, False]),), torch.ones(5)),  # too many values
        functools.partial(bad_copy.copy_, torch.ones(5)),  # 5 values into 3: copy_ fails
        functools.partial(good.index_put_, (gone,), torch.tensor([7.0, 9.0])),
        functools.partial(copied.copy_, torch.tensor([7.0, 0.0, 9.0, 0.0])),
    ]
    with pytest.raises(RuntimeError):
        steps._restore(undo)
    assert good.tolist() == [7.0, 0.0, 9.0, 0.0]
    assert copied.tolist() == [7.0, 0.0, 9.0, 0.0]


@pytest.mark.parametrize(("copy_min", "copies"), [(50, 1), (71, 0)])
def test_sampled_cut_steps_are_restored_bit_for_bit_from_one_copy_or_from_saved_values(
    monkeypatch: pytest.MonkeyPatch, copy_min: int, copies: int
) -> None:
    # Both sampled-cut models; at 70 weights against COPY_MIN_WEIGHTS 50 every step is copied back from
    # one backup, against 71 each step's removed values are saved and put back.
    monkeypatch.setattr(priors_module, "CUT_SAMPLE", 50)
    monkeypatch.setattr(steps, "COPY_MIN_WEIGHTS", copy_min)
    g = torch.Generator().manual_seed(3)
    w = {"a": torch.randn(40, generator=g), "b": torch.randn(30, generator=g)}
    w["a"][:3] = torch.tensor([-0.0, float("nan"), 0.0])
    before = {n: t.clone() for n, t in w.items()}
    masks = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    inputs = ScoreInputs(w, masks, generator=g, target_sparsity=0.5, params=w)
    backups: list[dict[str, torch.Tensor]] = []
    real_backup = steps._backup

    def counted_backup(inputs: ScoreInputs) -> dict[str, torch.Tensor]:
        backups.append(real_backup(inputs))
        return backups[-1]

    monkeypatch.setattr(steps, "_backup", counted_backup)
    seen: list[int] = []

    def loss() -> float:
        seen.append(sum(int((t == 0).sum()) for t in w.values()))  # the step's weights are zeroed now
        if len(seen) == 3:
            raise RuntimeError("calibration pass failed")
        return float(w["a"].nan_to_num().abs().sum() + w["b"].abs().sum())

    inputs.loss_fn = loss
    candidates = {
        "magnitude": lambda name: w[name].nan_to_num().abs(),
        "first": lambda name: -torch.arange(float(w[name].numel())),
    }
    choice = choose_step(candidates, inputs)
    assert len(backups) == copies  # one copy for every candidate, or none
    assert all(count >= 35 for count in seen)  # about half of the 70 weights zeroed for each step
    assert choice.name in candidates
    for name, tensor in w.items():  # bits, so -0.0 against 0.0 and NaN count
        assert torch.equal(tensor.view(torch.int32), before[name].view(torch.int32))
    with pytest.raises(RuntimeError, match="calibration pass failed"):
        choose_step(candidates, inputs)
    for name, tensor in w.items():
        assert torch.equal(tensor.view(torch.int32), before[name].view(torch.int32))


def test_choose_step_keeps_the_lowest_loss_and_prefers_the_earlier_on_ties() -> None:
    _, inputs = network_inputs()
    magnitude = {n: w.abs() for n, w in inputs.weights.items()}
    reversed_ = {n: -w.abs() for n, w in inputs.weights.items()}
    choice = choose_step({"reversed": reversed_.__getitem__, "magnitude": magnitude.__getitem__}, inputs)
    assert choice.losses["magnitude"] < choice.losses["reversed"]
    assert choice.name == "magnitude"
    assert choice.scores == magnitude  # the winner's scores, tensor by tensor
    # Each candidate's allocation: the share of each tensor's kept weights its step removes.
    masks = select_masks(magnitude, inputs.masks, 0.6)
    expected = {n: float((~m).sum()) / m.numel() for n, m in masks.items()}
    assert choice.removed["magnitude"] == pytest.approx(expected)
    tie = choose_step({"first": magnitude.__getitem__, "second": dict(magnitude).__getitem__}, inputs)
    assert tie.name == "first"
    with pytest.raises(ValueError, match="`candidates` is empty"):
        choose_step({}, inputs)


def test_a_step_that_takes_a_layer_to_its_floor_is_passed_over_unless_every_step_would() -> None:
    _, inputs = network_inputs(min_density=0.25)  # floors: 12 of layer 0's 48 weights, 4 of layer 2's 16
    assert inputs.params is not None
    output = inputs.params["2.weight"]
    inputs.loss_fn = lambda: float(torch.count_nonzero(output))  # the loss rewards emptying the output layer
    empties = {n: w.abs() * (1.0 if n == "0.weight" else 1e-6) for n, w in inputs.weights.items()}
    spreads = {n: torch.linspace(0, 1, w.numel()).view_as(w) for n, w in inputs.weights.items()}  # 60% of each
    removed = steps.step_masks(empties, inputs)
    assert steps.collapsed_tensors(removed, inputs) == ["2.weight"]
    assert int(inputs.masks["2.weight"].sum()) - int(removed["2.weight"].sum()) == 4
    assert not steps.step_collapses(spreads, inputs)

    choice = choose_step({"empties": empties.__getitem__, "spreads": spreads.__getitem__}, inputs)
    assert choice.losses["empties"] < choice.losses["spreads"]
    assert (choice.name, choice.collapsing) == ("spreads", ("empties",))
    # The incumbent's margin does not protect a collapsing incumbent.
    kept = choose_step({"empties": empties.__getitem__, "spreads": spreads.__getitem__}, inputs, incumbent="empties")
    assert kept.name == "spreads"
    # When every step would, the loss decides, and no candidate is reported as passed over.
    also = {n: s * (1.0 if n == "0.weight" else 1e-3) for n, s in empties.items()}
    every = choose_step({"also": also.__getitem__, "empties": empties.__getitem__}, inputs)
    assert every.collapsing == ()
    assert every.name == min(every.losses, key=every.losses.__getitem__)


def test_an_unmeasured_step_replaces_a_collapsing_incumbent_in_the_last_measured_order() -> None:
    _, inputs = network_inputs(min_density=0.25)
    empties = {n: w.abs() * (1.0 if n == "0.weight" else 1e-6) for n, w in inputs.weights.items()}
    spreads = {n: torch.linspace(0, 1, w.numel()).view_as(w) for n, w in inputs.weights.items()}
    flipped = {n: -s for n, s in spreads.items()}
    candidates = {"empties": empties.__getitem__, "spreads": spreads.__getitem__, "flipped": flipped.__getitem__}
    name, scores, passed = steps.unmeasured_step(candidates, "spreads", inputs, {})
    assert (name, passed) == ("spreads", ())
    assert scores == spreads
    last = {"flipped": 0.1, "spreads": 0.2, "empties": 0.0}
    assert not steps.step_collapses(flipped, inputs)
    name, scores, passed = steps.unmeasured_step(candidates, "empties", inputs, last)
    assert (name, passed) == ("flipped", ("empties",))
    assert scores == flipped
    alone = {"empties": empties.__getitem__}
    name, scores, passed = steps.unmeasured_step(alone, "empties", inputs, last)
    assert (name, passed) == ("empties", ())
    assert scores == empties


def test_a_large_models_step_is_estimated_from_a_sample_within_a_few_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(priors_module, "CUT_SAMPLE", 2000)  # "large": more weights than the sample
    g = torch.Generator().manual_seed(0)
    scores = {"big": torch.rand(200, 200, generator=g), "small": torch.rand(10, 10, generator=g) * 0.01}
    masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    inputs = ScoreInputs(scores, masks, generator=g, target_sparsity=0.7, min_density=0.2)
    removed = steps.step_masks(scores, inputs)
    exact = select_masks(scores, masks, 0.7, min_density=0.2)
    exact_removed = sum(int((~m).sum()) for m in exact.values())
    assert abs(sum(int(r.sum()) for r in removed.values()) - exact_removed) <= 0.02 * exact_removed
    # The small tensor's scores are all below the cut: it keeps exactly its floor, its best weights.
    assert int((~removed["small"]).sum()) == 20
    assert torch.equal(~removed["small"], exact["small"].reshape(-1))


def test_an_incumbent_is_kept_unless_beaten_beyond_the_noise() -> None:
    w = {"a": torch.tensor([1.0, -3.0, 2.0, 0.5])}
    inputs = ScoreInputs(w, {"a": torch.ones(4, dtype=torch.bool)}, target_sparsity=0.5, params=w)
    inputs.loss_fn = lambda: 0.0
    candidates = {"magnitude": lambda name: w[name].abs(), "first": lambda name: -torch.arange(4.0)}

    def parts(noise: list[float]) -> Callable[[], list[float]]:
        # "first" removes weights 2 and 3 (a loss 2.0 lower than magnitude's step), plus per-part noise.
        return lambda: [float(w["a"][2:].abs().sum()) + n for n in noise]

    noisy = choose_step(candidates, inputs, parts=parts([0.0, 3.0, -3.0, 0.5]), incumbent="magnitude")
    assert noisy.losses["first"] < noisy.losses["magnitude"]
    # The same noise in both (paired): the gain is exactly 2.0 in every part, so "first" wins.
    assert noisy.name == "first"
    assert noisy.margin == 0.0

    flips = iter([0.0, 3.0, -3.0, 0.5, 3.0, 0.0, 0.5, -3.0])  # magnitude's parts, then first's

    def unpaired() -> list[float]:
        return [float(w["a"][2:].abs().sum()) + next(flips) for _ in range(4)]

    kept = choose_step(candidates, inputs, parts=unpaired, incumbent="magnitude")
    assert kept.losses["first"] < kept.losses["magnitude"]
    assert kept.name == "magnitude"  # a mean gain of 2.0 inside a margin of about 3.8
    assert kept.margin > 2.0


def test_a_step_scored_one_tensor_at_a_time_equals_the_step_of_all_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    scores = {"big": torch.rand(300, 100, generator=g), "small": torch.rand(20, 10, generator=g)}
    masks = {n: torch.rand(s.shape, generator=g) > 0.2 for n, s in scores.items()}
    inputs = ScoreInputs(scores, masks, generator=torch.Generator().manual_seed(0), target_sparsity=0.5)
    calls: list[str] = []

    def one_at_a_time(name: str) -> torch.Tensor:
        calls.append(name)
        return scores[name]

    exact = steps.step_masks(scores, inputs)
    assert all(torch.equal(steps.step_masks(one_at_a_time, inputs)[n], exact[n]) for n in scores)
    monkeypatch.setattr(priors_module, "CUT_SAMPLE", 2000)  # large: a sampled cut, each tensor scored twice
    calls.clear()
    inputs.generator = torch.Generator().manual_seed(0)
    sampled = steps.step_masks(one_at_a_time, inputs)
    inputs.generator = torch.Generator().manual_seed(0)
    assert all(torch.equal(sampled[n], m) for n, m in steps.step_masks(scores, inputs).items())
    assert sorted(calls) == ["big", "big", "small", "small"]
    # Scores that can be read at the sample's positions: the same step, each tensor scored once.
    calls.clear()
    inputs.generator = torch.Generator().manual_seed(0)
    readable = steps.SampledScores(one_at_a_time, lambda name, index: scores[name].reshape(-1)[index])
    assert all(torch.equal(sampled[n], m) for n, m in steps.step_masks(readable, inputs).items())
    assert sorted(calls) == ["big", "small"]


def test_a_large_model_at_high_sparsity_is_cut_from_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fewer kept weights than CUT_SAMPLE, more weights in all: the exact path would hold every
    # tensor's scores at once, so the step is scored one tensor at a time from a sampled cut.
    monkeypatch.setattr(priors_module, "CUT_SAMPLE", 2000)
    g = torch.Generator().manual_seed(2)
    scores = {"big": torch.rand(300, 100, generator=g), "small": torch.rand(20, 10, generator=g)}
    masks = {n: torch.rand(s.shape, generator=g) > 0.95 for n, s in scores.items()}
    inputs = ScoreInputs(scores, masks, generator=torch.Generator().manual_seed(0), target_sparsity=0.98)
    assert sum(inputs.kept.values()) < 2000 < sum(m.numel() for m in masks.values())
    calls: list[str] = []

    def one_at_a_time(name: str) -> torch.Tensor:
        calls.append(name)
        return scores[name]

    removed = steps.step_masks(one_at_a_time, inputs)
    assert sorted(calls) == ["big", "big", "small", "small"]  # the cut, then the masks: never all at once
    exact = select_masks(scores, masks, 0.98, min_density=inputs.min_density)
    exact_removed = sum(int((m & ~exact[n]).sum()) for n, m in masks.items())
    assert abs(sum(int(r.sum()) for r in removed.values()) - exact_removed) <= 0.02 * exact_removed
