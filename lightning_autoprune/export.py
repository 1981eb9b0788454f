"""Sparse export: small checkpoint files for unstructured-pruned weights.

A tensor with enough exact zeros is stored as its non-zero values (row-major order) plus a bitmask
packed eight entries per byte (:func:`lightning_autoprune.core.masks.pack_mask`); other tensors are
stored as they are, so a float32 tensor at sparsity ``s`` takes about ``4 * (1 - s) + 1/8`` bytes per
entry instead of 4. Measured file sizes are in ``BENCHMARKS.md``.

The file is an ordinary :func:`torch.save` archive holding only tensors, strings, numbers, lists
and dicts, so it loads with ``torch.load(path, weights_only=True)``; :func:`load_sparse` turns it
back into a state dict with bit-identical tensors.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_autoprune.core.files import atomic_torch_save
from lightning_autoprune.core.masks import pack_mask, unpack_mask

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SparseExportStats", "load_sparse", "save_sparse"]

FORMAT_NAME = "lightning_autoprune.sparse_state_dict"
"""Value of the ``"format"`` key of every sparse export."""

FORMAT_VERSION = 1
"""Version written by :func:`save_sparse`; :func:`load_sparse` reads this version and older."""


@dataclass(frozen=True)
class SparseExportStats:
    """What :func:`save_sparse` wrote.

    Attributes:
        path: The file written.
        dense_bytes: Bytes of tensor data stored densely (``numel * element_size`` summed over the
            tensors; a tensor stored under several keys counts once).
        file_bytes: Size of the file written.
        sparse_keys: Keys stored as values plus bitmask.
        dense_keys: Keys stored as ordinary tensors (too few zeros, empty, or not a plain tensor).
    """

    path: str
    dense_bytes: int
    file_bytes: int
    sparse_keys: tuple[str, ...]
    dense_keys: tuple[str, ...]

    @property
    def ratio(self) -> float:
        """``file_bytes / dense_bytes``: below 1 when the export is smaller than the raw tensors."""
        return self.file_bytes / self.dense_bytes if self.dense_bytes else float("inf")


def save_sparse(
    state_dict_or_module: Mapping[str, Tensor] | nn.Module,
    path: str | os.PathLike[str],
    *,
    min_sparsity: float = 0.3,
) -> SparseExportStats:
    """Write a state dict with its sparse tensors compressed, atomically.

    Each tensor whose fraction of exact zeros is at least ``min_sparsity`` is stored as its
    non-zero values in row-major order, a packed bitmask of their positions, its shape and its
    dtype. ``-0.0`` counts as a value, not a zero, so loading gives bit-identical tensors. Other
    tensors are stored as they are. The file is written atomically
    (:func:`lightning_autoprune.core.files.atomic_torch_save`), so ``path`` never holds a half-written file.

    Args:
        state_dict_or_module: A state dict (a mapping of names to tensors) or a module, whose
            ``state_dict()`` is saved.
        path: The file to write; its directory must exist. An existing file is replaced.
        min_sparsity: Fraction of zeros, in ``[0, 1]``, from which a tensor is stored sparse.

    Returns:
        Sizes and the keys stored sparse and dense.

    Raises:
        TypeError: if ``state_dict_or_module`` is neither a module nor a mapping of string keys
            to tensors, or ``min_sparsity`` is not a number.
        ValueError: if ``min_sparsity`` is outside ``[0, 1]``.
        FileNotFoundError: if the directory of ``path`` does not exist.

    Example:
        >>> import os, tempfile
        >>> state = {"w": torch.tensor([[0.0, 1.5], [0.0, 0.0]]), "b": torch.tensor([1.0, 2.0])}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     stats = save_sparse(state, os.path.join(tmp, "model.pt"))
        ...     loaded = load_sparse(os.path.join(tmp, "model.pt"))
        >>> stats.sparse_keys, stats.dense_keys
        (('w',), ('b',))
        >>> torch.equal(loaded["w"], state["w"])
        True
    """
    state = _as_state_dict(state_dict_or_module)
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)):
        raise TypeError(f"`min_sparsity` must be a float in [0, 1], got {type(min_sparsity).__name__}.")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"`min_sparsity` must be a float in [0, 1], got {min_sparsity!r}.")
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"`path` {os.fspath(path)!r}: directory {directory!r} does not exist.")

    entries: dict[str, dict[str, Any]] = {}
    first_key: dict[tuple[Any, ...], str] = {}
    sparse_keys: list[str] = []
    dense_keys: list[str] = []
    dense_bytes = 0
    for key, tensor in state.items():
        identity = _identity(tensor)
        if identity is not None and identity in first_key:  # tied weights: store once
            entries[key] = {"kind": "alias", "of": first_key[identity]}
            continue
        if identity is not None:
            first_key[identity] = key
        dense_bytes += tensor.numel() * tensor.element_size()
        entry = _encode(tensor.detach(), min_sparsity)
        (sparse_keys if entry["kind"] == "sparse" else dense_keys).append(key)
        entries[key] = entry

    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tensors": entries,
    }
    metadata = getattr(state, "_metadata", None)
    if isinstance(metadata, Mapping):  # per-module versions, used by load_state_dict
        payload["metadata"] = {
            str(prefix): {str(k): v for k, v in local.items() if isinstance(v, (str, int, float, bool))}
            for prefix, local in metadata.items()
            if isinstance(local, Mapping)
        }
    atomic_torch_save(payload, target)
    return SparseExportStats(
        path=target,
        dense_bytes=dense_bytes,
        file_bytes=os.path.getsize(target),
        sparse_keys=tuple(sparse_keys),
        dense_keys=tuple(dense_keys),
    )


def load_sparse(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a file written by :func:`save_sparse` back into a state dict, on the CPU.

    The file is read with ``torch.load(weights_only=True)``: it cannot run code. Tensors come back
    bit-identical to the ones saved (same dtype, shape and bits, ``-0.0`` and NaN included);
    tensors saved under several keys come back as one shared tensor.

    Args:
        path: A file written by :func:`save_sparse`.

    Returns:
        An ordered state dict, ready for ``model.load_state_dict``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``path`` is not a sparse export of a supported version, or is corrupt; the
            message names the path and what was found instead.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = save_sparse({"w": torch.tensor([0.0, -0.0, 3.0])}, os.path.join(tmp, "w.pt"))
        ...     load_sparse(os.path.join(tmp, "w.pt"))["w"]
        tensor([0., -0., 3.])
    """
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise FileNotFoundError(f"`path` {shown!r} does not exist.")
    try:
        payload = torch.load(shown, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:
        raise ValueError(
            f"{shown!r} is not a lightning_autoprune sparse export: torch.load(weights_only=True) "
            f"cannot read it ({type(err).__name__}: {_first_line(err)})."
        ) from err
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT_NAME):
        raise ValueError(
            f"{shown!r} is not a lightning_autoprune sparse export (written by save_sparse): "
            f"found {_describe_payload(payload)}."
        )
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{shown!r}: invalid sparse export version {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{shown!r} is sparse export format version {version}; this version of "
            f"lightning_autoprune reads versions up to {FORMAT_VERSION}. Upgrade it to load."
        )
    entries = payload.get("tensors")
    if not isinstance(entries, dict):
        raise ValueError(f"{shown!r}: corrupt sparse export, 'tensors' is {type(entries).__name__}, not a dict.")

    state: OrderedDict[str, Tensor] = OrderedDict()
    aliases: dict[str, str] = {}
    for key, entry in entries.items():
        if isinstance(entry, dict) and entry.get("kind") == "alias":
            source = entry.get("of")
            if not isinstance(source, str):
                raise ValueError(f"{shown!r}: corrupt entry {key!r} (alias of {source!r}).")
            aliases[key] = source
            state[key] = torch.empty(0)  # placeholder keeps the key order
            continue
        try:
            state[key] = _decode(entry)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{shown!r}: corrupt entry {key!r} ({err}).") from err
    for key, source in aliases.items():
        if source not in state or source in aliases:
            raise ValueError(f"{shown!r}: entry {key!r} aliases missing key {source!r}.")
        state[key] = state[source]
    metadata = payload.get("metadata")
    if isinstance(metadata, dict):
        state._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    return state


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _as_state_dict(obj: object) -> Mapping[str, Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(
            "`state_dict_or_module` must be a torch.nn.Module or a mapping of names to tensors, "
            f"got {type(obj).__name__}."
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"`state_dict_or_module` keys must be strings, got {type(key).__name__} {key!r}.")
        if not isinstance(value, Tensor):
            raise TypeError(
                f"`state_dict_or_module[{key!r}]` must be a tensor, got {type(value).__name__}; "
                "save_sparse stores tensors only."
            )
    return obj


def _identity(tensor: Tensor) -> tuple[Any, ...] | None:
    """Key under which two entries are the very same tensor data (tied weights)."""
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        return None
    if tensor.numel() == 0:
        return None
    return (
        tensor.device,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def _encode(tensor: Tensor, min_sparsity: float) -> dict[str, Any]:
    plain = (
        tensor.layout == torch.strided
        and not tensor.is_quantized
        and tensor.device.type != "meta"
        and tensor.numel() > 0
    )
    if not plain:
        return {"kind": "dense", "tensor": tensor.cpu() if tensor.device.type != "meta" else tensor}
    cpu = tensor.cpu()
    # Complex tensors are encoded through their real view, so each part compresses on its own.
    real = torch.view_as_real(cpu) if cpu.is_complex() else cpu
    nonzero = real != 0  # NaN is a value; -0.0 is a zero, its sign is kept below
    zeros = real.numel() - int(nonzero.sum())
    if zeros / real.numel() < min_sparsity:
        # A copy owns exactly its data: a view would drag its whole base storage into the file.
        return {"kind": "dense", "tensor": cpu.clone(memory_format=torch.contiguous_format)}
    entry: dict[str, Any] = {
        "kind": "sparse",
        "values": real[nonzero].clone(),
        "mask": pack_mask(nonzero),
        "shape": list(cpu.shape),
        "dtype": str(cpu.dtype).removeprefix("torch."),
    }
    if real.is_floating_point():
        negative = torch.signbit(real[~nonzero])
        if bool(negative.any()):  # e.g. weights masked by multiplication: bits kept exactly
            entry["negative_zeros"] = pack_mask(negative)
    return entry


def _decode(entry: object) -> Tensor:
    if not isinstance(entry, dict):
        raise TypeError(f"expected a dict, found {type(entry).__name__}")
    kind = entry.get("kind")
    if kind == "dense":
        tensor = entry["tensor"]
        if not isinstance(tensor, Tensor):
            raise TypeError(f"dense entry holds {type(tensor).__name__}, not a tensor")
        return tensor
    if kind != "sparse":
        raise ValueError(f"unknown entry kind {kind!r}")
    values, packed, shape = entry["values"], entry["mask"], entry["shape"]
    dtype = getattr(torch, str(entry["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {entry['dtype']!r}")
    if not isinstance(values, Tensor) or not isinstance(packed, Tensor):
        raise TypeError("values and mask must be tensors")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"invalid shape {shape!r}")
    real_shape = (*shape, 2) if dtype.is_complex else tuple(shape)
    real_dtype = dtype.to_real() if dtype.is_complex else dtype
    if values.dtype != real_dtype:
        raise ValueError(f"values have dtype {values.dtype}, the entry says {dtype}")
    mask = unpack_mask(packed, real_shape)
    if int(mask.sum()) != values.numel():
        raise ValueError(f"mask marks {int(mask.sum())} values, {values.numel()} stored")
    out = torch.zeros(real_shape, dtype=real_dtype)
    out[mask] = values
    negative = entry.get("negative_zeros")
    if negative is not None:
        if not isinstance(negative, Tensor):
            raise TypeError("negative_zeros must be a tensor")
        zero_positions = (~mask).reshape(-1).nonzero().squeeze(1)
        flags = unpack_mask(negative, (zero_positions.numel(),))
        out.view(-1)[zero_positions[flags]] = -0.0
    return torch.view_as_complex(out) if dtype.is_complex else out


def _describe_payload(payload: object) -> str:
    if isinstance(payload, dict):
        keys = list(payload)
        if keys and all(isinstance(v, Tensor) for v in payload.values()):
            return f"a plain state dict of {len(keys)} tensors (keys {_preview(keys)}); load it with torch.load"
        fmt = payload.get("format")
        if fmt is not None:
            return f"a dict with format {fmt!r}"
        return f"a dict with keys {_preview(keys)}"
    if isinstance(payload, Tensor):
        return f"a single tensor of shape {tuple(payload.shape)}"
    return f"a {type(payload).__name__}"


def _preview(keys: list[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
