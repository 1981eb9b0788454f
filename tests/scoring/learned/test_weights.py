from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from sklearn.linear_model import Ridge
from torch import nn

from lightning_autoprune import AutoPrune
from lightning_autoprune.core.replay import LayerReplay
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier
from lightning_autoprune.scoring import ScoreInputs, make_scorer
from lightning_autoprune.scoring.learned import DEFAULT_MODEL_PATH, LearnedScorer
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES
from lightning_autoprune.scoring.learned.persistence import load_importance_model, save_importance_model
from lightning_autoprune.scoring.learned.priors import PriorScores
from lightning_autoprune.scoring.learned.steps import step_collapses, step_loss
from lightning_autoprune.scoring.learned.weights import STEP_PRIORS


def real_inputs(seed: int = 0, sparsity: float = 0.5, ablation_samples: int | None = None) -> ScoreInputs:
    """Scorer inputs from a real (briefly trained) network on real digits, with a held-out calibration loss."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data[:600], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:600])
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x[:400]), y[:400]).backward()
        optimizer.step()
    params = {"net.0.weight": cast(nn.Linear, net[0]).weight, "net.2.weight": cast(nn.Linear, net[2]).weight}
    grads, squares = {}, {}
    for name, p in params.items():
        grads[name], squares[name] = torch.zeros_like(p), torch.zeros_like(p)
    for batch in range(4):
        net.zero_grad()
        nn.functional.cross_entropy(
            net(x[batch * 100 : (batch + 1) * 100]), y[batch * 100 : (batch + 1) * 100]
        ).backward()
        for name, p in params.items():
            assert p.grad is not None
            grads[name] += p.grad / 4
            squares[name] += p.grad**2 / 4

    def loss() -> float:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(net(x[400:]), y[400:]).double())

    replay = None
    if ablation_samples is not None:  # ablations on the first held-out samples, as a large model's event runs them
        held_out = [(x[400 : 400 + ablation_samples], y[400 : 400 + ablation_samples])]
        replay = LayerReplay(net, lambda b, i: nn.functional.cross_entropy(net(b[0]), b[1]), held_out, params)
    return ScoreInputs(
        weights={n: p.detach() for n, p in params.items()},
        masks={n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()},
        grad_mean=grads,
        grad_sq_mean=squares,
        generator=torch.Generator().manual_seed(seed),
        target_sparsity=sparsity,
        progress=0.5,
        params={n: p.data for n, p in params.items()},
        loss_fn=loss,
        ablation_loss=replay,
        ablation_samples=ablation_samples,
    )


def test_a_named_estimator_instance_is_cloned_never_mutated() -> None:
    module = types.ModuleType("user_estimators")
    module.tuned = Ridge(alpha=3.0)  # type: ignore[attr-defined]
    sys.modules["user_estimators"] = module
    try:
        scorer = LearnedScorer(estimator="user_estimators.tuned", label_groups=32)
        scorer.score(real_inputs())
    finally:
        del sys.modules["user_estimators"]
    assert not hasattr(module.tuned, "coef_")  # the user's object was never fitted
    assert scorer.online.model is not module.tuned
    assert scorer.online.model.alpha == 3.0
    assert hasattr(scorer.online.model, "coef_")


def test_learned_scores_come_with_fidelity_next_to_the_formulas() -> None:
    scorer = LearnedScorer(label_groups=32)
    inputs = real_inputs()
    scores = scorer.score(inputs)
    assert set(scores) == set(inputs.weights)
    assert all(s.shape == inputs.weights[n].shape and torch.isfinite(s).all() for n, s in scores.items())
    entry = scorer.diagnostics[-1]
    assert set(entry["fidelity"]) == {"learned", "magnitude", "lamp", "taylor", "taylor2", "wanda"}
    assert entry["held_out"] >= 4
    assert entry["groups"] >= 16
    assert all(-1.0 <= f["spearman"] <= 1.0 and 0.0 <= f["precision_at_k"] <= 1.0 for f in entry["fidelity"].values())
    assert len(scorer.online.rows_x) == 1
    assert scorer.online.rows_x[0].shape[1] == len(FEATURE_NAMES)
    assert entry["groups"] <= len(scorer.online.rows_x[0]) <= 8 * entry["groups"]
    importances = scorer.feature_importances(repeats=2)
    assert set(importances) == set(FEATURE_NAMES)


def test_useless_estimator_falls_back_to_the_prior_with_the_best_step_loudly() -> None:
    scorer = LearnedScorer(estimator="sklearn.dummy.DummyRegressor", label_groups=32)
    inputs = real_inputs()
    with pytest.warns(UserWarning, match="Learned importance fell back to the '[a-z0-9]+' prior") as caught:
        scores = scorer.score(inputs)
    entry = scorer.diagnostics[-1]
    used = entry["used"]
    assert isinstance(caught[0].message, Warning)
    assert used in caught[0].message.args[0]
    assert "held-out" in caught[0].message.args[0]
    # A constant model cannot rank: it is not a candidate, and every prior's step was measured.
    assert set(entry["step_losses"]) == set(STEP_PRIORS)
    assert entry["step_losses"][used] == min(entry["step_losses"].values())
    assert used == entry["best_prior"]
    expected = PriorScores(inputs).full(used)
    assert all(torch.equal(scores[n], expected[n]) for n in expected)
    assert entry["fell_back"] is True
    assert entry["blend_weight"] == 0.0


def test_the_step_with_the_lowest_calibration_loss_is_applied() -> None:
    scorer = LearnedScorer(estimator="sklearn.linear_model.Ridge", label_groups=32)
    inputs = real_inputs()
    scores = scorer.score(inputs)
    entry = scorer.diagnostics[-1]
    assert entry["step_losses"][entry["used"]] == min(entry["step_losses"].values())
    # Measuring the steps left the live weights as they were, and the applied step has that loss.
    assert step_loss(scores, inputs) == pytest.approx(entry["step_losses"][entry["used"]], rel=1e-12)


def budgeted_inputs(trained_samples: int, ablation_samples: int | None = None) -> ScoreInputs:
    """:func:`real_inputs` with a 200-sample calibration loss, its probes, and a training count for the budget."""
    inputs = real_inputs(ablation_samples=ablation_samples)
    assert inputs.params is not None
    torch.manual_seed(1)
    x, y = torch.randn(200, 64).abs(), torch.randint(0, 10, (200,))
    layers = [inputs.params["net.0.weight"], inputs.params["net.2.weight"]]

    def probe(count: int, start: int = 0) -> Callable[[], float]:  # a loss on samples start..start+count
        def loss() -> float:
            hidden = torch.relu(x[start : start + count] @ layers[0].T)
            return float(nn.functional.cross_entropy(hidden @ layers[1].T, y[start : start + count]).double())

        return loss

    inputs.loss_samples, inputs.trained_samples, inputs.probe_fn = 200, trained_samples, probe
    return inputs


def test_an_event_the_budget_cannot_label_measures_steps_on_a_probe() -> None:
    """5% of 16,000 samples pays 800: short of labels (22 passes of 200), enough for 5 probes of 160 samples."""
    scorer = LearnedScorer(label_groups=32)  # the pretrained default: its ranking is a candidate before any label
    inputs = budgeted_inputs(trained_samples=16_000)
    with pytest.warns(UserWarning, match=r"lowest calibration loss on 160 samples"):
        scores = scorer.score(inputs)
    assert scorer.diagnostics == []  # nothing was labelled
    (step,) = scorer.steps
    assert step["samples"] == 160
    assert set(step["losses"]) == {"learned", *STEP_PRIORS}
    # The lowest loss replaced the incumbent (Taylor) only if it beat it by more than the noise margin.
    best = min(step["losses"], key=step["losses"].__getitem__)
    assert step["used"] in (best, "taylor")
    gain = step["losses"]["taylor"] - step["losses"][best]
    assert (step["used"] == best) == (best == "taylor" or gain > step["margin"])
    assert scorer.budget.spent_samples == 5 * 160 <= 800
    assert scorer.last_used == step["used"]
    assert all(torch.isfinite(s).all() for s in scores.values())


@pytest.mark.parametrize("ablation_samples", [None, 100])
def test_ablations_on_fewer_samples_cost_less_of_the_budget(ablation_samples: int | None) -> None:
    """5% of 60,000 samples pays 3,000: 5 steps of 200 and 20 ablation passes of 100, not of 200."""
    scorer = LearnedScorer(label_groups=32)
    inputs = budgeted_inputs(trained_samples=60_000, ablation_samples=ablation_samples)
    if ablation_samples is None:  # 15 passes of 200: short of the 22 that labelling needs
        with pytest.warns(UserWarning, match=r"allows 15 passes of 200 samples .* labelling needs 22"):
            scorer.score(inputs)
        assert scorer.diagnostics == []
    else:
        scorer.score(inputs)  # the base pass and 19 groups on 100 samples, the candidate steps on all 200
        assert scorer.diagnostics[-1]["groups"] == 19
        assert scorer.budget.spent_samples == 20 * 100 + 5 * 200


def test_the_budget_warning_counts_cheaper_ablations_at_their_samples() -> None:
    scorer = LearnedScorer(label_groups=32)
    inputs = budgeted_inputs(trained_samples=16_000, ablation_samples=100)  # pays 800: 4 passes of 200
    with pytest.warns(
        UserWarning, match=r"allows 4 passes of 200 samples .* labelling needs 17 passes of 100 samples and 5 of 200\."
    ):
        scorer.score(inputs)
    assert scorer.diagnostics == []


def test_an_event_too_poor_to_probe_repeats_the_last_choice() -> None:
    scorer = LearnedScorer(label_groups=32)
    inputs = budgeted_inputs(trained_samples=2_000)  # pays 100 samples: 20 per candidate, under the minimum of 64
    with pytest.warns(UserWarning, match="the budget pays for no step measurement"):
        scores = scorer.score(inputs)
    assert scorer.steps[-1] == {
        "target_sparsity": 0.5,
        "used": "taylor",
        "samples": 0,
        "losses": {},
        "margin": 0.0,
        "collapsing": [],
        "label_samples": 0,
    }
    expected = PriorScores(inputs).full("taylor")
    assert all(torch.equal(scores[n], expected[n]) for n in expected)


def test_an_unmeasured_event_does_not_repeat_a_step_that_collapses_a_layer() -> None:
    """The incumbent (magnitude) would take the tiny output layer to its floor; the event uses another step."""
    scorer = LearnedScorer(label_groups=32)
    scorer.last_used = "magnitude"
    inputs = budgeted_inputs(trained_samples=2_000)  # too poor to measure any step
    inputs.min_density = 0.1
    assert inputs.params is not None
    with torch.no_grad():
        inputs.params["net.2.weight"].mul_(1e-3)  # (the weights share this storage)
    assert step_collapses({n: w.abs() for n, w in inputs.weights.items()}, inputs)
    with pytest.warns(UserWarning, match="the budget pays for no step measurement"):
        scores = scorer.score(inputs)
    step = scorer.steps[-1]
    assert step["samples"] == 0
    assert step["losses"] == {}
    assert step["collapsing"][0] == "magnitude"
    assert step["used"] not in step["collapsing"]
    assert scorer.last_used == step["used"]
    assert not step_collapses(scores, inputs)


def test_classifier_estimators_work() -> None:
    scorer = LearnedScorer(estimator="sklearn.linear_model.LogisticRegression", label_groups=32)
    scores = scorer.score(real_inputs())
    assert all(torch.isfinite(s).all() for s in scores.values())


def test_feature_count_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "three.skops"
    save_importance_model(Ridge().fit(np.zeros((4, 3)), np.arange(4.0)), path)
    with pytest.raises(ValueError, match=f"was fitted on 3 features, but AutoPrune computes {len(FEATURE_NAMES)}"):
        make_scorer(str(path))
    with pytest.raises(ValueError, match="either `estimator`"):
        LearnedScorer(estimator="sklearn.linear_model.Ridge", model_path=str(path))
    with pytest.raises(ValueError, match="`label_groups` must be >= 16"):
        LearnedScorer(label_groups=4)
    with pytest.raises(ValueError, match="`estimator` only applies to importance='learned'"):
        AutoPrune(importance="lamp", estimator="sklearn.linear_model.Ridge")


def test_a_users_skops_model_is_used(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.skops"
    save_importance_model(Ridge().fit(rng.normal(size=(50, len(FEATURE_NAMES))), rng.normal(size=50)), path)
    scorer = make_scorer(str(path))
    assert isinstance(scorer, LearnedScorer)
    assert type(scorer.online.pretrained).__name__ == "Ridge"


def test_state_round_trip_refuses_other_feature_counts() -> None:
    scorer = LearnedScorer(estimator="sklearn.linear_model.Ridge", label_groups=32)
    scorer.score(real_inputs())
    state = scorer.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in state["rows_x"] + state["rows_y"])
    other = LearnedScorer(estimator="sklearn.linear_model.Ridge", label_groups=32)
    other.load_state_dict(state)
    assert np.array_equal(other.online.rows_x[0], scorer.online.rows_x[0])
    with pytest.raises(ValueError, match="rows have 5 features; this version computes"):
        other.load_state_dict({"rows_x": [torch.zeros(3, 5)], "rows_y": [torch.zeros(3)]})


def test_shipped_default_loads_and_scores_a_model_it_never_saw(trainer_kwargs: dict, tmp_path: Path) -> None:
    model = load_importance_model(DEFAULT_MODEL_PATH)
    assert model.n_features_in_ == len(FEATURE_NAMES)
    seed_everything(0)
    datamodule = DigitsDataModule(batch_size=32)
    callback = AutoPrune(
        target_sparsity=0.9, start_epoch=1, end_epoch=3, label_budget=None, report_dir=str(tmp_path / "report")
    )
    assert callback.importance == "learned"
    assert isinstance(callback.scorer, LearnedScorer)
    trainer = Trainer(max_epochs=4, limit_train_batches=6, limit_val_batches=2, callbacks=[callback], **trainer_kwargs)
    trainer.fit(MLPClassifier(hidden=[48, 24, 16]), datamodule=datamodule)  # not in the pretraining zoo
    assert callback.sparsity == pytest.approx(0.9, abs=1e-3)
    diagnostics = callback.report_record()["importance_diagnostics"]
    assert [d["epoch"] for d in diagnostics] == [1, 2, 3]
    assert "feature_importances" in diagnostics[-1]
    logged = trainer.callback_metrics
    assert "autoprune/fidelity/spearman_learned" in logged
    assert "autoprune/fidelity/spearman_taylor" in logged
    # The report shows the importance model: its plot, and the fidelity table with every scorer.
    report = (tmp_path / "report" / "report.md").read_text()
    assert "](importance_model.png)" in report
    assert "| metric | learned | taylor | lamp | magnitude | wanda | taylor2 |" in report
    # ...and why the last event pruned what it did: each tensor's share under the applied step and Taylor's.
    assert "Share of each tensor's kept weights it pruned, against Taylor's step" in report
    last = diagnostics[-1]
    assert set(last["layer_removed"]) == {"net.1.weight", "net.3.weight", "net.5.weight", "net.7.weight"}
    assert all(0.0 <= v <= 1.0 for shares in last["layer_removed"].values() for v in shares.values())
    assert (tmp_path / "report" / "importance_model.png").stat().st_size > 10_000


def test_calibration_set_too_small_for_the_labels_is_a_clear_error(trainer_kwargs: dict) -> None:
    seed_everything(0)
    datamodule = DigitsDataModule(batch_size=64)  # 1077 training samples
    callback = AutoPrune(target_sparsity=0.5, start_epoch=1, end_epoch=1, calibration_samples=800, report=False)
    model = MLPClassifier()
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    with pytest.raises(
        RuntimeError, match=r"Calibration needs 800 \+ 800 distinct training samples, but the training set has 1077"
    ):
        trainer.fit(model, datamodule=datamodule)
    assert all(bool(mask.all()) for mask in callback.masks.values())  # nothing was pruned
    assert callback.history == []
    assert all(int((p == 0).sum()) == 0 for p in model.parameters())  # no weight was zeroed


@pytest.mark.parametrize("alpha", [1.0, 0.4])
def test_learned_scores_at_entries_are_its_full_scores_bit_for_bit(alpha: float) -> None:
    # A large model's step is cut from a sample read this way; its masks come from the full scores.
    from lightning_autoprune.scoring.learned.priors import frontier_bands
    from lightning_autoprune.scoring.learned.weights import _BandScores, _QuantileMap

    inputs = real_inputs(sparsity=0.5)
    priors = PriorScores(inputs)
    g = torch.Generator().manual_seed(0)
    bands = frontier_bands(priors, "taylor", inputs.masks, 0.5, g, window=2.0, max_rows=10**6)
    predicted = {name: torch.rand(len(index), generator=g) for name, index in bands.items()}
    band_scores = _BandScores(bands, predicted, _QuantileMap(torch.rand(50, generator=g)), _QuantileMap(torch.rand(50)))
    for name, weight in inputs.weights.items():
        full = band_scores.tensor_scores(priors, "taylor", alpha, name).reshape(-1)
        index = torch.randperm(weight.numel(), generator=g)
        assert torch.equal(band_scores.tensor_scores_at(priors, "taylor", alpha, name, index), full[index])
        assert not torch.equal(full, priors.tensor("taylor", name).reshape(-1))  # the band was reordered
