"""Is the learned model better than the formulas? The one fit/check/blend/fall-back pipeline.

Both learned scorers (weights and units) run the same steps at every pruning event:

1. turn measured loss changes into rank labels (:func:`rank_labels`);
2. fit a fresh clone of the estimator on the labelled rows (:func:`fit_estimator`) and predict
   (:func:`predict_scores`);
3. on held-out measurements, compare the learned scores with the formula priors
   (:func:`fidelity`: Spearman correlation and precision@k), keep the best prior, and fall back to
   it, loudly, when it ranks the held-out measurements better (:func:`judge`);
4. otherwise choose the blend weight of the learned rank with the prior's rank on the same
   held-out measurements (:func:`judge` again, through its ``blend`` argument).

What differs between the two scorers (what a row is, what is held out, which priors compete) is
passed in; the decisions are made here, once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr
from sklearn.base import clone, is_classifier


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation, 0 where it is undefined (fewer than 3 values, or a constant side).

    Example:
        >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
        0.5
        >>> spearman(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0]))
        0.0
    """
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = float(spearmanr(a, b).statistic)
    return 0.0 if math.isnan(value) else value


def fidelity(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Spearman correlation with the measured labels, and precision@k of finding the least harmful quarter.

    Example:
        >>> result = fidelity(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 2.0, 4.0, 3.0]))
        >>> round(result["spearman"], 6), result["precision_at_k"]
        (0.8, 1.0)
    """
    k = max(1, len(truth) // 4)
    true_low = set(np.argsort(truth, kind="stable")[:k].tolist())
    predicted_low = set(np.argsort(scores, kind="stable")[:k].tolist())
    return {"spearman": spearman(scores, truth), "precision_at_k": len(true_low & predicted_low) / k}


def rank_labels(values: np.ndarray) -> np.ndarray:
    """Loss changes as their rank within the event, scaled to ``[0, 1]`` (ties share their mean rank).

    Raw loss changes differ in scale between events and models; their order is what pruning
    uses, so the estimator learns the order, and rows of every event and model can be pooled.

    Example:
        >>> rank_labels(np.array([0.3, -0.1, 0.3, 2.0])).tolist()
        [0.5, 0.0, 0.5, 1.0]
    """
    if len(values) < 2:
        return np.zeros_like(values, dtype=np.float64)
    return (rankdata(values) - 1.0) / (len(values) - 1.0)


def above_median(y: np.ndarray) -> np.ndarray:
    """Classes for a classifier: 1 where the rank label is above the median of the rows fitted.

    Example:
        >>> above_median(np.array([0.0, 0.5, 0.5, 1.0])).tolist()
        [0, 0, 0, 1]
    """
    return (y > np.median(y)).astype(np.int64)


def upper_half(y: np.ndarray) -> np.ndarray:
    """Classes for a classifier: 1 where the rank label is in the upper half, ``>= 0.5``.

    Example:
        >>> upper_half(np.array([0.0, 0.5, 0.5, 1.0])).tolist()
        [0, 1, 1, 1]
    """
    return (y >= 0.5).astype(int)


def fit_estimator(
    template: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    classes: Callable[[np.ndarray], np.ndarray] = above_median,
    seed: int | None = None,
) -> Any:
    """Fit a clone of ``template`` (never the user's object) on rows ``x`` and rank labels ``y``.

    Args:
        template: an unfitted scikit-learn regressor or classifier.
        x: feature rows.
        y: rank labels in ``[0, 1]``.
        classes: for a classifier, maps the rank labels to its classes.
        seed: set as the clone's ``random_state`` if it has one; ``None``: leave it as it is.

    Example:
        >>> from sklearn.linear_model import Ridge
        >>> template = Ridge()
        >>> model = fit_estimator(template, np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 0.5, 1.0]))
        >>> hasattr(model, "coef_"), hasattr(template, "coef_")
        (True, False)
    """
    model = clone(template)
    if seed is not None and "random_state" in model.get_params():
        model.set_params(random_state=seed)
    if is_classifier(model):
        return model.fit(x, classes(y))
    return model.fit(x, y)


def predict_scores(model: Any, x: np.ndarray) -> np.ndarray:
    """Float64 scores of rows ``x``: a regressor's prediction, a classifier's probability of its last class.

    Only the order of the scores is used downstream, so a classifier that saw one class gives a
    constant column, and one without ``predict_proba`` its predicted class.

    Example:
        >>> from sklearn.linear_model import LogisticRegression, Ridge
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
        >>> predict_scores(Ridge().fit(x, [0.0, 1.0, 2.0, 3.0]), x[:1]).dtype
        dtype('float64')
        >>> predict_scores(LogisticRegression().fit(x, [0, 0, 1, 1]), x).round(2).tolist()
        [0.19, 0.38, 0.62, 0.81]
    """
    if is_classifier(model) and hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x))[:, -1]
    return np.asarray(model.predict(x), dtype=np.float64)


@dataclass(frozen=True)
class Verdict:
    """What the held-out check decided at one event.

    Attributes:
        fidelity: per method (``"learned"`` first, then each prior), its :func:`fidelity`.
        best_prior: the prior the learned scores compete with, blend with and fall back to.
        fell_back: the best prior ranks the held-out measurements better than the learned scores.
        blend_weight: weight of the learned rank in the blend with the prior (0 when fell back).
    """

    fidelity: dict[str, dict[str, float]]
    best_prior: str
    fell_back: bool
    blend_weight: float


def judge(
    learned: np.ndarray,
    priors: Mapping[str, np.ndarray],
    truth: np.ndarray,
    *,
    candidates: Sequence[str],
    blend: Callable[[str], tuple[np.ndarray, np.ndarray]],
    weights: Iterable[float],
) -> Verdict:
    """Check learned scores against formula priors on held-out measurements, and choose the blend.

    Args:
        learned: the learned scores of the held-out measurements.
        priors: each prior's scores of the same measurements (all are reported).
        truth: the measured labels of those measurements.
        candidates: the priors that may be chosen, in order of preference on ties.
        blend: ``blend(best_prior)`` returns the learned and the prior scores of the held-out
            measurements on a common scale (quantiles or ranks); called only when not falling back.
        weights: the candidate weights of the learned side, in order of preference on ties.

    Returns:
        The :class:`Verdict`.

    Example:
        >>> truth = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        >>> good, poor = truth * 2, np.array([6.0, 1.0, 5.0, 2.0, 4.0, 3.0])
        >>> ranks = lambda prior: (rank_labels(good), rank_labels(poor))
        >>> verdict = judge(good, {"taylor": poor}, truth, candidates=("taylor",), blend=ranks, weights=(0.5, 1.0))
        >>> verdict.best_prior, verdict.fell_back, verdict.blend_weight
        ('taylor', False, 1.0)
        >>> judge(poor, {"taylor": good}, truth, candidates=("taylor",), blend=ranks, weights=(1.0,)).fell_back
        True
    """
    scores = {"learned": fidelity(learned, truth)}
    scores.update({name: fidelity(values, truth) for name, values in priors.items()})
    best_prior = max(candidates, key=lambda name: scores[name]["spearman"])
    fell_back = scores["learned"]["spearman"] < scores[best_prior]["spearman"]
    alpha = 0.0
    if not fell_back:
        learned_side, prior_side = blend(best_prior)
        alpha = max(weights, key=lambda a: spearman(a * learned_side + (1 - a) * prior_side, truth))
    return Verdict(scores, best_prior, fell_back, alpha)


def warn_fallback(message: str, stacklevel: int) -> None:
    """Warn that a learned scorer fell back to a formula at this event (``[AutoPrune] ...``).

    ``stacklevel`` counts from the caller of this function, as for :func:`warnings.warn`.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_fallback("the learned importance fell back to taylor.", stacklevel=1)
        >>> str(caught[0].message)
        '[AutoPrune] the learned importance fell back to taylor.'
    """
    warnings.warn(f"[AutoPrune] {message}", UserWarning, stacklevel=stacklevel + 1)
