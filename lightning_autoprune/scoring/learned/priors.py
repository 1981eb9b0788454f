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

import functools
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
#: On a model with more weights than this (kept or pruned), global cuts (a prior's, a candidate
#: step's) are estimated from a :class:`KeptSample`; up to it, they are exact (:func:`exact_cuts`).
CUT_SAMPLE = 1 << 20
#: Kept positions a :class:`KeptSample` draws (a global cut's rank is then off by about 0.1% of
#: the kept weights, a few hundredths of a percent of sparsity, whatever the model's size).
KEPT_SAMPLE = 1 << 18
#: A tensor with more kept weights than this gets a sampled :class:`SortedSquares`.
EXACT_SQUARES = 1 << 20
#: About this many kept squares form a large tensor's :class:`SortedSquares`.
SQUARES_SAMPLE = 1 << 18
#: Entries of a :class:`SortedSquares`' float64 running sum computed at once (:func:`suffix_sums`).
SUFFIX_BLOCK = 1 << 16


def exact_cuts(masks: Mapping[str, Tensor]) -> bool:
    """Whether an event's global cuts are exact: the model has at most :data:`CUT_SAMPLE` weights, kept or pruned.

    The exact paths hold a score for every entry of every tensor at once and sort whole tensors,
    so their memory grows with all the weights, pruned ones included, not with the kept ones: a
    large model at high sparsity takes the sampled path too.

    Example:
        >>> exact_cuts({"w": torch.ones(1000, 1000, dtype=torch.bool)}), exact_cuts({"w": torch.zeros(2048, 1024)})
        (True, False)
    """
    return sum(mask.numel() for mask in masks.values()) <= CUT_SAMPLE


def suffix_sums(ordered: np.ndarray, scale: float = 1.0, block: int = SUFFIX_BLOCK) -> np.ndarray:
    """``scale`` times the sums of ``ordered[i:]`` for every ``i`` (float32, a final 0), accumulated in float64.

    The float64 running sum is built ``block`` entries at a time, so that it never exists for the
    whole array (a tensor's worth of float64 would be twice its kept squares). The sums are added
    in the same order as one ``np.cumsum`` of the reversed array, so they are the same bits.

    Example:
        >>> suffix_sums(np.array([1.0, 2.0, 4.0], dtype=np.float32), block=2).tolist()
        [7.0, 6.0, 4.0, 0.0]
    """
    suffix = np.zeros(len(ordered) + 1, dtype=np.float32)
    running = np.empty(min(block, len(ordered)) + 1, dtype=np.float64)
    running[0] = 0.0  # the sum of everything after the block at hand
    for end in range(len(ordered), 0, -block):
        start = max(0, end - block)
        part = running[: end - start + 1]
        part[1:] = ordered[start:end][::-1]
        np.cumsum(part, out=part)
        total = part[-1]
        if scale != 1:
            part *= scale
        suffix[start:end] = part[1:][::-1]
        running[0] = total
    return suffix


class SortedSquares:
    """One tensor's kept ``w**2``, sorted, with suffix sums: LAMP scores and percentiles of any entries.

    Ties share the lowest rank (and the largest LAMP denominator) of their value. On a tensor of
    at most ``exact`` kept weights the arrays hold every kept square and the results are exact.
    On a larger one they hold a systematic sample (the kept ones among every k-th entry in flat
    order, about :data:`SQUARES_SAMPLE` entries), each standing for ``kept / len(sample)`` weights
    (:attr:`stride`): percentiles are then read off
    the sample (standard error about ``0.5 / sqrt(SQUARES_SAMPLE)``, 0.001) and a LAMP denominator
    is the sample's suffix sum times ``k`` (never below the weight's own square, so a score stays
    at most 1). Building it costs one pass over the tensor and a sort of the sample, and holds two
    float32 arrays of the sample's size.

    Args:
        weight: the tensor's weights.
        mask: its mask (``True`` = kept).
        exact: the most kept weights sorted in full.
        sample: about how many kept squares a larger tensor's sample holds.

    Example:
        >>> squares = SortedSquares(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([True, True, True, False]))
        >>> [round(v, 4) for v in squares.lamp(torch.tensor([0, 1, 2, 3])).tolist()]
        [0.0714, 0.3077, 1.0, 0.0]
        >>> squares.percentile(torch.tensor([0, 1, 2, 3])).tolist()
        [0.0, 0.5, 1.0, 0.0]
    """

    def __init__(
        self, weight: Tensor, mask: Tensor, *, exact: int = EXACT_SQUARES, sample: int = SQUARES_SAMPLE
    ) -> None:
        self.weight = weight.detach().reshape(-1)
        self.mask = mask.reshape(-1).to(self.weight.device)
        self.kept = int(torch.count_nonzero(self.mask))
        if self.kept <= exact:
            ordered = self.weight[self.mask].float().pow(2).cpu().numpy()
        else:
            last_dim = weight.shape[-1] if weight.ndim else 1
            ordered = _systematic(self.weight, self.mask, self.kept, sample, last_dim).float().pow(2).cpu().numpy()
        ordered.sort()
        self.sorted = ordered
        #: Kept weights each entry of :attr:`sorted` stands for (1: exact).
        self.stride = self.kept / max(len(ordered), 1)
        self.suffix = suffix_sums(ordered, self.stride)

    def _positions(self, index: Tensor) -> tuple[np.ndarray, np.ndarray, Tensor]:
        kept = self.mask[index]
        values = (self.weight[index].float().pow(2) * kept).cpu().numpy()
        return values, np.searchsorted(self.sorted, values, side="left"), kept

    def lamp(self, index: Tensor) -> Tensor:
        """LAMP score ``w**2 / sum(w_j**2 over kept j at least as large)`` of flat entries ``index`` (0 if pruned)."""
        return self._lamp(index, *self._positions(index))

    def percentile_and_lamp(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`percentile` and :meth:`lamp` of flat entries ``index``, from one search of the sorted squares."""
        found = self._positions(index)
        return self._percentile(index, found[1], found[2]), self._lamp(index, *found)

    def _lamp(self, index: Tensor, values: np.ndarray, positions: np.ndarray, kept: Tensor) -> Tensor:
        denominator = np.maximum(self.suffix[positions], np.finfo(np.float32).tiny)
        if self.stride != 1:
            denominator = np.maximum(denominator, values)
        scores = torch.from_numpy((values / denominator).astype(np.float32)).to(index.device)
        return torch.where(kept.to(index.device), scores, 0.0)

    def knot_lamps(self) -> np.ndarray:
        """The LAMP score of every entry of :attr:`sorted` (ascending, as the entries are)."""
        positions = np.searchsorted(self.sorted, self.sorted, side="left")
        denominator = np.maximum(np.maximum(self.suffix[positions], self.sorted), np.finfo(np.float32).tiny)
        return np.maximum.accumulate(self.sorted / denominator)

    def percentile(self, index: Tensor) -> Tensor:
        """Rank of ``|w|`` among the kept weights, over ``kept - 1``, in ``[0, 1]`` (0 if pruned)."""
        _, positions, kept = self._positions(index)
        return self._percentile(index, positions, kept)

    def _percentile(self, index: Tensor, positions: np.ndarray, kept: Tensor) -> Tensor:
        ranks = torch.from_numpy(positions.astype(np.float32) / max(len(self.sorted) - 1, 1)).to(index.device)
        return torch.where(kept.to(index.device), ranks, 0.0)


class PriorScores:
    """Formula prior scores of one event, tensor by tensor (higher = keep); only the last tensor is cached.

    On a model of more than :data:`CUT_SAMPLE` weights (:func:`exact_cuts`), a tensor's full LAMP scores
    (:meth:`layer`, :meth:`full`) are its step's: ``w**2`` scaled so that the global cut falls in
    each tensor where LAMP's cut falls, estimated from every tensor's :class:`SortedSquares`
    (:meth:`lamp_cuts`). They select the same weights as LAMP's scores for this event's target
    (every tensor's order is ``|w|`` under both), without a full sort of any tensor. :meth:`at`
    gives LAMP's own scores (estimated on large tensors, see :class:`SortedSquares`).

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
        self._lamp_cuts: tuple[float, dict[str, float]] | None = None

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
        return {name: self.tensor(prior, name) for name in self.inputs.weights}

    def tensor(self, prior: str, name: str) -> Tensor:
        """The prior's scores of tensor ``name``, a new tensor (not cached, unlike :meth:`layer`)."""
        return self._compute(prior, name)

    def tensor_at(self, prior: str, name: str, index: Tensor) -> Tensor:
        """:meth:`tensor`'s scores at the flat entries ``index``, bit for bit, from those entries alone where it can.

        It differs from :meth:`at` for LAMP only, whose :meth:`tensor` on a large model is the
        step's scaled squares. On a 5M-entry tensor, reading a global cut's sample of a few
        thousand entries this way skips scoring the whole tensor (about 20 ms for Taylor).

        Example:
            >>> w = {"a": torch.tensor([[1.0, -3.0], [2.0, 0.5]])}
            >>> priors = PriorScores(ScoreInputs(w, {"a": torch.ones(2, 2, dtype=torch.bool)}))
            >>> index = torch.tensor([3, 0])
            >>> all(torch.equal(priors.tensor_at(p, "a", index), priors.tensor(p, "a").reshape(-1)[index])
            ...     for p in PRIORS)
            True
        """
        if prior != "lamp":
            return self.at(prior, name, index)
        if exact_cuts(self.inputs.masks):  # LAMP's exact scores need the whole tensor
            full = self.tensor(prior, name).reshape(-1)
            return full[index.to(full.device)]
        weight = self.inputs.weights[name].detach()
        index = index.to(weight.device)
        mask = self.inputs.masks[name].reshape(-1).to(weight.device)[index]
        return self._step_squares(name, weight.reshape(-1)[index].float(), mask)

    def lamp_cuts(self) -> tuple[float, dict[str, float]]:
        """LAMP's global cut for this event's step, and each tensor's ``w**2`` at it (computed once).

        Every tensor's :class:`SortedSquares` gives the LAMP score of its sorted entries, each
        standing for as many kept weights as its stride (each tensor sampled to its share of
        :data:`SQUARES_SAMPLE` entries in all); the cut is the score below which the
        step's count of weights lies, and a tensor's cut the largest square whose score is at
        most it (``-1``: the step takes none of it).
        """
        if self._lamp_cuts is None:
            inputs = self.inputs
            step = step_size(inputs.masks, inputs.target_sparsity)
            knots: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}  # sorted squares, their LAMP, stride
            kept_total = max(1, self.kept_total())
            for name, mask in inputs.masks.items():
                share = max(1024, SQUARES_SAMPLE * inputs.kept[name] // kept_total)
                squares = SortedSquares(inputs.weights[name], mask, exact=share, sample=share)
                if squares.kept:
                    knots[name] = (squares.sorted, squares.knot_lamps(), squares.stride)
            threshold = -1.0
            if knots and step > 0:
                lamps = np.concatenate([lamps_of for _, lamps_of, _ in knots.values()])
                counts = np.concatenate([np.full(len(v), stride) for v, _, stride in knots.values()])
                order = np.argsort(lamps, kind="stable")
                covered = np.cumsum(counts[order])
                threshold = float(lamps[order][min(len(order) - 1, int(np.searchsorted(covered, step)))])
            cuts = {}
            for name, (values, lamps_of, _) in knots.items():
                last = int(np.searchsorted(lamps_of, threshold, side="right")) - 1
                cuts[name] = float(values[last]) if last >= 0 else -1.0
            self._lamp_cuts = (threshold, cuts)
        return self._lamp_cuts

    def kept_total(self) -> int:
        """Kept weights over every tensor of the event (counted once)."""
        return sum(self.inputs.kept.values())

    def release(self) -> None:
        """Drop the cached tensor's scores and sorted squares; they are computed again if asked for.

        The cache holds up to about 0.4x of the largest tensor's memory (its :class:`SortedSquares`
        and one prior's scores); an event releases it before it measures its candidate steps,
        which read the priors through :meth:`tensor` and :meth:`tensor_at` alone.
        """
        self._switch("")

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
            mask = inputs.masks[name]
            if exact_cuts(inputs.masks):
                return lamp_scores(w, mask)
            return self._step_squares(name, w, mask.to(w.device))
        if prior == "taylor":
            return taylor_scores(w, fisher)
        if prior == "taylor2":
            grad = inputs.grad_mean[name].float() if inputs.grad_mean is not None else torch.zeros_like(w)
            return taylor2_scores(w, grad, fisher, fisher_first=True)
        if prior == "wanda":
            norms = inputs.input_rms or inputs.input_norms or {}
            return wanda_scores(w, norms.get(name), transposed=name in inputs.transposed)
        raise ValueError(f"Unknown prior {prior!r}; expected one of {', '.join(PRIORS)}.")

    def _step_squares(self, name: str, w: Tensor, mask: Tensor) -> Tensor:
        """A large model's LAMP scores of the weights ``w`` of tensor ``name``: squares scaled to the step's cut."""
        threshold, cuts = self.lamp_cuts()
        cut = cuts.get(name, -1.0)
        scaled = w.pow(2)  # a new tensor, scaled in place
        if cut > 0:  # this tensor's cut lands on the global one
            scaled.mul_(threshold / cut)
        else:  # the step takes none of it: every kept weight above the global cut
            scaled.add_(2 * threshold + 1.0)
        return scaled.masked_fill_(~mask, 0.0)


class KeptSample:
    """A seeded sample of the kept weights' positions, :data:`KEPT_SAMPLE` in all, for global cuts.

    Each tensor gives its share of the sample (by kept count), drawn with replacement from
    ``generator``. Drawn once per event, it estimates the global cut of any scores from those
    positions alone: no copy of every score, and no sort.

    Args:
        masks: the event's masks (``True`` = kept).
        generator: the event's generator.
        size: the sample's size.

    Example:
        >>> masks = {"a": torch.ones(100, dtype=torch.bool)}
        >>> sample = KeptSample(masks, torch.Generator().manual_seed(0))
        >>> scores = {"a": torch.arange(100.0)}
        >>> 40 < sample.quantile(lambda name, where: scores[name][where], 0.5) < 60
        True
    """

    def __init__(self, masks: Mapping[str, Tensor], generator: torch.Generator, size: int = KEPT_SAMPLE) -> None:
        kept = {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}
        total = sum(kept.values())
        self.positions: dict[str, Tensor] = {}
        for name, mask in masks.items():
            if kept[name]:
                count = math.ceil(size * kept[name] / total)
                ranks = torch.randint(0, kept[name], (count,), generator=generator).sort().values
                self.positions[name] = _kept_positions(mask.reshape(-1), ranks.to(mask.device))

    def quantile(self, scores_at: Callable[[str, Tensor], Tensor], quantile: float) -> float:
        """The ``quantile`` (an order statistic of the sample) of the kept weights' scores.

        ``scores_at(name, positions)`` gives tensor ``name``'s scores at the flat ``positions``.
        """
        values = torch.cat([scores_at(name, where).float().cpu() for name, where in self.positions.items()])
        if not len(values):
            return 0.0
        k = min(len(values), max(1, math.ceil(min(1.0, max(0.0, quantile)) * len(values))))
        return float(torch.kthvalue(values, k).values)


def _systematic(flat: Tensor, flat_mask: Tensor, kept: int, size: int, last_dim: int) -> Tensor:
    """The kept entries among every k-th entry of ``flat`` (about ``size`` of ``kept``), in flat order.

    ``k`` is coprime with ``last_dim`` (the tensor's last dimension), so the sample does not keep
    landing in the same few columns.
    """
    k = max(1, kept // size)
    while math.gcd(k, last_dim) != 1:
        k += 1
    return flat[::k][flat_mask[::k]]


def _kept_positions(flat_mask: Tensor, ranks: Tensor) -> Tensor:
    """Flat positions of the kept entries of ranks ``ranks`` (ascending) in ``flat_mask``.

    The mask is read in blocks of :data:`KEPT_SAMPLE` entries (no index of every kept weight).
    """
    parts, seen = [], 0
    for start in range(0, flat_mask.numel(), KEPT_SAMPLE):
        where = flat_mask[start : start + KEPT_SAMPLE].nonzero().squeeze(1)
        low, high = torch.searchsorted(ranks, torch.tensor([seen, seen + len(where)], device=ranks.device)).tolist()
        parts.append(where[ranks[low:high] - seen] + start)
        seen += len(where)
    return torch.cat(parts)


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
    ranking, which is estimated from a sample of :data:`KEPT_SAMPLE` kept weights drawn from
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
    kept = {name: int(torch.count_nonzero(mask)) for name, mask in masks.items()}
    total = sum(kept.values())
    step = step_size(masks, target_sparsity)
    if step == 0 or total == 0:
        return {name: torch.zeros(0, dtype=torch.long) for name in masks}
    fraction = min(1.0, window * step / total)
    if fraction * total <= max_rows:
        return {
            name: _rank_range(priors, prior, name, masks[name], 0, min(count, math.ceil(fraction * count)))
            for name, count in kept.items()
        }
    threshold = _prior_cut(priors, prior, masks, total, step, generator)
    bands = {}
    for name, mask in masks.items():  # one tensor's prior scores at a time, for its cut and its band
        values = priors.layer(prior, name).reshape(-1)
        cut = float(torch.count_nonzero((values <= threshold) & mask.reshape(-1).to(values.device)))
        half = max_rows * kept[name] / total / 2
        low = max(0, math.floor(cut - half))
        bands[name] = _rank_range(priors, prior, name, mask, low, min(kept[name], max(low, math.floor(cut + half))))
    return bands


def _prior_cut(
    priors: PriorScores, prior: str, masks: Mapping[str, Tensor], total: int, step: int, generator: torch.Generator
) -> float:
    """The prior's score at which its global ranking of the ``total`` kept weights removes ``step`` of them."""
    if total <= CUT_SAMPLE:  # a small model: the exact step-th value of every kept weight
        pool = torch.cat(
            [priors.layer(prior, name).reshape(-1)[mask.reshape(-1)].float().cpu() for name, mask in masks.items()]
        ).numpy()
        pool.partition(step - 1)  # in place: ``torch.kthvalue`` would hold a copy and int64 indices besides
        return float(pool[step - 1])
    return KeptSample(masks, generator).quantile(functools.partial(priors.tensor_at, prior), step / total)


def _rank_range(priors: PriorScores, prior: str, name: str, mask: Tensor, low: int, high: int) -> Tensor:
    """Flat indices of the kept weights ranked ``low`` to ``high - 1`` (ascending, ties by index) under the prior.

    On a tensor of more than :data:`EXACT_SQUARES` kept weights the two edge values are read off a
    systematic sample of its kept scores (as :class:`SortedSquares` samples), so the band holds
    about ``high - low`` weights (never more) and no copy of the tensor's kept scores is sorted.
    """
    if high <= low:
        return torch.zeros(0, dtype=torch.long, device=mask.device)
    values = priors.layer(prior, name).reshape(-1).float()
    flat_mask = mask.reshape(-1).to(values.device)
    kept = int(torch.count_nonzero(flat_mask))
    if kept <= EXACT_SQUARES:
        ordered = np.sort(values[flat_mask].cpu().numpy())
        lo, hi = float(ordered[low]), float(ordered[high - 1])
        parts = []
        for edge in sorted({lo, hi}):
            below = int(np.searchsorted(ordered, edge, side="left"))
            upto = int(np.searchsorted(ordered, edge, side="right"))
            need = min(high, upto) - max(low, below)
            parts.append(((values == edge) & flat_mask).nonzero().squeeze(1)[:need])
        parts.append(((values > lo) & (values < hi) & flat_mask).nonzero().squeeze(1))
    else:
        last_dim = priors.inputs.weights[name].shape[-1] if priors.inputs.weights[name].ndim else 1
        ordered = np.sort(_systematic(values, flat_mask, kept, SQUARES_SAMPLE, last_dim).cpu().numpy())
        last = len(ordered) - 1
        lo = float(ordered[min(last, low * len(ordered) // kept)])
        hi = float(ordered[min(last, (high - 1) * len(ordered) // kept)])
        inside = ((values > lo) & (values < hi) & flat_mask).nonzero().squeeze(1)[: high - low]
        room = high - low - len(inside)
        at_hi = ((values == hi) & flat_mask).nonzero().squeeze(1) if hi > lo else inside[:0]
        at_lo = ((values == lo) & flat_mask).nonzero().squeeze(1)
        take_hi = min(len(at_hi), room // 2 if len(at_lo) else room)
        parts = [at_lo[: room - take_hi], at_hi[:take_hi], inside]
    band = torch.cat(parts)
    return band[torch.sort(values[band], stable=True).indices]
