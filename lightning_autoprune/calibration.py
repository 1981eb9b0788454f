"""Calibration batches and the gradient statistics gathered on them.

Gradient-based scorers look at the loss on a small sample of training data. The sample is drawn
with the callback's own seeded generator (never the global RNG), so the training data order is
untouched and a resumed run draws exactly the same calibration data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset


def calibration_batches(loader: DataLoader, num_samples: int, generator: torch.Generator) -> list[Any]:
    """Draw about ``num_samples`` training samples as a list of collated batches.

    For a map-style dataset the samples are a random subset chosen by ``generator`` and collated
    with the loader's ``collate_fn`` and batch size. For an iterable dataset, the first batches
    of the loader are taken, with the global RNG forked so the training order is not disturbed.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
        >>> batches = calibration_batches(DataLoader(ds, batch_size=4), 6, torch.Generator().manual_seed(0))
        >>> [b[0].shape[0] for b in batches]
        [4, 2]
    """
    if num_samples < 1:
        raise ValueError(f"`calibration_samples` must be >= 1, got {num_samples}.")
    dataset = loader.dataset
    batch_size = loader.batch_size or 1
    if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
        size = len(dataset)
        indices = torch.randperm(size, generator=generator)[: min(num_samples, size)].tolist()
        subset: Dataset = Subset(dataset, indices)
        # A DataLoader iterator draws a base seed from its generator; give it a private one so the
        # global RNG (and with it the training data order) is untouched.
        private = torch.Generator().manual_seed(0)
        return list(
            DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn, generator=private)
        )
    wanted = -(-num_samples // batch_size)
    batches = []
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            batches.append(batch)
            if len(batches) >= wanted:
                break
    return batches


def gradient_statistics(
    loss_fn: Callable[[Any, int], Tensor],
    batches: Sequence[Any],
    params: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean gradient and mean squared gradient (a Fisher diagonal) of the loss over ``batches``.

    Gradients come from :func:`torch.autograd.grad`, so the parameters' ``.grad`` buffers (and any
    DDP gradient hooks) are left alone. Parameters the loss does not reach get zeros.

    Args:
        loss_fn: ``loss_fn(batch, batch_idx)`` returns a scalar loss.
        batches: the calibration batches.
        params: the tensors to differentiate, by name.

    Returns:
        ``(grad_mean, grad_sq_mean)``: per-name tensors shaped like the parameters, float32.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> mean, sq = gradient_statistics(lambda b, i: (w * b).sum(), [torch.tensor([1.0, 1.0]),
        ...                                torch.tensor([3.0, -1.0])], {"w": w})
        >>> mean["w"], sq["w"]
        (tensor([2., 0.]), tensor([5., 1.]))
    """
    if not batches:
        raise ValueError("Calibration needs at least one batch, got none. HINT: is the training dataloader empty?")
    names = list(params)
    tensors = [params[n] for n in names]
    grad_sum = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in params.items()}
    grad_sq_sum = {n: torch.zeros_like(t, dtype=torch.float32) for n, t in params.items()}
    with torch.enable_grad():
        for idx, batch in enumerate(batches):
            loss = loss_fn(batch, idx)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is not None:
                    g = grad.detach().float()
                    grad_sum[name] += g
                    grad_sq_sum[name] += g * g
    count = float(len(batches))
    return (
        {n: g / count for n, g in grad_sum.items()},
        {n: g / count for n, g in grad_sq_sum.items()},
    )


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode (no dropout, no BatchNorm statistic updates), then restore each submodule's flag."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


@contextlib.contextmanager
def muted_logging(module: nn.Module) -> Iterator[None]:
    """Silence ``self.log``/``self.log_dict`` of a LightningModule, so calibration steps log nothing."""

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    had = {name: name in module.__dict__ for name in ("log", "log_dict")}
    saved = {name: module.__dict__.get(name) for name in had}
    module.__dict__["log"] = _noop
    module.__dict__["log_dict"] = _noop
    try:
        yield
    finally:
        for name, present in had.items():
            if present:
                module.__dict__[name] = saved[name]
            else:
                del module.__dict__[name]
