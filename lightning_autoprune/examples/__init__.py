"""Bundled example datamodules and models for trying ``lightning_autoprune`` offline."""

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

__all__ = [
    "CNN1DClassifier",
    "ClassifierModule",
    "DigitsDataModule",
    "EmbeddingClassifier",
    "MLPClassifier",
    "MNIST1DDataModule",
    "RecurrentClassifier",
    "TransformerClassifier",
]
