"""The one reader of Torch-Pruning's dependency graph.

Unit discovery (:func:`~lightning_autoprune.structured.find_unit_groups`) and compaction
(:func:`~lightning_autoprune.structured.compact`) both learn which layers are coupled from here:
:func:`trace` runs the model once under `Torch-Pruning <https://github.com/VainF/Torch-Pruning>`_'s
``DependencyGraph`` and returns a :class:`Trace`; :meth:`Trace.plans` then gives, per root layer,
a :class:`Plan`: every node coupled to the root's output units, as :class:`Link` records that say
which positions of the node carry which root unit. What a consumer makes of a plan (slices to
mask, units to remove) is its own business; this module is the only one that touches the graph.

Layers passed as ``frozen`` are traced as opaque blocks: the coupling stops at them, and their
internals (gates, splits of fused weights) are hidden from the graph. transformers' ``Conv1D``
(GPT-2's projections: a linear map whose weight is stored ``[in, out]``) is traced as one layer
too, with a pruner of its own (:class:`_Conv1DPruner`), so its units are coupled like a
``Linear``'s; its nodes' kind is ``"CUSTOMIZED"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_autoprune.core.targets import is_conv1d_transposed

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["Link", "Plan", "Trace", "attention_layers", "import_torch_pruning", "tensors_in", "trace"]

_INSTALL_HINT = (
    "lightning_autoprune.structured needs Torch-Pruning to trace layer coupling; "
    "install it with `pip install lightning_autoprune[structured]`."
)

ForwardFn = Callable[[nn.Module, tuple[Any, ...]], Any]


@dataclass(frozen=True)
class Link:
    """One node of a :class:`Plan`: which of its positions carry which units of the plan's root.

    Attributes:
        module: the traced object: a submodule, or Torch-Pruning's stand-in for an operation
            (addition, concatenation, reshape, ...) or for a parameter used outside any layer.
        name: the module's qualified name in the model (its first, if it is shared); ``None`` for
            anything that is not a submodule.
        kind: Torch-Pruning's node type name (``"LINEAR"``, ``"CONV"``, ``"BN"``, ``"ELEMENTWISE"``,
            ``"CONCAT"``, ``"RESHAPE"``, ``"CUSTOMIZED"`` for frozen layers, ``"OUTPUT"``, ...).
        out: whether the link prunes the node's outputs (``True``) or its inputs (``False``).
        index: positions along that side of the node.
        roots: the root unit each position carries; ``None`` when Torch-Pruning cannot map them.
        at_output: the link prunes the outputs of a node whose result the model returns.
        param: for a ``"PARAMETER"`` node, the parameter's name (``"?"`` if unknown); else ``None``.
    """

    module: object
    name: str | None
    kind: str
    out: bool
    index: tuple[int, ...]
    roots: tuple[int, ...] | None
    at_output: bool
    param: str | None = None


@dataclass(frozen=True)
class Plan:
    """Everything coupled to the output units of one root layer, in Torch-Pruning's order.

    Attributes:
        root: the layer whose output units the plan follows.
        name: its qualified name.
        units: its number of output units.
        links: one record per dependency of the group (a module may appear more than once, e.g.
            on both sides of an addition).
    """

    root: nn.Module
    name: str
    units: int
    links: tuple[Link, ...]


def import_torch_pruning() -> ModuleType:
    """The ``torch_pruning`` module, or an :class:`ImportError` that says how to install it.

    Example:
        >>> import_torch_pruning().__name__
        'torch_pruning'
    """
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    module: ModuleType = torch_pruning
    return module


class Trace:
    """A model's dependency graph, read through plans; built by :func:`trace`.

    Attributes:
        names: qualified name of every submodule, by ``id`` (the first name of a shared one).
    """

    def __init__(self, graph: Any, names: dict[int, str], output_fns: set[int]) -> None:
        self._graph = graph
        self.names = names
        self._output_nodes = {id(node) for node in graph.module2node.values() if id(node.grad_fn) in output_fns}

    @property
    def modules(self) -> list[object]:
        """Every traced object (submodules and operations), in Torch-Pruning's order."""
        return list(self._graph.module2node)

    def kind(self, module: object) -> str:
        """Torch-Pruning's node type name of a traced object, e.g. ``"LINEAR"`` or ``"CUSTOMIZED"``."""
        return str(self._graph.module2node[module].type.name)

    def plan(self, root: nn.Module) -> Plan:
        """The plan of ``root``'s output units; Torch-Pruning's errors propagate.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            >>> p = trace(net, (torch.zeros(1, 4),)).plan(net[0])
            >>> p.name, p.units, [(link.name, link.kind, link.out, link.index) for link in p.links if link.name]
            ('0', 3, [('0', 'LINEAR', True, (0, 1, 2)), ('2', 'LINEAR', False, (0, 1, 2))])
            >>> sorted({link.kind for link in p.links if link.name is None})  # the ReLU
            ['ELEMENTWISE']
        """
        graph = self._graph
        pruner = graph.get_pruner_of_module(root)
        units = pruner.get_out_channels(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(units)))
        links: list[Link] = []
        for item in group:
            dep, node = item.dep, item.dep.target
            module = node.module
            out = bool(graph.is_out_channel_pruning_fn(dep.handler))
            index = tuple(item.idxs)
            roots = list(item.root_idxs or [])
            kind = str(node.type.name)
            links.append(
                Link(
                    module=module,
                    name=self.names.get(id(module)) if isinstance(module, nn.Module) else None,
                    kind=kind,
                    out=out,
                    index=index,
                    roots=None if len(roots) != len(index) or any(r is None for r in roots) else tuple(roots),
                    at_output=out and id(node) in self._output_nodes,
                    param=getattr(graph, "_param_to_name", {}).get(module, "?") if kind == "PARAMETER" else None,
                )
            )
        return Plan(root=root, name=self.names[id(root)], units=int(units), links=tuple(links))

    def plans(
        self,
        roots: Iterable[nn.Module],
        *,
        claims: Callable[[Plan], Iterable[object]],
        on_error: Callable[[nn.Module, Exception], None] | None = None,
    ) -> Iterator[Plan]:
        """The plans of ``roots`` in their order, one per coupled group.

        A root that is not in the graph, or that an earlier plan claimed, is skipped: its units
        were already covered. What a plan claims is the consumer's choice (``claims``), so each
        consumer keeps its own rule for which coupled layers start no group of their own.

        Args:
            roots: candidate root layers, in the order the plans should come.
            claims: the objects of a plan that no later root may start a plan from.
            on_error: called with the root and the error when Torch-Pruning fails on a root,
                which is then claimed and skipped; ``None`` lets the error propagate.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            >>> t = trace(net, (torch.zeros(1, 4),))
            >>> every_producer = lambda p: [link.module for link in p.links if link.out]
            >>> [p.name for p in t.plans([net[0], net[2], net[0]], claims=every_producer)]
            ['0', '2']
        """
        claimed: set[int] = set()
        for root in roots:
            if id(root) in claimed or root not in self._graph.module2node:
                continue
            try:
                plan = self.plan(root)
            except Exception as err:  # Torch-Pruning's heuristics can fail anywhere
                if on_error is None:
                    raise
                on_error(root, err)
                claimed.add(id(root))
                continue
            claimed.update(id(m) for m in claims(plan))
            yield plan

    def prune(self, root: nn.Module, units: Sequence[int]) -> bool:
        """Physically remove ``units`` of ``root`` and every slice coupled to them, in place.

        Returns ``False`` (and changes nothing) when Torch-Pruning rejects the group.

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
            >>> trace(net, (torch.zeros(1, 4),)).prune(net[0], [1])
            True
            >>> net[0].out_features, net[2].in_features
            (2, 2)
        """
        graph = self._graph
        pruner = graph.get_pruner_of_module(root)
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(units))
        if not graph.check_pruning_group(group):
            return False
        group.prune()
        return True


def trace(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    forward_fn: ForwardFn | None = None,
    frozen: Sequence[nn.Module] = (),
) -> Trace:
    """Build Torch-Pruning's dependency graph of ``model`` from one forward call.

    The model runs once on ``example_inputs`` in eval mode, with gradients enabled and every
    parameter requiring grad (the trace follows autograd, so frozen layers must be seen), and with
    the key/value caches of transformers models off (:func:`_caches_off`); its per-module
    ``training`` and ``requires_grad`` flags and the caches' settings are restored afterwards.

    Args:
        model: the model to trace.
        example_inputs: positional arguments of one forward call.
        forward_fn: how to call the model; ``None`` calls ``model(*example_inputs)``.
        frozen: submodules to trace as opaque blocks that couple nothing through them.

    Returns:
        The :class:`Trace`.

    Raises:
        ImportError: if Torch-Pruning is not installed.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
        >>> t = trace(net, (torch.zeros(1, 4),), frozen=[net[1]])
        >>> t.kind(net[0]), t.kind(net[1])
        ('LINEAR', 'CUSTOMIZED')
    """
    tp = import_torch_pruning()
    names: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name)
    call = forward_fn or (lambda m, args: m(*args))
    captured: dict[str, Any] = {}

    def traced(m: nn.Module, args: tuple[Any, ...]) -> Any:
        captured["output"] = call(m, args)
        return captured["output"]

    frozen_pruner = _FrozenPruner()
    frozen_ids = {id(m) for m in frozen}
    conv1d = [m for m in model.modules() if is_conv1d_transposed(m) and id(m) not in frozen_ids]
    pruners: dict[type, Any] = {type(m): _Conv1DPruner() for m in conv1d}
    pruners |= {type(m): frozen_pruner for m in frozen}
    training = {name: m.training for name, m in model.named_modules()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    handles = [m.register_forward_hook(_stitch_hook, with_kwargs=True) for m in (*frozen, *conv1d)]
    caches = _caches_off(model)
    model.eval()
    try:
        for p, _ in grad_flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                forward_fn=traced,
                customized_pruners=pruners or None,
                verbose=False,
            )
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for name, m in model.named_modules():
            m.training = training[name]
        for config in caches:
            config.use_cache = True
    return Trace(graph, names, _output_grad_fns(captured.get("output")))


def _caches_off(model: nn.Module) -> list[Any]:
    """Turn off ``use_cache`` in every config of ``model``'s submodules that has it on; return those configs.

    A transformers decoder (GPT-2, ...) with its cache on concatenates each layer's keys and values
    onto an empty cache in every forward call. Torch-Pruning cannot size that concatenation's
    inputs and fails (``update_concat_index_mapping``: ``int + NoneType``), and a cache only
    serves incremental decoding: without it the forward call computes the same outputs.

    Example:
        >>> from types import SimpleNamespace
        >>> net = nn.Linear(2, 2)
        >>> net.config = SimpleNamespace(use_cache=True)
        >>> configs = _caches_off(net)
        >>> net.config.use_cache, len(configs)
        (False, 1)
    """
    configs: dict[int, Any] = {}
    for m in model.modules():
        config = getattr(m, "config", None)
        if getattr(config, "use_cache", None) is True:
            configs[id(config)] = config
    for config in configs.values():
        config.use_cache = False
    return list(configs.values())


def attention_layers(model: nn.Module) -> dict[int, str]:
    """The submodules inside attention blocks, whose channels are split into heads: ``id`` -> the block's name.

    An attention block is a module whose class name contains ``Attention`` (transformers'
    ``BertAttention``, ``ViTAttention``, ``LlamaAttention``, torch's ``MultiheadAttention``, ...);
    a block inside another one belongs to the outer one, and ``model`` itself is never one. Their
    projections reshape channels into heads of a fixed size, which Torch-Pruning traces as plain
    channels (and, through rotary embeddings, may explore without end): single channels of a head
    can be masked but not removed exactly, so unit discovery and compaction keep them whole and never trace from them.

    Example:
        >>> class SelfAttention(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.query = nn.Linear(4, 4)
        >>> net = nn.Sequential(SelfAttention(), nn.Linear(4, 2))
        >>> found = attention_layers(net)
        >>> found.get(id(net[0].query)), id(net[1]) in found
        ('0', False)
    """
    found: dict[int, str] = {}
    for name, module in model.named_modules():
        if module is model:  # the model itself is no block, whatever its name
            continue
        if id(module) not in found and "attention" in type(module).__name__.lower():
            for m in module.modules():
                found.setdefault(id(m), name)
    return found


def _output_grad_fns(output: object) -> set[int]:
    found: set[int] = set()
    stack = [output]
    while stack:
        obj = stack.pop()
        if isinstance(obj, Tensor):
            if obj.grad_fn is not None:
                found.add(id(obj.grad_fn))
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, Mapping):
            stack.extend(obj.values())
    return found


def tensors_in(obj: object) -> list[Tensor]:
    """Tensors inside nested tuples / lists / dicts, in a deterministic order.

    Example:
        >>> [t.item() for t in tensors_in((torch.tensor(1), {"a": [torch.tensor(2)]}, "x"))]
        [1, 2]
    """
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    if isinstance(obj, dict):
        return [t for key in obj for t in tensors_in(obj[key])]
    return []


def _replace_tensors(obj: Any, new: Iterator[Tensor], pick: Iterator[bool]) -> Any:
    """Rebuild ``obj`` with each tensor for which ``pick`` yields True replaced by ``next(new)``."""
    if isinstance(obj, Tensor):
        return next(new) if next(pick) else obj
    if isinstance(obj, (tuple, list)):
        items = [_replace_tensors(item, new, pick) for item in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple, e.g. PackedSequence
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        return type(obj)((key, _replace_tensors(obj[key], new, pick)) for key in obj)
    return obj


class _Stitch(torch.autograd.Function):
    """Identity on a frozen layer's outputs whose autograd node links straight to its inputs.

    Torch-Pruning traces the autograd graph; a frozen layer's own internals (gates, splits of
    fused weights) would otherwise appear as channel-preserving element-wise operations.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> tuple[Tensor, ...]:
        n_out = int(args[0])
        ctx.n_args = len(args)
        return tuple(t.clone() for t in args[1 : 1 + n_out])

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[None, ...]:
        return (None,) * ctx.n_args


def _stitch_hook(
    module: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    output: Any,
) -> Any:
    outputs = tensors_in(output)
    pick = [t.is_floating_point() or t.is_complex() for t in outputs]
    if not any(pick):
        return None
    sources = [t for t in tensors_in((args, kwargs)) if t.requires_grad]
    # A leaf that needs grad keeps the outputs in the traced graph even when no input needs grad.
    anchor = torch.zeros((), requires_grad=True)
    stitched = _Stitch.apply(
        sum(pick), *(t.detach() for t, p in zip(outputs, pick, strict=True) if p), anchor, *sources
    )
    return _replace_tensors(output, iter(stitched), iter(pick))


class _Conv1DPruner:
    """Torch-Pruning pruner for transformers' ``Conv1D``: output units along the weight's dim 1, inputs along dim 0.

    Example:
        >>> class Conv1D(nn.Module):
        ...     def __init__(self, nx, nf):
        ...         super().__init__()
        ...         self.nf, self.weight, self.bias = nf, nn.Parameter(torch.ones(nx, nf)), nn.Parameter(torch.ones(nf))
        >>> layer = _Conv1DPruner().prune_out_channels(Conv1D(4, 3), [1])
        >>> tuple(layer.weight.shape), tuple(layer.bias.shape), layer.nf
        ((4, 2), (2,), 2)
        >>> tuple(_Conv1DPruner().prune_in_channels(layer, [0, 3]).weight.shape)
        (2, 2)
    """

    pruning_dim = 1

    def prune_out_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.weight.shape[1], idxs).to(layer.weight.device)
        layer.weight = nn.Parameter(layer.weight.data[:, keep], requires_grad=layer.weight.requires_grad)
        if getattr(layer, "bias", None) is not None:
            layer.bias = nn.Parameter(
                layer.bias.data[keep.to(layer.bias.device)], requires_grad=layer.bias.requires_grad
            )
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:
        keep = _kept(layer.weight.shape[0], idxs).to(layer.weight.device)
        layer.weight = nn.Parameter(layer.weight.data[keep], requires_grad=layer.weight.requires_grad)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: Any) -> int:
        return int(layer.weight.shape[1])

    def get_in_channels(self, layer: Any) -> int:
        return int(layer.weight.shape[0])

    def get_out_channel_groups(self, layer: Any) -> int:
        return 1

    def get_in_channel_groups(self, layer: Any) -> int:
        return 1


def _kept(size: int, idxs: Sequence[int]) -> Tensor:
    """The positions of ``range(size)`` not in ``idxs``, ascending."""
    gone = set(int(i) for i in idxs)
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


class _FrozenPruner:
    """Torch-Pruning pruner for frozen layers: never prunes, and stops coupling at the layer."""

    def __init__(self) -> None:
        self.pruning_dim = 1

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError(f"Internal error: tried to prune frozen layer {layer!r}.")

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise RuntimeError(f"Internal error: tried to prune frozen layer {layer!r}.")

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1
