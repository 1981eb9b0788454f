from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import Ridge

from lightning_autoprune.scoring.learned.estimators import RefinedModel, check_feature_count, resolve_estimator
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES


def test_estimator_paths_resolve_and_bad_ones_are_clear_errors() -> None:
    assert type(resolve_estimator("sklearn.ensemble.HistGradientBoostingRegressor")).__name__ == (
        "HistGradientBoostingRegressor"
    )
    with pytest.raises(ValueError, match=r"`estimator` 'sklearn\.nope\.Model' cannot be imported"):
        resolve_estimator("sklearn.nope.Model")
    with pytest.raises(ValueError, match="must be an import path like"):
        resolve_estimator("Ridge")
    with pytest.raises(
        ValueError, match=r"must name a scikit-learn regressor or classifier, got 'collections\.OrderedDict'"
    ):
        resolve_estimator("collections.OrderedDict")


def _refined() -> tuple[RefinedModel, Ridge, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    base = Ridge().fit(x, x @ np.array([1.0, -2.0, 0.5]))
    return RefinedModel(base, alpha=5.0), base, x


def test_refined_model_init_only_stores_and_fit_sets_trailing_underscore_state() -> None:
    refined, base, x = _refined()
    assert refined.get_params(deep=False) == {"base": base, "alpha": 5.0}
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(refined))
    y = x[:, 0]
    refined.fit(x, y)
    assert {"mean_", "std_", "correction_", "n_features_in_"} <= set(vars(refined))
    assert refined.n_features_in_ == 3
    assert refined.predict(x).shape == (40,)


def test_refined_model_clones_keep_the_frozen_base_and_drop_the_fit() -> None:
    refined, base, x = _refined()
    refined.fit(x, x[:, 1])
    copy = clone(refined)
    assert copy is not refined
    assert copy.base is base  # the pretrained model is never refitted or copied
    assert not hasattr(copy, "correction_")
    assert copy.get_params(deep=False) == refined.get_params(deep=False)
    np.testing.assert_array_equal(copy.fit(x, x[:, 1]).predict(x), refined.predict(x))


def test_refined_model_get_params_round_trips() -> None:
    refined, _, _ = _refined()
    rebuilt = RefinedModel(**refined.get_params(deep=False))
    assert rebuilt.get_params(deep=False) == refined.get_params(deep=False)
    rebuilt.set_params(alpha=1.0)
    assert rebuilt.alpha == 1.0
    assert refined.alpha == 5.0


def test_refined_model_uses_given_base_predictions() -> None:
    refined, base, x = _refined()
    y = x[:, 2]
    a = clone(refined).fit(x, y)
    b = clone(refined).fit(x, y, base_predictions=base.predict(x))
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_refined_model_without_base_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs a fitted `base`"):
        RefinedModel().fit(np.zeros((3, 2)), np.zeros(3))


def test_feature_count_is_checked_against_the_feature_table() -> None:
    with pytest.raises(ValueError, match="is not fitted"):
        check_feature_count(Ridge(), "m.skops")
    with pytest.raises(ValueError, match=f"fitted on 2 features, but AutoPrune computes {len(FEATURE_NAMES)}"):
        check_feature_count(Ridge().fit(np.zeros((3, 2)), np.zeros(3)), "m.skops")
