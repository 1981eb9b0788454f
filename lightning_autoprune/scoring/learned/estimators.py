"""The estimators behind the learned scorers: resolving a user's import path, and the refined pretrained model.

Both follow scikit-learn's estimator contract: ``__init__`` only stores its arguments, ``fit``
sets the fitted state in attributes ending in ``_``, and a user's estimator is cloned before it is
fitted, never mutated.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone, is_classifier, is_regressor
from sklearn.linear_model import Ridge

from lightning_autoprune.scoring.learned.features import FEATURE_NAMES


def resolve_estimator(path: str) -> Any:
    """An unfitted scikit-learn estimator from an import path such as ``"sklearn.linear_model.Ridge"``.

    A class is instantiated with its defaults; an instance is cloned (never mutated).

    Example:
        >>> type(resolve_estimator("sklearn.linear_model.Ridge")).__name__
        'Ridge'
        >>> resolve_estimator("collections.OrderedDict")
        Traceback (most recent call last):
        ...
        ValueError: `estimator` must name a scikit-learn regressor or classifier, got 'collections.OrderedDict' ...
    """
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"`estimator` must be an import path like 'sklearn.linear_model.Ridge', got {path!r}.")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"`estimator` {path!r} cannot be imported: {err}") from err
    instance = obj() if isinstance(obj, type) else obj
    if not (hasattr(instance, "fit") and (is_regressor(instance) or is_classifier(instance))):
        raise ValueError(
            f"`estimator` must name a scikit-learn regressor or classifier, got {path!r} ({type(instance).__name__})."
        )
    return clone(instance)


def check_feature_count(model: Any, source: str) -> None:
    """A loaded importance model must take exactly :data:`FEATURE_NAMES` as inputs.

    Example:
        >>> check_feature_count(Ridge(), "model.skops")
        Traceback (most recent call last):
        ...
        ValueError: Importance model 'model.skops' is not fitted (it has no `n_features_in_`).
    """
    expected = len(FEATURE_NAMES)
    got = getattr(model, "n_features_in_", None)
    if got is None:
        raise ValueError(f"Importance model {source!r} is not fitted (it has no `n_features_in_`).")
    if got != expected:
        raise ValueError(
            f"Importance model {source!r} was fitted on {got} features, but AutoPrune computes {expected} "
            f"({', '.join(FEATURE_NAMES)})."
        )


class RefinedModel(RegressorMixin, BaseEstimator):
    """A fitted pretrained model plus a ridge correction fitted to the run's own labels (its residuals).

    The correction is fitted on standardised features and regularised (``alpha``), so that a
    handful of rows moves the pretrained predictions only a little; with many rows it can correct
    them substantially.

    ``base`` is already fitted and is never refitted: :func:`sklearn.base.clone` keeps the same
    ``base`` object (as ``FrozenEstimator`` does) and drops only the correction.

    Args:
        base: the fitted pretrained model (anything with ``predict``).
        alpha: the ridge penalty of the correction.

    Attributes:
        mean_: per-feature mean of the rows fitted.
        std_: per-feature standard deviation of the rows fitted, plus ``1e-6``.
        correction_: the fitted :class:`~sklearn.linear_model.Ridge` on the residuals.
        n_features_in_: the number of features.

    Example:
        >>> from sklearn.base import clone
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]])
        >>> base = Ridge().fit(x, [0.0, 1.0, 2.0, 3.0])
        >>> refined = RefinedModel(base, alpha=1.0).fit(x, np.array([0.0, 1.0, 2.0, 4.0]))
        >>> refined.predict(x).round(2).tolist()
        [-0.06, 1.15, 2.35, 3.56]
        >>> copy = clone(refined)
        >>> copy.base is base, hasattr(copy, "correction_"), copy.get_params() == refined.get_params()
        (True, False, True)
    """

    def __init__(self, base: Any = None, alpha: float = 30.0) -> None:
        self.base = base
        self.alpha = alpha

    def __sklearn_clone__(self) -> RefinedModel:
        return type(self)(base=self.base, alpha=self.alpha)

    def fit(self, x: np.ndarray, y: np.ndarray, base_predictions: np.ndarray | None = None) -> RefinedModel:
        """Fit the correction to ``y - base.predict(x)``.

        Args:
            x: feature rows.
            y: rank labels.
            base_predictions: ``base.predict(x)`` when the caller has it already (it is not recomputed).

        Returns:
            ``self``.
        """
        if self.base is None:
            raise ValueError("`RefinedModel` needs a fitted `base` model to refine, got None.")
        self.n_features_in_ = x.shape[1]
        self.mean_ = x.mean(axis=0)
        self.std_ = x.std(axis=0) + 1e-6
        residual = y - (self.base.predict(x) if base_predictions is None else base_predictions)
        self.correction_ = Ridge(alpha=self.alpha).fit((x - self.mean_) / self.std_, residual)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The base model's predictions plus the correction."""
        return np.asarray(self.base.predict(x)) + self.correction_.predict((x - self.mean_) / self.std_)
