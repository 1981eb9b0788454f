"""From scores and a target to masks: global allocation with per-layer floors.

Selection is exact and deterministic: it prunes exactly ``floor(target * total)`` weights (never
more, so the target is never overshot), breaks ties between equal scores by position, never
revives a pruned weight, and keeps at least a floor of each layer so that global scores cannot
empty a layer at extreme sparsity.

The global ranking never copies every score: a seeded sample of the scores brackets the threshold,
exact counts slice by slice confirm the bracket, and only the few scores inside it are ranked. A
pruning event needs little memory beyond the new masks, however large the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

_SLICE = 1 << 20  # entries scanned at once: this many, or a quarter of the model's (_SLICES) if more.
_SLICES = 4  # Few, large slices (each operation has a fixed cost); their temporaries stay a fraction.
_SAMPLE = 1 << 14  # scores drawn to bracket the threshold
_MARGIN = 2.0  # half-width of a bracket in the sample, in sqrt(sample size): 4 standard errors
_MIN_GATHER = 1 << 16  # a bracket of at most this many scores (or 1/16 of them) is ranked directly
_MAX_ROUNDS = 16  # bracketing rounds before ranking whatever the bracket holds (not reached in practice)
_SEED = 0


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
    missing = k - int(torch.count_nonzero(above))
    at_index = at.nonzero().view(-1)[:missing]
    above[at_index] = True
    return above


def layer_floors(
    masks: Mapping[str, Tensor], min_density: float, kept: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Minimum number of weights each layer keeps: ``ceil(min_density * numel)``, capped at what it has.

    ``kept``: each mask's count of ``True``, where the caller has it (else counted here).

    Example:
        >>> layer_floors({"a": torch.ones(1000, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)}, 0.01)
        {'a': 10, 'b': 1}
    """
    return {
        name: min(
            kept[name] if kept is not None else int(torch.count_nonzero(mask)),
            math.ceil(min_density * mask.numel() - 1e-9),
        )
        for name, mask in masks.items()
    }


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
        if not _finite(scores[name]):
            raise ValueError(f"Scores for {name!r} contain NaN or inf; refusing to compute masks from them.")
    total = sum(masks[n].numel() for n in names)
    keep = total - pruned_count(target_sparsity, total)
    kept_now = sum(int(torch.count_nonzero(masks[n])) for n in names)  # (a bool sum would copy to int64)
    if keep >= kept_now:
        return {n: masks[n].clone() for n in names}

    floors = layer_floors(masks, min_density)
    size = max(_SLICE, total // _SLICES)
    parts: list[_Part] = []
    for name in names:
        flat_scores = scores[name].reshape(-1)
        kept = masks[name].reshape(-1).to(flat_scores.device)
        every = bool(kept.all())
        part = _Part(flat_scores, None if every else kept, torch.zeros_like(kept), size)
        if floors[name] > 0:
            _keep_floor(part, floors[name])
            part = replace(part, forced=True)
        parts.append(part)
    n_forced = sum(int(torch.count_nonzero(part.chosen)) for part in parts if part.forced)
    if n_forced > keep:
        raise ValueError(
            f"`target_sparsity`={target_sparsity} keeps {keep} of {total} weights, but the per-layer floor "
            f"`min_layer_density`={min_density} alone keeps {n_forced}. Lower `min_layer_density` or the target."
        )
    _select(parts, keep - n_forced, kept_now - n_forced)
    return {name: part.chosen.view_as(masks[name]) for part, name in zip(parts, names, strict=True)}


def _finite(scores: Tensor) -> bool:
    """Whether no score is NaN or infinite (``aminmax`` propagates NaN), without a copy of the scores."""
    if not scores.is_floating_point() or scores.numel() == 0:
        return bool(torch.isfinite(scores).all())
    low, high = torch.aminmax(scores)
    return bool(torch.isfinite(low) & torch.isfinite(high))


@dataclass(frozen=True, eq=False)
class _Part:
    """One tensor in a ranking: its candidates are its entries ``kept``, less those ``chosen`` before.

    ``scores`` and ``kept`` are flat and read only (``kept=None``: every entry); ``chosen`` is the
    flat new mask, which selection sets; ``forced``: it held entries before this selection (the
    floor). Scores rank as float32, as in :func:`top_k_mask` over their concatenation.
    """

    scores: Tensor
    kept: Tensor | None
    chosen: Tensor
    size: int  # entries per slice
    forced: bool = False

    def slices(self, *, or_chosen: bool = False) -> Iterator[tuple[slice, Tensor, Tensor | None]]:
        """Each slice of the tensor in order: where it is, its float32 scores, its candidates (``None``: all).

        With ``or_chosen``, the candidates include entries already chosen, for a caller that only
        ORs a subset of them into ``chosen``: the same result for one operation less.
        """
        for start in range(0, self.scores.numel(), self.size):
            where = slice(start, start + self.size)
            candidates = None if self.kept is None else self.kept[where]
            if self.forced and not or_chosen:
                chosen = self.chosen[where]
                candidates = ~chosen if candidates is None else torch.gt(candidates, chosen)
            yield where, self.scores[where].float(), candidates

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor | None]:
        """The float32 scores at ``positions`` and which of them are candidates (``None``: all)."""
        candidates = None if self.kept is None else self.kept[positions]
        if self.forced:
            chosen = self.chosen[positions]
            candidates = ~chosen if candidates is None else torch.gt(candidates, chosen)
        return self.scores[positions].float(), candidates


def _keep_floor(part: _Part, floor: int) -> None:
    """Choose the tensor's ``floor`` highest kept entries (``floor`` at most what it keeps)."""
    wide = part.scores.is_floating_point() and torch.finfo(part.scores.dtype).max > torch.finfo(torch.float32).max
    if wide and any(bool(_only(v == -math.inf, c).any()) for _, v, c in part.slices()):
        # Kept float64 scores beyond float32's range read -inf and tie with the pruned entries,
        # which rank as -inf here: keep that ranking exactly as it always was.
        kept = torch.ones_like(part.chosen) if part.kept is None else part.kept
        ranked = torch.where(kept, part.scores.float(), torch.tensor(-math.inf, device=part.scores.device))
        part.chosen.copy_(top_k_mask(ranked, floor) & kept)
        return
    _select([part], floor, part.scores.numel() if part.kept is None else int(torch.count_nonzero(part.kept)))


def _only(selected: Tensor, candidates: Tensor | None) -> Tensor:
    """``selected`` restricted to ``candidates``, in place."""
    return selected if candidates is None else selected.logical_and_(candidates)


def _select(parts: Sequence[_Part], k: int, n: int) -> None:
    """Choose the ``k`` highest of the ``n`` candidates of ``parts``, as :func:`top_k_mask` would.

    Same threshold, same ties (to the lower position in ``parts`` order, then flat index), without
    concatenating the candidates.
    """
    if k == 0:
        return
    if k == n:
        for part in parts:
            for where, _, candidates in part.slices(or_chosen=True):
                if candidates is None:
                    part.chosen[where] = True
                else:
                    chosen = part.chosen[where]
                    chosen |= candidates
        return
    threshold, above, tied = _kth_highest(parts, k, n)
    ties = k - above  # of the ``tied`` candidates equal to the threshold, the first ``ties`` are chosen
    for part in parts:
        for where, values, candidates in part.slices(or_chosen=ties in (0, tied)):
            if ties == 0:
                picked = _only(values > threshold, candidates)
            elif ties == tied:  # every tie left is chosen
                picked = _only(values >= threshold, candidates)
            else:
                picked = _only(values > threshold, candidates)
                equal = _only(values == threshold, candidates)  # (true candidates: or_chosen is off here)
                count = int(torch.count_nonzero(equal))
                if count > ties:
                    equal[equal.nonzero().view(-1)[ties:]] = False
                picked.logical_or_(equal)
                ties, tied = ties - min(count, ties), tied - count
            chosen = part.chosen[where]
            chosen |= picked


def _kth_highest(parts: Sequence[_Part], k: int, n: int) -> tuple[float, int, int]:
    """The ``k``-th highest candidate score (``0 < k < n``), how many score above it and how many equal it.

    Keeps a bracket ``[lo, hi]`` known to hold it, with ``above`` candidates over ``hi`` and
    ``inside`` within. Each round samples the bracket, proposes a narrower one around the sample's
    estimate and counts exactly; wherever the threshold turns out to be, the bracket loses at least
    the candidates equal to the proposal's bounds, so the rounds end. Only the candidates left in the
    bracket are then ranked (``kthvalue``).
    """
    lo, hi, above, inside = -math.inf, math.inf, 0, n
    budget = max(_MIN_GATHER, n // 16)
    generator = torch.Generator().manual_seed(_SEED)
    for _ in range(_MAX_ROUNDS):
        if inside <= budget:
            break
        low, high = _propose(parts, lo, hi, k - above, inside, generator)
        over, at_least, values = _count(parts, low, high, budget)
        if over >= k:  # the threshold is above the proposal
            lo, inside = _adjacent(high, math.inf), over - above
        elif at_least < k:  # below it
            hi, above, inside = _adjacent(low, -math.inf), at_least, above + inside - at_least
        elif values is not None:
            return _rank(values, k - over, over)
        else:  # within it, but among more equal scores than can be ranked directly
            at_high, at_low = _count_equal(parts, high, low)
            if over + at_high >= k:
                return high, over, at_high
            if at_least - at_low < k:
                return low, at_least - at_low, at_low
            lo, hi = _adjacent(low, math.inf), _adjacent(high, -math.inf)
            above, inside = over + at_high, at_least - at_low - over - at_high
    over, _, values = _count(parts, lo, hi, n)
    assert values is not None  # a limit of n is never exceeded
    return _rank(values, k - over, over)


def _propose(
    parts: Sequence[_Part], lo: float, hi: float, rank: int, inside: int, generator: torch.Generator
) -> tuple[float, float]:
    """A narrower bracket ``(low, high)`` likely to hold the ``rank``-th highest score in ``[lo, hi]``.

    Both bounds are scores of candidates inside ``[lo, hi]``, which is what makes the rounds end.
    """
    ordered = _draw(parts, lo, hi, inside, generator).sort(descending=True).values
    size = ordered.numel()
    guess = (rank - 0.5) / inside * size
    spread = _MARGIN * math.sqrt(size) + 1

    def at(position: int) -> float:
        return float(ordered[min(size - 1, max(0, position))])

    return at(math.ceil(guess + spread)), at(math.floor(guess - spread))


def _draw(parts: Sequence[_Part], lo: float, hi: float, inside: int, generator: torch.Generator) -> Tensor:
    """About ``_SAMPLE`` scores of candidates in ``[lo, hi]`` (at least one), deterministically."""
    device = parts[0].scores.device
    total = sum(part.scores.numel() for part in parts)
    if 8 * inside >= total:  # common enough for seeded random positions to hit the bracket
        draws = []
        for part in parts:
            numel = part.scores.numel()
            if numel == 0:
                continue
            positions = torch.randint(numel, (math.ceil(_SAMPLE * numel / inside),), generator=generator)
            values, candidates = part.at(positions.to(part.scores.device))
            draws.append(values[_within(values, candidates, lo, hi)].to(device))
        sample = torch.cat(draws)
        if sample.numel() > 0:
            return sample
    draws = []
    step, seen = max(1, inside // _SAMPLE), 0  # else every step-th one in order, in one pass
    for part in parts:
        for _, values, candidates in part.slices():
            within = values[_within(values, candidates, lo, hi)]
            draws.append(within[(-seen) % step :: step].to(device))
            seen += within.numel()
    return torch.cat(draws)


def _within(values: Tensor, candidates: Tensor | None, lo: float, hi: float) -> Tensor:
    """Which ``values`` are of candidates and in ``[lo, hi]``."""
    inside = torch.ones_like(values, dtype=torch.bool) if candidates is None else candidates.clone()
    if lo > -math.inf:
        inside.logical_and_(values >= lo)
    if hi < math.inf:
        inside.logical_and_(values <= hi)
    return inside


def _count(parts: Sequence[_Part], low: float, high: float, limit: int) -> tuple[int, int, Tensor | None]:
    """Candidates above ``high``, candidates at least ``low``, and the scores in ``[low, high]`` in order.

    The scores come back only if there are at most ``limit`` of them.
    """
    device = parts[0].scores.device
    over = inside = 0  # candidates above ``high``, and in ``[low, high]``
    within: list[Tensor] | None = []  # their scores, until there are more than ``limit``
    for part in parts:
        for _, values, candidates in part.slices():
            higher = _only(values > high, candidates)
            between = _only(values >= low, candidates).logical_xor_(higher)
            over += int(torch.count_nonzero(higher))
            if within is None:
                inside += int(torch.count_nonzero(between))
                continue
            within.append(values[between].to(device))
            inside += within[-1].numel()
            if inside > limit:
                within = None
    return over, over + inside, None if within is None else torch.cat(within)


def _count_equal(parts: Sequence[_Part], *bounds: float) -> list[int]:
    """How many candidates score exactly each of ``bounds``."""
    counts = [0] * len(bounds)
    for part in parts:
        for _, values, candidates in part.slices():
            for i, bound in enumerate(bounds):
                counts[i] += int(torch.count_nonzero(_only(values == bound, candidates)))
    return counts


def _rank(values: Tensor, rank: int, above: int) -> tuple[float, int, int]:
    """The ``rank``-th highest of ``values``; ``above`` plus how many exceed it; how many equal it."""
    threshold = torch.kthvalue(values, values.numel() - rank + 1).values
    return (
        float(threshold),
        above + int(torch.count_nonzero(values > threshold)),
        int(torch.count_nonzero(values == threshold)),
    )


def _adjacent(bound: float, toward: float) -> float:
    """The next float32 after ``bound`` toward ``toward``: scores are float32, so none lie in between."""
    return float(torch.nextafter(torch.tensor(bound, dtype=torch.float32), torch.tensor(toward, dtype=torch.float32)))
