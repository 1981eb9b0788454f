from __future__ import annotations

import pytest
import torch

from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.formulas import lamp_scores
from lightning_autoprune.scoring.learned.priors import PRIORS, PriorScores, SortedSquares, frontier_bands


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
