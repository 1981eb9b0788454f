"""Unit discovery: which parameter slices carry each prunable unit of a model.

Which slices belong together is read from the plans of the one Torch-Pruning reader,
:mod:`~lightning_autoprune.structured.tracing`; this module decides what each coupled node means
for a unit (a producer's weight rows, a BatchNorm's ``gamma`` and ``beta``, a consumer's input
columns) and which units must stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_autoprune.core.targets import is_conv1d_transposed
from lightning_autoprune.core.targets import is_plain_layer as _plain_layer
from lightning_autoprune.structured.tracing import Plan, attention_layers, trace
from lightning_autoprune.structured.units import Slice, UnitGroup

__all__ = ["find_unit_groups", "unsupported_layers"]

#: Why units produced inside an attention block stay (see
#: :func:`~lightning_autoprune.structured.tracing.attention_layers`).
ATTENTION_REASON = (
    "attention projections, which structured pruning keeps: their channels are split into heads, "
    "which compact() cannot shrink exactly"
)


def _module_param(module_name: str, attr: str) -> str:
    return f"{module_name}.{attr}" if module_name else attr


def _unit_dims(module: object) -> tuple[int, int]:
    """The weight's dimensions of output and input units: ``(1, 0)`` for a ``Conv1D`` (``[in, out]``), else ``(0, 1)``.

    Example:
        >>> _unit_dims(nn.Linear(2, 3))
        (0, 1)
    """
    return (1, 0) if is_conv1d_transposed(module) else (0, 1)


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
        whose units must stay (the model's output, an unsupported coupled layer, attention
        projections, ...).

    Raises:
        ImportError: if Torch-Pruning is not installed.
        ValueError: if Torch-Pruning cannot trace the model; the message names the layers
            structured pruning does not handle (:func:`unsupported_layers`), a common cause.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> groups, kept = find_unit_groups(net, (torch.zeros(1, 4),), prunable={"0.weight", "2.weight"})
        >>> [(g.name, g.units, [(s.param, s.dim, s.role) for s in g.slices]) for g in groups]
        [('0', 8, [('0.weight', 0, 'producer'), ('0.bias', 0, 'producer'), ('2.weight', 1, 'consumer')])]
        >>> kept
        ["'2' (produces the model's output)"]
    """
    try:
        traced = trace(model, example_inputs, forward_fn=forward_fn)
    except ImportError:
        raise
    except Exception as err:  # Torch-Pruning's index mapping fails on layouts it does not know
        unsupported = unsupported_layers(model)
        raise ValueError(
            f"Torch-Pruning could not trace the model ({type(err).__name__}: {err}), so structured pruning "
            "cannot tell which layers are coupled."
            + (f" Layers structured pruning does not handle: {'; '.join(unsupported)}." if unsupported else "")
        ) from err
    names = traced.names
    attention = attention_layers(model)
    layers = [m for m in model.modules() if _plain_layer(m)]
    order = {id(m): i for i, m in enumerate(layers)}

    groups: list[UnitGroup] = []
    kept: list[str] = []
    covered: set[int] = set()
    for plan in traced.plans([m for m in layers if id(m) not in attention], claims=_producers):
        covered.update(id(p) for p in _producers(plan))
        slices: list[Slice] = []
        block: str | None = None
        for link in plan.links:
            m = link.module
            if link.roots is None:
                block = block or "Torch-Pruning cannot map its channels"
                continue
            index = torch.tensor(list(link.index), dtype=torch.long)
            unit = torch.tensor(list(link.roots), dtype=torch.long)
            if link.kind == "OUTPUT" or link.at_output:
                block = block or "produces the model's output"
            elif _plain_layer(m):
                name = "?" if link.name is None else link.name
                out_dim, in_dim = _unit_dims(m)
                if link.out:
                    if _module_param(name, "weight") not in prunable:
                        block = block or f"coupled to '{name}', which is not selected for pruning"
                    slices.append(Slice(_module_param(name, "weight"), out_dim, index, unit, "producer"))
                    if getattr(m, "bias", None) is not None:
                        slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "producer"))
                else:
                    slices.append(Slice(_module_param(name, "weight"), in_dim, index, unit, "consumer"))
            elif isinstance(m, _BatchNorm):
                name = "?" if link.name is None else link.name
                if not m.affine:
                    block = block or f"passes through '{name}', a BatchNorm without affine parameters"
                    continue
                slices.append(Slice(_module_param(name, "weight"), 0, index, unit, "norm"))
                slices.append(Slice(_module_param(name, "bias"), 0, index, unit, "norm"))
            elif link.kind in ("ELEMENTWISE", "RESHAPE", "CONCAT"):
                continue
            else:
                label = (
                    link.kind if not isinstance(m, nn.Module) else type(m).__name__ if link.name is None else link.name
                )
                block = block or f"coupled to '{label}' ({type(m).__name__}), which structured pruning does not handle"
        producers = _producers(plan)
        if block is None and any(id(p) in attention for p in producers):
            block = ATTENTION_REASON
        if block is not None:
            if any(_module_param(names[id(p)], "weight") in prunable for p in producers) or not producers:
                kept.append(f"'{plan.name}' ({block})")
            continue
        first = min((order[id(p)] for p in producers), default=order[id(plan.root)])
        groups.append(
            UnitGroup(
                name="+".join(dict.fromkeys(names[id(p)] for p in producers)),
                units=plan.units,
                slices=tuple(_merge(slices)),
                depth=first / max(1, len(layers) - 1),
            )
        )
    heads: dict[str, list[str]] = {}  # attention block -> its traced, selected projections no plan covered
    in_graph = {id(m) for m in traced.modules}
    for m in layers:
        if (
            id(m) in attention
            and id(m) in in_graph
            and id(m) not in covered
            and _module_param(names[id(m)], "weight") in prunable
        ):
            heads.setdefault(attention[id(m)], []).append(f"'{names[id(m)]}'")
    kept += [f"{', '.join(projections)} ({ATTENTION_REASON})" for projections in heads.values()]
    return groups, kept


def unsupported_layers(model: nn.Module) -> list[str]:
    """Leaf layers with a matrix ``weight`` that structured pruning cannot prune, grouped by type.

    Embeddings and normalisation layers are left out: they are never structured pruning's
    candidates. Linear layers, transformers' ``Conv1D`` and ordinary convolutions are handled.

    Example:
        >>> print(*unsupported_layers(nn.Sequential(nn.Bilinear(4, 4, 8), nn.Linear(8, 2), nn.Embedding(3, 4))))
        Bilinear: '0'
    """
    by_type: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        if (
            _plain_layer(m)
            or next(m.children(), None) is not None
            or not isinstance(weight, nn.Parameter)
            or weight.dim() < 2
            or isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        ):
            continue
        by_type.setdefault(type(m).__name__, []).append(name)
    out = []
    for kind, layers in by_type.items():
        more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
        out.append(f"{kind}: " + ", ".join(f"'{n}'" for n in layers[:3]) + more)
    return out


def _producers(plan: Plan) -> list[nn.Module]:
    """The layers of ``plan`` whose outputs are its units: Linear / plain conv outputs, mapped, not the model's."""
    return [
        link.module
        for link in plan.links
        if link.out
        and link.roots is not None
        and not (link.kind == "OUTPUT" or link.at_output)
        and isinstance(link.module, nn.Module)
        and _plain_layer(link.module)
    ]


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
