"""The pruning engine: masks over named tensors, kept exact through training, with no Trainer.

:class:`PruningEngine` owns the masks of a set of :class:`~lightning_autoprune.core.targets.PruneTarget`
and everything that keeps them true: installing new masks (pruned weights and their optimizer
buffers zeroed), masking gradients before optimizer steps, re-applying the masks after them, and
the trajectory the learned scorer reads (initial weights and movement). Which entries a new mask
keeps is decided by a :class:`Selector` from scores; the engine never scores and never imports
structured pruning. The callback and the benchmark baselines drive the same engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from lightning_autoprune.core import masks as masking
from lightning_autoprune.core.selection import layer_floors, select_masks
from lightning_autoprune.core.targets import PruneTarget


class Selector(Protocol):
    """Turns scores into the masks of the next step: weights (:class:`WeightSelector`) or whole units."""

    def __call__(self, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """New masks at ``target`` sparsity; pruned entries stay pruned."""
        ...


class WeightSelector:
    """Global top-k over single weights with a per-tensor floor (:func:`~.selection.select_masks`).

    Example:
        >>> select = WeightSelector(min_density=0.0)
        >>> select({"w": torch.tensor([3.0, 1.0])}, {"w": torch.ones(2, dtype=torch.bool)}, 0.5)
        {'w': tensor([ True, False])}
    """

    def __init__(self, min_density: float) -> None:
        self.min_density = min_density

    def __call__(self, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """Masks that prune the lowest scores globally until ``target`` is met."""
        return select_masks(scores, masks, target, min_density=self.min_density)


class PruningEngine:
    """Masks of ``targets``, enforced on every optimizer step.

    Args:
        targets: the tensors to prune.
        selector: turns scores into masks (:meth:`select`).
        track_trajectory: keep the initial weights and the movement ``-sum w * g`` since the last
            event, for scorers that read the training trajectory.

    Example:
        >>> from lightning_autoprune.core.targets import resolve_targets
        >>> model = torch.nn.Linear(4, 2)
        >>> engine = PruningEngine(resolve_targets(model, None, None), WeightSelector(0.0))
        >>> new = engine.select({"weight": model.weight.detach().abs()}, 0.5)
        >>> engine.apply(new, [])
        >>> engine.sparsity()
        0.5
    """

    def __init__(self, targets: Sequence[PruneTarget], selector: Selector, *, track_trajectory: bool = False) -> None:
        self.targets = list(targets)
        self.selector = selector
        self.track_trajectory = track_trajectory
        self.masks: dict[str, Tensor] = {t.name: torch.ones_like(t.param, dtype=torch.bool) for t in self.targets}
        self.initial_weights: dict[str, Tensor] = {}
        self.movement: dict[str, Tensor] = {}
        self.seconds_enforcing = 0.0
        self._keep: dict[str, Tensor] = {}  # masks as 0/1 factors in each parameter's dtype (hot path)
        self._pruned_any = False  # skip enforcement until something is pruned
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------------------------ masks
    def set_masks(self, new_masks: Mapping[str, Tensor]) -> None:
        """Install new masks, zero the pruned weights exactly, and cache the hot-path factors."""
        self.masks = {t.name: new_masks[t.name].to(t.param.device) for t in self.targets}
        self._pruned_any = any(not bool(mask.all()) for mask in self.masks.values())
        self._keep = {t.name: self.masks[t.name].to(t.param.dtype) for t in self.targets}
        for target in self.targets:
            masking.apply_mask_(target.param.data, self.masks[target.name])

    def regrow(self, masks: Mapping[str, Tensor]) -> None:
        """Go back to the denser ``masks`` but keep the training since.

        The weights ``masks`` keep and the current masks prune come back at zero, with the zeroed
        optimizer buffers they had while pruned, so the network computes exactly what it did before
        the call; every other weight keeps its value and its buffers.
        """
        for target in self.targets:
            regrown = masks[target.name].to(target.param.device) & ~self.masks[target.name]
            target.param.data[regrown] = 0.0
        self.set_masks(masks)

    def select(self, scores: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """The selector's masks for ``scores`` at ``target`` sparsity (nothing is installed)."""
        return self.selector(scores, self.masks, target)

    def apply(self, new_masks: Mapping[str, Tensor], optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Install ``new_masks`` and zero the optimizer buffers of the pruned entries."""
        self.set_masks(new_masks)
        for optimizer in optimizers:
            self.zero_optimizer_state(optimizer)

    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero ``optimizer``'s per-parameter buffers (momentum, moments) at the pruned entries."""
        for target in self.targets:
            masking.zero_optimizer_state_(optimizer, target.param, self.masks[target.name])

    def enforce(self) -> None:
        """Multiply every parameter by its mask again (after an optimizer step)."""
        if not self._pruned_any:
            return
        for target in self.targets:
            masking.multiply_mask_(target.param.data, self._keep[target.name])

    # ------------------------------------------------------------------------------ training hooks
    def start(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """At the start of training: note initial weights if needed, enforce, and hook every optimizer step."""
        if self.track_trajectory and not self.initial_weights:
            self.initial_weights = {t.name: t.param.detach().clone() for t in self.targets}
            self.movement = {t.name: torch.zeros_like(t.param, dtype=torch.float32) for t in self.targets}
        self.enforce()
        for optimizer in optimizers:
            self._handles.append(optimizer.register_step_post_hook(self._after_optimizer_step))
            self.zero_optimizer_state(optimizer)

    def stop(self) -> None:
        """Remove the optimizer hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def before_optimizer_step(self) -> None:
        """Zero the gradients of pruned weights, so no optimizer state builds up behind them.

        For scorers that learn from the training trajectory, also accumulate movement ``-w * g``.
        """
        start = time.perf_counter()
        if self._pruned_any:
            for target in self.targets:
                grad = target.param.grad
                if grad is not None:
                    masking.multiply_mask_(grad, self._keep[target.name])
        if self.movement:
            with torch.no_grad():
                for target in self.targets:
                    grad = target.param.grad
                    if grad is not None:
                        self.movement[target.name].sub_(target.param.detach().float() * grad.float())
        self.seconds_enforcing += time.perf_counter() - start

    def reset_movement(self) -> None:
        """Start a new movement window (after an event or a rollback)."""
        for moved in self.movement.values():
            moved.zero_()

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        self.enforce()
        self.seconds_enforcing += time.perf_counter() - start

    # ------------------------------------------------------------------------------ read-outs
    @property
    def pruned(self) -> bool:
        """Whether any mask prunes anything."""
        return self._pruned_any

    @property
    def weights(self) -> dict[str, Tensor]:
        """The live weights of every target, detached."""
        return {t.name: t.param.detach() for t in self.targets}

    def sparsity(self) -> float:
        """Fraction of the prunable weights that are exactly zero right now."""
        zeros, total = masking.count_zeros(t.param.detach() for t in self.targets)
        return zeros / total if total else 0.0

    def mask_progress(self, cost_weights: Mapping[str, float] | None = None) -> float:
        """The masks' sparsity, each entry weighted by ``cost_weights`` (parameters when ``None``)."""
        if not any(bool((~m).any()) for m in self.masks.values()):
            return 0.0
        return masking.mask_sparsity(self.masks, cost_weights)

    def feasible_ceiling(self, min_density: float) -> float:
        """The highest sparsity the per-layer floors leave reachable."""
        total = sum(m.numel() for m in self.masks.values())
        floors = sum(layer_floors({n: torch.ones_like(m) for n, m in self.masks.items()}, min_density).values())
        return max(0.0, 1.0 - (floors + 1) / total) if total else 0.0

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Masks (packed bits), their shapes and the trajectory: tensors and primitives only."""
        return {
            "masks": {name: masking.pack_mask(mask) for name, mask in self.masks.items()},
            "shapes": {name: list(mask.shape) for name, mask in self.masks.items()},
            "initial_weights": {name: t.detach().cpu() for name, t in self.initial_weights.items()},
            "movement": {name: t.detach().cpu() for name, t in self.movement.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; masks that do not fit the targets are refused with both shapes named."""
        shapes = state.get("shapes", {})
        packed = state.get("masks", {})
        expected = {name: list(mask.shape) for name, mask in self.masks.items()}
        if set(packed) != set(expected) or any(list(shapes[n]) != expected[n] for n in packed):
            raise ValueError(
                "The checkpoint's AutoPrune masks do not fit this model: checkpoint has "
                f"{ {n: tuple(shapes[n]) for n in packed} }, the model's pruned tensors are "
                f"{ {n: tuple(s) for n, s in expected.items()} }. HINT: resume with the model and the "
                "`include`/`exclude` that wrote the checkpoint."
            )
        self.set_masks({name: masking.unpack_mask(packed[name], shapes[name]) for name in packed})
        devices = self.devices
        self.initial_weights = {n: v.to(devices[n]) for n, v in state.get("initial_weights", {}).items()}
        self.movement = {n: v.to(devices[n]) for n, v in state.get("movement", {}).items()}

    @property
    def devices(self) -> dict[str, torch.device]:
        """The device of every target."""
        return {t.name: t.param.device for t in self.targets}
