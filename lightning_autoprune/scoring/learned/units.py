"""The learned unit importance scorer for structured pruning (``importance="learned"``).

It measures what the unit formulas estimate: at each pruning event it zeroes single units near the
pruning frontier on held-out calibration batches (drawn from the training data) and records the
loss change per parameter removed (:mod:`~lightning_autoprune.scoring.learned.labels`). A
scikit-learn estimator learns that label's rank within the event from
:data:`~lightning_autoprune.scoring.learned.features.UNIT_FEATURE_NAMES`, on rows accumulated over
the run; a quarter of each event's measurements is held out to check it against the Taylor and
magnitude keys, to choose the blend weight with the better one, and to fall back to it, loudly,
when the learned keys rank worse (:func:`~lightning_autoprune.scoring.learned.fidelity.judge`,
shared with the weight scorer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from torch import Tensor

from lightning_autoprune.scoring.base import Progress, ScoreInputs
from lightning_autoprune.scoring.learned.estimators import resolve_estimator
from lightning_autoprune.scoring.learned.features import UNIT_FEATURE_NAMES, unit_features
from lightning_autoprune.scoring.learned.fidelity import (
    fit_estimator,
    judge,
    predict_scores,
    rank_labels,
    upper_half,
    warn_fallback,
)
from lightning_autoprune.scoring.learned.labels import frontier_units, unit_ablation_labels
from lightning_autoprune.scoring.units import magnitude_keys, taylor_keys
from lightning_autoprune.structured import UnitGroup, kept_units

#: Share of each event's measured units held out to check the estimator.
HOLDOUT = 0.25
#: Below this many measured units an event is not checked (too few to rank); the prior is used.
MIN_HOLDOUT = 6
#: The frontier window: units labelled are drawn from the lowest ``WINDOW`` times the step.
WINDOW = 3.0
#: Candidate weights of the learned rank in the blend with the best prior (ties: the smaller).
BLEND_WEIGHTS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


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
    needs_activations = True

    def __init__(self, estimator: str | None = None, label_units: int = 128) -> None:
        if estimator is None:
            self.template: Any = HistGradientBoostingRegressor(
                max_iter=60, max_leaf_nodes=8, min_samples_leaf=10, random_state=0
            )
        else:
            self.template = resolve_estimator(estimator)
        self.label_units = label_units
        self.rows: list[np.ndarray] = []  # per event: feature rows of measured units
        self.labels: list[np.ndarray] = []  # per event: rank of measured loss change per parameter
        self.diagnostics: list[dict[str, Any]] = []
        #: Receives a progress line during long unit measurements (the callback sets it when verbose).
        self.progress: Progress | None = None

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

    def feature_importances(self) -> dict[str, float] | None:
        """``None``: the unit scorer reports no feature importances (its diagnostics carry none)."""
        return None

    # -- scoring ---------------------------------------------------------------------------------
    def score_units(self, groups: Sequence[UnitGroup], inputs: ScoreInputs) -> dict[str, Tensor]:
        """Measure, fit, check against the formulas on held-out units, and return blended keys."""
        features = unit_features(groups, inputs).numpy().astype(np.float64)
        prior = torch.cat([taylor_keys(groups, inputs)[g.name] for g in groups]).numpy()
        magnitude = torch.cat([magnitude_keys(groups, inputs)[g.name] for g in groups]).numpy()
        alive = torch.cat([kept_units(g, inputs.masks) for g in groups]).numpy()
        measured = frontier_units(groups, inputs, prior, alive, self.label_units, window=WINDOW)
        # The loss is measured (as the ablations' baseline) whenever a unit is kept, as it always was.
        labels = unit_ablation_labels(groups, measured, inputs, self._report_progress) if alive.any() else np.zeros(0)
        if len(measured) < 2 * MIN_HOLDOUT:
            self._warn("taylor", f"only {len(measured)} units could be measured (need {2 * MIN_HOLDOUT})")
            return self._split(groups, prior)
        order = torch.randperm(len(measured), generator=inputs.generator).numpy()
        n_hold = max(MIN_HOLDOUT, round(HOLDOUT * len(measured)))
        hold, train = measured[order[:n_hold]], measured[order[n_hold:]]
        hold_y, train_y = labels[order[:n_hold]], labels[order[n_hold:]]
        model = self._fit([*self.rows, features[train]], [*self.labels, rank_labels(train_y)])
        predicted_hold = predict_scores(model, features[hold])
        keys_of = {"taylor": prior, "magnitude": magnitude}
        verdict = judge(
            predicted_hold,
            {name: keys[hold] for name, keys in keys_of.items()},
            hold_y,
            candidates=("taylor", "magnitude"),
            blend=lambda best: (rank_labels(predicted_hold), rank_labels(keys_of[best][hold])),
            weights=BLEND_WEIGHTS,
        )
        best_prior = verdict.best_prior
        prior_keys = keys_of[best_prior]
        if verdict.fell_back:
            self._warn(
                best_prior,
                f"its held-out Spearman ({verdict.fidelity['learned']['spearman']:.3f}) is below {best_prior}'s "
                f"({verdict.fidelity[best_prior]['spearman']:.3f})",
            )
        self.rows.append(features[measured])
        self.labels.append(rank_labels(labels))
        self.diagnostics.append(
            {
                "held_out": int(n_hold),
                "measured": len(measured),
                "fidelity": verdict.fidelity,
                "best_prior": best_prior,
                "blend_weight": float(verdict.blend_weight),
                "fell_back": bool(verdict.fell_back),
            }
        )
        if verdict.fell_back:
            return self._split(groups, prior_keys)
        model = self._fit(self.rows, self.labels)
        keys = np.zeros(len(prior))
        rows = np.flatnonzero(alive)
        if len(rows):
            learned_rank = rank_labels(predict_scores(model, features[rows]))
            weight = verdict.blend_weight
            keys[rows] = weight * learned_rank + (1 - weight) * rank_labels(prior_keys[rows])
        return self._split(groups, keys)

    def _report_progress(self, done: int, total: int, seconds: float) -> None:
        if self.progress is not None:
            self.progress(
                f"[AutoPrune] measured {done}/{total} unit ablations for the learned unit importance ({seconds:.0f} s)",
                done == total,
            )

    def _warn(self, prior: str, reason: str) -> None:
        warn_fallback(f"the learned unit importance fell back to the {prior} key at this event: {reason}.", 3)

    @staticmethod
    def _split(groups: Sequence[UnitGroup], flat: np.ndarray) -> dict[str, Tensor]:
        out, start = {}, 0
        for g in groups:
            out[g.name] = torch.as_tensor(np.asarray(flat[start : start + g.units], dtype=np.float64))
            start += g.units
        return out

    def _fit(self, rows: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Any:
        widths = {r.shape[1] for r in rows}
        if widths != {len(UNIT_FEATURE_NAMES)}:
            raise ValueError(
                f"Labelled rows have {sorted(widths)} features, but the unit feature table has "
                f"{len(UNIT_FEATURE_NAMES)} ({', '.join(UNIT_FEATURE_NAMES)}). HINT: a checkpoint from another "
                "lightning_autoprune version cannot continue this scorer; resume with the version that wrote it."
            )
        return fit_estimator(self.template, np.concatenate(rows), np.concatenate(labels), classes=upper_half)
