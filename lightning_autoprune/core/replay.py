"""Ablation passes that reuse the outputs of the layers an ablation cannot change.

A learned event measures the calibration loss once with each of many small groups of weights
zeroed, every other weight as it was. Zeroing weights of one tensor changes nothing that runs
before that tensor's layer: those layers compute exactly what they computed in the pass without
the ablation. :class:`LayerReplay` records the output of every leaf module once, at the state the
ablations start from, and in each ablation pass hands back the recorded outputs of the calls that
precede the ablated tensor's first use, so only the layers from there on run. That loss is bit
for bit the loss of a full pass (the same inputs reach the same kernels); a network whose
ablations spread over its depth runs about half its layers per ablation.

What is replayed, per calibration batch (the calls are counted from the start of the batch's loss):

* a leaf module's call (a module without children, such as ``nn.Linear`` or ``nn.ReLU``) whose
  output is one tensor, that starts before the ablated tensor's first use in the recorded pass:
  the first call of a module that holds it as its own parameter, or any earlier operation that
  reads it (or a view of it), as ``F.embedding(ids, head.weight)`` in a ``training_step`` that
  ties an embedding to a head by hand;
* and whose output no later operation of the recorded pass changed in place (``out += x`` in a
  residual block): such an output is recomputed from its (replayed) inputs instead. A replayed
  output that an ablation pass changes in place is dropped from the record the same way.

The layer of the ablated tensor itself need not run either, where it is linear in that tensor and
wide enough to be worth it: a ``nn.Linear`` (or transformers' ``Conv1D``) with at least
:data:`DELTA_MIN_INPUTS` inputs, the ablated tensor its float32 or float64 ``weight``, held by no
other module, its forward not replaced on the instance, and the zeroed entries the only change.
Its first call then returns the recorded output less the zeroed entries' share,
``out[..., r] -= x[..., c] * w[r, c]``, from the recorded input ``x`` (:meth:`LayerReplay.changing`
with ``zeroed``): one product with a sparse matrix of the zeroed entries, whose cost grows with
their number rather than with the layer's size. That is the full pass's output up to float
rounding (a sum in another order), not bit for bit.

Recorded outputs (and those inputs) are kept up to ``max_bytes``; the calls after that run as usual.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_autoprune.core import calibration
from lightning_autoprune.core.targets import is_conv1d_transposed

#: At most this many bytes of recorded layer outputs are kept; later calls are computed.
REPLAY_BYTES = 256 * 2**20
#: A linear layer with at least this many inputs subtracts the zeroed entries' share from its recorded
#: output instead of running. Measured on 2 CPU threads, 512 rows, square layers: the dense product
#: took 1.3 ms at 512 inputs against 0.6-0.8 ms for the correction (64-2000 entries zeroed), 19.7
#: against 2.2-10.5 ms at 2240 (4096-65536 entries), and 0.4 against 0.3-0.4 ms at 256, no gain.
DELTA_MIN_INPUTS = 512

#: Per ablated tensor: the flat positions zeroed and the values they held.
Zeroed = Mapping[str, tuple[Tensor, Tensor]]


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
        self._storages: dict[int, list[str]] = {}
        for name, tensor in params.items():
            self._storages.setdefault(_storage(tensor), []).append(name)
        #: The linear layers whose output an ablation of their weight corrects instead of running, by tensor.
        self._linear = {
            name: next(iter(self._owners[name]))
            for name, tensor in params.items()
            if len(self._owners[name]) == 1 and _corrects(next(iter(self._owners[name])), tensor)
        }
        self._widths = {name: params[name].shape[1] for name in self._linear}
        #: Per batch, the module calls of the recorded pass in start order: (module, output or None).
        self._calls: list[list[tuple[nn.Module, Tensor | None]]] = []
        #: Per batch, the recorded input of those linear layers' calls, by call index.
        self._inputs: list[dict[int, Tensor]] = []
        #: Per batch, each tensor's first use in the recorded pass: the index of the leaf call it
        #: happened in, or of the next call when it happened outside every leaf call.
        self._uses: list[dict[str, int]] = []
        #: Leaf calls whose recorded output was handed back instead of being computed, so far.
        self.replayed_calls = 0
        #: Linear-layer calls whose output was the recorded one less the zeroed entries' share, so far.
        self.corrected_calls = 0

    def record(self) -> float:
        """The loss now, recording the outputs that :meth:`changing` replays."""
        self.clear()
        kept = [0]

        linear = frozenset(self._linear.values())

        def recorded(batch: Any, idx: int) -> Tensor:
            calls: list[tuple[nn.Module, Tensor | None]] = []
            returned: list[tuple[int, Tensor, int]] = []
            inputs: dict[int, tuple[Tensor, int]] = {}
            uses: dict[str, int] = {}
            open_leaf = [False]
            with (
                _recording(self.module, calls, returned, kept, self.max_bytes, linear, inputs, open_leaf),
                _FirstUses(self._storages, calls, open_leaf, uses),
            ):
                loss = self.loss_fn(batch, idx)
            self._uses.append(uses)
            for index, output, version in returned:
                if output._version != version:  # changed in place later in the pass: recompute it
                    calls[index] = (calls[index][0], None)
                    kept[0] -= _bytes(output)
            self._calls.append(calls)
            self._inputs.append({index: x for index, (x, version) in inputs.items() if x._version == version})
            return loss

        return calibration.mean_loss(recorded, self.batches)

    def changing(self, names: Collection[str], zeroed: Zeroed | None = None) -> float:
        """The loss now, when only the tensors ``names`` differ from their state at :meth:`record`.

        ``zeroed``: how they differ, when the difference is entries set to zero (per tensor, their
        flat positions and the values they held). With one tensor, the weight of a linear layer
        this replay corrects (see the module docstring), that layer's first call does not run.
        """
        if not self._calls:
            raise RuntimeError("LayerReplay.changing() needs a record() first.")
        owners = set().union(*(self._owners.get(name, ()) for name in names)) if names else set()
        # Only when the zeroed entries are the whole difference: one tensor, nothing else changed.
        correctable = zeroed if zeroed is not None and len(zeroed) == 1 and set(names) == set(zeroed) else None

        def replayed(batch: Any, idx: int) -> Tensor:
            calls, uses = self._calls[idx], self._uses[idx]
            boundary = next((i for i, (m, _) in enumerate(calls) if m in owners), 0)
            boundary = min([boundary, *(uses[name] for name in names if name in uses)])
            replays = _replays(calls[:boundary])
            corrected = self._corrected(idx, boundary, correctable) if correctable is not None else None
            if corrected is not None:
                replays[calls[boundary][0]] = [corrected]
            with _replaying(replays) as handed:
                loss = self.loss_fn(batch, idx)
            for output in handed.changed():
                self._forget(idx, output)
            self.replayed_calls += handed.count - (corrected is not None)
            self.corrected_calls += corrected is not None
            return loss

        return calibration.mean_loss(replayed, self.batches)

    def clear(self) -> None:
        """Forget the recorded outputs."""
        self._calls = []
        self._inputs = []
        self._uses = []

    def _corrected(self, batch: int, boundary: int, zeroed: Zeroed) -> Tensor | None:
        """The recorded output of call ``boundary`` less the share of the entries ``zeroed``, if it has one."""
        ((name, (positions, values)),) = zeroed.items()
        calls, layer = self._calls[batch], self._linear.get(name)
        if layer is None or boundary >= len(calls) or calls[boundary][0] is not layer or "forward" in vars(layer):
            return None
        output, x = calls[boundary][1], self._inputs[batch].get(boundary)
        if output is None or x is None:
            return None
        # Linear: weight [out, in], flat = r * in + c. Conv1D: weight [in, out], flat = c * out + r.
        width = self._widths[name]
        high, low = positions // width, positions % width
        rows, cols = (low, high) if is_conv1d_transposed(layer) else (high, low)
        share = _sparse(rows, cols, values.to(x.dtype), (output.shape[-1], x.shape[-1]))
        flat_x, flat_out = x.reshape(-1, x.shape[-1]), output.reshape(-1, output.shape[-1])
        return torch.addmm(flat_out, flat_x, share.t(), alpha=-1).view_as(output)

    def _forget(self, batch: int, output: Tensor) -> None:
        calls = self._calls[batch]
        for i, (m, saved) in enumerate(calls):
            if saved is output:
                calls[i] = (m, None)


def _sparse(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """The ``shape`` matrix with ``values`` at ``(rows, cols)`` and zeros elsewhere, in compressed sparse rows.

    Compressed rows, not a dense copy or a gather of ``x``'s columns: on 2 CPU threads the product
    with 65536 entries of a 2240 x 2240 matrix took 10.5 ms, against 288 ms gathering the columns
    and 19.7 ms for the layer's dense product.
    """
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols[order], values[order], shape, check_invariants=False)


#: Weight dtypes the correction handles (a sparse product of half-precision types has no CPU kernel).
CORRECTED_DTYPES = (torch.float32, torch.float64)


def _corrects(layer: nn.Module, tensor: Tensor) -> bool:
    """Whether ``layer`` is a linear layer of at least :data:`DELTA_MIN_INPUTS` inputs whose weight is ``tensor``.

    A subclass of ``nn.Linear`` with a forward of its own (a LoRA or quantized layer) is not, nor
    is a layer whose forward was replaced on the instance (accelerate's hooks, which may move or
    change the input), nor a weight of a dtype outside :data:`CORRECTED_DTYPES`.
    """
    if getattr(layer, "weight", None) is not tensor or tensor.dim() != 2 or tensor.dtype not in CORRECTED_DTYPES:
        return False
    if "forward" in vars(layer):
        return False
    if is_conv1d_transposed(layer):
        return tensor.shape[0] >= DELTA_MIN_INPUTS
    plain = isinstance(layer, nn.Linear) and type(layer).forward is nn.Linear.forward
    return plain and tensor.shape[1] >= DELTA_MIN_INPUTS


def _owners(module: nn.Module, tensor: Tensor) -> frozenset[nn.Module]:
    """The modules that hold ``tensor`` (or a tensor sharing its storage) as their own parameter."""
    found = set()
    for m in module.modules():
        for p in m.parameters(recurse=False):
            if p is tensor or (p.device == tensor.device and p.data_ptr() == tensor.data_ptr()):
                found.add(m)
    return frozenset(found)


def _storage(tensor: Tensor) -> int:
    """The address of ``tensor``'s storage (shared by all its views); 0 for a tensor without one."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse, meta and other storage-less tensors
        return 0


class _FirstUses(TorchFunctionMode):
    """Records, into ``uses``, each watched tensor's first use by any torch operation during a pass.

    The position is the leaf call in progress (``open_leaf``) or, outside every leaf call, the
    next call to start: the calls before it ran without the tensor.
    """

    def __init__(
        self,
        storages: Mapping[int, list[str]],
        calls: Sequence[Any],
        open_leaf: list[bool],
        uses: dict[str, int],
    ) -> None:
        super().__init__()
        self.storages = {address: names for address, names in storages.items() if address}
        self.watched = sum(len(names) for names in self.storages.values())
        self.calls, self.open_leaf, self.uses = calls, open_leaf, uses

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if len(self.uses) < self.watched:
            for tensor in _tensors((args, kwargs)):
                for name in self.storages.get(_storage(tensor), ()):
                    self.uses.setdefault(name, len(self.calls) - 1 if self.open_leaf[0] else len(self.calls))
        return func(*args, **kwargs)


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors in ``value``, looking into tuples, lists and dicts."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _bytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@contextlib.contextmanager
def _recording(
    module: nn.Module,
    calls: list[tuple[nn.Module, Tensor | None]],
    returned: list[tuple[int, Tensor, int]],
    kept: list[int],
    max_bytes: int,
    linear: Collection[nn.Module],
    inputs: dict[int, tuple[Tensor, int]],
    open_leaf: list[bool],
) -> Iterator[None]:
    """Append every module call (in start order) to ``calls``, with a leaf's tensor output while ``kept`` allows.

    A call of a module in ``linear`` whose output is kept also keeps its input in ``inputs`` (with
    its version then), when input, output and weight share one dtype (not under autocast); an
    input that shares its storage with a kept output costs nothing more. ``open_leaf[0]`` is
    whether the last call started is a leaf that has not returned yet.
    """
    starts: dict[nn.Module, list[int]] = {}
    stored: set[int] = set()

    def pre_hook(m: nn.Module, args: Any) -> None:
        starts.setdefault(m, []).append(len(calls))
        calls.append((m, None))
        open_leaf[0] = next(m.children(), None) is None

    def hook(m: nn.Module, args: Any, output: Any) -> None:
        open_leaf[0] = False
        index = starts[m].pop()
        if isinstance(output, Tensor) and kept[0] + _bytes(output) <= max_bytes:
            kept[0] += _bytes(output)
            calls[index] = (m, output)
            returned.append((index, output, output._version))
            stored.add(_storage(output))
            if m in linear and args and isinstance(args[0], Tensor):
                _keep_input(args[0], output, m, index, inputs, kept, max_bytes, stored)

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


def _keep_input(
    x: Tensor,
    output: Tensor,
    layer: nn.Module,
    index: int,
    inputs: dict[int, tuple[Tensor, int]],
    kept: list[int],
    max_bytes: int,
    stored: set[int],
) -> None:
    """Keep ``x``, the input of ``layer``'s call ``index``, if ``kept`` allows and its dtype is the output's."""
    if not x.dtype == output.dtype == layer.weight.dtype:
        return
    cost = 0 if _storage(x) in stored else _bytes(x)
    if kept[0] + cost <= max_bytes:
        kept[0] += cost
        inputs[index] = (x, x._version)


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
