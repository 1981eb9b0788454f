"""Compute of the pruned Linear and Conv weights, in multiply-accumulates (MACs), from their output sizes.

The package counts compute in one unit, the way Torch-Pruning (and
:func:`lightning_autoprune.count_flops`) counts it: multiply-accumulates per sample. A weight entry
of a Linear or Conv layer costs one MAC per output position and sample, so its cost is
``positions``. The positions are recorded by :class:`OutputPositions` on the first forward pass
that calls each layer. (``target_unit="flops"`` and ``autoprune/flops_sparsity`` are shares of this
count: a share is the same in MACs and in FLOPs.)

Layers that compute a linear map over the last dim (Linear-like layers, transformers' ``Conv1D``
whose weight is stored ``[in, out]``) count as Linear layers: their output positions are every
dim but the last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_autoprune.core.targets import PruneTarget, is_linear_map

#: Layers whose weights cost one MAC per entry and output position (``weights * positions`` per sample).
FLOP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def flop_targets(targets: Sequence[PruneTarget]) -> list[PruneTarget]:
    """The pruned Linear/Conv weights: the tensors that cost compute (biases and norms do not count).

    Example:
        >>> from lightning_autoprune.core.targets import resolve_targets
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        >>> [t.name for t in flop_targets(resolve_targets(model, ["*"], None))]
        ['0.weight']
    """
    return [
        t
        for t in targets
        if t.param_name == "weight" and (isinstance(t.module, FLOP_LAYERS) or is_linear_map(t.module))
    ]


def macs_per_weight(targets: Sequence[PruneTarget], positions: Mapping[str, int]) -> dict[str, float] | None:
    """Per pruned Linear/Conv weight, the MACs one entry costs per sample; ``None`` until all of them ran.

    Example:
        >>> from lightning_autoprune.core.targets import resolve_targets
        >>> targets = resolve_targets(nn.Sequential(nn.Conv1d(1, 2, 3)), None, None)
        >>> macs_per_weight(targets, {}), macs_per_weight(targets, {"0.weight": 8})
        (None, {'0.weight': 8.0})
    """
    layers = flop_targets(targets)
    if not layers or any(t.name not in positions for t in layers):
        return None
    return {t.name: float(positions[t.name]) for t in layers}


class OutputPositions:
    """Records, on the first forward pass, how many output positions each Linear/Conv target computes.

    Args:
        positions: the record, by parameter name (filled in place; a restored record is kept).

    Example:
        >>> from lightning_autoprune.core.targets import resolve_targets
        >>> import torch
        >>> model = nn.Sequential(nn.Conv1d(1, 2, 3))
        >>> watcher = OutputPositions({})
        >>> watcher.watch(resolve_targets(model, None, None))
        >>> _ = model(torch.zeros(5, 1, 10))
        >>> watcher.positions, watcher.remove()
        ({'0.weight': 8}, None)
    """

    def __init__(self, positions: dict[str, int]) -> None:
        self.positions = positions
        self._handles: list[RemovableHandle] = []

    def watch(self, targets: Sequence[PruneTarget]) -> None:
        """Hook every Linear/Conv target whose positions are not known yet."""
        for target in flop_targets(targets):
            if target.name in self.positions:
                continue

            def hook(mod: nn.Module, args: Any, output: Any, name: str = target.name) -> None:
                if name in self.positions or not isinstance(output, Tensor) or output.ndim == 0:
                    return
                if output.ndim == 1:  # an unbatched Linear call
                    self.positions[name] = 1
                    return
                channels = output.shape[-1] if is_linear_map(mod) else output.shape[1]
                self.positions[name] = max(1, output.numel() // max(1, output.shape[0] * channels))

            self._handles.append(target.module.register_forward_hook(hook))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
