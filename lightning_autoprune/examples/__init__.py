"""Bundled example datamodules, models and a quiet Trainer for trying ``lightning_autoprune`` offline."""

from __future__ import annotations

from lightning_autoprune.examples.data import DigitsDataModule, MNIST1DDataModule
from lightning_autoprune.examples.models import (
    ClassifierModule,
    CNN1DClassifier,
    EmbeddingClassifier,
    MLPClassifier,
    RecurrentClassifier,
    TransformerClassifier,
)
from lightning_autoprune.examples.trainers import QUIET_TRAINER_KWARGS, quiet_trainer

__all__ = [
    "QUIET_TRAINER_KWARGS",
    "CNN1DClassifier",
    "ClassifierModule",
    "DigitsDataModule",
    "EmbeddingClassifier",
    "MLPClassifier",
    "MNIST1DDataModule",
    "RecurrentClassifier",
    "TransformerClassifier",
    "quiet_trainer",
]
