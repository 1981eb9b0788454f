"""The learned scorer's label budget: its calibration forward passes as a share of the training so far.

Every measurement the learned scorer makes (a group ablation, the base loss, a candidate step)
is one call of the calibration loss, a forward pass over ``loss_samples`` held-out training
samples (a group ablation's over ``ablation_samples`` of them, fewer on a large model).
:class:`LabelBudget` keeps their total, in samples, at most ``share`` of the samples the fit has
trained on before the event, so the scorer's cost grows with training and not with the number of
pruning events: what an event does not spend is left to the next ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

from torch import Tensor

from lightning_autoprune.scoring.base import AblationLoss, ScoreInputs


class LabelBudget:
    """Counts the calibration forward passes of a fit against ``share`` of its training samples.

    Args:
        share: the most the scorer's forward passes may cost, as a fraction of the training
            samples seen so far (``None``: no limit).

    Example:
        >>> budget = LabelBudget(0.05)
        >>> inputs = ScoreInputs({}, {}, trained_samples=20_000, loss_samples=100, loss_fn=lambda: 0.0)
        >>> budget.calls_allowed(inputs)
        10
        >>> counted = budget.counted(inputs)
        >>> _ = [counted.loss_fn() for _ in range(4)]
        >>> budget.spent_samples, budget.calls_allowed(inputs), budget.samples_left(inputs)
        (400, 6, 600)
    """

    def __init__(self, share: float | None) -> None:
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"`label_budget` must be in (0, 1] or None, got {share!r}.")
        self.share = share
        self.spent_samples = 0

    def calls_allowed(self, inputs: ScoreInputs) -> int | None:
        """Calibration forward passes this event may make; ``None`` when unlimited or the sizes are unknown."""
        left = self.samples_left(inputs)
        if left is None or not inputs.loss_samples:
            return None
        return left // inputs.loss_samples

    def ablations_allowed(self, inputs: ScoreInputs, step_passes: int) -> int | None:
        """Ablation passes this event may make besides ``step_passes`` passes over every held-out sample.

        An ablation pass costs ``inputs.samples_per_ablation``, a step pass ``inputs.loss_samples``.
        ``None`` when unlimited or the sizes are unknown; negative when the steps alone cost more.

        Example:
            >>> budget = LabelBudget(0.05)
            >>> inputs = ScoreInputs({}, {}, trained_samples=60_000, loss_samples=200, ablation_samples=100)
            >>> budget.ablations_allowed(inputs, 5)  # 3,000 samples: 5 steps of 200, then passes of 100
            20
        """
        left, per_ablation = self.samples_left(inputs), inputs.samples_per_ablation
        if left is None or not inputs.loss_samples or not per_ablation:
            return None
        return (left - step_passes * inputs.loss_samples) // per_ablation

    def samples_left(self, inputs: ScoreInputs) -> int | None:
        """Calibration samples this event may evaluate; ``None`` when unlimited or the sizes are unknown."""
        if self.share is None or inputs.trained_samples is None or not inputs.loss_samples:
            return None
        return max(0, int(self.share * inputs.trained_samples - self.spent_samples))

    def counted(self, inputs: ScoreInputs) -> ScoreInputs:
        """``inputs`` whose ``loss_fn``, ablation passes and probes add their samples to :attr:`spent_samples`.

        An ablation pass counts its samples (``samples_per_ablation``) in full, although it runs
        only the layers from the ablated tensor on: the budget, and with it every choice it leads
        to, does not depend on how much of a pass was replayed.
        """
        loss_fn, probe_fn, replay = inputs.loss_fn, inputs.probe_fn, inputs.ablation_loss
        if loss_fn is None:
            return inputs
        cost = inputs.loss_samples or 0
        changes: dict[str, Any] = {"loss_fn": self._counting(loss_fn, cost)}
        if replay is not None:
            changes["ablation_loss"] = _CountedReplay(replay, self, inputs.samples_per_ablation or 0)
        if probe_fn is not None:

            def counted_probe(count: int, start: int = 0) -> Callable[[], float]:
                return self._counting(probe_fn(count, start), count)

            changes["probe_fn"] = counted_probe
        return dataclasses.replace(inputs, **changes)

    def _counting(self, loss_fn: Callable[[], float], cost: int) -> Callable[[], float]:
        def counted_loss() -> float:
            self.spent_samples += cost
            return loss_fn()

        return counted_loss

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the samples spent so far."""
        return {"spent_samples": self.spent_samples}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint without it has spent nothing)."""
        self.spent_samples = int(state.get("spent_samples", 0))


class _CountedReplay:
    """An :class:`~lightning_autoprune.scoring.base.AblationLoss` whose passes add ``cost`` samples to ``budget``."""

    def __init__(self, replay: AblationLoss, budget: LabelBudget, cost: int) -> None:
        self.replay, self.budget, self.cost = replay, budget, cost

    def record(self) -> float:
        self.budget.spent_samples += self.cost
        return self.replay.record()

    def changing(self, names: Collection[str], zeroed: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> float:
        self.budget.spent_samples += self.cost
        return self.replay.changing(names, zeroed)

    def clear(self) -> None:
        self.replay.clear()
