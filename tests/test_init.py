"""The package's top-level public names."""

from __future__ import annotations

import lightning_autoprune
from lightning_autoprune import structured


def test_compaction_names_are_exported_at_the_top_level() -> None:
    for name in ("compact", "CompactionError", "count_flops", "count_parameters"):
        assert name in lightning_autoprune.__all__
        assert getattr(lightning_autoprune, name) is getattr(structured, name)
    assert issubclass(lightning_autoprune.CompactionError, RuntimeError)


def test_every_public_name_exists() -> None:
    for name in lightning_autoprune.__all__:
        assert hasattr(lightning_autoprune, name), name
    for name in structured.__all__:
        assert hasattr(structured, name), name
