"""End-to-end tests of AutoPrune with real Trainers on the bundled digits data."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_autoprune import AutoPrune
from lightning_autoprune.control.schedule import ScheduleKind
from lightning_autoprune.core.masks import count_zeros
from lightning_autoprune.examples import (
    CNN1DClassifier,
    DigitsDataModule,
    EmbeddingClassifier,
    MLPClassifier,
    RecurrentClassifier,
    TransformerClassifier,
)
from lightning_autoprune.examples.models import OptimizerName


def _prunable_sparsity(callback: AutoPrune) -> float:
    zeros, total = count_zeros(t.param.detach() for t in callback.targets)
    return zeros / total


class ZeroChecker(Callback):
    """After every training batch (so after every optimizer step), pruned weights must be exactly zero."""

    def __init__(self, autoprune: AutoPrune) -> None:
        self.autoprune = autoprune
        self.checks = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        for target in self.autoprune.targets:
            pruned = target.param.detach()[~self.autoprune.masks[target.name]]
            assert torch.count_nonzero(pruned) == 0, f"{target.name} regrew {torch.count_nonzero(pruned)} weights"
        self.checks += 1


@pytest.mark.parametrize("schedule", ["cubic", "linear", "one_shot"])
@pytest.mark.parametrize("importance", ["magnitude", "lamp", "taylor", "random", "learned"])
def test_reaches_target(
    importance: str, schedule: ScheduleKind, digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    callback = AutoPrune(report=False, target_sparsity=0.8, importance=importance, schedule=schedule, verbose=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=4, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    trainer.fit(MLPClassifier(), datamodule=digits)
    assert _prunable_sparsity(callback) == pytest.approx(0.8, abs=0.005)
    assert _prunable_sparsity(callback) <= 0.8


def test_wanda_scores_with_input_norms_recorded_in_the_event(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    callback = AutoPrune(report=False, target_sparsity=0.8, importance="wanda", end_epoch=2, verbose=False)
    seen: list[dict[str, torch.Tensor]] = []
    score = callback.scorer.score

    def spy(inputs: Any) -> dict[str, torch.Tensor]:
        seen.append(dict(inputs.input_norms))
        return score(inputs)

    callback.scorer.score = spy
    trainer = Trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    trainer.fit(MLPClassifier(), datamodule=digits)
    assert seen
    assert set(seen[0]) == {t.name for t in callback.targets}
    assert seen[0][callback.targets[0].name].shape == (64,)
    assert _prunable_sparsity(callback) == pytest.approx(0.8, abs=0.005)


def test_schedule_grows_then_holds(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    callback = AutoPrune(report=False, target_sparsity=0.9, start_epoch=1, end_epoch=3, verbose=False)
    seen: list[float] = []

    class Record(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            seen.append(_prunable_sparsity(callback))

    trainer = Trainer(
        max_epochs=5, limit_train_batches=3, limit_val_batches=1, callbacks=[callback, Record()], **trainer_kwargs
    )
    trainer.fit(MLPClassifier(), datamodule=digits)
    assert seen[0] == 0.0
    assert seen == sorted(seen)
    assert seen[1] < seen[2] < seen[3]
    assert seen[3] == pytest.approx(0.9, abs=1e-4)
    assert seen[4] == seen[3]
    assert [event["epoch"] for event in callback.history] == [1, 2, 3]


@pytest.mark.parametrize(
    ("optimizer", "extra"),
    [
        ("sgd", {}),
        ("adam", {}),
        ("adamw", {"weight_decay": 0.05}),
        ("adam", {"weight_decay": 0.01}),
    ],
)
def test_pruned_weights_stay_zero(
    optimizer: OptimizerName, extra: dict, digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, target_sparsity=0.7, start_epoch=1, end_epoch=2, verbose=False)
    checker = ZeroChecker(autoprune)
    trainer = Trainer(
        max_epochs=4, limit_train_batches=5, limit_val_batches=1, callbacks=[autoprune, checker], **trainer_kwargs
    )
    trainer.fit(MLPClassifier(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2, **extra), datamodule=digits)
    assert checker.checks == 20
    assert _prunable_sparsity(autoprune) == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize(
    "trainer_extra",
    [{"accumulate_grad_batches": 3}, {"precision": "bf16-mixed"}],
    ids=["grad-accumulation", "bf16-mixed"],
)
def test_pruned_weights_stay_zero_accumulation_and_mixed_precision(
    trainer_extra: dict, digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        report=False, target_sparsity=0.7, start_epoch=1, end_epoch=2, importance="taylor", verbose=False
    )
    checker = ZeroChecker(autoprune)
    trainer = Trainer(
        max_epochs=4,
        limit_train_batches=6,
        limit_val_batches=1,
        callbacks=[autoprune, checker],
        **trainer_kwargs,
        **trainer_extra,
    )
    trainer.fit(MLPClassifier(optimizer="adam", lr=1e-2), datamodule=digits)
    assert checker.checks == 24
    assert _prunable_sparsity(autoprune) == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("importance", ["lamp", "taylor", "wanda", "random", "learned"])
def test_resume_gives_identical_masks(
    importance: str,
    digits: DigitsDataModule,
    trainer_kwargs: dict,
    tmp_path: Path,
    stop_after: Callable[[int], Callback],
) -> None:
    def make_callback() -> AutoPrune:
        return AutoPrune(
            report=False, target_sparsity=0.85, importance=importance, start_epoch=1, end_epoch=4, verbose=False
        )

    common = {**trainer_kwargs, "max_epochs": 6, "limit_train_batches": 4, "limit_val_batches": 1}

    seed_everything(0)
    uninterrupted = make_callback()
    model_a = MLPClassifier(lr=1e-2)
    Trainer(callbacks=[uninterrupted], **common).fit(model_a, datamodule=digits)

    seed_everything(0)
    first = make_callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    interrupted = Trainer(callbacks=[first, checkpoint, stop_after(2)], **{**common, "enable_checkpointing": True})
    interrupted.fit(MLPClassifier(lr=1e-2), datamodule=digits)
    assert interrupted.current_epoch == 3  # stopped after epochs 0..2, mid-schedule

    seed_everything(1234)  # a different global RNG and a different initialisation: the checkpoint must restore both
    resumed = make_callback()
    model_b = MLPClassifier(lr=1e-2)
    Trainer(callbacks=[resumed], **common).fit(model_b, datamodule=digits, ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert set(resumed.masks) == set(uninterrupted.masks)
    for name, mask in uninterrupted.masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [e["epoch"] for e in resumed.history] == [e["epoch"] for e in uninterrupted.history]


def test_checkpoint_loads_into_unmodified_module(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, target_sparsity=0.9, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    model = MLPClassifier()
    trainer.fit(model, datamodule=digits)
    path = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, weights_only=True)
    assert list(raw["state_dict"]) == list(MLPClassifier().state_dict())
    callback_state = raw["callbacks"][autoprune.state_key]
    assert set(callback_state["masks"]) == {t.name for t in autoprune.targets}

    restored = MLPClassifier.load_from_checkpoint(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name
    plain = MLPClassifier()
    plain.load_state_dict(raw["state_dict"])
    zeros, total = count_zeros(p for n, p in plain.named_parameters() if n.endswith("weight"))
    assert zeros / total == pytest.approx(0.9, abs=1e-3)


def test_metrics_reach_csv_logger(digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=2,
        callbacks=[autoprune],
        **{**trainer_kwargs, "logger": logger},
    )
    trainer.fit(MLPClassifier(), datamodule=digits)
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    expected = {
        "autoprune/sparsity",
        "autoprune/target_sparsity",
        "autoprune/scheduled_sparsity",
        "autoprune/metric_before",
        "autoprune/metric_after",
        *(f"autoprune/sparsity/{t.name}" for t in autoprune.targets),
    }
    assert expected <= columns
    logged = [float(r["autoprune/sparsity"]) for r in rows if r["autoprune/sparsity"]]
    assert logged[-1] == pytest.approx(0.5, abs=1e-3)
    assert autoprune.history[-1]["metric_after"] is not None


@pytest.mark.parametrize(
    ("model_factory", "expected_targets", "include"),
    [
        (lambda: RecurrentClassifier(cell="lstm", hidden_size=16), {"net.weight_ih_l0", "net.weight_hh_l0"}, None),
        (
            lambda: TransformerClassifier(length=64, d_model=16, nhead=2, num_layers=1, dim_feedforward=32),
            {"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"},
            None,
        ),
        (lambda: CNN1DClassifier(length=64, channels=[8, 8]), {"weight"}, None),
        # Embeddings are left dense by default; a user opts them in by name.
        (lambda: EmbeddingClassifier(), {"net.weight", "head.weight"}, ["net.weight", "head.weight"]),
    ],
    ids=["lstm", "transformer", "cnn-batchnorm", "embedding"],
)
def test_prunes_other_architectures(
    model_factory: Any, expected_targets: set[str], include: list[str] | None, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    model = model_factory()
    datamodule = DigitsDataModule(batch_size=64)
    autoprune = AutoPrune(report=False, target_sparsity=0.6, start_epoch=1, end_epoch=1, include=include, verbose=False)
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    names = {t.name for t in autoprune.targets}
    assert all(any(n.endswith(suffix) for n in names) for suffix in expected_targets), names
    assert not any(n.endswith("bias") or "norm" in n or "bn" in n.lower() for n in names), names
    assert _prunable_sparsity(autoprune) == pytest.approx(0.6, abs=0.005)
    # Every module still runs (no reparametrisation left behind) and BatchNorm/LayerNorm are untouched.
    for name, param in model.named_parameters():
        if name not in names:
            assert torch.count_nonzero(param) == param.numel() or "bias" in name, name


def test_validate_and_test_alone_do_nothing(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    model = MLPClassifier()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    autoprune = AutoPrune(report=False, target_sparsity=0.9, verbose=False)
    trainer = Trainer(limit_val_batches=1, limit_test_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.validate(model, datamodule=digits)
    trainer.test(model, datamodule=digits)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert autoprune.masks == {}


def test_failure_inside_pruning_step_names_epoch_and_target(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    class NoLoss(MLPClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            return None if not self.training else loss

    autoprune = AutoPrune(
        report=False, target_sparsity=0.5, importance="taylor", start_epoch=1, end_epoch=1, verbose=False
    )
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    with pytest.raises(RuntimeError, match=r"start of epoch 1 towards sparsity 0\.5000.*training_step.*scalar loss"):
        trainer.fit(NoLoss(), datamodule=digits)


def test_a_schedule_beyond_max_epochs_warns_and_resumes_exactly(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    """Training in chunks: end_epoch beyond this fit's last epoch is a warning, and the resumed fit continues."""

    def make_callback() -> AutoPrune:
        return AutoPrune(
            report=False, target_sparsity=0.8, importance="lamp", start_epoch=1, end_epoch=5, verbose=False
        )

    common = {**trainer_kwargs, "limit_train_batches": 3, "limit_val_batches": 1}
    seed_everything(0)
    straight = make_callback()
    model_a = MLPClassifier(lr=1e-2)
    Trainer(max_epochs=7, callbacks=[straight], **common).fit(model_a, datamodule=digits)

    seed_everything(0)
    first = make_callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    chunk = Trainer(max_epochs=3, callbacks=[first, checkpoint], **{**common, "enable_checkpointing": True})
    with pytest.warns(UserWarning, match=r"`end_epoch`=5 is beyond this Trainer's last epoch 2 \(max_epochs=3\)"):
        chunk.fit(MLPClassifier(lr=1e-2), datamodule=digits)
    assert 0.0 < first.sparsity < 0.8  # part of the way along the schedule

    seed_everything(1234)
    resumed = make_callback()
    model_b = MLPClassifier(lr=1e-2)
    trainer = Trainer(max_epochs=7, callbacks=[resumed], **common)
    trainer.fit(model_b, datamodule=digits, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.sparsity == pytest.approx(0.8, abs=1e-3)
    for name, mask in straight.masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_include_glob_that_matches_nothing_lists_names(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    autoprune = AutoPrune(report=False, target_sparsity=0.5, include=["encoder.*"])
    trainer = Trainer(max_epochs=3, callbacks=[autoprune], **trainer_kwargs)
    with pytest.raises(
        ValueError, match=r"`include` pattern 'encoder\.\*' matches no parameter\. Available: net\.1\.weight"
    ):
        trainer.fit(MLPClassifier(), datamodule=digits)


def test_two_callbacks_claiming_one_tensor_fail(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    first = AutoPrune(report=False, target_sparsity=0.5, include=["net.1.weight"])
    second = AutoPrune(report=False, target_sparsity=0.5)
    trainer = Trainer(max_epochs=3, callbacks=[first, second], **trainer_kwargs)
    with pytest.raises(ValueError, match=r"Two AutoPrune callbacks claim the same tensors: net\.1\.weight"):
        trainer.fit(MLPClassifier(), datamodule=digits)


def test_model_without_prunable_tensors_fails(trainer_kwargs: dict, digits: DigitsDataModule) -> None:
    class OnlyNorm(MLPClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.LayerNorm(64))

    trainer = Trainer(max_epochs=3, callbacks=[AutoPrune(report=False, target_sparsity=0.5)], **trainer_kwargs)
    with pytest.raises(ValueError, match="No prunable tensor is left"):
        trainer.fit(OnlyNorm(), datamodule=digits)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_sparsity": 1.5}, r"`target_sparsity` must be in \[0, 1\) or None, got 1\.5"),
        ({"target_sparsity": -0.1}, r"`target_sparsity` must be in \[0, 1\) or None, got -0\.1"),
        ({"target_sparsity": 0.5, "importance": "l1"}, r"`importance` must be one of 'learned', 'magnitude'.*got 'l1'"),
        (
            {"target_sparsity": 0.5, "schedule": "exp"},
            r"`schedule` must be one of 'cubic', 'linear', 'one_shot', got 'exp'",
        ),
        ({"target_sparsity": 0.5, "granularity": "block"}, r"`granularity` must be one of .*got 'block'"),
        (
            {"target_sparsity": 0.5, "start_epoch": 5, "end_epoch": 2},
            r"`end_epoch` must be >= `start_epoch`, got end_epoch=2",
        ),
        ({"target_sparsity": 0.5, "start_epoch": -1}, r"`start_epoch` must be an integer >= 0 or None, got -1"),
        ({"target_sparsity": 0.5, "frequency": 0}, r"`frequency` must be an integer >= 1, got 0"),
        ({"target_sparsity": 0.5, "mode": "up"}, r"`mode` must be one of 'max', 'min' or None, got 'up'"),
        (
            {"target_sparsity": 0.5, "max_metric_drop": -1.0},
            r"`max_metric_drop` must be a finite number >= 0, got -1\.0",
        ),
        ({"target_sparsity": 0.5, "min_layer_density": 2.0}, r"`min_layer_density` must be in \[0, 1\], got 2\.0"),
        ({"target_sparsity": 0.99, "min_layer_density": 0.05}, r"`min_layer_density`=0\.05 keeps more weights"),
        ({"target_sparsity": 0.5, "calibration_samples": 0}, r"`calibration_samples` must be .* or None, got 0"),
    ],
)
def test_misconfiguration_fails_in_init(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoPrune(report=False, **kwargs)


def test_monitor_that_is_never_logged_lists_logged_metrics(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    autoprune = AutoPrune(
        report=False, target_sparsity=0.5, monitor="val_f1", start_epoch=1, end_epoch=1, verbose=False
    )
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    with pytest.raises(ValueError, match=r"`monitor`='val_f1' is not logged\. Logged metrics: .*val_acc"):
        trainer.fit(MLPClassifier(), datamodule=digits)


class RecordingScorer:
    """A context-hungry scorer (as the learned one is) that records what the callback hands it.

    It meets the whole `scoring.Scorer` contract: the callback reads `diagnostics` and may set
    `progress` without probing.
    """

    needs_gradients = True
    needs_context = True

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.progress: Any = None
        self.diagnostics: list[dict[str, Any]] = []

    def feature_importances(self) -> dict[str, float]:
        return {}

    def score(self, inputs: Any) -> dict[str, torch.Tensor]:
        assert inputs.params is not None
        assert inputs.loss_fn is not None
        name = next(iter(inputs.params))
        base = inputs.loss_fn()
        saved = inputs.params[name].clone()
        inputs.params[name].zero_()
        ablated = inputs.loss_fn()
        inputs.params[name].copy_(saved)
        self.seen.append({"inputs": inputs, "base": base, "ablated": ablated, "again": inputs.loss_fn()})
        return {n: w.abs() for n, w in inputs.weights.items()}


def test_context_for_learned_scorers(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, calibration_samples=128, verbose=False
    )
    recorder = RecordingScorer()
    autoprune.scorer = recorder
    trainer = Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(MLPClassifier(), datamodule=digits)
    assert len(recorder.seen) == 2
    first = recorder.seen[0]
    inputs = first["inputs"]
    names = [t.name for t in autoprune.targets]
    assert list(inputs.input_norms) == names
    assert inputs.input_norms["net.1.weight"].shape == (64,)
    assert inputs.output_norms["net.3.weight"].shape == (256,)
    assert set(inputs.exp_avg_sq) == set(names)
    assert all(torch.count_nonzero(m) > 0 for m in inputs.movement.values())
    assert first["ablated"] > first["base"]  # zeroing the first layer hurts the calibration loss
    assert first["again"] == first["base"]  # and the scorer's restore leaves it exactly as it was
    assert inputs.target_sparsity == pytest.approx(autoprune.history[0]["target"])
    assert 0 < inputs.progress < 1


class LateLearner(MLPClassifier):
    """Learns nothing for its first three epochs (learning rate 0), like a fine-tune whose warm-up stalls."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
        stalled = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.0 if epoch < 3 else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": stalled, "interval": "epoch"}}


def test_the_default_start_waits_for_the_model_to_leave_chance_level(
    digits: DigitsDataModule, trainer_kwargs: dict, caplog: pytest.LogCaptureFixture
) -> None:
    seed_everything(0)
    waiting = AutoPrune(report=False, target_sparsity=0.8, importance="magnitude")
    trainer = Trainer(max_epochs=12, limit_train_batches=10, callbacks=[waiting], **trainer_kwargs)
    with caplog.at_level("INFO"):
        trainer.fit(LateLearner(), datamodule=digits)
    nominal = waiting.run.controller.window[0]
    events = [entry["epoch"] for entry in waiting.run.history]
    # Validations at epochs 0-2 are at chance level; epoch 3 learns, so pruning starts at epoch 4.
    assert nominal < 4
    assert events[0] == 4
    assert "has left its starting value: pruning starts at epoch 4" in caplog.text
    assert waiting.sparsity == pytest.approx(0.8, abs=1e-3)
    seed_everything(0)
    explicit = AutoPrune(report=False, target_sparsity=0.8, importance="magnitude", start_epoch=1, verbose=False)
    Trainer(max_epochs=12, limit_train_batches=10, callbacks=[explicit], **trainer_kwargs).fit(
        LateLearner(), datamodule=digits
    )
    assert explicit.run.history[0]["epoch"] == 1  # an explicit start is obeyed
