"""Fault scenarios and bad input, end to end: nothing lost, clear errors, no side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier
from lightning_autoprune.trainer import check_supported_strategy


class PoisonWeight(Callback):
    """Puts a NaN into one weight at the start of an epoch, before AutoPrune's hook runs."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                net = cast(nn.Sequential, pl_module.net)
                cast(nn.Linear, net[1]).weight[0, 0] = float("nan")


def test_nan_weight_skips_the_event_with_a_warning_naming_the_tensor(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[PoisonWeight(1), autoprune],
        **trainer_kwargs,
    )
    with pytest.warns(UserWarning, match=r"skipped the pruning event of epoch 1: tensor 'net\.1\.weight' holds NaN"):
        trainer.fit(MLPClassifier(), datamodule=digits)
    assert all(bool(mask.all()) for mask in autoprune.masks.values())  # no mask computed from garbage
    assert autoprune.history == []


def test_nan_metric_stops_the_search_without_rollback_loops(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    class NanAfterPruning(MLPClassifier):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pruned = any(bool((p == 0).any()) for n, p in self.named_parameters() if n.endswith("weight"))
            self.log("val_score", float("nan") if pruned else 1.0)

    seed_everything(0)
    autoprune = AutoPrune(report=False, monitor="val_score", start_epoch=1, end_epoch=4, verbose=False)
    trainer = Trainer(max_epochs=6, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    with pytest.warns(UserWarning, match="pruning epoch"):
        trainer.fit(NanAfterPruning(), datamodule=digits)
    assert [d["decision"] for d in autoprune.search.decisions] == ["rollback", "stop"]
    assert autoprune.search.stop_reason == "the monitored metric is not finite"
    assert autoprune.sparsity == 0.0


def test_predict_alone_does_nothing(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    model = MLPClassifier()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    autoprune = AutoPrune(report=False, target_sparsity=0.9)
    trainer = Trainer(limit_predict_batches=1, callbacks=[autoprune], **trainer_kwargs)
    inputs = digits.test_dataloader().dataset.tensors[0]  # type: ignore[attr-defined]
    trainer.predict(model, dataloaders=torch.utils.data.DataLoader(inputs, batch_size=64))
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert autoprune.masks == {}


def _pruned_checkpoint(digits: DigitsDataModule, trainer_kwargs: dict, path: Path) -> AutoPrune:
    seed_everything(0)
    autoprune = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(MLPClassifier(), datamodule=digits)
    trainer.save_checkpoint(path)
    return autoprune


def test_checkpoint_from_a_newer_state_version_is_refused(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    path = tmp_path / "a.ckpt"
    autoprune = _pruned_checkpoint(digits, trainer_kwargs, path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["callbacks"][autoprune.state_key]["version"] = 999
    torch.save(checkpoint, path)
    resumed = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[resumed], **trainer_kwargs)
    with pytest.raises(ValueError, match=r"state has version 999; this lightning_autoprune reads versions up to 1"):
        trainer.fit(MLPClassifier(), datamodule=digits, ckpt_path=path)


def test_checkpoint_without_newer_fields_still_resumes(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    path = tmp_path / "old.ckpt"
    autoprune = _pruned_checkpoint(digits, trainer_kwargs, path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["callbacks"][autoprune.state_key]
    for key in ("search", "snapshot", "initial_weights", "movement", "rng"):
        del state[key]  # the first layout had masks, shapes, history and the generator only
    torch.save(checkpoint, path)
    resumed = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[resumed], **trainer_kwargs)
    trainer.fit(MLPClassifier(), datamodule=digits, ckpt_path=path)
    for name, mask in autoprune.masks.items():
        assert torch.equal(resumed.masks[name], mask), name


def test_checkpoint_masks_that_do_not_fit_the_selection_are_refused(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    path = tmp_path / "a.ckpt"
    _pruned_checkpoint(digits, trainer_kwargs, path)
    checkpoint = torch.load(path, weights_only=True)
    state = next(iter(checkpoint["callbacks"].values()))
    state["shapes"]["net.1.weight"] = [128, 64]
    torch.save(checkpoint, path)
    resumed = AutoPrune(report=False, target_sparsity=0.5, start_epoch=1, end_epoch=2, verbose=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=2, limit_val_batches=1, callbacks=[resumed], **trainer_kwargs)
    with pytest.raises(ValueError, match=r"masks do not fit this model.*128, 64.*256, 64"):
        trainer.fit(MLPClassifier(), datamodule=digits, ckpt_path=path)


def test_checkpoint_from_a_different_model_shape_fails_before_any_pruning(
    digits: DigitsDataModule, trainer_kwargs: dict, tmp_path: Path
) -> None:
    path = tmp_path / "a.ckpt"
    _pruned_checkpoint(digits, trainer_kwargs, path)
    resumed = AutoPrune(report=False, target_sparsity=0.5, verbose=False)
    trainer = Trainer(max_epochs=4, limit_train_batches=2, callbacks=[resumed], **trainer_kwargs)
    with pytest.raises(RuntimeError, match=r"size mismatch for net\.1\.weight"):
        trainer.fit(MLPClassifier(hidden=[128, 128]), datamodule=digits, ckpt_path=path)
    assert resumed.history == []


def test_sharded_strategies_are_refused_with_an_alternative() -> None:
    with pytest.raises(ValueError, match=r"sharded strategy `FSDPStrategy`.*HINT: use strategy='ddp'"):
        check_supported_strategy(FSDPStrategy())


def test_compiled_module_is_pruned(digits: DigitsDataModule, trainer_kwargs: dict) -> None:
    seed_everything(0)
    model = MLPClassifier()
    model.net = cast(nn.Module, torch.compile(model.net, backend="eager"))  # the wrapped module shares its parameters
    autoprune = AutoPrune(report=False, target_sparsity=0.6, start_epoch=1, end_epoch=1, verbose=False)
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(model, datamodule=digits)
    assert {t.name for t in autoprune.targets} == {f"net._orig_mod.{i}.weight" for i in (1, 3, 5)}
    assert autoprune.sparsity == pytest.approx(0.6, abs=1e-3)
