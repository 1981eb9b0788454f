"""Real (short) runs whose reports the tests in this folder read; each run is fitted once per session."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import LightningDataModule, LightningModule, seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier, quiet_trainer

Fit = Callable[..., dict[str, Any]]


def _fit(
    tmp: Path,
    callback: AutoPrune,
    max_epochs: int,
    model: LightningModule | None = None,
    datamodule: LightningDataModule | None = None,
    **trainer_extra: Any,
) -> dict[str, Any]:
    seed_everything(0, verbose=False)
    model = model or MLPClassifier(hidden=[64, 64], lr=1e-2)
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        limit_train_batches=4,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp),
        callbacks=[callback],
        **trainer_extra,
    )
    trainer.fit(model, datamodule=datamodule or DigitsDataModule(batch_size=64))
    return {"model": model, "callback": callback, "folder": tmp / "autoprune"}


@pytest.fixture(scope="session")
def fit_run() -> Fit:
    """``fit_run(tmp, callback, max_epochs, model=None, datamodule=None, **trainer_extra)``: one quiet fit."""
    return _fit


@pytest.fixture(scope="session")
def fixed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fit to 60% sparsity over epochs 1..2; the report goes to the default folder."""
    callback = AutoPrune(target_sparsity=0.6, start_epoch=1, end_epoch=2, importance="lamp")
    return _fit(tmp_path_factory.mktemp("fixed"), callback, 4)


@pytest.fixture(scope="session")
def automatic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fit in automatic mode (accept/rollback decisions); short, so its budget warning is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*automatic search has only", category=UserWarning)
        return _fit(tmp_path_factory.mktemp("automatic"), AutoPrune(importance="lamp"), 10)


@pytest.fixture(params=["fixed_run", "automatic_run"])
def run(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(request.param)
