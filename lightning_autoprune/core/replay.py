"""Ablation passes that reuse the outputs of the layers an ablation cannot change.

A learned event measures the calibration loss once with each of many small groups of weights
zeroed, every other weight as it was. Zeroing weights of one tensor changes nothing that runs
before that tensor's layer: those layers compute exactly what they computed in the pass without
the ablation. :class:`LayerReplay` records the output of every leaf module once, at the state the
ablations start from, and in each ablation pass hands back the recorded outputs of the calls that
precede the ablated tensor's first use, so only the layers from there on run. The loss is bit for
bit the loss of a full pass (the same inputs reach the same kernels); a network whose ablations
spread over its depth runs about half its layers per ablation.

What is replayed, per calibration batch (the calls are counted from the start of the batch's loss):

* a leaf module's call (a module without children, such as ``nn.Linear`` or ``nn.ReLU``) whose
  output is one tensor, that starts before the first call of any module that holds the ablated
  tensor as its own parameter; a tensor used outside every module call (directly in
  ``training_step``) replays nothing;
* and whose output no later operation of the recorded pass changed in place (``out += x`` in a
  residual block): such an output is recomputed from its (replayed) inputs instead. A replayed
  output that an ablation pass changes in place is dropped from the record the same way.

Recorded outputs are kept up to ``max_bytes``; the calls after that run as usual.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_autoprune.core import calibration

#: At most this many bytes of recorded layer outputs are kept; later calls are computed.
REPLAY_BYTES = 256 * 2**20


class LayerReplay:
    """The mean calibration loss over ``batches``, with the layers before an ablated tensor replayed.

    Args:
        module: the model whose leaf modules are recorded and replayed.
        loss_fn: ``loss_fn(batch, batch_idx)``, the scalar loss of a batch (it calls ``module``).
        batches: the calibration batches; the loss is their mean, accumulated in float64.
        params: the tensors an ablation may change, by name (parameters of ``module``).
        max_bytes: the most bytes of recorded outputs kept.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> batches = [torch.randn(8, 3)]
        >>> replay = LayerReplay(net, lambda b, i: net(b).pow(2).mean(), batches, {"2.weight": net[2].weight})
        >>> base = replay.record()
        >>> with torch.no_grad():
        ...     net[2].weight[0, 1] = 0.0
        >>> replay.changing(["2.weight"]) == float(net(batches[0]).pow(2).mean().detach().double())
        True
        >>> replay.replayed_calls  # the first Linear and the ReLU were not run again
        2
        >>> replay.clear()
    """

    def __init__(
        self,
        module: nn.Module,
        loss_fn: Callable[[Any, int], Tensor],
        batches: Sequence[Any],
        params: Mapping[str, Tensor],
        max_bytes: int = REPLAY_BYTES,
    ) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.batches = batches
        self.max_bytes = max_bytes
        self._owners = {name: _owners(module, tensor) for name, tensor in params.items()}
        #: Per batch, the module calls of the recorded pass in start order: (module, output or None).
        self._calls: list[list[tuple[nn.Module, Tensor | None]]] = []
        #: Leaf calls whose recorded output was handed back instead of being computed, so far.
        self.replayed_calls = 0

    def record(self) -> float:
        """The loss now, recording the outputs that :meth:`changing` replays."""
        self.clear()
        kept = [0]

        def recorded(batch: Any, idx: int) -> Tensor:
            calls: list[tuple[nn.Module, Tensor | None]] = []
            returned: list[tuple[int, Tensor, int]] = []
            with _recording(self.module, calls, returned, kept, self.max_bytes):
                loss = self.loss_fn(batch, idx)
            for index, output, version in returned:
                if output._version != version:  # changed in place later in the pass: recompute it
                    calls[index] = (calls[index][0], None)
                    kept[0] -= _bytes(output)
            self._calls.append(calls)
            return loss

        return calibration.mean_loss(recorded, self.batches)

    def changing(self, names: Collection[str]) -> float:
        """The loss now, when only the tensors ``names`` differ from their state at :meth:`record`."""
        if not self._calls:
            raise RuntimeError("LayerReplay.changing() needs a record() first.")
        owners = set().union(*(self._owners.get(name, ()) for name in names)) if names else set()

        def replayed(batch: Any, idx: int) -> Tensor:
            calls = self._calls[idx]
            boundary = next((i for i, (m, _) in enumerate(calls) if m in owners), 0)
            with _replaying(_replays(calls[:boundary])) as handed:
                loss = self.loss_fn(batch, idx)
            for output in handed.changed():
                self._forget(idx, output)
            self.replayed_calls += handed.count
            return loss

        return calibration.mean_loss(replayed, self.batches)

    def clear(self) -> None:
        """Forget the recorded outputs."""
        self._calls = []

    def _forget(self, batch: int, output: Tensor) -> None:
        calls = self._calls[batch]
        for i, (m, saved) in enumerate(calls):
            if saved is output:
                calls[i] = (m, None)


def _owners(module: nn.Module, tensor: Tensor) -> frozenset[nn.Module]:
    """The modules that hold ``tensor`` (or a tensor sharing its storage) as their own parameter."""
    found = set()
    for m in module.modules():
        for p in m.parameters(recurse=False):
            if p is tensor or (p.device == tensor.device and p.data_ptr() == tensor.data_ptr()):
                found.add(m)
    return frozenset(found)


def _bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@contextlib.contextmanager
def _recording(
    module: nn.Module,
    calls: list[tuple[nn.Module, Tensor | None]],
    returned: list[tuple[int, Tensor, int]],
    kept: list[int],
    max_bytes: int,
) -> Iterator[None]:
    """Append every module call (in start order) to ``calls``, with a leaf's tensor output while ``kept`` allows."""
    starts: dict[nn.Module, list[int]] = {}

    def pre_hook(m: nn.Module, args: Any) -> None:
        starts.setdefault(m, []).append(len(calls))
        calls.append((m, None))

    def hook(m: nn.Module, args: Any, output: Any) -> None:
        index = starts[m].pop()
        if isinstance(output, Tensor) and kept[0] + _bytes(output) <= max_bytes:
            kept[0] += _bytes(output)
            calls[index] = (m, output)
            returned.append((index, output, output._version))

    handles = []
    for m in module.modules():
        if isinstance(m, torch.jit.ScriptModule):  # takes no hooks and no patched forward
            continue
        handles.append(m.register_forward_pre_hook(pre_hook))
        if next(m.children(), None) is None:  # first, so that it sees the output before other hooks change it
            handles.append(m.register_forward_hook(hook, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _replays(calls: Sequence[tuple[nn.Module, Tensor | None]]) -> dict[nn.Module, list[Tensor | None]]:
    """Per leaf module with a recorded call before the boundary, its calls' outputs in order (``None``: compute)."""
    per_module: dict[nn.Module, list[Tensor | None]] = {}
    for m, output in calls:
        if next(m.children(), None) is None:
            per_module.setdefault(m, []).append(output)
    return {m: outputs for m, outputs in per_module.items() if any(o is not None for o in outputs)}


class _Handed:
    """The outputs handed back in one pass, and their versions then."""

    def __init__(self) -> None:
        self.outputs: list[tuple[Tensor, int]] = []

    @property
    def count(self) -> int:
        return len(self.outputs)

    def changed(self) -> list[Tensor]:
        return [output for output, version in self.outputs if output._version != version]


@contextlib.contextmanager
def _replaying(replays: Mapping[nn.Module, list[Tensor | None]]) -> Iterator[_Handed]:
    """Let each module's first calls return their recorded outputs; later calls compute as usual."""
    handed = _Handed()
    patched = []
    for m, outputs in replays.items():
        original = m.forward
        had_own = "forward" in m.__dict__
        queue = iter(outputs)

        def forward(
            *args: Any, _queue: Iterator[Tensor | None] = queue, _original: Any = original, **kwargs: Any
        ) -> Any:
            saved = next(_queue, None)
            if saved is None:
                return _original(*args, **kwargs)
            handed.outputs.append((saved, saved._version))
            return saved

        m.forward = forward
        patched.append((m, had_own, original))
    try:
        yield handed
    finally:
        for m, had_own, original in patched:
            if had_own:
                m.forward = original
            else:
                del m.__dict__["forward"]
