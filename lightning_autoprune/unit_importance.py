"""Importance of whole units (neurons, channels) for structured pruning: formulas and a learned scorer.

Every scorer returns, per unit group, one key per unit: higher means keep. The formulas:

* ``"magnitude"``: the group norm: the unit's squared L2 norm in each coupled weight slice
  (producing weight rows, BatchNorm ``gamma``, consuming input columns), averaged over the slices
  and divided by the mean over the layer's kept units, so layers of different scale compete
  fairly (Fang et al. 2023; Torch-Pruning's ``MagnitudeImportance(p=2)``).
* ``"taylor"``: the unit's estimated loss increase per parameter it removes. The loss change of
  zeroing all of a unit's slices at once is estimated to second order with the calibration
  gradient ``g`` and Fisher diagonal ``F``: ``|sum g*w| + 1/2 sum w^2 F`` (Molchanov et al. 2019's
  group Taylor, plus the curvature term), divided by the entries the unit removes.
* ``"random"``: the control.

The learned scorer (:class:`LearnedUnitScorer`, ``importance="learned"``) measures what the
formulas estimate: at each pruning event it zeroes single units near the pruning frontier on
held-out calibration batches (drawn from the training data) and records the loss change per
parameter removed. A scikit-learn estimator learns that label's rank within the event from
:data:`UNIT_FEATURE_NAMES`, on rows accumulated over the run; a quarter of each event's
measurements is held out to check it against the Taylor and magnitude keys, to choose the blend
weight with the Taylor key, and to fall back to Taylor, loudly, when the learned keys rank worse.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_autoprune.core.masks import mask_cost
from lightning_autoprune.importance import ScoreInputs
from lightning_autoprune.learned import _fidelity, _spearman, rank_labels, resolve_estimator
from lightning_autoprune.structured import UnitGroup, kept_units, unit_costs, unit_sums

__all__ = [
    "UNIT_FEATURE_NAMES",
    "UNIT_SCORERS",
    "LearnedUnitScorer",
    "magnitude_keys",
    "make_unit_scorer",
    "taylor_keys",
    "unit_features",
]

#: ``importance`` values that structured pruning accepts.
UNIT_SCORERS = ("learned", "taylor", "magnitude", "random")

#: Columns of :func:`unit_features`, in order.
UNIT_FEATURE_NAMES = (
    "log_rms_producer",
    "log_rms_consumer",
    "rms_layer_normalised",
    "log_norm_affine",
    "log_taylor_first",
    "log_taylor_second",
    "log_taylor_loss",
    "log_taylor_per_param",
    "taylor_layer_percentile",
    "log_activation",
    "depth",
    "log_units",
    "layer_density",
    "log_cost",
    "progress",
    "target_sparsity",
)

#: Share of each event's measured units held out to check the estimator.
HOLDOUT = 0.25
#: Below this many measured units an event is not checked (too few to rank); the prior is used.
MIN_HOLDOUT = 6
#: The frontier window: units labelled are drawn from the lowest ``WINDOW`` times the step.
WINDOW = 3.0
_EPS = 1e-12


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(0.0) + _EPS)


def _taylor_parts(group: UnitGroup, inputs: ScoreInputs) -> tuple[Tensor, Tensor]:
    assert inputs.grad_mean is not None
    assert inputs.grad_sq_mean is not None
    gw = {n: inputs.grad_mean[n].double() * inputs.weights[n].double() for n in inputs.weights}
    w2f = {n: inputs.weights[n].double().pow(2) * inputs.grad_sq_mean[n].double() for n in inputs.weights}
    return unit_sums(group, gw).abs(), 0.5 * unit_sums(group, w2f)


def _rms(group: UnitGroup, weights: Mapping[str, Tensor], roles: Sequence[str]) -> Tensor:
    squares = unit_sums(group, {n: w.double().pow(2) for n, w in weights.items()}, roles=roles)
    counts = unit_sums(group, {n: torch.ones_like(w, dtype=torch.float64) for n, w in weights.items()}, roles=roles)
    return (squares / counts.clamp_min(1.0)).sqrt()


def magnitude_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Group magnitude: each unit's squared L2 norm per coupled weight slice, averaged, layer-normalised.

    Every weight slice that carries the unit counts (the producing layers' weight rows, BatchNorm
    ``gamma``, the consuming layers' input columns), so a channel that the next layer ignores
    ranks low even if its own filter is large (the group norm of Fang et al. 2023, as in
    Torch-Pruning's ``MagnitudeImportance(p=2)`` with mean reduction and mean normaliser). Biases
    and BatchNorm ``beta`` (parameters named ``*bias``) do not count. Divided by the mean over
    the group's kept units, so layers of different scale compete fairly.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.arange(2), torch.arange(2), "producer"),), 0.0)
        >>> w = {"w": torch.tensor([[3.0, 4.0], [0.0, 1.0]])}
        >>> magnitude_keys([g], ScoreInputs(w, {"w": torch.ones(2, 2, dtype=torch.bool)}))["a"]
        tensor([1.9231, 0.0769], dtype=torch.float64)
    """
    out = {}
    for group in groups:
        per_slice = [
            unit_sums(
                UnitGroup(group.name, group.units, (s,), group.depth),
                {s.param: inputs.weights[s.param].double().pow(2)},
            )
            for s in group.slices
            if not s.param.endswith("bias") and s.param in inputs.weights
        ]
        norm = torch.stack(per_slice).mean(dim=0) if per_slice else torch.zeros(group.units, dtype=torch.float64)
        alive = kept_units(group, inputs.masks)
        scale = norm[alive].mean() if bool(alive.any()) else torch.tensor(1.0, dtype=torch.float64)
        out[group.name] = norm / scale.clamp_min(_EPS)
    return out


def taylor_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Estimated loss increase per removed parameter (or FLOP), ``(|sum g*w| + 1/2 sum w^2 F) / cost``."""
    out = {}
    for group in groups:
        first, second = _taylor_parts(group, inputs)
        out[group.name] = (first + second) / unit_costs(group, inputs.masks, inputs.cost_weights).clamp_min(1.0)
    return out


def random_keys(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
    """Uniform random keys from the caller's seeded generator."""
    return {g.name: torch.rand(g.units, generator=inputs.generator, dtype=torch.float64) for g in groups}


def unit_features(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> Tensor:
    """One float32 row per unit of every group (groups in order), columns :data:`UNIT_FEATURE_NAMES`.

    Needs the calibration gradient statistics; activation norms are used where recorded.
    """
    columns: list[Tensor] = []
    output_norms = inputs.output_norms or {}
    for group in groups:
        units = group.units
        rms = _rms(group, inputs.weights, ("producer",))
        consumer = _rms(group, inputs.weights, ("consumer",))
        alive = kept_units(group, inputs.masks)
        mean_rms = rms[alive].mean() if bool(alive.any()) else torch.tensor(1.0, dtype=torch.float64)
        affine = unit_sums(group, {n: w.double().abs() for n, w in inputs.weights.items()}, roles=("norm",))
        first, second = _taylor_parts(group, inputs)
        cost = unit_costs(group, inputs.masks, inputs.cost_weights).clamp_min(1.0)
        per_param = (first + second) / cost
        percentile = torch.zeros(units, dtype=torch.float64)
        percentile[per_param.argsort(stable=True)] = torch.arange(units, dtype=torch.float64) / max(1, units - 1)
        activation = torch.zeros(units, dtype=torch.float64)
        producers = [s.param for s in group.slices if s.role == "producer" and s.param.endswith("weight")]
        norms = [output_norms[p].double().cpu() for p in producers if p in output_norms]
        if norms and all(n.numel() == units for n in norms):
            activation = torch.stack(norms).mean(dim=0)
        columns.append(
            torch.stack(
                [
                    _log(rms),
                    _log(consumer),
                    rms / mean_rms.clamp_min(_EPS),
                    _log(affine),
                    _log(first),
                    _log(second),
                    _log(first + second),
                    _log(per_param),
                    percentile,
                    _log(activation),
                    torch.full((units,), group.depth, dtype=torch.float64),
                    torch.full((units,), math.log(units), dtype=torch.float64),
                    torch.full((units,), float(alive.double().mean()), dtype=torch.float64),
                    _log(cost),
                    torch.full((units,), inputs.progress, dtype=torch.float64),
                    torch.full((units,), inputs.target_sparsity, dtype=torch.float64),
                ],
                dim=1,
            )
        )
    return torch.cat(columns).float() if columns else torch.zeros(0, len(UNIT_FEATURE_NAMES))


class _FormulaScorer:
    def __init__(self, keys: Callable[[Sequence[UnitGroup], ScoreInputs], dict[str, Tensor]], gradients: bool) -> None:
        self._keys = keys
        self.needs_gradients = gradients
        self.needs_context = False

    def score_units(self, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
        return self._keys(groups, inputs)


class LearnedUnitScorer:
    """Unit importance from a scikit-learn model trained on measured single-unit ablations.

    Args:
        estimator: import path of a scikit-learn regressor or classifier; ``None``: a small
            ``HistGradientBoostingRegressor`` (60 iterations, 8 leaves, 10 samples per leaf).
        label_units: units ablated per pruning event (one forward pass over the held-out
            calibration batches each).

    Example:
        >>> scorer = LearnedUnitScorer(label_units=64)
        >>> scorer.needs_context, scorer.diagnostics
        (True, [])
    """

    needs_gradients = True
    needs_context = True

    def __init__(self, estimator: str | None = None, label_units: int = 128) -> None:
        if estimator is None:
            from sklearn.ensemble import HistGradientBoostingRegressor

            self.template: Any = HistGradientBoostingRegressor(
                max_iter=60, max_leaf_nodes=8, min_samples_leaf=10, random_state=0
            )
        else:
            self.template = resolve_estimator(estimator)
        self.label_units = label_units
        self.rows: list[np.ndarray] = []  # per event: feature rows of measured units
        self.labels: list[np.ndarray] = []  # per event: rank of measured loss change per parameter
        self.diagnostics: list[dict[str, Any]] = []
        self.progress: Callable[[str], None] | None = None

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The measured rows and labels of every event, and the diagnostics (tensors and primitives)."""
        return {
            "rows": [torch.from_numpy(r.copy()) for r in self.rows],
            "labels": [torch.from_numpy(y.copy()) for y in self.labels],
            "diagnostics": [dict(d) for d in self.diagnostics],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the estimator is refitted from the rows at the next event."""
        self.rows = [t.numpy().copy() for t in state.get("rows", [])]
        self.labels = [t.numpy().copy() for t in state.get("labels", [])]
        self.diagnostics = [dict(d) for d in state.get("diagnostics", [])]

    # -- scoring ---------------------------------------------------------------------------------
    def score_units(self, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
        """Measure, fit, check against the formulas on held-out units, and return blended keys."""
        features = unit_features(groups, inputs).numpy().astype(np.float64)
        prior = torch.cat([taylor_keys(groups, inputs)[g.name] for g in groups]).numpy()
        magnitude = torch.cat([magnitude_keys(groups, inputs)[g.name] for g in groups]).numpy()
        alive = torch.cat([kept_units(g, inputs.masks) for g in groups]).numpy()
        measured, labels = self._measure(groups, inputs, prior, alive)
        entry: dict[str, Any] = {"held_out": 0, "best_prior": "taylor", "blend_weight": 0.0, "fell_back": True}
        if len(measured) < 2 * MIN_HOLDOUT:
            self._warn("taylor", f"only {len(measured)} units could be measured (need {2 * MIN_HOLDOUT})")
            return self._split(groups, prior)
        order = torch.randperm(len(measured), generator=inputs.generator).numpy()
        n_hold = max(MIN_HOLDOUT, round(HOLDOUT * len(measured)))
        hold, train = measured[order[:n_hold]], measured[order[n_hold:]]
        hold_y, train_y = labels[order[:n_hold]], labels[order[n_hold:]]
        model = self._fit([*self.rows, features[train]], [*self.labels, rank_labels(train_y)])
        predicted_hold = self._predict(model, features[hold])
        fidelity = {
            "learned": _fidelity(predicted_hold, hold_y),
            "taylor": _fidelity(prior[hold], hold_y),
            "magnitude": _fidelity(magnitude[hold], hold_y),
        }
        best_prior = max(("taylor", "magnitude"), key=lambda k: fidelity[k]["spearman"])
        prior_keys = prior if best_prior == "taylor" else magnitude
        fell_back = fidelity["learned"]["spearman"] < fidelity[best_prior]["spearman"]
        weight = 0.0
        if not fell_back:
            learned_rank, prior_rank = rank_labels(predicted_hold), rank_labels(prior_keys[hold])
            weight = max(
                (0.25, 0.5, 0.75, 1.0), key=lambda a: _spearman(a * learned_rank + (1 - a) * prior_rank, hold_y)
            )
        else:
            self._warn(
                best_prior,
                f"its held-out Spearman ({fidelity['learned']['spearman']:.3f}) is below {best_prior}'s "
                f"({fidelity[best_prior]['spearman']:.3f})",
            )
        self.rows.append(features[measured])
        self.labels.append(rank_labels(labels))
        entry = {
            "held_out": int(n_hold),
            "measured": len(measured),
            "fidelity": fidelity,
            "best_prior": best_prior,
            "blend_weight": float(weight),
            "fell_back": bool(fell_back),
        }
        self.diagnostics.append(entry)
        if fell_back:
            return self._split(groups, prior_keys)
        model = self._fit(self.rows, self.labels)
        keys = np.zeros(len(prior))
        rows = np.flatnonzero(alive)
        if len(rows):
            learned_rank = rank_labels(self._predict(model, features[rows]))
            keys[rows] = weight * learned_rank + (1 - weight) * rank_labels(prior_keys[rows])
        return self._split(groups, keys)

    def _warn(self, prior: str, reason: str) -> None:
        warnings.warn(
            f"AutoPrune: the learned unit importance fell back to the {prior} key at this event: {reason}.",
            UserWarning,
            stacklevel=3,
        )

    @staticmethod
    def _split(groups: Sequence[UnitGroup], flat: np.ndarray) -> dict[str, Tensor]:
        out, start = {}, 0
        for g in groups:
            out[g.name] = torch.as_tensor(np.asarray(flat[start : start + g.units], dtype=np.float64))
            start += g.units
        return out

    def _fit(self, rows: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Any:
        from sklearn.base import clone, is_classifier

        widths = {r.shape[1] for r in rows}
        if widths != {len(UNIT_FEATURE_NAMES)}:
            raise ValueError(
                f"Labelled rows have {sorted(widths)} features, but the unit feature table has "
                f"{len(UNIT_FEATURE_NAMES)} ({', '.join(UNIT_FEATURE_NAMES)}). HINT: a checkpoint from another "
                "lightning_autoprune version cannot continue this scorer; resume with the version that wrote it."
            )
        x, y = np.concatenate(rows), np.concatenate(labels)
        model = clone(self.template)
        if is_classifier(model):
            model.fit(x, (y >= 0.5).astype(int))
        else:
            model.fit(x, y)
        return model

    @staticmethod
    def _predict(model: Any, x: np.ndarray) -> np.ndarray:
        from sklearn.base import is_classifier

        if is_classifier(model) and hasattr(model, "predict_proba"):
            proba = model.predict_proba(x)
            return proba[:, -1] if proba.shape[1] > 1 else np.zeros(len(x))
        return np.asarray(model.predict(x), dtype=np.float64)

    def _measure(
        self, groups: Sequence[UnitGroup], inputs: ScoreInputs, prior: np.ndarray, alive: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ablate units near the frontier one at a time: their flat indices and loss change per parameter."""
        assert inputs.loss_fn is not None
        assert inputs.params is not None
        costs = torch.cat([unit_costs(g, inputs.masks, inputs.cost_weights) for g in groups]).numpy()
        candidates = np.flatnonzero(alive)
        if not len(candidates):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        pruned, total = mask_cost(inputs.masks, inputs.cost_weights)
        step_units = (inputs.target_sparsity * total - pruned) / max(1.0, float(costs[candidates].mean()))
        window = max(self.label_units, math.ceil(WINDOW * max(1.0, step_units)))
        frontier = candidates[np.argsort(prior[candidates], kind="stable")[:window]]
        if len(frontier) > self.label_units:
            pick = torch.randperm(len(frontier), generator=inputs.generator)[: self.label_units].numpy()
            frontier = np.sort(frontier[pick])
        owners: list[tuple[UnitGroup, int]] = []
        for g in groups:
            owners.extend((g, u) for u in range(g.units))
        base = inputs.loss_fn()
        deltas = np.zeros(len(frontier))
        with torch.no_grad():
            for i, flat in enumerate(frontier):
                group, unit = owners[int(flat)]
                saved = []
                for s in group.slices:
                    positions = s.index[s.unit == unit]
                    param = inputs.params[s.param]
                    view = param.movedim(s.dim, 0)
                    saved.append((view, positions, view[positions].clone()))
                    view[positions] = 0
                try:
                    deltas[i] = (inputs.loss_fn() - base) / max(1.0, float(costs[flat]))
                finally:
                    for view, positions, values in saved:
                        view[positions] = values
                if self.progress is not None and (i + 1) % 64 == 0:
                    self.progress(f"[AutoPrune] measured {i + 1}/{len(frontier)} unit ablations")
        return frontier.astype(np.int64), deltas


def make_unit_scorer(importance: str, *, estimator: str | None = None, label_groups: int = 128) -> Any:
    """The unit scorer for ``importance`` (one of :data:`UNIT_SCORERS`).

    Example:
        >>> make_unit_scorer("taylor").needs_gradients
        True
        >>> make_unit_scorer("lamp")
        Traceback (most recent call last):
        ...
        ValueError: With granularity='structured', `importance` must be one of 'learned', 'taylor', ...
    """
    if importance == "learned":
        return LearnedUnitScorer(estimator, label_units=label_groups)
    if importance == "taylor":
        return _FormulaScorer(taylor_keys, gradients=True)
    if importance == "magnitude":
        return _FormulaScorer(magnitude_keys, gradients=False)
    if importance == "random":
        return _FormulaScorer(random_keys, gradients=False)
    allowed = ", ".join(repr(s) for s in UNIT_SCORERS)
    raise ValueError(f"With granularity='structured', `importance` must be one of {allowed}, got {importance!r}.")
