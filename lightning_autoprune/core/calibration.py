"""Calibration batches and the gradient statistics gathered on them.

Gradient-based scorers look at the loss on a small sample of training data. The sample is drawn
with the callback's own seeded generator (never the global RNG), so the training data order is
untouched and a resumed run draws exactly the same calibration data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_autoprune.core.targets import is_linear_map


def calibration_batches(
    loader: DataLoader,
    num_samples: int,
    generator: torch.Generator,
    *,
    holdout: int = 0,
    holdout_batch_size: int | None = None,
) -> list[Any] | tuple[list[Any], list[Any]]:
    """Draw about ``num_samples`` training samples as a list of collated batches.

    For a map-style dataset the samples are a random subset chosen by ``generator`` and collated
    with the loader's ``collate_fn`` and batch size. For an iterable dataset, the first batches
    of the loader are taken, with the global RNG forked so the training order is not disturbed.

    Args:
        loader: the training DataLoader (its dataset, batch size and collate function are used).
        num_samples: how many samples to draw.
        generator: the caller's seeded generator.
        holdout: if positive, also draw this many *other* samples and return
            ``(batches, holdout_batches)``: disjoint sets, for features and for labels.
        holdout_batch_size: batch size of the holdout batches (default: the loader's). Labels
            evaluate the holdout loss once per ablation, so fewer, larger batches are faster.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
        >>> batches = calibration_batches(DataLoader(ds, batch_size=4), 6, torch.Generator().manual_seed(0))
        >>> [b[0].shape[0] for b in batches]
        [4, 2]
        >>> a, b = calibration_batches(DataLoader(ds, batch_size=4), 5, torch.Generator(), holdout=5)
        >>> sorted(torch.cat([x[0] for x in a + b]).view(-1).tolist()) == list(range(10))
        True
    """
    if num_samples < 1:
        raise ValueError(f"`calibration_samples` must be >= 1, got {num_samples}.")
    dataset = loader.dataset
    batch_size = loader.batch_size or 1
    if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
        size = len(dataset)
        if holdout > 0 and num_samples + holdout > size:
            raise ValueError(
                f"Calibration needs {num_samples} + {holdout} distinct training samples, but the training set "
                f"has {size}. HINT: lower `calibration_samples`."
            )
        order = torch.randperm(size, generator=generator)
        first = _collate(loader, dataset, order[: min(num_samples, size)].tolist(), batch_size)
        if holdout <= 0:
            return first
        second = order[num_samples : num_samples + holdout].tolist()
        return first, _collate(loader, dataset, second, holdout_batch_size or batch_size)
    wanted = -(-num_samples // batch_size)
    extra = -(-holdout // batch_size) if holdout > 0 else 0
    batches = []
    with torch.random.fork_rng(devices=[]):
        for batch in loader:
            batches.append(batch)
            if len(batches) >= wanted + extra:
                break
    if holdout <= 0:
        return batches
    if len(batches) < wanted + extra:
        raise ValueError(
            f"Calibration needs {wanted + extra} training batches for features and labels, "
            f"but the training loader gave {len(batches)}. HINT: lower `calibration_samples`."
        )
    return batches[:wanted], batches[wanted:]


def _collate(loader: DataLoader, dataset: Any, indices: list[int], batch_size: int) -> list[Any]:
    subset: Dataset = Subset(dataset, indices)
    # A DataLoader iterator draws a base seed from its generator; give it a private one so the
    # global RNG (and with it the training data order) is untouched.
    private = torch.Generator().manual_seed(0)
    return list(
        DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=loader.collate_fn, generator=private)
    )


class ActivationRecorder:
    """Accumulate per-unit activation norms of pruned layers over calibration forward passes.

    For each target that is the ``weight`` of a Linear or Conv layer, records the L2 norm over all
    samples (and positions) of every input unit (Linear input feature, Conv input channel) and of
    every output unit. Layers that compute a linear map over the last dim without being an
    ``nn.Linear`` (transformers' ``Conv1D``, whose weight is stored ``[in, out]``, and Linear-like
    layers) are recorded like a Linear: their units are the last dim of input and output, whatever
    way the weight is stored. Use as a context manager around the forward passes.

    Example:
        >>> layer = nn.Linear(2, 1, bias=False)
        >>> with ActivationRecorder({"w": layer}) as rec:
        ...     _ = layer(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        >>> rec.input_norms()["w"]
        tensor([5., 1.])
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = {
            name: m
            for name, m in modules.items()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_linear_map(m)
        }
        self._in_sq: dict[str, Tensor] = {}
        self._out_sq: dict[str, Tensor] = {}
        self._rows: dict[str, int] = {}  # input rows (samples x positions) seen per layer
        self._handles: list[Any] = []

    def __enter__(self) -> ActivationRecorder:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not inputs or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
                return
            unit_dim = -1 if is_linear_map(module) else 1
            for store, value in ((self._in_sq, inputs[0]), (self._out_sq, output)):
                x = value.detach().float().movedim(unit_dim, 0)
                x = x.reshape(x.shape[0], -1)
                store[name] = store[name] + x.pow(2).sum(dim=1) if name in store else x.pow(2).sum(dim=1)
                if store is self._in_sq:
                    self._rows[name] = self._rows.get(name, 0) + x.shape[1]

        return hook

    def input_norms(self) -> dict[str, Tensor]:
        """Per-input-unit L2 norms, for every layer that saw a forward pass."""
        return {name: sq.sqrt() for name, sq in self._in_sq.items()}

    def output_norms(self) -> dict[str, Tensor]:
        """Per-output-unit L2 norms, for every layer that saw a forward pass."""
        return {name: sq.sqrt() for name, sq in self._out_sq.items()}

    def input_rms(self) -> dict[str, Tensor]:
        """Per-input-unit root mean square over the rows the layer saw (samples, times positions for a Conv).

        Unlike :meth:`input_norms`, it does not grow with the number of positions, so layers that
        see a sequence or a feature map compare with layers that see one vector per sample.

        Example:
            >>> conv, head = nn.Conv1d(1, 1, 3, bias=False), nn.Linear(1, 1, bias=False)
            >>> with ActivationRecorder({"conv": conv, "head": head}) as rec:
            ...     _ = conv(torch.full((2, 1, 8), 3.0)), head(torch.full((2, 1), 3.0))
            >>> rec.input_norms()["conv"] / rec.input_norms()["head"], rec.input_rms()
            (tensor([2.8284]), {'conv': tensor([3.]), 'head': tensor([3.])})
        """
        return {name: (sq / max(1, self._rows.get(name, 1))).sqrt() for name, sq in self._in_sq.items()}


def first_samples(batches: Sequence[Any], count: int, start: int = 0) -> list[Any]:
    """Samples ``start`` to ``start + count`` of collated ``batches``, as batches of the same structure.

    A batch's size is the first dimension of its first tensor; every tensor of the batch with
    that first dimension is cut, anything else (scalars, strings, tensors of another length) is
    kept as it is. Tuples, lists, dicts and other mappings keep their types.

    Raises:
        ValueError: when a batch holds no tensor with a batch dimension, so it cannot be cut.

    Example:
        >>> batches = [(torch.arange(4.0), torch.zeros(4)), (torch.arange(4.0, 8.0), torch.ones(4))]
        >>> [b[0].tolist() for b in first_samples(batches, 6)]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
        >>> [b[0].tolist() for b in first_samples(batches, 3, start=3)]
        [[3.0], [4.0, 5.0]]
    """
    out: list[Any] = []
    skip, left = start, count
    for batch in batches:
        if left <= 0:
            break
        size = batch_size(batch)
        if size is None:
            raise ValueError(
                f"A calibration batch of type {type(batch).__name__} holds no tensor with a batch dimension, so its "
                "first samples cannot be taken."
            )
        if skip >= size:
            skip -= size
            continue
        take = min(left, size - skip)
        out.append(batch if take == size else _cut(batch, size, skip, take))
        skip, left = 0, left - take
    return out


def batch_size(batch: Any) -> int | None:
    """The first dimension of the first tensor in ``batch`` (``None``: no tensor with one).

    Example:
        >>> batch_size({"ids": torch.zeros(3, 5), "n": 7}), batch_size("text")
        (3, None)
    """
    sizes: list[int] = []
    apply_to_collection(batch, Tensor, lambda t: sizes.append(t.shape[0]) if t.dim() > 0 else None)
    return sizes[0] if sizes else None


def _cut(batch: Any, size: int, skip: int, take: int) -> Any:
    return apply_to_collection(
        batch, Tensor, lambda t: t[skip : skip + take] if t.dim() > 0 and t.shape[0] == size else t
    )


def mean_loss(loss_fn: Callable[[Any, int], Tensor], batches: Sequence[Any]) -> float:
    """Mean of ``loss_fn`` over ``batches``, without gradients, accumulated in float64.

    Example:
        >>> mean_loss(lambda b, i: b.sum(), [torch.tensor([1.0]), torch.tensor([2.0])])
        1.5
    """
    total = 0.0
    with torch.no_grad():
        for idx, batch in enumerate(batches):
            total += float(loss_fn(batch, idx).double())
    return total / max(1, len(batches))


def gradient_statistics(
    loss_fn: Callable[[Any, int], Tensor],
    batches: Sequence[Any],
    params: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Mean gradient and mean squared gradient (a Fisher diagonal) of the loss over ``batches``.

    Gradients come from :func:`torch.autograd.grad`, so the parameters' ``.grad`` buffers (and any
    DDP gradient hooks) are left alone. Parameters the loss does not reach get zeros. Frozen
    parameters (``requires_grad=False``, named in ``include`` by the user) are differentiated too:
    their flag is switched on for the calibration passes only (:func:`requiring_grad`), so they
    still get no ``.grad`` and no optimizer update.

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
    with torch.enable_grad(), requiring_grad(tensors):
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
def requiring_grad(tensors: Iterable[Tensor]) -> Iterator[None]:
    """Let autograd differentiate frozen leaf tensors for a while, then freeze them again.

    Example:
        >>> w = torch.ones(2)
        >>> with requiring_grad([w]):
        ...     print(w.requires_grad)
        True
        >>> w.requires_grad
        False
    """
    frozen = [t for t in tensors if t.is_leaf and not t.requires_grad]
    for tensor in frozen:
        tensor.requires_grad_(True)
    try:
        yield
    finally:
        for tensor in frozen:
            tensor.requires_grad_(False)


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
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Let every BatchNorm of ``module`` normalise with the statistics of the batch, updating nothing.

    A pruning step shifts the activations, so the running statistics BatchNorm layers use in eval
    mode no longer fit, and a loss measured with them mostly shows that mismatch, which the first
    training steps repair. With each batch's own statistics the loss is that of the step after
    the statistics are re-estimated (the adaptive-BatchNorm evaluation of EagleEye, Li et al.
    2020). Running statistics and batch counters are left untouched; other layers keep their mode.

    Example:
        >>> bn = nn.BatchNorm1d(1).eval()
        >>> with batch_statistics(bn):
        ...     out = bn(torch.tensor([[1.0], [3.0]]))
        >>> out.view(-1).round(decimals=3).tolist(), bn.running_mean.tolist(), bn.training
        ([-1.0, 1.0], [0.0], False)
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.training, m.track_running_stats = True, False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.training, m.track_running_stats = training, track


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
