"""Structured pruning: whole neurons and channels, with every coupled parameter pruned together.

* :mod:`~lightning_autoprune.structured.tracing` is the one reader of Torch-Pruning's dependency graph:
  it traces a model once and gives, per root layer, the plan of everything coupled to its units;
* :mod:`~lightning_autoprune.structured.discovery` reads those plans as :class:`UnitGroup` objects
  (:func:`find_unit_groups`);
* :mod:`~lightning_autoprune.structured.units` is the pure tensor code on unit groups (masks, sums, costs);
* :mod:`~lightning_autoprune.structured.select` chooses the units to prune for a target;
* :mod:`~lightning_autoprune.structured.compact` reads the same plans to remove pruned units physically
  (:func:`compact`).
"""

from lightning_autoprune.structured.compact import CompactionError, compact, count_flops, count_parameters
from lightning_autoprune.structured.discovery import find_unit_groups, unsupported_layers
from lightning_autoprune.structured.select import UnitSelector, round_kept_units, select_units
from lightning_autoprune.structured.units import Slice, UnitGroup, kept_units, unit_costs, unit_masks, unit_sums

__all__ = [
    "CompactionError",
    "Slice",
    "UnitGroup",
    "UnitSelector",
    "compact",
    "count_flops",
    "count_parameters",
    "find_unit_groups",
    "kept_units",
    "round_kept_units",
    "select_units",
    "unit_costs",
    "unit_masks",
    "unit_sums",
    "unsupported_layers",
]
