from __future__ import annotations

from typing import cast

import pytest
import torch

from lightning_autoprune.scoring import ScoreInputs, Scorer, make_scorer
from lightning_autoprune.scoring.formulas import (
    LampScorer,
    MagnitudeScorer,
    RandomScorer,
    TaylorScorer,
    WandaScorer,
    lamp_scores,
    taylor_scores,
    wanda_scores,
)


def inputs(weights: dict[str, torch.Tensor], **kwargs: object) -> ScoreInputs:
    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    return ScoreInputs(weights, masks, **kwargs)  # type: ignore[arg-type]


def test_lamp_matches_hand_computed_scores() -> None:
    w = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    # w^2 sorted ascending: 0.25, 1, 4, 9 -> suffix sums 14.25, 14, 13, 9
    expected = torch.tensor([[9 / 9, 1 / 14], [4 / 13, 0.25 / 14.25]])
    assert torch.allclose(lamp_scores(w, torch.ones_like(w, dtype=torch.bool)), expected)


def test_lamp_ignores_pruned_weights_and_keeps_each_layer_top_at_one() -> None:
    w = torch.tensor([5.0, 1.0, 2.0])
    scores = lamp_scores(w, torch.tensor([False, True, True]))
    assert scores[0] == 0.0
    assert scores[2] == 1.0
    assert scores[1] == pytest.approx(1 / 5)


def test_lamp_balances_layers_of_different_scale() -> None:
    big, small = torch.arange(1.0, 11.0) * 100, torch.arange(1.0, 11.0)
    scores = LampScorer().score(inputs({"big": big, "small": small}))
    assert torch.allclose(scores["big"], scores["small"])
    assert not torch.allclose(MagnitudeScorer().score(inputs({"big": big, "small": small}))["big"], small)


def test_taylor_is_rms_of_per_batch_first_order_terms() -> None:
    w = torch.tensor([2.0, -3.0])
    g_batches = torch.tensor([[1.0, 0.5], [-1.0, 0.5]])  # mean gradient of weight 0 is zero, its spread is not
    sq = (g_batches**2).mean(0)
    scores = TaylorScorer().score(inputs({"w": w}, grad_sq_mean={"w": sq}, grad_mean={"w": g_batches.mean(0)}))
    expected = ((g_batches * w) ** 2).mean(0).sqrt()
    assert torch.allclose(scores["w"], expected)


def test_taylor_scores_are_the_formula_bit_for_bit_without_a_copy_of_the_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(10_000, generator=generator)
    w[::7] = -0.0
    fisher = torch.rand(10_000, generator=generator) * 1e-3
    fisher[::11] = 0.0
    scores = taylor_scores(w, fisher)
    assert torch.equal(scores.view(torch.int32), (w.abs() * fisher.sqrt()).view(torch.int32))
    assert scores.data_ptr() not in (w.data_ptr(), fisher.data_ptr())  # the inputs are left as they were
    assert w.signbit()[::7].all()  # the weights' signs too


def test_taylor_without_gradients_fails() -> None:
    with pytest.raises(ValueError, match="needs calibration gradients"):
        TaylorScorer().score(inputs({"w": torch.ones(2)}))


def test_random_is_reproducible_from_the_generator() -> None:
    a = RandomScorer().score(inputs({"w": torch.ones(5)}, generator=torch.Generator().manual_seed(3)))
    b = RandomScorer().score(inputs({"w": torch.ones(5)}, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a["w"], b["w"])


def test_wanda_scales_each_input_column_by_its_norm() -> None:
    w = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]])
    norm = torch.tensor([0.5, 2.0, 0.0])
    scores = WandaScorer().score(inputs({"w": w}, input_norms={"w": norm}))
    assert torch.equal(scores["w"], w.abs() * norm.view(1, 3))


def test_wanda_broadcasts_conv_input_channel_norms_over_the_kernel() -> None:
    w = torch.randn(4, 3, 5)
    norm = torch.tensor([1.0, 2.0, 3.0])
    scores = wanda_scores(w, norm)
    for channel in range(3):
        assert torch.allclose(scores[:, channel], w[:, channel].abs() * norm[channel])


def test_wanda_without_a_recorded_norm_is_magnitude() -> None:
    weights = {"w": torch.randn(2, 3), "bias_like": torch.randn(3), "mismatch": torch.randn(2, 4)}
    scores = WandaScorer().score(inputs(weights, input_norms={"mismatch": torch.ones(3)}))
    assert all(torch.equal(scores[k], weights[k].abs()) for k in weights)
    assert WandaScorer().needs_activations
    assert not WandaScorer().needs_gradients


@pytest.mark.parametrize("name", ["magnitude", "lamp", "taylor", "wanda", "random"])
def test_every_scorer_returns_one_tensor_per_weight(name: str) -> None:
    weights = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    sq = {k: torch.rand_like(v) for k, v in weights.items()}
    scores = cast(Scorer, make_scorer(name)).score(inputs(weights, grad_sq_mean=sq))
    assert {k: v.shape for k, v in scores.items()} == {k: v.shape for k, v in weights.items()}
    assert all(v.dtype == torch.float32 for v in scores.values())


def test_unknown_scorer() -> None:
    with pytest.raises(
        ValueError,
        match=r"must be one of 'learned', 'magnitude', 'lamp', 'taylor', 'wanda', 'random' or a path .*got 'x'",
    ):
        make_scorer("x")
