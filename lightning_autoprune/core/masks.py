"""Pruning masks: enforcing them, measuring sparsity, and packing them for checkpoints.

A mask is a boolean tensor with the shape of its parameter: ``True`` keeps a weight, ``False``
prunes it. Masks are enforced in place (the parameter itself holds exact zeros), so a model's
``state_dict`` keeps its original keys and loads into an unmodified class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


@torch.no_grad()
def apply_mask_(param: Tensor, mask: Tensor) -> None:
    """Zero the pruned entries of ``param`` in place.

    ``masked_fill_`` rather than multiplication, so a pruned ``inf`` or ``nan`` also becomes ``0``.

    Example:
        >>> w = torch.tensor([1.0, -2.0, 3.0])
        >>> apply_mask_(w, torch.tensor([True, False, True]))
        >>> w
        tensor([1., 0., 3.])
    """
    param.masked_fill_(~mask.to(param.device), 0)


@torch.no_grad()
def multiply_mask_(tensor: Tensor, keep: Tensor) -> None:
    """Fast in-place enforcement for the hot path: ``tensor *= keep`` with a 0/1 ``keep`` tensor.

    About 20 times faster than :func:`apply_mask_` on CPU, but ``nan * 0`` stays ``nan``; the
    callback uses it after optimizer steps, where pruned entries get no update, and
    :func:`apply_mask_` at pruning events. Adding ``0.0`` afterwards turns the ``-0.0`` that
    ``negative * 0`` gives into ``+0.0``, so pruned weights are always the same bits.

    Example:
        >>> g = torch.tensor([1.0, -2.0, 3.0])
        >>> multiply_mask_(g, torch.tensor([1.0, 0.0, 1.0]))
        >>> g, torch.signbit(g).any().item()
        (tensor([1., 0., 3.]), False)
    """
    tensor.mul_(keep).add_(0.0)


@torch.no_grad()
def zero_optimizer_state_(optimizer: torch.optim.Optimizer, param: Tensor, mask: Tensor) -> None:
    """Zero every per-parameter optimizer buffer (momentum, Adam moments) at pruned entries.

    With these buffers zeroed and gradients masked, a pruned weight receives no update at all,
    so it stays exactly zero between the mask re-applications.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(~mask.to(value.device), 0)


def count_zeros(params: Iterable[Tensor]) -> tuple[int, int]:
    """Return ``(zeros, total)`` over ``params``, counting entries that are exactly zero.

    Example:
        >>> count_zeros([torch.tensor([0.0, 1.0]), torch.zeros(2, 2)])
        (5, 6)
    """
    zeros = total = 0
    for p in params:
        zeros += p.numel() - int(torch.count_nonzero(p))
        total += p.numel()
    return zeros, total


def sparsity(param: Tensor) -> float:
    """Fraction of entries of ``param`` that are exactly zero.

    Example:
        >>> sparsity(torch.tensor([0.0, 0.0, 1.0, 2.0]))
        0.5
    """
    zeros, total = count_zeros([param])
    return zeros / total if total else 0.0


def mask_cost(masks: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> tuple[float, float]:
    """What ``masks`` prune and what they cover: ``(pruned, total)`` entries, or with ``weights`` their cost.

    ``weights`` gives each tensor a cost per entry (for example its FLOPs per weight and sample);
    tensors it does not name cost nothing. ``None`` counts every entry once.

    Example:
        >>> mask_cost({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}, {"a": 3.0})
        (3.0, 6.0)
    """
    if weights is None:
        return float(sum(m.numel() - int(torch.count_nonzero(m)) for m in masks.values())), float(
            sum(m.numel() for m in masks.values())
        )
    pruned = sum(weights.get(n, 0.0) * (m.numel() - int(torch.count_nonzero(m))) for n, m in masks.items())
    return pruned, sum(weights.get(n, 0.0) * m.numel() for n, m in masks.items())


def mask_sparsity(masks: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> float:
    """Fraction of entries pruned across all ``masks``; with ``weights``, of their summed cost (:func:`mask_cost`).

    Example:
        >>> mask_sparsity({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])})
        0.75
        >>> mask_sparsity({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])}, {"a": 3.0})
        0.5
    """
    pruned, total = mask_cost(masks, weights)
    return pruned / total if total else 0.0


def pack_mask(mask: Tensor) -> Tensor:
    """Pack a boolean mask into a flat ``uint8`` tensor, eight entries per byte.

    Checkpoints hold masks packed: an eighth of the size of a ``bool`` tensor. Unpack with
    :func:`unpack_mask` and the original shape.

    Example:
        >>> packed = pack_mask(torch.tensor([[True, False, True], [False, False, True]]))
        >>> packed
        tensor([164], dtype=torch.uint8)
        >>> unpack_mask(packed, (2, 3))
        tensor([[ True, False,  True],
                [False, False,  True]])
    """
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_mask(packed: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """Inverse of :func:`pack_mask`: return a ``bool`` tensor of ``shape``.

    Raises:
        ValueError: if ``packed`` holds fewer bits than ``shape`` needs.
    """
    numel = 1
    for size in shape:
        numel *= int(size)
    if packed.numel() * 8 < numel:
        raise ValueError(
            f"A packed mask of {packed.numel()} bytes holds {packed.numel() * 8} entries, "
            f"but shape {tuple(shape)} needs {numel}."
        )
    bits = packed.to(torch.uint8).view(-1, 1).bitwise_and(_BIT_WEIGHTS).ne(0).view(-1)
    return bits[:numel].view(tuple(shape)).clone()
