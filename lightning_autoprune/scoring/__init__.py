"""Which weights or units matter: one :func:`make_scorer` for every importance the callback accepts.

* :mod:`.base`: the contract (:class:`ScoreInputs`, :class:`Scorer`, :class:`UnitScorer`,
  :class:`StatefulScorer`);
* :mod:`.formulas`: the weight formulas, each written once, and their scorers;
* :mod:`.units`: the unit formulas for structured pruning;
* :mod:`.learned`: the learned scorers, their features, labels, fidelity checks and model files.
"""

from __future__ import annotations

from typing import Literal

from lightning_autoprune.scoring.base import ScoreInputs, Scorer, StatefulScorer, UnitScorer
from lightning_autoprune.scoring.formulas import BASELINE_SCORERS, FORMULA_SCORERS
from lightning_autoprune.scoring.learned import LearnedScorer, LearnedUnitScorer
from lightning_autoprune.scoring.units import BASELINE_UNIT_SCORERS, UNIT_FORMULAS, UnitFormulaScorer

__all__ = [
    "BASELINE_SCORERS",
    "SCORERS",
    "UNIT_SCORERS",
    "ScoreInputs",
    "Scorer",
    "StatefulScorer",
    "UnitScorer",
    "make_scorer",
]

#: Every name ``AutoPrune(importance=...)`` accepts for weights (besides a path to a ``.skops`` model file).
SCORERS = ("learned", *BASELINE_SCORERS)
#: ``importance`` values that structured pruning (``granularity="structured"``) accepts.
UNIT_SCORERS = ("learned", *BASELINE_UNIT_SCORERS)


def make_scorer(
    importance: str,
    *,
    granularity: Literal["unstructured", "structured"] = "unstructured",
    estimator: str | None = None,
    label_groups: int = 128,
    label_budget: float | None = 0.05,
) -> Scorer | UnitScorer:
    """Build the scorer named ``importance``: a weight scorer, or a unit scorer for structured pruning.

    Args:
        importance: one of :data:`SCORERS` (or a path ending in ``.skops``: the learned weight
            scorer starting from that model) for unstructured pruning; one of
            :data:`UNIT_SCORERS` for structured pruning.
        granularity: ``"unstructured"`` (a :class:`Scorer` of single weights) or ``"structured"``
            (a :class:`UnitScorer` of neurons and channels).
        estimator: for ``"learned"`` only: import path of a scikit-learn estimator to fit from scratch.
        label_groups: for ``"learned"`` only: ablations measured per event (weight groups, or units).
        label_budget: for unstructured ``"learned"`` only: the share of the training samples its
            calibration forward passes may cost (:class:`~lightning_autoprune.scoring.learned.LearnedScorer`).

    Returns:
        The scorer; formula scorers are not :class:`StatefulScorer`, learned ones are.

    Raises:
        ValueError: an unknown name, or ``estimator`` with a formula.

    Example:
        >>> type(make_scorer("lamp")).__name__
        'LampScorer'
        >>> make_scorer("taylor", granularity="structured").needs_gradients
        True
        >>> make_scorer("l1")
        Traceback (most recent call last):
        ...
        ValueError: `importance` must be one of 'learned', 'magnitude', 'lamp', 'taylor', 'wanda', 'random' or a ...
        >>> make_scorer("lamp", granularity="structured")
        Traceback (most recent call last):
        ...
        ValueError: With granularity='structured', `importance` must be one of 'learned', 'taylor', ...
    """
    if granularity == "structured":
        if importance == "learned":
            return LearnedUnitScorer(estimator, label_units=label_groups)
        if importance not in UNIT_FORMULAS:
            allowed = ", ".join(repr(s) for s in UNIT_SCORERS)
            raise ValueError(
                f"With granularity='structured', `importance` must be one of {allowed}, got {importance!r}."
            )
        keys, gradients = UNIT_FORMULAS[importance]
        return UnitFormulaScorer(keys, gradients=gradients)
    learned = importance == "learned" or importance.endswith(".skops")
    if not learned and importance not in FORMULA_SCORERS:
        allowed = ", ".join(repr(name) for name in SCORERS)
        raise ValueError(
            f"`importance` must be one of {allowed} or a path to a .skops importance model, got {importance!r}."
        )
    if not learned and estimator is not None:
        raise ValueError(
            f"`estimator` only applies to importance='learned', got estimator={estimator!r} with "
            f"importance={importance!r}."
        )
    if learned:
        model_path = None if importance == "learned" else importance
        return LearnedScorer(
            estimator=estimator, model_path=model_path, label_groups=label_groups, label_budget=label_budget
        )
    return FORMULA_SCORERS[importance]()
