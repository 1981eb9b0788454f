"""Shared fixtures: real Trainers on real (bundled) data, kept small so the suite stays fast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoprune.event import TrainingAccess
from lightning_autoprune.examples import QUIET_TRAINER_KWARGS, DigitsDataModule

torch.set_num_threads(1)


@pytest.fixture
def trainer_kwargs(tmp_path: Any) -> dict[str, Any]:
    """Quiet CPU Trainer settings; tests add what they exercise (loggers, checkpoints, epochs)."""
    return {
        **QUIET_TRAINER_KWARGS,
        "devices": 1,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    """The bundled sklearn digits with the fixed stratified 60/20/20 split."""
    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    return datamodule


class StopAfter(Callback):
    """Stops training after a given epoch, as an interrupted job would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.fixture
def stop_after() -> Callable[[int], Callback]:
    """``stop_after(epoch)``: a callback that ends fit after that epoch (resume tests interrupt with it)."""
    return StopAfter


def plain_access(model: nn.Module, inputs: int, classes: int, samples: int = 128) -> TrainingAccess:
    """What an event reads from training, for a plain classifier on random data (no Trainer)."""
    data = TensorDataset(torch.randn(samples, inputs), torch.randint(0, classes, (samples,)))
    loader = DataLoader(data, batch_size=32)

    def loss_fn(batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    return TrainingAccess(
        module=model,
        loader=lambda purpose: loader,
        loss_fn=loss_fn,
        second_moments=lambda params: None,
        example_inputs=lambda: ((torch.zeros(1, inputs),), {}),
        progress=0.5,
    )
