"""Automatic, learned pruning for PyTorch Lightning: add one callback, get a smaller model."""

from lightning_autoprune.callback import AutoPrune

__version__ = "0.1.0.dev0"

__all__ = ["AutoPrune", "__version__"]
