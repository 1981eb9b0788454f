"""Compaction: physically remove dead units from a structurally pruned model.

Structured pruning in this package is done in place: a pruned output unit (a ``Linear`` output
neuron, a convolution output channel) keeps its slot in the ordinary parameters, with its weight
slice, its bias entry and, where a BatchNorm follows, that channel's ``gamma`` and ``beta`` set to
exact zeros. Such a unit outputs exactly zero, so removing it, together with the input columns
of every layer that consumes it, changes nothing but the model's size. :func:`compact` does that
removal on a copy of the model and checks the result against the input model.

Coupling between layers (BatchNorm, residual additions, concatenations, flattening) is read from
`Torch-Pruning <https://github.com/VainF/Torch-Pruning>`_'s dependency graph through the same reader
as unit discovery, :mod:`~lightning_autoprune.structured.tracing`; install it with
``pip install lightning_autoprune[structured]``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.utils import parametrize

from lightning_autoprune.core.targets import is_conv1d_transposed
from lightning_autoprune.structured.tracing import (
    Link,
    Plan,
    Trace,
    attention_layers,
    import_torch_pruning,
    tensors_in,
    trace,
)

__all__ = ["CompactionError", "compact", "count_flops", "count_parameters"]

# Layer types whose units compaction removes (and transformers' Conv1D, found by its layout:
# :func:`_is_layer`). Any other module that holds parameters or buffers is "opaque": its units, and
# every unit coupled to it, are kept.
_SUPPORTED = (nn.Linear, _ConvNd, _BatchNorm, _InstanceNorm, nn.PReLU)
# Containers hold no computation of their own: their children are traced individually.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)
# Stateless modules that mix or reorder channels, so removing a zero channel changes other ones.
_CHANNEL_MIXING = (
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.ChannelShuffle,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Softmax,
    nn.Softmin,
    nn.LogSoftmax,
    nn.Softmax2d,
    nn.Fold,
    nn.Unfold,
)


class CompactionError(RuntimeError):
    """Raised when :func:`compact` cannot build a smaller model with the same outputs.

    Attributes:
        layers: qualified names of the layers whose units the failed attempt removed or tried
            to remove; passing those submodules as ``ignored_layers`` keeps them whole. Empty when
            the model could not be traced at all.

    Example:
        >>> CompactionError("fails", layers=["net.0"]).layers
        ('net.0',)
    """

    def __init__(self, message: str, layers: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.layers = tuple(layers)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the layers (exceptions pickle their ``args`` only)."""
        return (type(self), (str(self), self.layers))


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Number of parameter entries in ``model``; a parameter shared by several layers counts once.

    Example:
        >>> count_parameters(nn.Linear(4, 3))
        15
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: Tensor | tuple[Tensor, ...]) -> int:
    """Multiply-accumulate operations of one forward pass, per example of ``example_inputs``.

    Counted by Torch-Pruning's ``count_ops_and_params`` on a copy of ``model`` in eval mode (the
    caller's model is left untouched) and divided by the batch size; like most FLOP counters it
    reports multiply-accumulates (plus one operation per bias entry and activation output).
    transformers' ``Conv1D`` (GPT-2's projections) counts as the Linear layer it is; other layers
    it has no rule for count as zero.

    Example:
        >>> count_flops(nn.Linear(4, 3), torch.zeros(1, 4))  # 4 x 3 products, plus 3 biases
        15
    """
    tp = import_torch_pruning()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    inputs = _as_input_tuple(example_inputs)
    # Torch-Pruning's extension point for module types it has no rule for (it empties it after
    # each count): a Conv1D maps the last dim of its input like a Linear.
    counter = tp.utils.op_counter
    conv1d = {type(m) for m in model.modules() if is_conv1d_transposed(m)}
    counter.CUSTOM_MODULES_MAPPING.update(dict.fromkeys(conv1d, counter.linear_flops_counter_hook))
    flops, _ = tp.utils.count_ops_and_params(model, inputs)
    return int(flops)


def compact(
    model: nn.Module,
    example_inputs: Tensor | tuple[Tensor, ...],
    *,
    ignored_layers: Sequence[nn.Module] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> nn.Module:
    """Return a smaller, dense copy of ``model`` with every dead output unit removed.

    A unit (a ``Linear`` output neuron or a convolution output channel) is *dead* when its weight
    slice and bias entry are exactly zero in every layer that produces it and every BatchNorm or
    InstanceNorm channel it passes through maps zero to zero (``gamma == beta == 0``, or
    ``beta == 0`` with a zero running mean). Units are coupled through Torch-Pruning's dependency
    graph: a channel that meets a residual addition is removed only if it is dead in *every*
    branch of the addition; concatenations and flattening are re-indexed. As a last guard, a dead
    unit is kept if it reaches a consuming layer as a non-zero value on ``example_inputs`` (e.g.
    through ``sigmoid``, an added constant, or a residual connection to the model input).

    Always kept:

    * the model's outputs (the classifier's units, and any tensor the model returns);
    * units of ``ignored_layers`` and every unit coupled to them;
    * layers compaction cannot shrink exactly, and every unit coupled to them: recurrent layers,
      attention (``nn.MultiheadAttention``, and the projections inside any module whose class
      name contains ``Attention``, such as transformers' self-attention blocks), embeddings,
      cross-channel normalisations (``LayerNorm``, ``GroupNorm``), grouped
      convolutions, parametrized layers and custom modules that hold their own parameters. A
      :class:`UserWarning` names them. Dead units kept for any reason other than the two above
      are named in a second warning.

    ``model`` is never modified: compaction works on a deep copy. Module hooks (for example
    mask-enforcing pre-hooks registered during pruning) are not carried over, as their masks no
    longer fit. The copy keeps the per-module ``training`` flags and ``requires_grad`` flags of
    ``model``.

    Args:
        model: The pruned model.
        example_inputs: A batch the model accepts: one tensor, or a tuple of positional tensor
            arguments. Used to trace the model and to check the result.
        ignored_layers: Submodules of ``model`` whose output units must not be removed.
        rtol: Relative tolerance of the output check (``torch.allclose``). ``None``: by output
            dtype, ``1e-5`` for float32 (``1e-7`` float64, ``1e-3`` float16, ``1.6e-2`` bfloat16);
            removing exact zeros from a sum can still change its rounding.
        atol: Absolute tolerance of the output check. ``None``: by output dtype, ``1e-5`` for
            float32 (``1e-7`` float64, ``1e-3`` float16, ``1e-2`` bfloat16).

    Returns:
        The compacted copy; in eval mode it gives the same outputs as ``model`` on
        ``example_inputs`` within ``rtol`` / ``atol``.

    Raises:
        ImportError: if Torch-Pruning is not installed.
        TypeError: if an argument has the wrong type.
        ValueError: if an argument has an invalid value.
        CompactionError: if Torch-Pruning cannot trace the model, or if the compacted model fails
            or gives different outputs on ``example_inputs`` (the message names the output and
            the layers that were shrunk).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with torch.no_grad():  # structurally prune hidden neurons 0-2
        ...     model[0].weight[:3] = 0.0
        ...     model[0].bias[:3] = 0.0
        >>> small = compact(model, torch.randn(5, 4))
        >>> small[0].out_features, small[2].in_features, model[0].out_features
        (5, 5, 8)
    """
    import_torch_pruning()
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    inputs = _as_input_tuple(example_inputs)
    if rtol is not None:
        _check_tolerance("rtol", rtol)
    if atol is not None:
        _check_tolerance("atol", atol)
    ignored_names = _ignored_layer_names(model, ignored_layers)

    with torch.inference_mode(False):
        inputs = tuple(x.clone() for x in inputs)
        work = copy.deepcopy(model)
        if getattr(work, "_metric_attributes", None) is not None:
            # A LightningModule caches which attribute holds each torchmetrics object, by object id;
            # the copy's metrics are new objects, so the cache must be rebuilt for `self.log`.
            work.__dict__["_metric_attributes"] = None
        training = {name: m.training for name, m in work.named_modules()}
        grad_flags = {name: p.requires_grad for name, p in work.named_parameters()}

        work.eval()
        with torch.no_grad():
            reference, input_nonzero = _reference_pass(work, inputs)
        _remove_module_hooks(work)

        compactor = _Compactor(work, inputs, input_nonzero, ignored_names)
        compactor.analyse()
        compactor.emit_warnings()
        compactor.prune()

        for name, p in work.named_parameters():
            p.requires_grad_(grad_flags.get(name, True))
        work.eval()
        try:
            _verify(work, inputs, reference, rtol=rtol, atol=atol, removed=compactor.removed_summary())
        except CompactionError as err:
            raise CompactionError(str(err), layers=compactor.removed_layers()) from err.__cause__
        for name, m in work.named_modules():
            m.training = training.get(name, m.training)
    return work


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _as_input_tuple(example_inputs: object) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        inputs: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, (tuple, list)) and example_inputs:
        inputs = tuple(example_inputs)
    else:
        raise TypeError(
            "`example_inputs` must be a tensor or a non-empty tuple of tensors (the model's "
            f"positional arguments), got {_describe(example_inputs)}."
        )
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(
                f"`example_inputs[{i}]` must be a tensor, got {type(x).__name__}; "
                "compaction supports tensor arguments only."
            )
        if x.numel() == 0:
            raise ValueError(
                f"`example_inputs[{i}]` is empty (shape {tuple(x.shape)}); it must hold at least "
                "one example so the compacted model can be checked."
            )
    return inputs


def _check_tolerance(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float >= 0, got {type(value).__name__}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}.")


def _ignored_layer_names(model: nn.Module, ignored_layers: object) -> set[str]:
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, nn.Module) or not isinstance(ignored_layers, Sequence):
        raise TypeError(
            "`ignored_layers` must be a sequence of submodules of `model` (or None), got "
            f"{type(ignored_layers).__name__}."
        )
    names_by_id: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names_by_id.setdefault(id(m), name)
    names: set[str] = set()
    for i, layer in enumerate(ignored_layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"`ignored_layers[{i}]` must be a torch.nn.Module, got {type(layer).__name__}.")
        if id(layer) not in names_by_id:
            raise ValueError(
                f"`ignored_layers[{i}]` ({type(layer).__name__}) is not a submodule of `model`; "
                "pass the layer objects of the model being compacted."
            )
        # Ignoring a block ignores every layer inside it.
        for sub in layer.modules():
            names.add(names_by_id[id(sub)])
    return names


def _describe(obj: object) -> str:
    if isinstance(obj, (tuple, list)) and not obj:
        return f"an empty {type(obj).__name__}"
    return type(obj).__name__


# --------------------------------------------------------------------------------------------
# Reference pass, hooks, output comparison
# --------------------------------------------------------------------------------------------


def _call(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    return model(*inputs)


def _is_layer(module: object) -> TypeGuard[nn.Module]:
    """A Linear, a convolution, or transformers' ``Conv1D`` (a Linear whose weight is stored ``[in, out]``)."""
    return isinstance(module, (nn.Linear, _ConvNd)) or is_conv1d_transposed(module)


def _channel_dim(module: nn.Module, x: Tensor) -> int:
    if isinstance(module, _ConvNd):
        return x.dim() - len(module.kernel_size) - 1
    return x.dim() - 1


def _reference_pass(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[list[Tensor], dict[int, Tensor]]:
    """Run ``model`` once: its outputs, and which input channels of each Linear / Conv are non-zero."""
    nonzero: dict[int, Tensor] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
            return
        x = args[0]
        dim = _channel_dim(module, x)
        if dim < 0:
            return
        seen = (x != 0).movedim(dim, 0).reshape(x.shape[dim], -1).any(dim=1).cpu()
        previous = nonzero.get(id(module))
        nonzero[id(module)] = seen if previous is None or previous.shape != seen.shape else (previous | seen)

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if _is_layer(m)]
    try:
        output = _call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [t.detach().clone() for t in tensors_in(output)], nonzero


def _remove_module_hooks(model: nn.Module) -> None:
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks",
            "_forward_pre_hooks_with_kwargs",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            hooks = getattr(m, attr, None)
            if isinstance(hooks, dict):
                hooks.clear()


# Default (rtol, atol) of the output check, by output dtype; float32 for any other dtype.
_TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.complex128: (1e-7, 1e-7),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}


def _verify(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    reference: list[Tensor],
    *,
    rtol: float | None,
    atol: float | None,
    removed: str,
) -> None:
    hint = (
        f"Removed units: {removed}. Pass the layers that produce the offending units in `ignored_layers` to keep them."
    )
    try:
        with torch.no_grad():
            outputs = [t.detach() for t in tensors_in(_call(model, inputs))]
    except Exception as err:
        raise CompactionError(
            f"The compacted model fails on `example_inputs` ({type(err).__name__}: {err}); "
            f"Torch-Pruning mis-traced a coupling between layers. {hint}"
        ) from err
    if len(outputs) != len(reference):
        raise CompactionError(
            f"The compacted model returns {len(outputs)} tensors where the input model returns {len(reference)}. {hint}"
        )
    for i, (got, want) in enumerate(zip(outputs, reference, strict=True)):
        if got.shape != want.shape:
            raise CompactionError(
                f"Output tensor {i} of the compacted model has shape {tuple(got.shape)}, the input "
                f"model's has {tuple(want.shape)}. {hint}"
            )
        if not (want.is_floating_point() or want.is_complex()):
            if not torch.equal(got, want):
                raise CompactionError(
                    f"Output tensor {i} ({want.dtype}) of the compacted model differs from the input "
                    f"model's on `example_inputs`. {hint}"
                )
            continue
        default_rtol, default_atol = _TOLERANCES.get(want.dtype, (1e-5, 1e-5))
        r = default_rtol if rtol is None else rtol
        a = default_atol if atol is None else atol
        if not torch.allclose(got, want, rtol=r, atol=a, equal_nan=True):
            diff = (got - want).abs().reshape(-1).double().nan_to_num(nan=math.inf)
            worst = int(diff.argmax())
            index: list[int] = []
            for size in reversed(want.shape):
                index.insert(0, worst % size)
                worst //= size
            raise CompactionError(
                f"Output tensor {i} of the compacted model differs from the input model's on "
                f"`example_inputs` beyond rtol={r}, atol={a}: max abs difference "
                f"{float(diff.max()):.3g} at index {tuple(index)} ({got[tuple(index)].item():.6g} vs "
                f"{want[tuple(index)].item():.6g}). An operation between a removed unit and its "
                f"consumer does not map zero to zero, or mixes channels. {hint}"
            )


# --------------------------------------------------------------------------------------------
# Opaque layers: dependency barriers for Torch-Pruning
# --------------------------------------------------------------------------------------------


def _has_state(module: nn.Module, *, recurse: bool) -> bool:
    return (
        next(module.parameters(recurse=recurse), None) is not None
        or next(module.buffers(recurse=recurse), None) is not None
    )


def _is_opaque(module: nn.Module) -> bool:
    """Whether ``module`` must be treated as one unprunable block."""
    if isinstance(module, _SUPPORTED) or is_conv1d_transposed(module):
        return False
    if isinstance(module, _CHANNEL_MIXING):
        return True
    if "attention" in type(module).__name__.lower():
        return True  # heads of a fixed size; rotary embeddings inside send Torch-Pruning's tracing astray
    if isinstance(module, _CONTAINERS):
        return False
    if _has_state(module, recurse=False) and next(module.children(), None) is None:
        return True  # a leaf layer with its own weights: LSTM, GRU, Embedding, LayerNorm, custom
    # Built-in composite layers (MultiheadAttention, Transformer*Layer) may run fused kernels.
    return type(module).__module__.startswith("torch.nn.") and _has_state(module, recurse=True)


def _barrier_reason(module: nn.Module) -> str | None:
    """Why a layer of a supported type must still be left as it is, if it must."""
    if parametrize.is_parametrized(module):
        return "parametrized layer"
    if (
        isinstance(module, _ConvNd)
        and module.groups > 1
        and not module.groups == module.in_channels == module.out_channels
    ):
        return f"grouped convolution, groups={module.groups}"
    return None


def _find_opaque(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost opaque submodules of ``model`` (the root itself is never opaque)."""
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            full = f"{prefix}.{name}" if prefix else name
            if _is_opaque(child) and type(child) is not type(model):
                found.append((full, child))
            else:
                visit(child, full)

    visit(model, "")
    return found


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


@dataclass
class _Decision:
    root: nn.Module
    name: str
    units: int
    remove: list[int] = field(default_factory=list)
    kept_dead: int = 0
    reasons: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)


class _Compactor:
    """Reads the model's plans (from :mod:`~lightning_autoprune.structured.tracing`), decides, removes units."""

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple[Tensor, ...],
        input_nonzero: dict[int, Tensor],
        ignored_names: set[str],
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.input_nonzero = input_nonzero
        self.names: dict[int, str] = {}
        for name, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), name)
        self.ignored = {id(model.get_submodule(name)) for name in ignored_names}
        self.opaque = _find_opaque(model)
        self.attention = attention_layers(model)
        self.barriers: dict[int, str] = {}
        for m in model.modules():
            reason = _barrier_reason(m)
            if reason is not None:
                self.barriers[id(m)] = reason
        self.decisions: list[_Decision] = []
        self.trace_failures: list[str] = []
        self._zero_cache: dict[tuple[int, str], Tensor] = {}

    # -- tracing ------------------------------------------------------------------------------

    def _trace(self) -> Trace:
        try:
            return trace(self.model, self.inputs, forward_fn=_call, frozen=[m for _, m in self.opaque])
        except Exception as err:
            raise CompactionError(
                f"Torch-Pruning could not trace the model on `example_inputs` "
                f"({type(err).__name__}: {err}), so its coupled layers are unknown and it cannot "
                "be compacted automatically."
            ) from err

    # -- per-unit checks ------------------------------------------------------------------------

    def _dead_producer(self, m: Any) -> Tensor:
        """Per output unit of a Linear / Conv / Conv1D: weight slice and bias entry exactly zero."""
        key = (id(m), "producer")
        if key not in self._zero_cache:
            w = m.weight.detach()
            if (isinstance(m, _ConvNd) and m.transposed and m.groups == 1) or is_conv1d_transposed(m):
                w = w.transpose(0, 1)
            dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
            if m.bias is not None:
                dead &= m.bias.detach() == 0
            self._zero_cache[key] = dead.cpu()
        return self._zero_cache[key]

    def _dead_depthwise(self, m: _ConvNd) -> Tensor:
        """Per channel of a depthwise conv: zero output, given zero weights or a zero input."""
        key = (id(m), "depthwise")
        if key not in self._zero_cache:
            w = m.weight.detach()
            dead = (w.reshape(w.shape[0], -1) == 0).all(dim=1).cpu()
            seen = self.input_nonzero.get(id(m))
            if seen is not None and seen.shape == dead.shape:
                dead |= ~seen
            if m.bias is not None:
                dead &= (m.bias.detach() == 0).cpu()
            self._zero_cache[key] = dead
        return self._zero_cache[key]

    def _dead_norm(self, m: _BatchNorm | _InstanceNorm) -> Tensor:
        """Per channel of a BatchNorm / InstanceNorm: maps an all-zero channel to zero."""
        key = (id(m), "norm")
        if key not in self._zero_cache:
            if m.track_running_stats and m.running_mean is not None:
                normalised_zero = (m.running_mean.detach() == 0).cpu()
            else:  # batch / instance statistics of an all-zero channel: mean 0
                normalised_zero = torch.ones(m.num_features, dtype=torch.bool)
            if m.affine:
                dead = (m.bias.detach() == 0).cpu() & ((m.weight.detach() == 0).cpu() | normalised_zero)
            else:
                dead = normalised_zero
            self._zero_cache[key] = dead
        return self._zero_cache[key]

    # -- groups ---------------------------------------------------------------------------------

    def _plans(self, traced: Trace) -> Iterator[Plan]:
        """Plans of every Linear / Conv root, skipping roots Torch-Pruning fails on and groups with an ignored layer."""
        roots = [
            m
            for m in traced.modules
            if _is_layer(m)
            and id(m) not in self.ignored
            and id(m) not in self.attention
            and self.names.get(id(m)) is not None
        ]

        def failed(root: nn.Module, err: Exception) -> None:
            self.trace_failures.append(f"'{self.names[id(root)]}' ({type(err).__name__}: {err})")

        for plan in traced.plans(roots, claims=_out_modules, on_error=failed):
            if not any(id(m) in self.ignored for m in _out_modules(plan)):
                yield plan

    def analyse(self) -> None:
        traced = self._trace()
        self.traced = traced
        self.present_opaque = [
            (self.names.get(id(m), str(m)), m)
            for m in traced.modules
            if isinstance(m, nn.Module) and traced.kind(m) == "CUSTOMIZED" and not _is_layer(m)
        ]
        self.present_barriers = [
            (self.names[id(m)], self.barriers[id(m)])
            for m in traced.modules
            if isinstance(m, nn.Module) and id(m) in self.barriers and id(m) in self.names
        ]
        for plan in self._plans(traced):
            self.decisions.append(self._decide(plan))
        traced_ids = {id(m) for m in traced.modules}
        self.attention_dead = [
            f"'{self.names[id(m)]}': {int(self._dead_producer(m).sum())} dead unit(s)"
            for m in self.model.modules()
            if _is_layer(m) and id(m) in self.attention and id(m) in traced_ids and bool(self._dead_producer(m).any())
        ]

    def _decide(self, plan: Plan) -> _Decision:
        """Which units of one coupled group are dead, and which of those can be removed."""
        units = plan.units
        confirmed: set[int] = set()  # root units some layer of the group proves to output zero
        alive: set[int] = set()  # root units some layer of the group may make non-zero
        blocked: dict[int, str] = {}  # root units that must stay whatever their weights, and why
        producers: list[str] = []
        for link in plan.links:
            m, idxs, roots = link.module, list(link.index), link.roots
            if roots is None:
                blocked.update(dict.fromkeys(range(units), "untraceable index mapping"))
                continue
            is_out = link.out
            name = "?" if link.name is None else link.name

            # 1. Does this layer output zero for the unit? (None: it does not decide.)
            dead: Tensor | None = None
            if isinstance(m, _ConvNd) and m.groups > 1 and id(m) not in self.barriers:
                dead = self._dead_depthwise(m)
            elif _is_layer(m) and is_out:
                dead = self._dead_producer(m)
            elif isinstance(m, (_BatchNorm, _InstanceNorm)):
                dead = self._dead_norm(m)
            if _is_layer(m) and is_out and name not in producers:
                producers.append(name)
            if dead is not None:
                for idx, root_idx in zip(idxs, roots, strict=True):
                    if idx < dead.numel() and bool(dead[idx]):
                        confirmed.add(root_idx)
                    else:
                        alive.add(root_idx)

            # 2. Must the unit stay whatever the weights say?
            block = self._block(link, name, roots, blocked)
            if block is not None:
                for root_idx in roots:
                    blocked.setdefault(root_idx, block)

        dead_units = sorted(confirmed - alive)
        removable = [u for u in dead_units if u not in blocked]
        if removable and len(removable) == units:
            removable = removable[1:]  # a layer keeps at least one unit
        kept = [u for u in dead_units if blocked.get(u, "output") != "output"]
        return _Decision(
            root=plan.root,
            name="+".join(f"'{n}'" for n in producers) or f"'{plan.name}'",
            units=units,
            remove=removable,
            kept_dead=len(kept),
            reasons=sorted({blocked[u] for u in kept}),
            producers=producers or [plan.name],
        )

    def _block(self, link: Link, name: str, roots: tuple[int, ...], blocked: dict[int, str]) -> str | None:
        """Why every unit of ``link`` must stay whatever its weights say; per-unit reasons go into ``blocked``."""
        m, kind = link.module, link.kind
        if kind == "OUTPUT" or link.at_output:
            return "output"
        if kind == "PARAMETER":
            return f"coupled to parameter '{link.param}', used outside a supported layer"
        if kind == "CUSTOMIZED" and not _is_layer(m):
            return f"coupled to '{name}' ({type(m).__name__})"
        if kind in ("SPLIT", "SLICE", "UNBIND", "EXPAND"):
            return "they pass through a tensor split/slice/unbind/expand that Torch-Pruning cannot re-index safely"
        if kind in ("ELEMENTWISE", "RESHAPE", "CONCAT"):
            return None
        if id(m) in self.barriers:
            return f"coupled to '{name}' ({self.barriers[id(m)]})"
        if _is_layer(m) and link.out and id(m) in self.attention:
            return f"'{name}' is an attention projection, whose channels are split into heads of a fixed size"
        if _is_layer(m) and not link.out:
            # A consumer: the unit must arrive as an exact zero on the example inputs.
            seen = self.input_nonzero.get(id(m))
            for idx, root_idx in zip(link.index, roots, strict=True):
                if seen is None or idx >= seen.numel() or bool(seen[idx]):
                    blocked.setdefault(
                        root_idx,
                        f"they reach '{name}' as non-zero values (an operation maps zero "
                        "to non-zero, e.g. sigmoid or an added constant or input)",
                    )
            return None
        if not (_is_layer(m) or isinstance(m, (_BatchNorm, _InstanceNorm, nn.PReLU))):
            return f"coupled to unsupported layer '{name}' ({type(m).__name__})"
        return None

    # -- reporting and pruning ------------------------------------------------------------------

    def emit_warnings(self) -> None:
        left = [f"'{name}' ({type(m).__name__})" for name, m in self.present_opaque]
        left += [f"'{name}' ({reason})" for name, reason in self.present_barriers]
        if left:
            warnings.warn(
                "compact: Torch-Pruning cannot remove units from these layers exactly, so they "
                f"and the units coupled to them are left unpruned: {', '.join(left)}.",
                UserWarning,
                stacklevel=3,
            )
        kept = [f"{d.name}: {d.kept_dead} dead unit(s), {'; '.join(d.reasons)}" for d in self.decisions if d.kept_dead]
        kept += [f"{failure}: coupling could not be traced" for failure in self.trace_failures]
        if self.attention_dead:
            kept.append(
                f"{', '.join(self.attention_dead)}: attention projections, whose channels are split into heads "
                "of a fixed size, are kept whole"
            )
        if kept:
            warnings.warn(
                "compact: kept dead units that cannot be removed exactly: " + " | ".join(kept),
                UserWarning,
                stacklevel=3,
            )

    def prune(self) -> None:
        for decision in self.decisions:
            if not decision.remove:
                continue
            try:
                if not self.traced.prune(decision.root, decision.remove):
                    decision.remove = []
                    continue
            except Exception as err:
                raise CompactionError(
                    f"Torch-Pruning failed to remove {len(decision.remove)} unit(s) of "
                    f"{decision.name} ({type(err).__name__}: {err}); pass that layer in "
                    "`ignored_layers` to keep its units.",
                    layers=decision.producers,
                ) from err

    def removed_layers(self) -> list[str]:
        """Names of the layers whose units were removed, in the order of the groups."""
        return [name for d in self.decisions if d.remove for name in d.producers]

    def removed_summary(self) -> str:
        parts = [f"{d.name} {len(d.remove)} of {d.units}" for d in self.decisions if d.remove]
        return ", ".join(parts) if parts else "none"


def _out_modules(plan: Plan) -> list[nn.Module]:
    """The modules whose outputs ``plan`` prunes: no later root may start a group of its own from them."""
    return [link.module for link in plan.links if isinstance(link.module, nn.Module) and link.out]
