from __future__ import annotations

from typing import cast

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.core.replay import LayerReplay
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned.budget import LabelBudget


def test_the_budget_grows_with_training_and_counts_every_pass() -> None:
    budget = LabelBudget(0.1)
    inputs = ScoreInputs({}, {}, trained_samples=1000, loss_samples=10, loss_fn=lambda: 1.0)
    assert budget.calls_allowed(inputs) == 10
    counted = budget.counted(inputs)
    assert [counted.loss_fn() for _ in range(3)] == [1.0, 1.0, 1.0]  # type: ignore[misc]
    assert budget.spent_samples == 30
    assert budget.calls_allowed(inputs) == 7
    inputs.trained_samples = 2000  # another epoch trained: the allowance grows
    assert budget.calls_allowed(inputs) == 17
    # A probe of the first n calibration samples costs n.
    inputs.probe_fn = lambda n, start=0: lambda: float(n)
    probing = budget.counted(inputs)
    assert probing.probe_fn is not None
    assert probing.probe_fn(4)() == 4.0
    assert budget.spent_samples == 34
    assert budget.samples_left(inputs) == 166
    restored = LabelBudget(0.1)
    restored.load_state_dict(budget.state_dict())
    assert restored.spent_samples == 34


def test_a_replayed_ablation_pass_costs_the_full_samples() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    batches = [torch.randn(10, 3)]
    replay = LayerReplay(net, lambda b, i: net(b).sum(), batches, {"1.weight": cast(torch.nn.Linear, net[1]).weight})
    budget = LabelBudget(0.1)
    counted = budget.counted(ScoreInputs({}, {}, loss_samples=10, loss_fn=lambda: 0.0, ablation_loss=replay))
    assert counted.ablation_loss is not None
    counted.ablation_loss.record()
    counted.ablation_loss.changing(["1.weight"])
    counted.ablation_loss.clear()
    assert replay.replayed_calls == 1  # half the pass was not run, and still:
    assert budget.spent_samples == 20


def test_an_ablation_pass_on_fewer_samples_costs_those_samples() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    batches = [torch.randn(4, 3)]  # the first 4 of the loss's 10 samples, as a large model's ablations run
    replay = LayerReplay(net, lambda b, i: net(b).sum(), batches, {"1.weight": cast(torch.nn.Linear, net[1]).weight})
    budget = LabelBudget(0.1)
    inputs = ScoreInputs({}, {}, loss_samples=10, loss_fn=lambda: 0.0, ablation_loss=replay, ablation_samples=4)
    counted = budget.counted(inputs)
    assert counted.ablation_loss is not None
    assert counted.loss_fn is not None
    counted.ablation_loss.record()
    counted.ablation_loss.changing(["1.weight"])
    counted.loss_fn()
    assert budget.spent_samples == 4 + 4 + 10


def test_unknown_sizes_or_no_share_mean_no_limit() -> None:
    assert LabelBudget(None).calls_allowed(ScoreInputs({}, {}, trained_samples=10, loss_samples=1)) is None
    assert LabelBudget(0.05).calls_allowed(ScoreInputs({}, {}, loss_samples=1)) is None
    assert LabelBudget(0.05).calls_allowed(ScoreInputs({}, {}, trained_samples=10)) is None
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"`label_budget` must be in \(0, 1\] or None"):
            LabelBudget(bad)
    with pytest.raises(ValueError, match="`label_budget` must be in"):
        AutoPrune(target_sparsity=0.5, label_budget=2.0)


def test_a_fit_never_spends_more_than_its_share(trainer_kwargs: dict) -> None:
    """A real fit: the learned scorer's calibration passes stay within half the samples trained before each event."""
    seed_everything(0)
    datamodule = DigitsDataModule(batch_size=32)
    autoprune = AutoPrune(
        target_sparsity=0.9, start_epoch=1, end_epoch=5, label_budget=0.5, calibration_samples=16, verbose=False
    )
    trainer = Trainer(max_epochs=6, limit_train_batches=20, callbacks=[autoprune], **trainer_kwargs)
    with pytest.warns(UserWarning, match=r"the label budget \(label_budget=0.5"):
        trainer.fit(MLPClassifier(), datamodule=datamodule)
    scorer = autoprune.scorer
    per_epoch = 20 * 32
    assert scorer.budget.spent_samples <= 0.5 * 5 * per_epoch  # trained before the last event: 5 epochs
    assert scorer.budget.spent_samples > 0
    labelled = [d["epoch"] for d in scorer.diagnostics]
    # Epoch 1: 640 samples trained pay for 20 passes of 16 samples, short of the 24 a labelled event
    # needs, so it measures the priors' steps only; by epoch 2 the rest has grown enough to label.
    assert 1 not in labelled
    assert 2 in labelled
    # Every event records the step it applied; epoch 1's was measured on all 16 calibration samples.
    assert [step["epoch"] for step in scorer.steps] == [1, 2, 3, 4, 5]
    assert scorer.steps[0]["samples"] == 16
    assert scorer.steps[0]["losses"][scorer.steps[0]["used"]] == min(scorer.steps[0]["losses"].values())
    assert autoprune.sparsity == pytest.approx(0.9, abs=1e-3)
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())
