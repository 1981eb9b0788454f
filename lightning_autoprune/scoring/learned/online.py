"""The run's labelled feature rows and the importance model fitted on them.

Each labelled event adds one block of rows (every group member's features, with its group's rank
label) and refits on every earlier block plus this block's training rows; the block's held-out
rows stay out of that fit, for the event's check. A checkpoint keeps the rows and the last fit's
seed and training rows, so a resumed run refits exactly the model it had
(:meth:`OnlineModel.refit`).

Starting from the shipped (or a given) pretrained model, a fit refines it on the run's rows
(:class:`~lightning_autoprune.scoring.learned.estimators.RefinedModel`); with an estimator
template, it fits that estimator from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lightning_autoprune.scoring.learned.estimators import RefinedModel
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES
from lightning_autoprune.scoring.learned.fidelity import fit_estimator, predict_scores, spearman


class OnlineModel:
    """Labelled rows, block by block, and the model fitted on them.

    Args:
        template: an unfitted scikit-learn estimator to fit from scratch, or ``None``.
        pretrained: a fitted importance model to refine (used when ``template`` is ``None``).

    Example:
        >>> from sklearn.linear_model import Ridge
        >>> online = OnlineModel(Ridge(), None)
        >>> x = np.random.default_rng(0).normal(size=(8, len(FEATURE_NAMES)))
        >>> online.add(x, x[:, 0], np.arange(8) < 6, seed=0)  # rows fitted: the 6 training rows
        6
        >>> online.fitted, len(online.rows_x)
        (True, 1)
    """

    def __init__(self, template: Any, pretrained: Any) -> None:
        self.template = template
        self.pretrained = pretrained
        self.rows_x: list[np.ndarray] = []  # one block of feature rows per labelled event
        self.rows_y: list[np.ndarray] = []
        self.model: Any = None
        self._fitted: tuple[int, np.ndarray] | None = None  # the last fit's seed and training rows of its block
        self._base_predictions: list[np.ndarray] = []  # the pretrained model on each block (rows never change)
        self._last_rows: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fitted(self) -> bool:
        """Whether some event has fitted a model (after a resume: whether one can be refitted)."""
        return self._fitted is not None

    def add(self, x: np.ndarray, y: np.ndarray, train_rows: np.ndarray, seed: int) -> int:
        """Fit on every earlier block and this block's ``train_rows``, then keep the block; the rows fitted."""
        fit_x = np.concatenate([*self.rows_x, x[train_rows]])
        fit_y = np.concatenate([*self.rows_y, y[train_rows]])
        self.model = self._fit(fit_x, fit_y, seed, self._base_rows(x, train_rows))
        self.rows_x.append(x)
        self.rows_y.append(y)
        self._last_rows = (x, y)
        self._fitted = (seed, train_rows)
        return len(fit_y)

    def refit(self) -> bool:
        """Whether a fitted model exists; after a resume it is refitted from the checkpoint's rows, as it was."""
        if self.model is None and self._fitted is not None and self.rows_x:
            seed, train_rows = self._fitted
            x = np.concatenate([*self.rows_x[:-1], self.rows_x[-1][train_rows]])
            y = np.concatenate([*self.rows_y[:-1], self.rows_y[-1][train_rows]])
            base = None
            if self.pretrained is not None:
                blocks = self._block_predictions()
                base = np.concatenate([*blocks[:-1], blocks[-1][train_rows]])
            self.model = self._fit(x, y, seed, base)
        return self.model is not None

    def feature_importances(self, repeats: int = 3, seed: int = 0, max_rows: int = 2048) -> dict[str, float]:
        """Permutation importance of each feature on the last block's rows: the drop in Spearman correlation.

        Uses at most ``max_rows`` of those rows (drawn with ``seed``), so the report stays cheap.
        Returns an empty dict before the first fitted event.
        """
        if self.model is None or self._last_rows is None:
            return {}
        x, y = self._last_rows
        rng = np.random.default_rng(seed)
        if len(y) > max_rows:
            keep = rng.choice(len(y), size=max_rows, replace=False)
            x, y = x[keep], y[keep]
        base = spearman(predict_scores(self.model, x), y)
        out: dict[str, float] = {}
        for j, name in enumerate(FEATURE_NAMES):
            drops = []
            for _ in range(repeats):
                shuffled = x.copy()
                shuffled[:, j] = rng.permutation(shuffled[:, j])
                drops.append(base - spearman(predict_scores(self.model, shuffled), y))
            out[name] = float(np.mean(drops))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The rows (tensors) and the last fit's seed and training rows."""
        state: dict[str, Any] = {
            "rows_x": [torch.from_numpy(x) for x in self.rows_x],
            "rows_y": [torch.from_numpy(y) for y in self.rows_y],
        }
        if self._fitted is not None:
            state["fit_seed"], state["fit_rows"] = self._fitted[0], torch.from_numpy(self._fitted[1])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model is refitted when needed); refuses rows of another feature count."""
        rows_x = [x.numpy() for x in state.get("rows_x", [])]
        for x in rows_x:
            if x.shape[1] != len(FEATURE_NAMES):
                raise ValueError(
                    f"The checkpoint's learned-importance rows have {x.shape[1]} features; this version computes "
                    f"{len(FEATURE_NAMES)}. Start the run again, or resume it with the version that wrote it."
                )
        self.rows_x = rows_x
        self.rows_y = [y.numpy() for y in state.get("rows_y", [])]
        self._base_predictions = []
        self.model = None
        fit_rows = state.get("fit_rows")
        self._fitted = (int(state["fit_seed"]), fit_rows.numpy()) if fit_rows is not None else None

    def _base_rows(self, x: np.ndarray, train_rows: np.ndarray) -> np.ndarray | None:
        """The pretrained model's predictions on every earlier block and this block's training rows.

        Each block is predicted once, not again at every later event (its rows never change).
        """
        if self.pretrained is None:
            return None
        current = np.asarray(self.pretrained.predict(x))
        base = np.concatenate([*self._block_predictions(), current[train_rows]])
        self._base_predictions.append(current)
        return base

    def _block_predictions(self) -> list[np.ndarray]:
        """The pretrained model's predictions on every stored block of rows, each computed once."""
        while len(self._base_predictions) < len(self.rows_x):
            self._base_predictions.append(np.asarray(self.pretrained.predict(self.rows_x[len(self._base_predictions)])))
        return self._base_predictions

    def _fit(self, x: np.ndarray, y: np.ndarray, seed: int, base: np.ndarray | None = None) -> Any:
        if self.template is None:
            return RefinedModel(self.pretrained).fit(x, y, base_predictions=base)
        return fit_estimator(self.template, x, y, seed=seed)
