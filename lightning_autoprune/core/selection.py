"""From scores and a target to masks: global allocation with per-layer floors.

Selection is exact and deterministic: it prunes exactly ``floor(target * total)`` weights (never
more, so the target is never overshot), breaks ties between equal scores by position, never
revives a pruned weight, and keeps at least a floor of each layer so that global scores cannot
empty a layer at extreme sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` highest entries of a flat ``scores`` tensor.

    Ties at the threshold go to the lower index, so the result is deterministic. Runs in linear
    time (``kthvalue``), without sorting.

    Example:
        >>> top_k_mask(torch.tensor([0.5, 0.9, 0.5, 0.1, 0.5]), 3)
        tensor([ True,  True,  True, False, False])
    """
    n = scores.numel()
    if not 0 <= k <= n:
        raise ValueError(f"`k` must be in [0, {n}], got {k}.")
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, n - k + 1).values
    above = scores > threshold
    at = scores == threshold
    missing = k - int(above.sum())
    at_index = at.nonzero().view(-1)[:missing]
    above[at_index] = True
    return above


def layer_floors(masks: Mapping[str, Tensor], min_density: float) -> dict[str, int]:
    """Minimum number of weights each layer keeps: ``ceil(min_density * numel)``, capped at what it has.

    Example:
        >>> layer_floors({"a": torch.ones(1000, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)}, 0.01)
        {'a': 10, 'b': 1}
    """
    return {name: min(int(mask.sum()), math.ceil(min_density * mask.numel() - 1e-9)) for name, mask in masks.items()}


def pruned_count(target_sparsity: float, total: int) -> int:
    """How many of ``total`` weights a target prunes: ``floor(target * total)``, robust to float error.

    Example:
        >>> pruned_count(0.9, 84480), pruned_count(0.7, 10)
        (76032, 7)
    """
    return min(total, math.floor(target_sparsity * total + 1e-6))


def select_masks(
    scores: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    target_sparsity: float,
    *,
    min_density: float = 0.0,
) -> dict[str, Tensor]:
    """New masks that prune the lowest-scoring weights globally until ``target_sparsity`` is met.

    Args:
        scores: per-tensor scores, higher = keep; shapes match ``masks``.
        masks: current masks (``True`` = kept). Pruned weights stay pruned.
        target_sparsity: fraction of all weights, over all tensors, to be pruned afterwards.
        min_density: each tensor keeps at least ``ceil(min_density * numel)`` weights (or all it
            still has, if fewer), chosen by its own top scores.

    Returns:
        New boolean masks. If the current masks already meet the target, they are returned
        unchanged (sparsity never decreases).

    Raises:
        ValueError: on non-finite scores (naming the tensor), on mismatched shapes, or if the
            floors alone keep more weights than the target allows.

    Example:
        >>> scores = {"a": torch.tensor([4.0, 3.0, 5.0]), "b": torch.tensor([1.0, 0.5, 2.0])}
        >>> masks = {k: torch.ones(3, dtype=torch.bool) for k in scores}
        >>> select_masks(scores, masks, 0.5)
        {'a': tensor([True, True, True]), 'b': tensor([False, False, False])}
        >>> select_masks(scores, masks, 0.5, min_density=0.3)
        {'a': tensor([ True, False,  True]), 'b': tensor([False, False,  True])}
    """
    if not 0.0 <= target_sparsity <= 1.0:
        raise ValueError(f"`target_sparsity` must be in [0, 1], got {target_sparsity}.")
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
    keep = total - pruned_count(target_sparsity, total)
    kept_now = sum(int(masks[n].sum()) for n in names)
    if keep >= kept_now:
        return {n: masks[n].clone() for n in names}

    floors = layer_floors(masks, min_density)
    forced: dict[str, Tensor] = {}
    for name in names:
        flat_scores = scores[name].reshape(-1).float()
        flat_mask = masks[name].reshape(-1).to(flat_scores.device)
        # Pruned entries rank below every kept one within the layer.
        ranked = torch.where(flat_mask, flat_scores, torch.tensor(-math.inf, device=flat_scores.device))
        forced[name] = top_k_mask(ranked, floors[name]) & flat_mask
    n_forced = sum(int(f.sum()) for f in forced.values())
    if n_forced > keep:
        raise ValueError(
            f"`target_sparsity`={target_sparsity} keeps {keep} of {total} weights, but the per-layer floor "
            f"`min_layer_density`={min_density} alone keeps {n_forced}. Lower `min_layer_density` or the target."
        )

    candidates = [masks[n].reshape(-1).to(forced[n].device) & ~forced[n] for n in names]
    pool = torch.cat([scores[n].reshape(-1).float()[c] for n, c in zip(names, candidates, strict=True)])
    chosen = top_k_mask(pool, keep - n_forced)
    new_masks: dict[str, Tensor] = {}
    offset = 0
    for name, cand in zip(names, candidates, strict=True):
        count = int(cand.sum())
        flat = forced[name].clone()
        flat[cand.nonzero().view(-1)] = chosen[offset : offset + count].to(flat.device)
        offset += count
        new_masks[name] = flat.view_as(masks[name])
    return new_masks
