from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_autoprune.core import calibration
from lightning_autoprune.core.replay import DELTA_MIN_INPUTS, LayerReplay
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned import labels
from lightning_autoprune.scoring.learned.labels import Group, ablation_labels, frontier_groups, step_size
from lightning_autoprune.scoring.learned.priors import PriorScores, frontier_bands


def test_step_size_counts_only_weights_still_kept() -> None:
    masks = {"a": torch.tensor([True, False, True, True]), "b": torch.ones(4, dtype=torch.bool)}
    assert step_size(masks, 0.5) == 3  # 4 of 8 to prune, 1 already pruned
    assert step_size(masks, 0.1) == 0


def bands_of(prior: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
    inputs = ScoreInputs(prior, masks)
    priors = PriorScores(inputs)
    return frontier_bands(priors, "magnitude", masks, target, torch.Generator(), window=2.0, max_rows=10**6)


def test_frontier_groups_are_stratified_kept_and_near_the_frontier() -> None:
    prior = {"a": torch.arange(100.0), "b": torch.arange(50.0)}
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in prior.items()}
    masks["a"][:10] = False  # already pruned: never drawn
    bands = bands_of(prior, masks, 0.3)
    groups = frontier_groups(bands, masks, 0.3, 16, torch.Generator().manual_seed(0), bins=4)
    assert len(groups) == 16
    assert {g.name for g in groups} == {"a", "b"}
    assert sorted({g.stratum for g in groups}) == [0, 1, 2, 3]
    # 45 - 10 = 35 of 140 kept go: p = 0.25, so each band is the lowest half of its tensor's kept
    # weights, and a group is at most half a bin: 1/16 of the tensor's kept weights.
    for g in groups:
        assert bool(masks[g.name][g.index].all())
        assert len(g.index) == round(int(masks[g.name].sum()) / 16)
        kept_sorted = prior[g.name][masks[g.name]]
        limit = kept_sorted[int(0.5 * len(kept_sorted))]
        assert bool((prior[g.name][g.index] <= limit).all())
    # Higher strata hold higher prior scores, and the groups of one bin are different draws.
    lowest = max(float(prior["a"][g.index].max()) for g in groups if g.name == "a" and g.stratum == 0)
    highest = min(float(prior["a"][g.index].min()) for g in groups if g.name == "a" and g.stratum == 3)
    assert lowest < highest
    first_bin = [tuple(g.index.tolist()) for g in groups if g.name == "a" and g.stratum == 0]
    assert len(set(first_bin)) == len(first_bin) == 2


def test_frontier_groups_are_reproducible_from_the_generator() -> None:
    prior = {"a": torch.rand(200, generator=torch.Generator().manual_seed(1))}
    masks = {"a": torch.ones(200, dtype=torch.bool)}
    bands = bands_of(prior, masks, 0.5)
    first = frontier_groups(bands, masks, 0.5, 8, torch.Generator().manual_seed(3))
    second = frontier_groups(bands, masks, 0.5, 8, torch.Generator().manual_seed(3))
    assert all(torch.equal(a.index, b.index) for a, b in zip(first, second, strict=True))
    assert frontier_groups(bands, masks, 0.0, 8, torch.Generator()) == []
    with pytest.raises(ValueError, match="`label_groups` must be >= 1, got 0"):
        frontier_groups(bands, masks, 0.5, 0, torch.Generator())


def test_a_drawn_group_gives_the_same_indices_at_every_access_and_moves_the_generator_on() -> None:
    # Groups keep their draw, not their indices (an event never holds every group's indices):
    # each access gives the same sorted, kept, in-band entries, and the shared generator ends
    # where one randperm per group leaves it, so later draws of the event are unchanged.
    prior = {"a": torch.rand(300, generator=torch.Generator().manual_seed(1))}
    masks = {"a": torch.ones(300, dtype=torch.bool)}
    bands = bands_of(prior, masks, 0.5)
    generator = torch.Generator().manual_seed(3)
    groups = frontier_groups(bands, masks, 0.5, 8, generator, bins=2)
    replayed = torch.Generator().manual_seed(3)
    edges = torch.linspace(0, len(bands["a"]), 3).round().long().tolist()
    for group in groups:
        members = bands["a"][edges[group.stratum] : edges[group.stratum + 1]]
        eager = members[torch.randperm(len(members), generator=replayed)[: group.size]].sort().values
        assert torch.equal(group.index, eager)
        assert torch.equal(group.index, group.index)
    assert torch.equal(generator.get_state(), replayed.get_state())
    params = {"a": prior["a"].clone()}
    ablations = labels._Ablations(groups, params)
    assert [positions.tolist() for ((_, positions),) in ablations[2:4]] == [g.index.tolist() for g in groups[2:4]]


def test_labels_reproduce_a_direct_ablation() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))

    def loss() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(net(x).double(), y))

    params = {"first": net.get_parameter("0.weight"), "second": net.get_parameter("2.weight")}
    before = {k: p.detach().clone() for k, p in params.items()}
    groups = [Group("first", torch.tensor([0, 5, 17, 40]), 0), Group("second", torch.tensor([3, 9]), 1)]
    labels = ablation_labels(groups, params, loss)
    assert labels.dtype.name == "float64"
    # The same ablations, done by hand on copies of the network.
    base = loss()
    for group, label in zip(groups, labels, strict=True):
        with torch.no_grad():
            params[group.name].view(-1)[group.index] = 0
        expected = (loss() - base) / len(group.index)
        with torch.no_grad():
            params[group.name].copy_(before[group.name])
        assert label == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert all(torch.equal(p, before[k]) for k, p in params.items())


def test_long_ablations_report_progress_and_short_ones_stay_quiet() -> None:
    import time

    params = {"w": torch.ones(8)}
    groups = [Group("w", torch.tensor([i]), 0) for i in range(6)]

    def slow_loss() -> float:
        time.sleep(0.02)
        return float(params["w"].sum())

    calls: list[tuple[int, int]] = []
    ablation_labels(groups, params, slow_loss, progress=lambda done, total, s: calls.append((done, total)), every=0.03)
    assert calls, "no progress reported"
    assert calls[-1] == (6, 6)
    assert all(total == 6 for _, total in calls)
    quiet: list[tuple[int, int]] = []
    ablation_labels(groups, params, slow_loss, progress=lambda done, total, s: quiet.append((done, total)), every=60)
    assert quiet == []


def labels_both_ways(
    net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], params: dict[str, torch.Tensor], stride: int
) -> tuple[np.ndarray, np.ndarray, LayerReplay]:
    """Labels of three groups per tensor (every ``stride``-th entry), by full passes and through a ``LayerReplay``.

    Also checks that both left the weights as they were.
    """

    def batch_loss(batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(net(batch[0]), batch[1])

    before = {n: p.clone() for n, p in params.items()}
    groups = [Group(name, torch.arange(i, p.numel(), stride), 0) for name, p in params.items() for i in range(3)]
    loss = lambda: calibration.mean_loss(batch_loss, batches)  # noqa: E731
    plain = ablation_labels(groups, params, loss)
    replay = LayerReplay(net, batch_loss, batches, {n: p for n, p in net.named_parameters() if n in params})
    replayed = ablation_labels(groups, params, loss, replay=replay)
    assert all(torch.equal(params[n], before[n]) for n in params)
    return plain, replayed, replay


def batches_of(inputs: tuple[int, ...], rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(rows, *inputs, generator=gen), torch.randint(0, 3, (rows,), generator=gen)) for _ in range(2)]


def test_replayed_ablations_give_the_labels_of_full_passes_and_restore_the_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(1, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 6, 3), nn.Flatten(), nn.Linear(60, 3)
    ).eval()
    params = {n: p.data for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    plain, replayed, replay = labels_both_ways(net, batches_of((1, 12), 8), params, stride=7)
    assert replayed.tolist() == plain.tolist()
    assert replay.replayed_calls > 0
    with pytest.raises(RuntimeError, match=r"record\(\) first"):
        replay.changing(["0.weight"])  # the labels left nothing recorded behind


def test_labels_of_a_wide_linear_layer_corrected_in_place_of_running_match_full_passes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(8, DELTA_MIN_INPUTS), nn.ReLU(), nn.Linear(DELTA_MIN_INPUTS, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    batches = batches_of((8,), 16)
    params = {n: p.data for n, p in net.named_parameters() if n.endswith("weight")}
    plain, corrected, replay = labels_both_ways(net, batches, params, stride=97)
    assert replay.corrected_calls == 3 * len(batches)  # the three groups of the 512-input layer
    scale = float(np.abs(plain).max())
    assert np.allclose(corrected, plain, rtol=1e-4, atol=1e-6 * scale)
