from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_autoprune.core import selection
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
        ({"a": torch.tensor([float("-inf"), 1.0])}, r"Scores for 'a' contain NaN or inf"),
        ({"a": torch.tensor([1.0, float("inf")], dtype=torch.float64)}, r"Scores for 'a' contain NaN or inf"),
        ({"a": torch.tensor([float("nan"), float("-inf")], dtype=torch.float16)}, r"Scores for 'a' contain NaN or inf"),
        ({"a": torch.ones(3)}, r"Scores for 'a' have shape \(3,\), but its mask has shape \(2,\)"),
    ],
)
def test_bad_scores(scores: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_masks(scores, {"a": torch.ones(2, dtype=torch.bool)}, 0.5)


def test_target_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"`target_sparsity` must be in \[0, 1\], got 1\.2"):
        select_masks({"a": torch.ones(2)}, {"a": torch.ones(2, dtype=torch.bool)}, 1.2)


# --- The global ranking without a concatenation gives the same masks as with one -------------------------------------


def top_k_mask_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """`top_k_mask` as it was when `select_masks` concatenated every candidate score."""
    n = scores.numel()
    if k == 0:
        return torch.zeros(n, dtype=torch.bool)
    if k == n:
        return torch.ones(n, dtype=torch.bool)
    threshold = torch.kthvalue(scores, n - k + 1).values
    above = scores > threshold
    missing = k - int(above.sum())
    above[(scores == threshold).nonzero().view(-1)[:missing]] = True
    return above


def select_masks_reference(scores: dict, masks: dict, target: float, *, min_density: float = 0.0) -> dict:
    """`select_masks` as it was: one pool of every candidate score, ranked by `kthvalue`."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"`target_sparsity` must be in [0, 1], got {target}.")
    names = list(masks)
    for name in names:
        if scores[name].shape != masks[name].shape:
            raise ValueError(
                f"Scores for {name!r} have shape {tuple(scores[name].shape)}, "
                f"but its mask has shape {tuple(masks[name].shape)}."
            )
        if not torch.isfinite(scores[name]).all():
            raise ValueError(f"Scores for {name!r} contain NaN or inf; refusing to compute masks from them.")
    total = sum(masks[n].numel() for n in names)
    keep = total - pruned_count(target, total)
    kept_now = sum(int(masks[n].sum()) for n in names)
    if keep >= kept_now:
        return {n: masks[n].clone() for n in names}
    floors = layer_floors(masks, min_density)
    forced = {}
    for name in names:
        flat_scores = scores[name].reshape(-1).float()
        flat_mask = masks[name].reshape(-1)
        ranked = torch.where(flat_mask, flat_scores, torch.tensor(-math.inf))
        forced[name] = top_k_mask_reference(ranked, floors[name]) & flat_mask
    n_forced = sum(int(f.sum()) for f in forced.values())
    if n_forced > keep:
        raise ValueError(
            f"`target_sparsity`={target} keeps {keep} of {total} weights, but the per-layer floor "
            f"`min_layer_density`={min_density} alone keeps {n_forced}. Lower `min_layer_density` or the target."
        )
    candidates = [masks[n].reshape(-1) & ~forced[n] for n in names]
    pool = torch.cat([scores[n].reshape(-1).float()[c] for n, c in zip(names, candidates, strict=True)])
    chosen = top_k_mask_reference(pool, keep - n_forced)
    new_masks, offset = {}, 0
    for name, cand in zip(names, candidates, strict=True):
        count = int(cand.sum())
        flat = forced[name].clone()
        flat[cand.nonzero().view(-1)] = chosen[offset : offset + count]
        offset += count
        new_masks[name] = flat.view_as(masks[name])
    return new_masks


# Settings of the bracketing that make tiny cases take every path: slices of a few entries, samples of a few scores,
# brackets ranked only once down to one score, no margin (the sample's guess is often wrong), or a single round.
TUNINGS: dict[str, dict[str, Any]] = {
    "default": {"_SEED": 0},
    "tiny": {"_SLICE": 7, "_SLICES": 10**9, "_SAMPLE": 4, "_MIN_GATHER": 1, "_MAX_ROUNDS": 10**6},
    "no margin": {"_SLICE": 5, "_SLICES": 10**9, "_SAMPLE": 3, "_MARGIN": 0.0, "_MIN_GATHER": 1, "_MAX_ROUNDS": 10**6},
    "one round": {"_SLICE": 11, "_SLICES": 10**9, "_SAMPLE": 2, "_MIN_GATHER": 1, "_MAX_ROUNDS": 1},
}


def scores_like(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if kind == "all equal":
        return torch.full(shape, 0.25)
    if kind == "few values":  # many exact ties
        return torch.randint(0, 4, shape, generator=gen).float()
    if kind == "integers":
        return torch.randint(-50, 50, shape, generator=gen)
    if kind == "half":
        return torch.randint(0, 20, shape, generator=gen).half() / 4
    if kind == "one not finite":
        values = torch.randn(shape, generator=gen, dtype=torch.float64)
        flat = values.view(-1)
        if flat.numel():
            position = int(torch.randint(flat.numel(), (1,), generator=gen))
            flat[position] = [math.nan, math.inf, -math.inf][position % 3]
        return values
    if kind == "float64 beyond float32":  # read as +-inf once ranked in float32, tying with pruned entries
        values = torch.randint(-2, 3, shape, generator=gen).double()
        return values * torch.where(values.abs() > 1, torch.tensor(1e300, dtype=torch.float64), 1.0)
    return torch.randn(shape, generator=gen)


def shapes_of(sizes: list[int]) -> list[tuple[int, ...]]:
    return [(n // 3, 3) if n % 2 == 0 and n >= 6 else (n,) for n in sizes]


@settings(max_examples=400, deadline=None)
@given(
    sizes=st.lists(st.one_of(st.integers(0, 3), st.integers(1, 120)), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(
        ["normal", "all equal", "few values", "integers", "half", "float64 beyond float32", "one not finite"]
    ),
    prior=st.sampled_from([0.0, 0.0, 0.3, 0.9, 1.0]),
    min_density=st.sampled_from([0.0, 0.0, 0.01, 0.2, 0.5, 1.0]),
    target=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 0.95, 1.0])),
    tuning=st.sampled_from(sorted(TUNINGS)),
)
def test_same_masks_as_one_concatenated_ranking(
    sizes: list[int], seed: int, kind: str, prior: float, min_density: float, target: float, tuning: str
) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": scores_like(kind, shape, gen) for i, shape in enumerate(shapes_of(sizes))}
    masks = {k: torch.rand(v.shape, generator=gen) >= prior for k, v in scores.items()}
    expected = outcome(select_masks_reference, scores, masks, target, min_density)
    with mock.patch.multiple(selection, **TUNINGS[tuning]):
        new = outcome(select_masks, scores, masks, target, min_density)
    if isinstance(expected, str):  # the same error, word for word
        assert new == expected
        return
    assert isinstance(new, dict)
    assert list(new) == list(expected)
    for name in expected:
        assert new[name].dtype == torch.bool
        assert new[name].shape == masks[name].shape
        assert torch.equal(new[name], expected[name]), name


def outcome(select: Callable[..., dict], scores: dict, masks: dict, target: float, min_density: float) -> dict | str:
    try:
        return select(scores, masks, target, min_density=min_density)
    except ValueError as error:
        return str(error)


@pytest.mark.parametrize(
    ("kind", "prior", "min_density", "target"),
    [
        ("normal", 0.0, 0.0, 0.5),
        ("normal", 0.92, 0.002, 0.97),  # candidates too rare for random positions: sampled in one pass
        ("few values", 0.0, 0.0, 0.5),  # four values, each ~290k times: more ties than are ranked directly
        ("few values", 0.3, 0.3, 0.6),
        ("all equal", 0.0, 0.0, 0.3),
        ("half", 0.5, 0.01, 0.9),
    ],
)
def test_same_masks_at_scale(kind: str, prior: float, min_density: float, target: float) -> None:
    """Real settings: more scores than one slice (2^20) and than are ranked directly (2^16 or 1/16)."""
    gen = torch.Generator().manual_seed(3)
    scores = {"a": scores_like(kind, (1100, 1000), gen), "b": scores_like(kind, (1000,), gen)}
    scores["c"] = scores_like(kind, (70_001,), gen)
    masks = {k: torch.rand(v.shape, generator=gen) >= prior for k, v in scores.items()}
    new = select_masks(scores, masks, target, min_density=min_density)
    expected = select_masks_reference(scores, masks, target, min_density=min_density)
    assert all(torch.equal(new[k], expected[k]) for k in expected)


def test_never_concatenates_every_score(monkeypatch: pytest.MonkeyPatch) -> None:
    largest = {"cat": 0, "kthvalue": 0, "where": 0}

    def recording(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def record(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            result = function(tensor, *args, **kwargs)
            size = tensor.numel() if name == "kthvalue" else result.numel()  # kthvalue: what it ranks
            largest[name] = max(largest[name], size)
            return result

        return record

    for name in largest:
        monkeypatch.setattr(torch, name, recording(name, getattr(torch, name)))
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(1000, 1000, generator=gen), "b": torch.randn(300_000, generator=gen)}
    masks = {k: torch.ones(v.shape, dtype=torch.bool) for k, v in scores.items()}
    select_masks(scores, masks, 0.8, min_density=0.01)
    assert 0 < largest["kthvalue"] <= 1_300_000 // 16  # only the scores in a bracket, at most 1/16 of them
    assert largest["cat"] <= 1_300_000 // 16
    assert largest["where"] == 0
