"""The learned weight importance scorer: features -> a scikit-learn model -> importance.

At every pruning event :class:`LearnedScorer`:

1. builds :class:`~lightning_autoprune.scoring.learned.features.FeatureTable` for the model;
2. measures labels: stratified group ablations at each tensor's pruning frontier
   (:mod:`~lightning_autoprune.scoring.learned.labels`), on calibration batches carved from the
   training data;
3. fits the estimator on the rows of this event and of every earlier one (online across events),
   keeping a quarter of this event's groups out;
4. predicts every kept weight's loss change per weight, tensor by tensor in chunks;
5. checks itself on the held-out groups: Spearman correlation and precision@k of the learned
   scores against the measured labels, next to the same numbers for the formula priors
   (magnitude, LAMP, Taylor, second-order Taylor). It then blends its rank with the best prior's
   rank, the weight chosen on those groups, and **falls back to the prior, with a warning**, when
   the prior predicts the held-out ablations better than it does
   (:func:`~lightning_autoprune.scoring.learned.fidelity.judge`, shared with the unit scorer).

Selection afterwards is the same global top-k, with the per-layer floor
(``min_layer_density``), as for every scorer.

The estimator is either the pretrained default shipped in the package (trained by
``scripts/train_importance_model.py`` on a zoo of small models; refined during the run by a
ridge correction fitted to the run's own labels), a user's skops file, or any scikit-learn
regressor or classifier named by import path (cloned, fitted on the run's own labels).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.scoring.base import Progress, ScoreInputs
from lightning_autoprune.scoring.formulas import lamp_scores, magnitude_scores, taylor2_scores, taylor_scores
from lightning_autoprune.scoring.learned.estimators import RefinedModel, check_feature_count, resolve_estimator
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES, FeatureTable
from lightning_autoprune.scoring.learned.fidelity import (
    fit_estimator,
    judge,
    predict_scores,
    rank_labels,
    spearman,
    warn_fallback,
)
from lightning_autoprune.scoring.learned.labels import Group, ablation_labels, frontier_groups, step_size
from lightning_autoprune.scoring.learned.persistence import load_importance_model

#: The pretrained default importance model shipped with the package.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[2] / "data" / "importance_default.skops"
#: Formula priors the learned scores are checked against.
PRIORS: tuple[str, ...] = ("magnitude", "lamp", "taylor", "taylor2")
#: The prior the learned scores are blended with, and fall back to: first-order Taylor, the
#: strongest formula of the benchmark protocol at high sparsity (BENCHMARKS.md). A fixed prior keeps
#: the comparison fair; picking the best of four on the same held-out groups would favour the priors.
BLEND_PRIOR = "taylor"
#: Candidate weights of the learned rank in the blend with the best prior.
BLEND_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Rows predicted at once (bounds the memory of one chunk of the feature table).
CHUNK_ROWS = 1 << 18
#: The estimator predicts the rows of each tensor's frontier window: its lowest-scoring kept
#: weights under the prior, ``WINDOW`` times the share of the tensor the step removes on average.
#: Weights above the window rank above every weight inside it, in the prior's order.
WINDOW = 3.0
#: At most this many rows are predicted per event (the window shrinks to fit), which bounds the
#: time of an event on large models; the rest are ordered by the prior.
MAX_PREDICTED_ROWS = 1_000_000
#: Fewer groups than this at an event (a nearly empty model) leave too little to fit and check;
#: the event then uses the prior.
MIN_GROUPS = 8
#: Members of each group whose feature rows (with the group's label) are used for fitting.
MEMBER_ROWS = 8
#: Weights sampled to map raw scores to global quantiles for the blend.
QUANTILE_SAMPLE = 16384


class LearnedScorer:
    """Weight importance from a scikit-learn model trained on measured group ablations; see the module docstring.

    Args:
        estimator: import path of a scikit-learn regressor or classifier to fit on the run's own
            labels. ``None``: the pretrained default (:data:`DEFAULT_MODEL_PATH`), refined online.
        model_path: a skops file with a fitted importance model to start from instead of the
            shipped default (refined online like it). Exclusive with ``estimator``.
        label_groups: group ablations measured per event (the labelling budget). Each costs one
            forward pass over the held-out calibration batches.
        holdout: fraction of each event's groups kept out of fitting, for fidelity and the blend.

    Example:
        >>> scorer = LearnedScorer(estimator="sklearn.linear_model.Ridge", label_groups=32)
        >>> scorer.needs_context
        True
    """

    needs_gradients = True
    needs_context = True
    needs_activations = True

    def __init__(
        self,
        estimator: str | None = None,
        model_path: str | None = None,
        label_groups: int = 128,
        holdout: float = 0.25,
    ) -> None:
        if estimator is not None and model_path is not None:
            raise ValueError(
                f"Pass either `estimator` (fit from scratch) or a model file (start from it), not both; got "
                f"estimator={estimator!r} and model file {model_path!r}."
            )
        if label_groups < 16:
            raise ValueError(
                f"`label_groups` must be >= 16 (a quarter is held out to check fidelity), got {label_groups}."
            )
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"`holdout` must be in (0, 1), got {holdout}.")
        self.label_groups = label_groups
        self.holdout = holdout
        self.template: Any = resolve_estimator(estimator) if estimator is not None else None
        self.pretrained: Any = None
        if self.template is None:
            self.pretrained = load_importance_model(model_path or DEFAULT_MODEL_PATH)
            check_feature_count(self.pretrained, model_path or str(DEFAULT_MODEL_PATH))
        self.rows_x: list[np.ndarray] = []  # one block of feature rows per event, all groups
        self._base_predictions: list[np.ndarray] = []  # the pretrained model on each block (rows never change)
        self.rows_y: list[np.ndarray] = []
        self.diagnostics: list[dict[str, Any]] = []
        self.model: Any = None
        self._last_rows: tuple[np.ndarray, np.ndarray] | None = None
        #: Receives a progress line during long label measurements (the callback sets it when verbose).
        self.progress: Progress | None = None

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The labelled rows of every event so far (the model is refitted from them, so resume is exact)."""
        return {
            "rows_x": [torch.from_numpy(x) for x in self.rows_x],
            "rows_y": [torch.from_numpy(y) for y in self.rows_y],
            "diagnostics": copy.deepcopy(self.diagnostics),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; rows with another feature count are refused."""
        rows_x = [x.numpy() for x in state.get("rows_x", [])]
        for x in rows_x:
            if x.shape[1] != len(FEATURE_NAMES):
                raise ValueError(
                    f"The checkpoint's learned-importance rows have {x.shape[1]} features; this version computes "
                    f"{len(FEATURE_NAMES)}. Start the run again, or resume it with the version that wrote it."
                )
        self.rows_x = rows_x
        self._base_predictions = []
        self.rows_y = [y.numpy() for y in state.get("rows_y", [])]
        self.diagnostics = copy.deepcopy(list(state.get("diagnostics", [])))

    # ---------------------------------------------------------------------------------- scoring
    def score(self, inputs: ScoreInputs) -> dict[str, Tensor]:
        """Learned (or blended, or fallback) scores for every weight; higher = keep."""
        priors = _Priors(inputs)
        if inputs.params is None or inputs.loss_fn is None or step_size(inputs.masks, inputs.target_sparsity) == 0:
            return priors.full("lamp")
        table = FeatureTable(inputs)
        groups = frontier_groups(
            priors.full("taylor"), inputs.masks, inputs.target_sparsity, self.label_groups, inputs.generator
        )
        if len(groups) < MIN_GROUPS:  # too few kept weights left to learn from: use the prior
            return priors.full(BLEND_PRIOR)
        x, owner = _member_rows(table, groups, inputs.generator)
        y = rank_labels(ablation_labels(groups, inputs.params, inputs.loss_fn, self._report_progress))
        order = torch.randperm(len(groups), generator=inputs.generator).numpy()
        n_hold = max(4, round(self.holdout * len(groups)))
        hold = order[:n_hold]
        train_rows = ~np.isin(owner, hold)
        fit_x = np.concatenate([*self.rows_x, x[train_rows]])
        fit_y = np.concatenate([*self.rows_y, y[owner][train_rows]])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=inputs.generator))
        self.model = self._fit(fit_x, fit_y, seed, self._base_rows(x, train_rows))
        self.rows_x.append(x)
        self.rows_y.append(y[owner])
        self._last_rows = (x, y[owner])

        windows = _frontier_windows(priors, inputs.masks, inputs.target_sparsity)
        learned = {name: self._predict(table, name, windows[name]) for name in inputs.weights}
        held = [groups[i] for i in hold]
        truth = y[hold]
        sample = _quantile_sample(windows, inputs.generator)  # the blend happens inside the windows
        maps: dict[str, _QuantileMap] = {}

        def on_quantiles(prior: str) -> tuple[np.ndarray, np.ndarray]:
            maps["learned"] = _QuantileMap(_sampled(sample, lambda name: learned[name]))
            maps["prior"] = _QuantileMap(_sampled(sample, lambda name: priors.layer(prior, name)))
            return (
                _group_scores(held, lambda name: maps["learned"](learned[name])),
                _group_scores(held, lambda name: maps["prior"](priors.layer(prior, name))),
            )

        verdict = judge(
            _group_scores(held, lambda name: learned[name]),
            {prior: _group_scores(held, functools.partial(priors.layer, prior)) for prior in PRIORS},
            truth,
            candidates=(BLEND_PRIOR,),
            blend=on_quantiles,
            weights=tuple(reversed(BLEND_WEIGHTS)),  # ties go to the larger learned weight
        )
        best_prior, alpha = verdict.best_prior, verdict.blend_weight
        self.diagnostics.append(
            {
                "target_sparsity": inputs.target_sparsity,
                "groups": len(groups),
                "held_out": len(hold),
                "rows_fitted": len(fit_y),
                "fidelity": verdict.fidelity,
                "best_prior": best_prior,
                "blend_weight": alpha,
                "fell_back": verdict.fell_back,
            }
        )
        if verdict.fell_back:
            warn_fallback(
                f"Learned importance fell back to the {best_prior!r} prior at sparsity {inputs.target_sparsity:.4f}: "
                f"on {len(hold)} held-out group ablations its Spearman correlation "
                f"({verdict.fidelity['learned']['spearman']:.3f}) is below the prior's "
                f"({verdict.fidelity[best_prior]['spearman']:.3f}).",
                stacklevel=2,
            )
            return priors.full(best_prior)
        inside: dict[str, Tensor] = {}
        for name in inputs.weights:
            index = windows[name].reshape(-1).nonzero().squeeze(1)
            values = learned[name].reshape(-1)[index]
            if alpha < 1.0:  # quantile maps only on the window's weights
                prior_values = priors.layer(best_prior, name).reshape(-1)[index]
                values = alpha * maps["learned"](values) + (1 - alpha) * maps["prior"](prior_values)
            inside[name] = values
        # Each tensor loses as many weights as the prior would take from it; the learned scores
        # choose which ones (see prior_allocation).
        scores = _above_window(inside, windows, priors, best_prior)
        return {
            name: prior_allocation(scores[name], priors.layer(best_prior, name), inputs.masks[name])
            for name in inputs.weights
        }

    def _report_progress(self, done: int, total: int, seconds: float) -> None:
        if self.progress is not None:
            self.progress(
                f"[AutoPrune] measured {done}/{total} group ablations for the learned importance ({seconds:.0f} s)",
                done == total,
            )

    def feature_importances(self, repeats: int = 3, seed: int = 0, max_rows: int = 2048) -> dict[str, float]:
        """Permutation importance of each feature on the last event's rows: the drop in Spearman correlation.

        Uses at most ``max_rows`` of those rows (drawn with ``seed``), so the report stays cheap.
        Returns an empty dict before the first fitted event.
        """
        if self.model is None or self._last_rows is None:
            return {}
        x, y = self._last_rows
        rng = np.random.default_rng(seed)
        if len(y) > max_rows:
            keep = rng.choice(len(y), size=max_rows, replace=False)
            x, y = x[keep], y[keep]
        base = spearman(predict_scores(self.model, x), y)
        out: dict[str, float] = {}
        for j, name in enumerate(FEATURE_NAMES):
            drops = []
            for _ in range(repeats):
                shuffled = x.copy()
                shuffled[:, j] = rng.permutation(shuffled[:, j])
                drops.append(base - spearman(predict_scores(self.model, shuffled), y))
            out[name] = float(np.mean(drops))
        return out

    # -------------------------------------------------------------------------------- internals
    def _base_rows(self, x: np.ndarray, train_rows: np.ndarray) -> np.ndarray | None:
        """The pretrained model's predictions on every earlier block and this block's training rows.

        Each block is predicted once, not again at every later event (its rows never change).
        """
        if self.pretrained is None:
            return None
        while len(self._base_predictions) < len(self.rows_x):
            self._base_predictions.append(self.pretrained.predict(self.rows_x[len(self._base_predictions)]))
        current = np.asarray(self.pretrained.predict(x))
        base = np.concatenate([*self._base_predictions, current[train_rows]])
        self._base_predictions.append(current)
        return base

    def _fit(self, x: np.ndarray, y: np.ndarray, seed: int, base: np.ndarray | None = None) -> Any:
        if self.template is None:
            return RefinedModel(self.pretrained).fit(x, y, base_predictions=base)
        return fit_estimator(self.template, x, y, seed=seed)

    def _predict(self, table: FeatureTable, name: str, window: Tensor) -> Tensor:
        """Predictions for the weights in ``window`` (a boolean mask); 0 elsewhere (overwritten later)."""
        flat = window.reshape(-1)
        inside = flat.nonzero().squeeze(1)
        out = torch.zeros(flat.numel(), dtype=torch.float32, device=window.device)
        for start in range(0, len(inside), CHUNK_ROWS):
            chunk = inside[start : start + CHUNK_ROWS]
            rows = table.rows(name, chunk).cpu().numpy()
            out[chunk] = torch.from_numpy(predict_scores(self.model, rows).astype(np.float32)).to(out.device)
        return out.view_as(window)


def prior_allocation(scores: Tensor, prior: Tensor, mask: Tensor) -> Tensor:
    """Scores with the order of ``scores`` but the values of ``prior``, within one tensor's kept weights.

    The kept weight with the j-th highest score gets the tensor's j-th highest prior value, so a
    global selection over every tensor removes exactly as many weights from each tensor as the
    prior would, choosing them by ``scores``.

    Example:
        >>> keep = torch.ones(3, dtype=torch.bool)
        >>> prior_allocation(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([10.0, 20.0, 30.0]), keep)
        tensor([30., 10., 20.])
    """
    flat_scores, flat_prior, flat_mask = scores.reshape(-1), prior.reshape(-1).float(), mask.reshape(-1)
    out = flat_prior.clone()
    kept = flat_mask.nonzero().squeeze(1)
    if len(kept):
        by_score = kept[torch.sort(flat_scores[kept].float(), stable=True).indices]
        out[by_score] = torch.sort(flat_prior[kept], stable=True).values
    return out.view_as(scores)


class _Priors:
    """Formula prior scores, tensor by tensor, the last tensor cached (LAMP needs a sort per tensor)."""

    def __init__(self, inputs: ScoreInputs) -> None:
        self.inputs = inputs
        self._cache: dict[tuple[str, str], Tensor] = {}

    def layer(self, prior: str, name: str) -> Tensor:
        key = (prior, name)
        if key not in self._cache:
            if len(self._cache) >= 2 * len(PRIORS):
                self._cache.clear()
            self._cache[key] = self._compute(prior, name)
        return self._cache[key]

    def full(self, prior: str) -> dict[str, Tensor]:
        return {name: self._compute(prior, name) for name in self.inputs.weights}

    def _compute(self, prior: str, name: str) -> Tensor:
        w = self.inputs.weights[name].detach().float()
        fisher = self.inputs.grad_sq_mean[name].float() if self.inputs.grad_sq_mean is not None else torch.zeros_like(w)
        grad = self.inputs.grad_mean[name].float() if self.inputs.grad_mean is not None else torch.zeros_like(w)
        if prior == "magnitude":
            return magnitude_scores(w)
        if prior == "lamp":
            return lamp_scores(w, self.inputs.masks[name])
        if prior == "taylor":
            return taylor_scores(w, fisher)
        if prior == "taylor2":
            return taylor2_scores(w, grad, fisher, fisher_first=True)
        raise ValueError(f"Unknown prior {prior!r}; expected one of {', '.join(PRIORS)}.")


class _QuantileMap:
    """Maps raw scores to their approximate global quantile in ``[0, 1]`` by interpolating a sorted sample."""

    def __init__(self, sample: Tensor) -> None:
        self.sorted = torch.sort(sample.float()).values
        self.levels = torch.linspace(0.0, 1.0, len(self.sorted))

    def __call__(self, values: Tensor) -> Tensor:
        flat = values.reshape(-1).float()
        knots = self.sorted.to(flat.device)
        levels = self.levels.to(flat.device)
        if len(knots) < 2:
            return torch.full_like(values, 0.5, dtype=torch.float32)
        hi = torch.searchsorted(knots, flat).clamp(1, len(knots) - 1)
        lo = hi - 1
        span = (knots[hi] - knots[lo]).clamp_min(1e-30)
        t = ((flat - knots[lo]) / span).clamp(0.0, 1.0)
        return (levels[lo] + t * (levels[hi] - levels[lo])).view_as(values)


def _frontier_windows(priors: _Priors, masks: Mapping[str, Tensor], target_sparsity: float) -> dict[str, Tensor]:
    """Per tensor, the kept weights whose prior rank is in the frontier window (see :data:`WINDOW`)."""
    kept = {name: int(m.sum()) for name, m in masks.items()}
    total = sum(kept.values())
    share = step_size(masks, target_sparsity) / max(total, 1)
    fraction = min(1.0, WINDOW * share)
    if fraction * total > MAX_PREDICTED_ROWS:
        fraction = MAX_PREDICTED_ROWS / total
    windows = {}
    for name, mask in masks.items():
        flat_mask = mask.reshape(-1)
        count = min(kept[name], math.ceil(fraction * kept[name]))
        window = torch.zeros_like(flat_mask)
        if count:
            prior = priors.layer(BLEND_PRIOR, name).reshape(-1).float()
            ranked = torch.where(flat_mask, prior, torch.tensor(math.inf, device=prior.device))
            window[torch.topk(ranked, count, largest=False, sorted=False).indices] = True
        windows[name] = window.view_as(mask)
    return windows


def _above_window(
    inside: Mapping[str, Tensor], windows: Mapping[str, Tensor], priors: _Priors, prior: str
) -> dict[str, Tensor]:
    """Full score tensors: the window's values inside each window, and above them, in the prior's order, elsewhere.

    ``inside[name]`` holds the values of the window's weights in flat index order.

    The prior (Taylor) is non-negative, so ``top + 1 + prior`` ranks above the window in every tensor.
    """
    top = max((float(values.max()) for values in inside.values() if len(values)), default=0.0)
    out = {}
    for name, window in windows.items():
        flat = (top + 1.0 + priors.layer(prior, name).reshape(-1).float().clamp_min(0.0)).clone()
        flat[window.reshape(-1).nonzero().squeeze(1)] = inside[name].float()
        out[name] = flat.view_as(window)
    return out


def _quantile_sample(masks: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Flat indices of about :data:`QUANTILE_SAMPLE` kept weights, spread over tensors by their kept counts."""
    kept = {name: m.reshape(-1).nonzero().squeeze(1) for name, m in masks.items()}
    total = sum(len(k) for k in kept.values())
    sample: dict[str, Tensor] = {}
    for name, index in kept.items():
        count = min(len(index), max(1, math.ceil(QUANTILE_SAMPLE * len(index) / max(total, 1))))
        if count and len(index):
            sample[name] = index[torch.randperm(len(index), generator=generator)[:count].to(index.device)]
    return sample


def _sampled(sample: Mapping[str, Tensor], scores_of: Callable[[str], Tensor]) -> Tensor:
    return torch.cat([scores_of(name).reshape(-1)[index].float().cpu() for name, index in sample.items()])


def _member_rows(table: FeatureTable, groups: list[Group], generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows of up to :data:`MEMBER_ROWS` sampled members of each group, and each row's group.

    Every member row carries its group's label. The estimator is trained on single weights'
    features, exactly what it is applied to, and learns the expected loss change of a weight given
    its features from the group ablations it took part in (no group-averaged features, whose
    distribution single weights do not share). The rows of one tensor are gathered in one call.
    """
    members = []
    for group in groups:
        index = group.index
        if len(index) > MEMBER_ROWS:
            index = index[torch.randperm(len(index), generator=generator)[:MEMBER_ROWS].to(index.device)]
        members.append(index)
    blocks: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for name, positions in _by_tensor(groups).items():
        blocks.append(table.rows(name, torch.cat([members[i] for i in positions])).cpu().numpy())
        owners.append(np.repeat(positions, [len(members[i]) for i in positions]))
    return np.concatenate(blocks).astype(np.float32), np.concatenate(owners)


def _by_tensor(groups: list[Group]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        positions.setdefault(group.name, []).append(i)
    return positions


def _group_scores(groups: list[Group], scores_of: Callable[[str], Tensor]) -> np.ndarray:
    """Mean score of each group's members; ``scores_of(name)`` is called once per tensor."""
    out = np.empty(len(groups), dtype=np.float64)
    for name, positions in _by_tensor(groups).items():
        flat = scores_of(name).reshape(-1).float()
        for i in positions:
            out[i] = float(flat[groups[i].index].mean())
    return out
