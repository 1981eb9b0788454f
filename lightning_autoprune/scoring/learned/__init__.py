"""Learned importance: scikit-learn models trained on ablations measured during the run.

* :mod:`.features`: the feature rows (per weight, per unit);
* :mod:`.labels`: the measured ablations near the pruning frontier (one zero/measure/restore loop);
* :mod:`.fidelity`: rank labels, fitting, and the held-out check/blend/fall-back shared by both scorers;
* :mod:`.estimators`: resolving a user's estimator, and the refined pretrained model;
* :mod:`.weights`: :class:`LearnedScorer` (unstructured); :mod:`.units`: :class:`LearnedUnitScorer`;
* :mod:`.persistence`: safe skops files for importance models.
"""

from lightning_autoprune.scoring.learned.persistence import load_importance_model, save_importance_model
from lightning_autoprune.scoring.learned.units import LearnedUnitScorer
from lightning_autoprune.scoring.learned.weights import DEFAULT_MODEL_PATH, LearnedScorer

__all__ = [
    "DEFAULT_MODEL_PATH",
    "LearnedScorer",
    "LearnedUnitScorer",
    "load_importance_model",
    "save_importance_model",
]
