"""The formula priors of the learned scorer, and the frontier band it re-ranks, without full sorts.

At scale, one learned pruning event must not cost a full argsort (or a full feature table) of every
tensor. This module gives the learned scorer what it needs from the formulas in linear time:

- :class:`PriorScores`: each prior (magnitude, LAMP, Taylor, second-order Taylor, Wanda) of one
  tensor at a time, or at a few entries. LAMP at a few entries needs only the tensor's sorted
  squared magnitudes (a values-only sort) and their suffix sums (:class:`SortedSquares`), not the
  permutation of a full argsort.
- :func:`frontier_bands`: per tensor, the kept weights whose rank under a prior lies in the band
  the learned model re-ranks, ordered by that prior. On a model small enough it is the lowest
  ``window`` times the step's share of each tensor; on a large one it is centred on the prior's
  cut, with at most ``max_rows`` weights in all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.scoring.base import ScoreInputs
from lightning_autoprune.scoring.formulas import (
    lamp_scores,
    magnitude_scores,
    taylor2_scores,
    taylor_scores,
    wanda_scores,
)
from lightning_autoprune.scoring.learned.labels import step_size

#: Formula priors the learned scores are checked against, blended with and fall back to; on a tie
#: in held-out fidelity the earlier one is preferred (first-order Taylor, the strongest formula of
#: the benchmark protocol at high sparsity).
PRIORS: tuple[str, ...] = ("taylor", "lamp", "magnitude", "wanda", "taylor2")
#: Kept weights sampled to estimate a prior's global cut when the band is centred on it.
CUT_SAMPLE = 1 << 20


class SortedSquares:
    """One tensor's kept ``w**2``, sorted, with suffix sums: LAMP scores and percentiles of any entries.

    Ties share the lowest rank (and the largest LAMP denominator) of their value. Holds two
    float32 arrays of the kept count (the sorted squares and their suffix sums, accumulated in
    float64), nothing of the tensor's size beyond that.

    Args:
        weight: the tensor's weights.
        mask: its mask (``True`` = kept).

    Example:
        >>> squares = SortedSquares(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([True, True, True, False]))
        >>> [round(v, 4) for v in squares.lamp(torch.tensor([0, 1, 2, 3])).tolist()]
        [0.0714, 0.3077, 1.0, 0.0]
        >>> squares.percentile(torch.tensor([0, 1, 2, 3])).tolist()
        [0.0, 0.5, 1.0, 0.0]
    """

    def __init__(self, weight: Tensor, mask: Tensor) -> None:
        self.weight = weight.detach().reshape(-1)
        self.mask = mask.reshape(-1).to(self.weight.device)
        kept = self.weight[self.mask].float().pow(2).cpu().numpy()
        kept.sort()
        self.sorted = kept
        suffix = np.cumsum(kept[::-1], dtype=np.float64)[::-1].astype(np.float32)
        self.suffix = np.append(suffix, np.float32(0.0))
        self.kept = len(kept)

    def _positions(self, index: Tensor) -> tuple[np.ndarray, np.ndarray, Tensor]:
        kept = self.mask[index]
        values = (self.weight[index].float().pow(2) * kept).cpu().numpy()
        return values, np.searchsorted(self.sorted, values, side="left"), kept

    def lamp(self, index: Tensor) -> Tensor:
        """LAMP score ``w**2 / sum(w_j**2 over kept j at least as large)`` of flat entries ``index`` (0 if pruned)."""
        values, positions, kept = self._positions(index)
        denominator = np.maximum(self.suffix[positions], np.finfo(np.float32).tiny)
        scores = torch.from_numpy((values / denominator).astype(np.float32)).to(index.device)
        return torch.where(kept.to(index.device), scores, 0.0)

    def percentile(self, index: Tensor) -> Tensor:
        """Rank of ``|w|`` among the kept weights, over ``kept - 1``, in ``[0, 1]`` (0 if pruned)."""
        _, positions, kept = self._positions(index)
        ranks = torch.from_numpy(positions.astype(np.float32) / max(self.kept - 1, 1)).to(index.device)
        return torch.where(kept.to(index.device), ranks, 0.0)


class PriorScores:
    """Formula prior scores of one event, tensor by tensor (higher = keep); only the last tensor is cached.

    Args:
        inputs: the event's scorer inputs.

    Example:
        >>> w = {"a": torch.tensor([[1.0, -3.0], [2.0, 0.5]])}
        >>> inputs = ScoreInputs(w, {"a": torch.ones(2, 2, dtype=torch.bool)})
        >>> priors = PriorScores(inputs)
        >>> priors.at("magnitude", "a", torch.tensor([1, 3])).tolist()
        [3.0, 0.5]
        >>> full = priors.layer("lamp", "a").reshape(-1)
        >>> torch.equal(priors.at("lamp", "a", torch.tensor([1, 3])), full[[1, 3]])
        True
    """

    def __init__(self, inputs: ScoreInputs) -> None:
        self.inputs = inputs
        self._name: str | None = None
        self._layers: dict[str, Tensor] = {}
        self._squares: SortedSquares | None = None

    def layer(self, prior: str, name: str) -> Tensor:
        """The prior's scores of every entry of tensor ``name``, shaped like it."""
        self._switch(name)
        if prior not in self._layers:
            self._layers[prior] = self._compute(prior, name)
        return self._layers[prior]

    def at(self, prior: str, name: str, index: Tensor) -> Tensor:
        """The prior's scores of the flat entries ``index`` of tensor ``name``, from those entries alone.

        Only LAMP looks at the rest of the tensor (through :meth:`squares`).
        """
        if prior == "lamp":
            return self.squares(name).lamp(index)
        inputs = self.inputs
        weight = inputs.weights[name].detach()
        index = index.to(weight.device)
        w = weight.reshape(-1)[index].float()
        fisher = _entries(inputs.grad_sq_mean, name, index, w)
        if prior == "magnitude":
            return magnitude_scores(w)
        if prior == "taylor":
            return taylor_scores(w, fisher)
        if prior == "taylor2":
            return taylor2_scores(w, _entries(inputs.grad_mean, name, index, w), fisher, fisher_first=True)
        if prior == "wanda":
            norms = (inputs.input_rms or inputs.input_norms or {}).get(name)
            transposed = name in inputs.transposed
            in_dim = 0 if transposed else 1
            if norms is None or weight.dim() < 2 or norms.numel() != weight.shape[in_dim]:
                return magnitude_scores(w)
            unit = torch.unravel_index(index, tuple(weight.shape))[in_dim]
            return w.abs() * norms.detach().float().to(w.device)[unit]
        raise ValueError(f"Unknown prior {prior!r}; expected one of {', '.join(PRIORS)}.")

    def squares(self, name: str) -> SortedSquares:
        """The :class:`SortedSquares` of tensor ``name`` (one values-only sort, cached with the tensor)."""
        self._switch(name)
        if self._squares is None:
            self._squares = SortedSquares(self.inputs.weights[name], self.inputs.masks[name])
        return self._squares

    def full(self, prior: str) -> dict[str, Tensor]:
        """The prior's scores of every tensor."""
        return {name: self._compute(prior, name) for name in self.inputs.weights}

    def _switch(self, name: str) -> None:
        if name != self._name:
            self._name, self._layers, self._squares = name, {}, None

    def _compute(self, prior: str, name: str) -> Tensor:
        inputs = self.inputs
        w = inputs.weights[name].detach().float()
        fisher = inputs.grad_sq_mean[name].float() if inputs.grad_sq_mean is not None else torch.zeros_like(w)
        if prior == "magnitude":
            return magnitude_scores(w)
        if prior == "lamp":
            return lamp_scores(w, inputs.masks[name])
        if prior == "taylor":
            return taylor_scores(w, fisher)
        if prior == "taylor2":
            grad = inputs.grad_mean[name].float() if inputs.grad_mean is not None else torch.zeros_like(w)
            return taylor2_scores(w, grad, fisher, fisher_first=True)
        if prior == "wanda":
            norms = inputs.input_rms or inputs.input_norms or {}
            return wanda_scores(w, norms.get(name), transposed=name in inputs.transposed)
        raise ValueError(f"Unknown prior {prior!r}; expected one of {', '.join(PRIORS)}.")


def sampled_quantile(
    scores_of: Callable[[str], Tensor],
    masks: Mapping[str, Tensor],
    kept: Mapping[str, int],
    quantile: float,
    generator: torch.Generator,
) -> float:
    """The ``quantile`` of the kept weights' scores, from :data:`CUT_SAMPLE` of them drawn with ``generator``.

    Each tensor gives its share of the sample (by kept count), drawn with replacement, so a
    global cut is found without a copy of every score.

    Example:
        >>> scores = {"a": torch.arange(100.0)}
        >>> masks = {"a": torch.ones(100, dtype=torch.bool)}
        >>> 40 < sampled_quantile(scores.__getitem__, masks, {"a": 100}, 0.5, torch.Generator().manual_seed(0)) < 60
        True
    """
    total = sum(kept.values())
    sample = []
    for name, mask in masks.items():
        if kept[name]:
            values = scores_of(name).reshape(-1)[mask.reshape(-1)]
            count = math.ceil(CUT_SAMPLE * kept[name] / total)
            pick = torch.randint(0, len(values), (count,), generator=generator).to(values.device)
            sample.append(values[pick].float().cpu())
    return float(torch.quantile(torch.cat(sample).double(), min(1.0, max(0.0, quantile))))


def _entries(source: Mapping[str, Tensor] | None, name: str, index: Tensor, like: Tensor) -> Tensor:
    """``source[name]`` at the flat entries ``index`` (zeros where the source is missing)."""
    if source is None or name not in source:
        return torch.zeros_like(like)
    return source[name].detach().reshape(-1)[index].float()


def frontier_bands(
    priors: PriorScores,
    prior: str,
    masks: Mapping[str, Tensor],
    target_sparsity: float,
    generator: torch.Generator,
    *,
    window: float,
    max_rows: int,
) -> dict[str, Tensor]:
    """Per tensor, flat indices of the kept weights in the learned model's band, in ascending prior order.

    The step removes a share ``p`` of the kept weights. While ``window * p`` of all kept weights is
    at most ``max_rows``, each tensor's band is its lowest ``window * p`` share under ``prior``
    (every weight the step could take from it, and the next ones). Otherwise each tensor's band is
    its proportional share of ``max_rows``, centred on the tensor's cut under the prior's global
    ranking, which is estimated from a sample of :data:`CUT_SAMPLE` kept weights drawn from
    ``generator`` (exact on a model with fewer kept weights). Weights below a band rank below it
    (they go), weights above it stay.

    Finding a band costs a values-only sort and a few elementwise passes per tensor; ties at the
    band's edges are taken in index order, so a band never holds more than its count.

    Example:
        >>> w = {"a": torch.arange(1.0, 9.0), "b": torch.arange(1.0, 9.0) * 10}
        >>> inputs = ScoreInputs(w, {n: torch.ones(8, dtype=torch.bool) for n in w})
        >>> bands = frontier_bands(PriorScores(inputs), "magnitude", inputs.masks, 0.25, torch.Generator(),
        ...                        window=2.0, max_rows=100)
        >>> {n: b.tolist() for n, b in bands.items()}
        {'a': [0, 1, 2, 3], 'b': [0, 1, 2, 3]}
        >>> bands = frontier_bands(PriorScores(inputs), "magnitude", inputs.masks, 0.25, torch.Generator(),
        ...                        window=2.0, max_rows=4)
        >>> {n: b.tolist() for n, b in bands.items()}
        {'a': [3, 4], 'b': [0]}
    """
    kept = {name: int(mask.sum()) for name, mask in masks.items()}
    total = sum(kept.values())
    step = step_size(masks, target_sparsity)
    if step == 0 or total == 0:
        return {name: torch.zeros(0, dtype=torch.long) for name in masks}
    fraction = min(1.0, window * step / total)
    ranges: dict[str, tuple[int, int]] = {}
    if fraction * total <= max_rows:
        ranges = {name: (0, min(count, math.ceil(fraction * count))) for name, count in kept.items()}
    else:
        cuts = _estimated_cuts(priors, prior, masks, kept, step, generator)
        for name, count in kept.items():
            half = max_rows * count / total / 2
            low = max(0, math.floor(cuts[name] - half))
            ranges[name] = (low, min(count, max(low, math.floor(cuts[name] + half))))
    return {name: _rank_range(priors, prior, name, masks[name], *ranges[name]) for name in masks}


def _estimated_cuts(
    priors: PriorScores,
    prior: str,
    masks: Mapping[str, Tensor],
    kept: Mapping[str, int],
    step: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Per tensor, about how many of its kept weights the prior's global ranking removes in the step."""
    total = sum(kept.values())
    if total <= CUT_SAMPLE:  # a small model: the exact step-th value of every kept weight
        pool = torch.cat(
            [priors.layer(prior, name).reshape(-1)[mask.reshape(-1)].float().cpu() for name, mask in masks.items()]
        )
        threshold = float(torch.kthvalue(pool.double(), step).values)
    else:
        threshold = sampled_quantile(lambda name: priors.layer(prior, name), masks, kept, step / total, generator)
    cuts = {}
    for name, mask in masks.items():
        values = priors.layer(prior, name).reshape(-1)
        cuts[name] = float(((values <= threshold) & mask.reshape(-1).to(values.device)).sum())
    return cuts


def _rank_range(priors: PriorScores, prior: str, name: str, mask: Tensor, low: int, high: int) -> Tensor:
    """Flat indices of the kept weights ranked ``low`` to ``high - 1`` (ascending, ties by index) under the prior."""
    if high <= low:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    values = priors.layer(prior, name).reshape(-1).float()
    flat_mask = mask.reshape(-1).to(values.device)
    ordered = np.sort(values[flat_mask].cpu().numpy())
    lo, hi = float(ordered[low]), float(ordered[high - 1])
    parts = []
    for edge in sorted({lo, hi}):
        below = int(np.searchsorted(ordered, edge, side="left"))
        upto = int(np.searchsorted(ordered, edge, side="right"))
        need = min(high, upto) - max(low, below)
        parts.append(((values == edge) & flat_mask).nonzero().squeeze(1)[:need])
    parts.append(((values > lo) & (values < hi) & flat_mask).nonzero().squeeze(1))
    band = torch.cat(parts)
    return band[torch.sort(values[band], stable=True).indices]
