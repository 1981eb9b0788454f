"""The automatic mode (target_sparsity=None) end to end, with real Trainers on the digits data."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoprune import AutoPrune
from lightning_autoprune.control.controller import ToleranceSearch
from lightning_autoprune.core.selection import select_masks
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier


class DensityScored(MLPClassifier):
    """Logs ``val_density``, the fraction of nonzero weights: a real metric that pruning always lowers.

    It makes the search's decisions predictable: a step is accepted exactly when it keeps at least
    ``1 - max_metric_drop`` of the reference density.
    """

    def density(self) -> float:
        """The fraction of nonzero entries over every weight tensor."""
        weights = [p for n, p in self.named_parameters() if n.endswith("weight")]
        return sum(int((p != 0).sum()) for p in weights) / sum(p.numel() for p in weights)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val_density", self.density())


def rollback_snapshot(autoprune: AutoPrune, trainer: Trainer) -> dict[str, Any] | None:
    """The snapshot a rollback decided at this validation went back to; ``None`` if none was decided."""
    decisions = autoprune.search.decisions
    if not any(d["decision"] == "rollback" and d["epoch"] == trainer.current_epoch for d in decisions):
        return None
    snapshot = cast(ToleranceSearch, autoprune.run.controller).snapshot
    assert snapshot is not None
    return snapshot


class CheckRollback(Callback):
    """After every rollback, the live model, optimizer and masks must equal the snapshot exactly."""

    def __init__(self, autoprune: AutoPrune) -> None:
        self.autoprune = autoprune
        self.rollbacks = 0

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = rollback_snapshot(self.autoprune, trainer)
        if snapshot is None:
            return
        for name, tensor in pl_module.state_dict().items():
            assert torch.equal(tensor, snapshot["model"][name]), name
        for name, mask in self.autoprune.masks.items():
            assert torch.equal(mask, snapshot["masks"][name]), name
        live = trainer.optimizers[0].state_dict()["state"]
        saved = snapshot["optimizers"][0]["state"]
        assert live.keys() == saved.keys()
        for key in live:
            for field, value in live[key].items():
                assert torch.equal(value, saved[key][field]), (key, field)
        self.rollbacks += 1


class TrendingDensity(DensityScored):
    """Logs ``val_trend``: the nonzero-weight fraction plus 0.1 per epoch, a metric that never plateaus."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self.log("val_trend", self.density() + 0.1 * self.current_epoch)


class CheckRegrow(Callback):
    """Before each broken step's rollback, note the training state; after it, check the regrowth."""

    def __init__(self, autoprune: AutoPrune) -> None:
        self.autoprune = autoprune
        self.regrowths = 0
        self.before: dict[str, Any] = {}

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.before = {
            "masks": {n: m.clone() for n, m in self.autoprune.masks.items()},
            "model": {n: t.clone() for n, t in pl_module.state_dict().items()},
        }

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = rollback_snapshot(self.autoprune, trainer)
        if snapshot is None:
            return
        optimizer = trainer.optimizers[0]
        params = dict(pl_module.named_parameters())
        regrown_any = False
        for name, mask in self.autoprune.masks.items():
            assert torch.equal(mask, snapshot["masks"][name]), name
            param = params[name]
            regrown = mask & ~self.before["masks"][name]
            kept = mask & self.before["masks"][name]
            regrown_any |= bool(regrown.any())
            assert bool((param[regrown] == 0).all()), "regrown weights start at zero"
            assert torch.equal(param[kept], self.before["model"][name][kept]), "kept weights keep their training"
            for field in ("exp_avg", "exp_avg_sq"):
                assert bool((optimizer.state[param][field][regrown] == 0).all()), (name, field)
        assert regrown_any, "the rollback regrew the step's removals"
        self.regrowths += 1


class CheckReuse(Callback):
    """At each step after a rollback: its masks are the broken step's scores selected from the rolled-back masks."""

    def __init__(self, autoprune: AutoPrune) -> None:
        self.autoprune = autoprune
        self.checked = 0
        self.broken: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        snapshot = rollback_snapshot(self.autoprune, trainer)
        scores = cast(ToleranceSearch, self.autoprune.run.controller).scores
        if snapshot is not None and scores is not None:  # the broken step's scores, as they are now
            masks = {n: m.clone() for n, m in snapshot["masks"].items()}
            self.broken = {n: s.clone() for n, s in scores.items()}, masks

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        event = self.autoprune.history[-1] if self.autoprune.history else None
        if event is None or event["epoch"] != trainer.current_epoch or self.broken is None:
            return
        scores, masks = self.broken
        self.broken = None
        expected = select_masks(scores, masks, event["target"], min_density=0.002)
        for name, mask in self.autoprune.masks.items():
            assert torch.equal(mask, expected[name]), name
        self.checked += 1


def _trainer(trainer_kwargs: dict, callbacks: list[Callback], max_epochs: int = 8, **extra: Any) -> Trainer:
    return Trainer(max_epochs=max_epochs, limit_train_batches=4, callbacks=callbacks, **{**trainer_kwargs, **extra})


def test_rollback_restores_masks_weights_and_optimizer_exactly(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        report=False, monitor="val_density", max_metric_drop=0.3, start_epoch=1, end_epoch=6, verbose=False
    )
    checker = CheckRollback(autoprune)
    with pytest.warns(UserWarning, match="only 6 pruning epoch"):
        _trainer(trainer_kwargs, [autoprune, checker]).fit(DensityScored(), datamodule=digits)
    decisions = [d["decision"] for d in autoprune.search.decisions]
    # 0.5 breaks the 0.3 tolerance (density 0.5), 0.25 is accepted, 0.4375 breaks it, ...
    assert decisions[:3] == ["rollback", "accept", "rollback"]
    assert checker.rollbacks == decisions.count("rollback")
    assert autoprune.sparsity == pytest.approx(autoprune.search.accepted, abs=1e-3)
    assert autoprune.sparsity <= 0.3 + 1e-6


def test_a_step_after_a_rollback_reuses_the_scores_of_the_restored_state(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    """A rollback restores exactly the state the broken step was scored at; scoring it again is waste."""

    seed_everything(0)
    autoprune = AutoPrune(
        report=False, monitor="val_density", max_metric_drop=0.6, start_epoch=1, end_epoch=6, verbose=False
    )
    scored: list[int] = []
    score = autoprune.scorer.score

    def counting(inputs: Any) -> dict[str, torch.Tensor]:  # count, then the real scorer
        scored.append(1)
        return score(inputs)

    autoprune.scorer.score = counting
    checker = CheckReuse(autoprune)
    with pytest.warns(UserWarning, match="pruning epoch"):
        _trainer(trainer_kwargs, [autoprune, checker]).fit(DensityScored(), datamodule=digits)
    decisions = [d["decision"] for d in autoprune.search.decisions]
    # 0.5 accepted; 0.75 and 0.625 roll back; 0.5625 is accepted: two of the four steps follow a rollback.
    assert decisions == ["accept", "rollback", "rollback", "accept", "stop"]
    assert len(autoprune.history) == 4
    assert len(scored) == 2
    assert checker.checked == 2


def test_impossible_tolerance_ends_dense_with_a_message(
    digits: DigitsDataModule, trainer_kwargs: dict, caplog: pytest.LogCaptureFixture
) -> None:
    seed_everything(0)
    model = DensityScored()
    autoprune = AutoPrune(report=False, monitor="val_density", max_metric_drop=0.0, start_epoch=1, end_epoch=7)
    with pytest.warns(UserWarning, match="pruning epoch"), caplog.at_level("INFO"):
        _trainer(trainer_kwargs, [autoprune], max_epochs=9).fit(model, datamodule=digits)
    assert autoprune.sparsity == 0.0
    assert autoprune.search.stop_reason == "3 consecutive steps broke the tolerance"
    assert "search stopped at sparsity 0.0000" in caplog.text
    assert "automatic mode finished at sparsity 0.0000" in caplog.text


def test_tolerance_holds_on_validation_at_the_end(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, max_metric_drop=0.02, verbose=False)
    trainer = Trainer(max_epochs=20, callbacks=[autoprune], **trainer_kwargs)
    model = MLPClassifier(lr=3e-3)
    trainer.fit(model, datamodule=digits)
    assert autoprune.monitor_metric.resolved == ("val_acc", "max")
    final = trainer.validate(model, datamodule=digits, verbose=False)[0]["val_acc"]
    assert autoprune.search.reference is not None
    assert autoprune.search.reference - final <= 0.02 + 1e-6
    assert autoprune.sparsity >= 0.5  # it did prune, as far as the tolerance allowed
    assert autoprune.search.done


def test_val_loss_is_monitored_with_mode_min_when_no_accuracy_is_logged(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    class LossOnly(MLPClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss, _, _ = self._loss_and_logits(batch)
            self.log("val_loss", loss)

    seed_everything(0)
    autoprune = AutoPrune(report=False, max_metric_drop=0.05, start_epoch=1, end_epoch=2, verbose=False)
    with pytest.warns(UserWarning, match="pruning epoch"):
        _trainer(trainer_kwargs, [autoprune], max_epochs=3).fit(LossOnly(), datamodule=digits)
    assert autoprune.monitor_metric.resolved == ("val_loss", "min")
    assert autoprune.search.decisions


def test_a_validation_set_too_small_for_the_tolerance_is_warned_about(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, max_metric_drop=0.01, start_epoch=1, end_epoch=2, verbose=False)
    # Two validation batches of 64: the count is what validation really saw, not the dataset's size.
    with pytest.warns(UserWarning, match=r"validation val_acc comes from 128 samples: .* standard error is 0\.0"):
        _trainer(trainer_kwargs, [autoprune], max_epochs=3, limit_val_batches=2).fit(MLPClassifier(), datamodule=digits)
    assert autoprune._tally.samples is None  # counted in the dense phase only, then no more


def test_a_tolerance_above_the_validation_noise_is_not_warned_about(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, max_metric_drop=0.1, start_epoch=1, end_epoch=2, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(trainer_kwargs, [autoprune], max_epochs=3).fit(MLPClassifier(), datamodule=digits)
    assert autoprune.search.decisions  # the search ran
    assert not [w for w in caught if "sampling standard error" in str(w.message)]


def test_missing_monitor_lists_logged_metrics(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    autoprune = AutoPrune(report=False, monitor="val_f1", start_epoch=1, end_epoch=2, verbose=False)
    with (
        pytest.warns(UserWarning, match="pruning epoch"),
        pytest.raises(ValueError, match=r"`monitor`='val_f1' is not logged\. Logged metrics: .*val_acc"),
    ):
        _trainer(trainer_kwargs, [autoprune], max_epochs=3).fit(MLPClassifier(), datamodule=digits)


def test_resume_mid_search_continues_identically(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    def make() -> AutoPrune:
        return AutoPrune(
            report=False, monitor="val_density", max_metric_drop=0.6, start_epoch=1, end_epoch=6, verbose=False
        )

    class Stop(Callback):
        def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            if trainer.current_epoch == 3:
                trainer.should_stop = True

    seed_everything(0)
    full = make()
    model_a = DensityScored()
    with pytest.warns(UserWarning, match="pruning epoch"):
        _trainer(trainer_kwargs, [full]).fit(model_a, datamodule=digits)

    seed_everything(0)
    first = make()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    with pytest.warns(UserWarning, match="pruning epoch"):
        _trainer(trainer_kwargs, [first, checkpoint, Stop()], enable_checkpointing=True).fit(
            DensityScored(), datamodule=digits
        )
    assert first.search.decisions  # stopped mid-search (fit end then closes its own copy of the search)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert saved["reuse_scores"]  # the checkpoint fell between a rollback and the step that reuses its scores

    seed_everything(99)
    resumed = make()
    model_b = DensityScored()
    with pytest.warns(UserWarning, match="pruning epoch"):
        _trainer(trainer_kwargs, [resumed]).fit(model_b, datamodule=digits, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.search == full.search
    for name, mask in full.masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_given_reference_is_the_one_steps_are_judged_against(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    # Measured, the dense density is 1.0 and halving the weights (density 0.5) breaks a 0.3 tolerance;
    # against a given reference of 0.6 the same step is within it.
    seed_everything(0)
    autoprune = AutoPrune(
        monitor="val_density", max_metric_drop=0.3, reference=0.6, start_epoch=1, end_epoch=6, verbose=False
    )
    with pytest.warns(UserWarning, match="only 6 pruning epoch"):
        _trainer(trainer_kwargs, [autoprune]).fit(DensityScored(), datamodule=digits)
    first = autoprune.search.decisions[0]
    assert first["reference"] == 0.6
    assert first["decision"] == "accept"
    record = autoprune.report_record()
    assert record["reference"] == 0.6
    assert record["reference_label"] == "given reference"


def _digits_mlp_fit(digits: DigitsDataModule, trainer_kwargs: dict, callbacks: list[Callback], epochs: int) -> float:
    """Issue #20's setup: the digits MLP (64-128-128-10, Adam 1e-3) trained from scratch; returns test accuracy."""
    seed_everything(0)
    model = MLPClassifier(in_features=64, hidden=[128, 128], lr=1e-3)
    trainer = Trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(model, datamodule=digits)
    return float(trainer.test(model, datamodule=digits, verbose=False)[0]["test_acc"])


def test_from_scratch_the_search_starts_at_the_plateau_and_keeps_the_accuracy(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    dense = _digits_mlp_fit(digits, trainer_kwargs, [], 30)
    autoprune = AutoPrune(report=False, verbose=False)
    pruned = _digits_mlp_fit(digits, trainer_kwargs, [autoprune], 30)
    search = autoprune.search
    # Before this change the dense phase ended at 30% of the epochs (epoch 9, val 0.947) and this run lost
    # 3.3 points of test accuracy. The plateau ends it where the validation mean stopped climbing.
    assert search.start_epoch is not None
    assert search.start_epoch >= 12
    assert search.reference_epochs == (search.start_epoch - 3, search.start_epoch - 1)
    assert dense - pruned <= 0.015, f"test accuracy {pruned:.4f} against {dense:.4f} dense"
    # Issue #20 asks for 85%: not met, and on this model not within a 1-point tolerance. Fixed targets
    # of this same setup (AutoPrune(target_sparsity=s), seeds 0-4) lost on validation at 0.85: 1.94,
    # 1.11, 0.00, 1.11, 0.83 points; on test 1.11, 1.67, 0.56, 1.11, 1.39; at 0.9 on test 0.83-2.50.
    # The search here reached 0.72, 0.75, 0.81, 0.63, 0.75 on seeds 0-4 (0.80 on seed 0 when the
    # learned scorer labelled every event; 0.719 since unlabelled events measure their steps on
    # 64-sample probes).
    assert autoprune.sparsity >= 0.71
    assert all(d["margin"] > 0 for d in search.decisions if d["decision"] != "stop")


def test_fine_tuning_a_trained_model_prunes_from_the_first_epochs(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    seed_everything(0)
    model = MLPClassifier(in_features=64, hidden=[128, 128], lr=1e-3)
    Trainer(max_epochs=25, **trainer_kwargs).fit(model, datamodule=digits)
    autoprune = AutoPrune(report=False, verbose=False)
    Trainer(max_epochs=20, callbacks=[autoprune], **trainer_kwargs).fit(model, datamodule=digits)
    assert autoprune.search.start_epoch == 6, "a trained model plateaus at once: 2 x 3 validations"
    assert autoprune.history[0]["epoch"] == 6
    assert autoprune.sparsity >= 0.5


def test_a_short_fine_tune_warns_that_little_room_is_left(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    model = MLPClassifier(in_features=64, hidden=[128, 128], lr=1e-3)
    Trainer(max_epochs=25, **trainer_kwargs).fit(model, datamodule=digits)
    autoprune = AutoPrune(report=False, verbose=False)
    with pytest.warns(UserWarning, match=r"dense phase used 6 epochs .* leaves 2 epoch\(s\) for the search"):
        Trainer(max_epochs=10, callbacks=[autoprune], **trainer_kwargs).fit(model, datamodule=digits)
    assert autoprune.history, "it still prunes as far as the room allows"


def test_a_model_that_never_learned_is_not_pruned_against_chance(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    stuck = MLPClassifier(in_features=64, hidden=[128, 128], lr=1e-9)  # it never leaves chance level
    autoprune = AutoPrune(report=False, verbose=False)
    with pytest.warns(UserWarning, match=r"no better than chance \(0\.1\d+, the share of the most frequent of 360"):
        Trainer(max_epochs=20, callbacks=[autoprune], **trainer_kwargs).fit(stuck, datamodule=digits)
    assert autoprune.sparsity == 0.0
    assert "chance level" in str(autoprune.search.stop_reason)


def test_a_loss_monitor_judges_steps_in_nats(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    model = MLPClassifier(in_features=64, hidden=[128, 128], lr=1e-3)
    Trainer(max_epochs=25, **trainer_kwargs).fit(model, datamodule=digits)
    autoprune = AutoPrune(monitor="val_loss", mode="min", max_metric_drop=0.02, report=False, verbose=False)
    Trainer(max_epochs=20, callbacks=[autoprune], **trainer_kwargs).fit(model, datamodule=digits)
    search = autoprune.search
    assert search.reference is not None
    assert 0.02 < search.reference < 0.5, "a cross-entropy in nats per sample"
    assert search.noise is not None
    assert 0 < search.margin <= 0.01, "the plateau's spread, capped at half the tolerance"
    steps = [d for d in search.decisions if d["decision"] in ("accept", "rollback")]
    assert steps
    for step in steps:
        assert (step["decision"] == "accept") == (step["drop"] + step["margin"] <= 0.02 + 1e-9)
    assert autoprune.sparsity > 0


def test_under_a_dense_trend_a_rollback_regrows_at_zero_and_keeps_the_training(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, monitor="val_trend", max_metric_drop=0.3, verbose=False)
    checker, reuse = CheckRegrow(autoprune), CheckReuse(autoprune)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the room and trend warnings are not under test
        _trainer(trainer_kwargs, [autoprune, checker, reuse], max_epochs=12).fit(TrendingDensity(), datamodule=digits)
    assert autoprune.search.reference_rule == "trend"
    decisions = [d["decision"] for d in autoprune.search.decisions]
    assert decisions[0] == "rollback", decisions  # 0.5 loses half the density against a 0.3 tolerance
    assert checker.regrowths == decisions.count("rollback") >= 1
    # The regrown weights are back at zero, where every formula scores them alike: the next step ranks them
    # with the broken step's scores (not by position) and takes the lowest-ranked part of them again.
    assert reuse.checked >= 1
