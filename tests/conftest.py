"""Shared fixtures: real Trainers on real (bundled) data, kept small so the suite stays fast."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_autoprune.examples import DigitsDataModule

torch.set_num_threads(1)


@pytest.fixture
def trainer_kwargs(tmp_path: Any) -> dict[str, Any]:
    """Quiet CPU Trainer settings; tests add what they exercise (loggers, checkpoints, epochs)."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(tmp_path),
        "num_sanity_val_steps": 0,
    }


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    """The bundled sklearn digits with the fixed stratified 60/20/20 split."""
    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup("fit")
    return datamodule
