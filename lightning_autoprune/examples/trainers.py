"""One quiet CPU Trainer for the examples, benchmarks, scripts and tests.

Every bundled run trains on the CPU with nothing written or printed that the run does not ask
for: no logger, no checkpoints, no progress bar, no model summary. :data:`QUIET_TRAINER_KWARGS`
holds those settings once; :func:`quiet_trainer` builds the Trainer with the caller's additions.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from lightning.pytorch import Trainer

__all__ = ["QUIET_TRAINER_KWARGS", "quiet_trainer"]

QUIET_TRAINER_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
)
"""Keyword arguments of a quiet CPU :class:`~lightning.pytorch.Trainer` (read-only)."""


def quiet_trainer(**overrides: Any) -> Trainer:
    """A :class:`~lightning.pytorch.Trainer` with :data:`QUIET_TRAINER_KWARGS`, updated by ``overrides``.

    Args:
        **overrides: any ``Trainer`` argument (``max_epochs``, ``callbacks``, ``default_root_dir``...);
            one that :data:`QUIET_TRAINER_KWARGS` also names replaces its value there.

    Returns:
        The Trainer, not yet fitted.

    Example:
        >>> trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0)
        >>> trainer.max_epochs, trainer.logger, trainer.checkpoint_callback, trainer.progress_bar_callback
        (2, None, None, None)
        >>> quiet_trainer(enable_checkpointing=True).checkpoint_callback is not None
        True
    """
    return Trainer(**{**QUIET_TRAINER_KWARGS, **overrides})
