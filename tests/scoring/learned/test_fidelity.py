from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from lightning_autoprune.scoring.learned.fidelity import (
    above_median,
    fidelity,
    fit_estimator,
    judge,
    predict_scores,
    rank_labels,
    spearman,
    upper_half,
    warn_fallback,
)


def test_rank_labels() -> None:
    assert rank_labels(np.array([2.0, 1.0, 3.0])).tolist() == [0.5, 0.0, 1.0]
    assert rank_labels(np.array([1.0])).tolist() == [0.0]


def test_spearman_is_zero_where_undefined() -> None:
    assert spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == 0.0
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) == 0.0
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_fidelity_reports_precision_on_the_least_harmful_quarter() -> None:
    truth = np.arange(8.0)
    assert fidelity(truth, truth) == {"spearman": pytest.approx(1.0), "precision_at_k": 1.0}
    assert fidelity(-truth, truth)["precision_at_k"] == 0.0


def test_fit_estimator_clones_seeds_and_thresholds_classes() -> None:
    x = np.arange(8.0).reshape(-1, 1)
    y = rank_labels(np.arange(8.0))
    template = Ridge()
    model = fit_estimator(template, x, y)
    assert model is not template
    assert not hasattr(template, "coef_")
    forest = fit_estimator(DummyRegressor(), x, y, seed=3)
    assert isinstance(forest, DummyRegressor)
    classifier = fit_estimator(LogisticRegression(), x, y, classes=upper_half)
    assert classifier.classes_.tolist() == [0, 1]
    assert above_median(np.array([0.0, 1.0, 1.0])).tolist() == [0, 0, 0]
    assert upper_half(np.array([0.0, 1.0, 1.0])).tolist() == [0, 1, 1]


def test_predict_scores_of_a_classifier_is_its_last_class_probability() -> None:
    x = np.arange(6.0).reshape(-1, 1)
    classifier = LogisticRegression().fit(x, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(predict_scores(classifier, x), classifier.predict_proba(x)[:, -1])
    assert predict_scores(Ridge().fit(x, x[:, 0]), x).dtype == np.float64


def test_judge_falls_back_and_blends_only_when_learned_wins() -> None:
    truth = np.arange(12.0)
    noise = np.random.default_rng(0).permutation(12).astype(float)
    calls: list[str] = []

    def blend(prior: str) -> tuple[np.ndarray, np.ndarray]:
        calls.append(prior)
        return rank_labels(truth), rank_labels(noise)

    won = judge(truth, {"a": noise, "b": -truth}, truth, candidates=("a", "b"), blend=blend, weights=(0.5, 1.0))
    assert list(won.fidelity) == ["learned", "a", "b"]
    assert won.best_prior == "a"
    assert not won.fell_back
    assert won.blend_weight == 1.0
    assert calls == ["a"]
    lost = judge(noise, {"a": truth}, truth, candidates=("a",), blend=blend, weights=(1.0,))
    assert lost.fell_back
    assert lost.blend_weight == 0.0
    assert calls == ["a"]  # no blend is chosen when falling back


def test_judge_prefers_the_first_weight_on_ties() -> None:
    truth = np.arange(6.0)

    def same(prior: str) -> tuple[np.ndarray, np.ndarray]:
        return truth, truth

    assert judge(truth, {"p": truth}, truth, candidates=("p",), blend=same, weights=(0.25, 1.0)).blend_weight == 0.25
    assert judge(truth, {"p": truth}, truth, candidates=("p",), blend=same, weights=(1.0, 0.25)).blend_weight == 1.0


def test_fallback_warnings_carry_the_house_prefix() -> None:
    with pytest.warns(UserWarning, match=r"^\[AutoPrune\] fell back$"):
        warn_fallback("fell back", stacklevel=1)
