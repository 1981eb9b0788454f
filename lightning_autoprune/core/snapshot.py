"""Copies of training state for rollback and resume: weights, optimizer states, masks and RNG states.

Everything here is tensors and primitives on CPU, so a snapshot can sit in a checkpoint that
loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn


def to_cpu(obj: Any) -> Any:
    """A CPU copy of the tensors in ``obj`` (nested dicts, lists, tuples); other values as they are.

    Example:
        >>> to_cpu({"a": [torch.ones(1)], "b": 2})
        {'a': [tensor([1.])], 'b': 2}
    """
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def detached(obj: Any) -> Any:
    """A detached copy of the tensors in ``obj`` (nested tuples, lists, dicts); other values as they are.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> detached((x, {"k": x}))[1]["k"].requires_grad
        False
    """
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(detached(v) for v in obj)
    if isinstance(obj, list):
        return [detached(v) for v in obj]
    if isinstance(obj, dict):
        return {k: detached(v) for k, v in obj.items()}
    return obj


def take_snapshot(
    epoch: int,
    module: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    masks: Mapping[str, Tensor],
    *,
    with_optimizers: bool = True,
) -> dict[str, Any]:
    """Weights, optimizer states and masks, copied to CPU memory (tensors and primitives only).

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> snap = take_snapshot(3, layer, [], {"weight": torch.ones(1, 2, dtype=torch.bool)})
        >>> snap["epoch"], sorted(snap["model"]), snap["optimizers"]
        (3, ['bias', 'weight'], [])
    """
    return {
        "epoch": epoch,
        "model": {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()},
        "optimizers": [to_cpu(copy.deepcopy(o.state_dict())) for o in optimizers] if with_optimizers else [],
        "masks": {n: m.detach().to("cpu", copy=True) for n, m in masks.items()},
    }


def restore_snapshot(
    snapshot: Mapping[str, Any], module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]
) -> dict[str, Tensor]:
    """Load a snapshot's weights and optimizer states back; return its masks for the caller to install.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> snap = take_snapshot(0, layer, [], {})
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> restore_snapshot(snap, layer, [])
        {}
        >>> bool(torch.equal(layer.weight, snap["model"]["weight"]))
        True
    """
    module.load_state_dict(snapshot["model"])
    for optimizer, state in zip(optimizers, snapshot["optimizers"], strict=True):
        optimizer.load_state_dict(state)
    return dict(snapshot["masks"])


def collect_rng_states() -> dict[str, Any]:
    """The global torch, numpy and Python RNG states (and CUDA's once it is initialised), as tensors and primitives.

    Example:
        >>> state = collect_rng_states()
        >>> a = torch.rand(1)
        >>> set_rng_states(state)
        >>> bool(torch.equal(a, torch.rand(1)))
        True
    """
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    py_version, py_state, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
