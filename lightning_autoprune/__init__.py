"""Automatic, learned pruning for PyTorch Lightning: add one callback, get a smaller model."""

from lightning_autoprune.callback import AutoPrune
from lightning_autoprune.export import load_sparse, save_sparse
from lightning_autoprune.scoring.learned.persistence import load_importance_model, save_importance_model
from lightning_autoprune.structured import CompactionError, compact, count_flops, count_parameters

__version__ = "0.1.0.dev0"

__all__ = [
    "AutoPrune",
    "CompactionError",
    "__version__",
    "compact",
    "count_flops",
    "count_parameters",
    "load_importance_model",
    "load_sparse",
    "save_importance_model",
    "save_sparse",
]
