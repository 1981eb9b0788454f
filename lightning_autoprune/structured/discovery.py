"""Finding the unit groups of a model: which parameter slices carry each prunable unit.

Which slices belong together is read from Torch-Pruning's dependency graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from lightning_autoprune.structured.units import Slice, UnitGroup

__all__ = ["find_unit_groups"]


def _module_param(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _plain_layer(module: object) -> bool:
    """A Linear, or an ordinary (not transposed, not grouped) convolution: layouts this module handles."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, _ConvNd) and not module.transposed and module.groups == 1


def find_unit_groups(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    *,
    prunable: set[str],
    forward_fn: Callable[[nn.Module, tuple[Any, ...]], Any] | None = None,
) -> tuple[list[UnitGroup], list[str]]:
    """Trace ``model`` with Torch-Pruning and return its prunable unit groups.

    Args:
        model: the model to trace; it is run once on ``example_inputs`` (in eval mode, without
            changing any state) and left as it was.
        example_inputs: positional arguments of one forward call.
        prunable: weight names of the layers whose units may be pruned; a group is prunable only
            if the weight of every layer that produces it is in this set.
        forward_fn: how to call the model; ``None`` calls ``model(*example_inputs)``.

    Returns:
        The prunable groups, and a list of ``"'layer' (reason)"`` strings for selected layers
        whose units must stay (the model's output, an unsupported coupled layer, ...).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups, kept = find_unit_groups(net, (torch.zeros(1, 4),), prunable={"0.weight", "2.weight"})
        >>> [(g.name, g.units, [(s.param, s.dim, s.role) for s in g.slices]) for g in groups]
        [('0', 8, [('0.weight', 0, 'producer'), ('0.bias', 0, 'producer'), ('2.weight', 1, 'consumer')])]
        >>> kept
        ["'2' (produces the model's output)"]
    """
    import torch_pruning as tp

    names = {id(m): name for name, m in model.named_modules()}
    call = forward_fn or (lambda m, args: m(*args))
    captured: dict[str, Any] = {}

    def traced(m: nn.Module, args: tuple[Any, ...]) -> Any:
        captured["output"] = call(m, args)
        return captured["output"]

    training = {name: m.training for name, m in model.named_modules()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in grad_flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=traced, verbose=False
            )
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for name, m in model.named_modules():
            m.training = training[name]
    outputs = _output_grad_fns(captured.get("output"))
    optype = tp.ops.OPTYPE
    layers = [m for m in model.modules() if _plain_layer(m)]
    order = {id(m): i for i, m in enumerate(layers)}

    groups: list[UnitGroup] = []
    kept: list[str] = []
    visited: set[int] = set()
    for root in layers:
        if id(root) in visited or root not in graph.module2node:
            continue
        root_name = names[id(root)]
        pruner = graph.get_pruner_of_module(root)
        units = int(pruner.get_out_channels(root))
        group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(units)))
        slices: list[Slice] = []
        producers: list[nn.Module] = []
        block: str | None = None
        for item in group:
            dep, node = item.dep, item.dep.target
            m = node.module
            is_out = graph.is_out_channel_pruning_fn(dep.handler)
            roots = list(item.root_idxs or [])
            if len(roots) != len(item.idxs) or any(r is None for r in roots):
                block = block or "Torch-Pruning cannot map its channels"
                continue
            index = torch.tensor(list(item.idxs), dtype=torch.long)
            unit = torch.tensor(roots, dtype=torch.long)
            if node.type == optype.OUTPUT or (is_out and id(node.grad_fn) in outputs):
                block = block or "produces the model's output"
            elif _plain_layer(m):
                name = names.get(id(m), "?")
                if is_out:
                    producers.append(m)
                    if _module_param(name, "weight") not in prunable:
                        block = block or f"coupled to '{name}', which is not selected for pruning"
                    slices.append(Slice(_module_param(name, "weight"), 0, index, unit, "producer"))
                    if getattr(m, "bias", None) is not None:
                        slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "producer"))
                else:
                    slices.append(Slice(_module_param(name, "weight"), 1, index, unit, "consumer"))
            elif isinstance(m, _BatchNorm):
                name = names.get(id(m), "?")
                if not m.affine:
                    block = block or f"passes through '{name}', a BatchNorm without affine parameters"
                    continue
                slices.append(Slice(_module_param(name, "weight"), 0, index, unit, "norm"))
                slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "norm"))
            elif node.type in (optype.ELEMENTWISE, optype.RESHAPE, optype.CONCAT):
                continue
            else:
                label = names.get(id(m), type(m).__name__) if isinstance(m, nn.Module) else str(node.type.name)
                block = block or f"coupled to '{label}' ({type(m).__name__}), which structured pruning does not handle"
        visited.update(id(p) for p in producers)
        if block is not None:
            if any(_module_param(names[id(p)], "weight") in prunable for p in producers) or not producers:
                kept.append(f"'{root_name}' ({block})")
            continue
        first = min((order[id(p)] for p in producers), default=order[id(root)])
        groups.append(
            UnitGroup(
                name="+".join(dict.fromkeys(names[id(p)] for p in producers)),
                units=units,
                slices=tuple(_merge(slices)),
                depth=first / max(1, len(layers) - 1),
            )
        )
    return groups, kept


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


def _merge(slices: Sequence[Slice]) -> list[Slice]:
    """One slice per (param, dim, role): Torch-Pruning may list a layer twice (e.g. both sides of an add)."""
    merged: dict[tuple[str, int, str], Slice] = {}
    for s in slices:
        key = (s.param, s.dim, s.role)
        if key in merged:
            old = merged[key]
            pairs = torch.unique(torch.stack([torch.cat([old.index, s.index]), torch.cat([old.unit, s.unit])]), dim=1)
            merged[key] = Slice(s.param, s.dim, pairs[0], pairs[1], s.role)
        else:
            merged[key] = s
    return list(merged.values())
