from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_autoprune.core.selection import layer_floors, pruned_count, select_masks, top_k_mask

layer_sizes = st.lists(st.integers(1, 60), min_size=1, max_size=4)


def random_case(sizes: list[int], seed: int, prior: float) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.randint(0, 5, (n,), generator=gen).float() for i, n in enumerate(sizes)}  # many ties
    masks = {k: torch.rand(v.shape, generator=gen) >= prior for k, v in scores.items()}
    return scores, masks


@settings(max_examples=80, deadline=None)
@given(layer_sizes, st.integers(0, 10_000), st.floats(0.0, 0.5), st.floats(0.0, 0.99))
def test_exact_count_never_unprunes_and_is_deterministic(
    sizes: list[int], seed: int, prior: float, target: float
) -> None:
    scores, masks = random_case(sizes, seed, prior)
    total = sum(sizes)
    new = select_masks(scores, masks, target)
    pruned = sum(int((~m).sum()) for m in new.values())
    already = sum(int((~m).sum()) for m in masks.values())
    assert pruned == max(already, pruned_count(target, total))
    for name in masks:
        assert not (new[name] & ~masks[name]).any()  # masks never un-prune
    again = select_masks(scores, masks, target)
    assert all(torch.equal(new[k], again[k]) for k in new)


@settings(max_examples=60, deadline=None)
@given(layer_sizes, st.integers(0, 10_000), st.floats(0.0, 0.2))
def test_layer_floors_hold(sizes: list[int], seed: int, floor: float) -> None:
    scores, masks = random_case(sizes, seed, prior=0.0)
    target = 0.7
    floors = layer_floors(masks, floor)
    total = sum(sizes)
    if sum(floors.values()) > total - pruned_count(target, total):
        with pytest.raises(ValueError, match="per-layer floor"):
            select_masks(scores, masks, target, min_density=floor)
        return
    new = select_masks(scores, masks, target, min_density=floor)
    for name, mask in new.items():
        assert int(mask.sum()) >= floors[name]


def test_keeps_highest_scores_globally() -> None:
    scores = {"a": torch.tensor([0.1, 0.9]), "b": torch.tensor([0.5, 0.2])}
    masks = {k: torch.ones(2, dtype=torch.bool) for k in scores}
    new = select_masks(scores, masks, 0.5)
    assert new["a"].tolist() == [False, True]
    assert new["b"].tolist() == [True, False]


def test_ties_go_to_the_lower_index() -> None:
    assert top_k_mask(torch.ones(5), 2).tolist() == [True, True, False, False, False]


def test_lower_target_than_current_keeps_masks() -> None:
    masks = {"a": torch.tensor([False, False, True, True])}
    new = select_masks({"a": torch.ones(4)}, masks, 0.25)
    assert torch.equal(new["a"], masks["a"])


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({"a": torch.tensor([1.0, float("nan")])}, r"Scores for 'a' contain NaN or inf"),
        ({"a": torch.ones(3)}, r"Scores for 'a' have shape \(3,\), but its mask has shape \(2,\)"),
    ],
)
def test_bad_scores(scores: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_masks(scores, {"a": torch.ones(2, dtype=torch.bool)}, 0.5)


def test_target_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"`target_sparsity` must be in \[0, 1\], got 1\.2"):
        select_masks({"a": torch.ones(2)}, {"a": torch.ones(2, dtype=torch.bool)}, 1.2)
