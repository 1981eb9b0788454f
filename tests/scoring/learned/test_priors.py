from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.formulas import lamp_scores
from lightning_autoprune.scoring.learned.priors import PRIORS, PriorScores, SortedSquares, frontier_bands, suffix_sums


def layered_inputs(seed: int = 0) -> ScoreInputs:
    """A Linear, a Conv and a transposed (``Conv1D``-style) weight, with gradients, activations and pruned entries."""
    g = torch.Generator().manual_seed(seed)
    weights = {
        "fc": torch.randn(12, 10, generator=g),
        "conv": torch.randn(6, 4, 3, 3, generator=g),
        "proj": torch.randn(10, 7, generator=g),  # stored [in, out]
    }
    masks = {n: torch.rand(w.shape, generator=g) > 0.3 for n, w in weights.items()}
    weights = {n: w * masks[n] for n, w in weights.items()}
    grads = {n: torch.randn(w.shape, generator=g) for n, w in weights.items()}
    return ScoreInputs(
        weights,
        masks,
        grad_mean=grads,
        grad_sq_mean={n: grad.pow(2) + 0.1 for n, grad in grads.items()},
        input_rms={
            "fc": torch.rand(10, generator=g),
            "conv": torch.rand(4, generator=g),
            "proj": torch.rand(10, generator=g),
        },
        transposed=frozenset({"proj"}),
    )


@pytest.mark.parametrize("prior", PRIORS)
def test_scores_at_entries_equal_the_full_tensors(prior: str) -> None:
    inputs = layered_inputs()
    priors = PriorScores(inputs)
    for name, weight in inputs.weights.items():
        index = torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(1))[:20]
        full = priors.layer(prior, name).reshape(-1)[index]
        assert torch.allclose(priors.at(prior, name, index), full, rtol=1e-5, atol=1e-7), (prior, name)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("prior", PRIORS)
def test_tensor_scores_at_entries_are_the_full_tensors_bit_for_bit(
    prior: str, large: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A global cut reads them at a sample's positions; the masks read the full tensors: the same bits.
    from lightning_autoprune.scoring.learned import priors as priors_module

    if large:  # LAMP's scores are then the step's scaled squares
        monkeypatch.setattr(priors_module, "CUT_SAMPLE", 100)
    inputs = layered_inputs()
    inputs.target_sparsity = 0.6
    priors = PriorScores(inputs)
    for name, weight in inputs.weights.items():
        index = torch.randperm(weight.numel(), generator=torch.Generator().manual_seed(1))[:20]
        assert torch.equal(priors.tensor_at(prior, name, index), priors.tensor(prior, name).reshape(-1)[index])


def test_released_priors_are_computed_again_the_same() -> None:
    inputs = layered_inputs()
    priors = PriorScores(inputs)
    before = priors.layer("taylor", "fc").clone()
    squares = priors.squares("fc").sorted.copy()
    priors.release()
    assert priors._layers == {}
    assert priors._squares is None
    assert torch.equal(priors.layer("taylor", "fc"), before)
    assert (priors.squares("fc").sorted == squares).all()


def test_sorted_squares_match_lamp_and_ranks_without_ties() -> None:
    weight = torch.randn(500, generator=torch.Generator().manual_seed(2))
    mask = torch.rand(500, generator=torch.Generator().manual_seed(3)) > 0.4
    squares = SortedSquares(weight, mask)
    index = torch.arange(500)
    assert torch.allclose(squares.lamp(index), lamp_scores(weight, mask), rtol=1e-5, atol=1e-8)
    kept = weight.abs()[mask]
    ranks = (kept.unsqueeze(1) > kept.unsqueeze(0)).sum(dim=1).float() / (len(kept) - 1)
    assert torch.allclose(squares.percentile(index)[mask], ranks)
    assert bool((squares.percentile(index)[~mask] == 0).all())


@pytest.mark.parametrize("scale", [1.0, 3.7])
def test_suffix_sums_in_blocks_are_the_bits_of_one_float64_cumsum(scale: float) -> None:
    # What SortedSquares held before: one float64 running sum of the whole reversed array, scaled, as float32.
    ordered = np.sort(np.random.default_rng(0).standard_normal(1000).astype(np.float32) ** 2)
    for n in (0, 1, 999, 1000):
        part = ordered[:n]
        running = np.cumsum(part[::-1], dtype=np.float64) * scale
        expected = np.zeros(n + 1, dtype=np.float32)
        expected[:-1] = running[::-1]
        for block in (1, 7, 1000, 4096):  # block edges inside, at and beyond the array
            assert suffix_sums(part, scale, block).tobytes() == expected.tobytes()


def test_bands_are_the_lowest_share_of_each_tensor_while_small() -> None:
    inputs = layered_inputs()
    priors = PriorScores(inputs)
    bands = frontier_bands(priors, "taylor", inputs.masks, 0.5, torch.Generator(), window=2.0, max_rows=10**6)
    kept = {n: int(m.sum()) for n, m in inputs.masks.items()}
    total = sum(kept.values())
    share = (
        0.5 * sum(m.numel() for m in inputs.masks.values()) - (sum(m.numel() for m in inputs.masks.values()) - total)
    ) / total
    for name, band in bands.items():
        values = priors.layer("taylor", name).reshape(-1)
        assert bool(inputs.masks[name].reshape(-1)[band].all())
        assert len(band) == min(kept[name], -(-2 * share * kept[name] // 1))
        assert bool((values[band][1:] >= values[band][:-1]).all())  # ascending
        outside = inputs.masks[name].reshape(-1).clone()
        outside[band] = False
        assert float(values[outside].min()) >= float(values[band].max())


def test_bands_of_a_large_model_are_centred_on_each_tensors_cut() -> None:
    weights = {"a": torch.arange(1.0, 1001.0), "b": torch.arange(1.0, 1001.0) * 3}
    inputs = ScoreInputs(weights, {n: torch.ones(1000, dtype=torch.bool) for n in weights})
    priors = PriorScores(inputs)
    bands = frontier_bands(priors, "magnitude", inputs.masks, 0.5, torch.Generator(), window=3.0, max_rows=100)
    # The global cut at half of 2000 weights is magnitude 750: 750 of a's weights and 250 of b's go.
    assert bands["a"].tolist() == list(range(725, 775))
    assert bands["b"].tolist() == list(range(225, 275))


def test_band_edges_with_ties_hold_exactly_the_count() -> None:
    weights = {"a": torch.ones(100)}
    inputs = ScoreInputs(weights, {"a": torch.ones(100, dtype=torch.bool)})
    bands = frontier_bands(
        PriorScores(inputs), "magnitude", inputs.masks, 0.1, torch.Generator(), window=2.0, max_rows=10**6
    )
    assert bands["a"].tolist() == list(range(20))


def test_a_large_tensors_sorted_squares_estimate_lamp_and_ranks_from_a_sample() -> None:
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(400, 301, generator=g)
    mask = torch.rand(400, 301, generator=g) > 0.3
    exact = SortedSquares(weight, mask)
    sampled = SortedSquares(weight, mask, exact=1000, sample=20000)
    assert exact.stride == 1.0
    assert sampled.stride > 3.0
    assert 15000 < len(sampled.sorted) < 25000  # about `sample` kept squares, not the tensor's 84k
    index = torch.arange(weight.numel())
    kept = mask.reshape(-1)
    assert float((sampled.percentile(index) - exact.percentile(index))[kept].abs().max()) < 0.01
    assert bool((sampled.percentile(index)[~kept] == 0).all())
    lamp, true = sampled.lamp(index)[kept], exact.lamp(index)[kept]
    assert float(lamp.max()) <= 1.0
    # Where a denominator sums at least a tenth of the kept weights, within 2% (the largest weights'
    # denominators are sums of a few sampled squares, so only their order is kept there).
    error = (lamp - true).abs() / true
    body = true < torch.quantile(true, 0.9)
    assert float(error[body].max()) < 0.02
    assert float(error[body].median()) < 0.002


def test_lamp_on_a_large_model_selects_what_exact_lamp_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_autoprune.core.selection import select_masks
    from lightning_autoprune.scoring.learned import priors as priors_module

    g = torch.Generator().manual_seed(5)
    weights = {
        "a": torch.randn(200, 100, generator=g),
        "b": torch.randn(50, 40, generator=g) * 3,
        "c": torch.randn(400, generator=g),
    }
    masks = {n: torch.rand(w.shape, generator=g) > 0.2 for n, w in weights.items()}
    inputs = ScoreInputs(weights, masks, target_sparsity=0.6)
    exact = select_masks({n: lamp_scores(w, masks[n]) for n, w in weights.items()}, masks, 0.6)
    monkeypatch.setattr(priors_module, "CUT_SAMPLE", 1000)  # "large": the step's scores come from the cuts
    monkeypatch.setattr(priors_module, "SQUARES_SAMPLE", 4000)
    priors = PriorScores(inputs)
    scores = priors.full("lamp")
    estimated = select_masks(scores, masks, 0.6)
    step = sum(int((m & ~exact[n]).sum()) for n, m in masks.items())
    for name, mask in masks.items():
        # Each tensor loses about as many weights as under LAMP, and, within it, the smallest |w|.
        assert abs(int((mask & ~estimated[name]).sum()) - int((mask & ~exact[name]).sum())) <= 0.02 * step
        kept_abs = weights[name].abs()
        removed = kept_abs[mask & ~estimated[name]]
        if len(removed):
            assert float(removed.max()) <= float(kept_abs[estimated[name]].min())
    assert all(bool((s[~masks[n]] == 0).all()) for n, s in scores.items())


def test_kept_samples_draw_only_kept_positions_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_autoprune.scoring.learned import priors as priors_module

    monkeypatch.setattr(priors_module, "KEPT_SAMPLE", 64)  # many blocks in each mask
    g = torch.Generator().manual_seed(6)
    masks = {"a": torch.rand(3000, generator=g) > 0.7, "b": torch.rand(40, 30, generator=g) > 0.1}
    sample = priors_module.KeptSample(masks, torch.Generator().manual_seed(0), size=5000)
    for name, positions in sample.positions.items():
        assert bool(masks[name].reshape(-1)[positions].all())
    # Each tensor's share of the sample follows its kept count.
    kept = {n: int(m.sum()) for n, m in masks.items()}
    share = len(sample.positions["a"]) / (len(sample.positions["a"]) + len(sample.positions["b"]))
    assert share == pytest.approx(kept["a"] / sum(kept.values()), abs=0.01)
    scores = {"a": torch.rand(3000, generator=g), "b": torch.rand(40, 30, generator=g)}
    pooled = torch.cat([scores[n].reshape(-1)[masks[n].reshape(-1)] for n in masks])
    assert sample.quantile(lambda name, where: scores[name].reshape(-1)[where], 0.3) == pytest.approx(
        float(torch.quantile(pooled, 0.3)), abs=0.03
    )


def test_a_large_tensors_band_holds_about_its_count_around_its_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_autoprune.scoring.learned import priors as priors_module

    monkeypatch.setattr(priors_module, "EXACT_SQUARES", 500)
    monkeypatch.setattr(priors_module, "SQUARES_SAMPLE", 2000)
    g = torch.Generator().manual_seed(7)
    weights = {"a": torch.randn(20000, generator=g)}
    masks = {"a": torch.rand(20000, generator=g) > 0.25}
    priors = PriorScores(ScoreInputs(weights, masks))
    band = priors_module._rank_range(priors, "magnitude", "a", masks["a"], 6000, 9000)
    assert 2400 <= len(band) <= 3000  # about the count (the edges come from a sample of 2000), never more
    assert bool(masks["a"][band].all())
    magnitudes = weights["a"].abs()
    ranks = (magnitudes[masks["a"]].unsqueeze(0) < magnitudes[band].unsqueeze(1)).sum(dim=1)
    # Ranks 6000-8999, give or take the sample's error.
    assert int(ranks.min()) > 5400
    assert int(ranks.max()) < 9600
    assert bool((magnitudes[band][1:] >= magnitudes[band][:-1]).all())
