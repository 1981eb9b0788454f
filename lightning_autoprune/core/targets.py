"""Which tensors to prune: default prunable weights, narrowed by include/exclude globs.

Parameters are addressed by their fully qualified names in the LightningModule
(``"net.0.weight"``), so configurations stay plain strings that YAML and the CLI can express.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

#: Module types whose weights are pruned by default, and which of their parameters count.
_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
)
_RNN_MODULES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)
_MHA_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class PruneTarget:
    """One prunable tensor.

    Attributes:
        name: fully qualified parameter name in the root module, e.g. ``"net.0.weight"``.
        module_name: name of the module that owns it, e.g. ``"net.0"``.
        param_name: the attribute on that module, e.g. ``"weight"``.
        module: the owning module.
    """

    name: str
    module_name: str
    param_name: str
    module: nn.Module

    @property
    def param(self) -> nn.Parameter:
        """The parameter itself (looked up each time, so a replaced parameter is followed)."""
        param = getattr(self.module, self.param_name)
        assert isinstance(param, nn.Parameter)
        return param


def default_targets(model: nn.Module) -> list[PruneTarget]:
    """Every weight that is pruned by default, in ``named_parameters`` order.

    Covers Linear, Conv1d/2d/3d (and transposed), Embedding, the input and hidden weights of
    LSTM/GRU/RNN, and MultiheadAttention projections (its output projection is a Linear). Biases,
    normalisation layers and other parameters are left alone.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.LSTM(8, 3))
        >>> [t.name for t in default_targets(model)]
        ['0.weight', '2.weight_ih_l0', '2.weight_hh_l0']
    """
    targets: list[PruneTarget] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not _is_default_weight(module, param_name):
                continue
            seen.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            targets.append(PruneTarget(full, module_name, param_name, module))
    return targets


def _is_default_weight(module: nn.Module, param_name: str) -> bool:
    if isinstance(module, _WEIGHT_MODULES):
        return param_name == "weight"
    if isinstance(module, _RNN_MODULES):
        return param_name.startswith(("weight_ih_l", "weight_hh_l"))
    if isinstance(module, nn.MultiheadAttention):
        return param_name in _MHA_PARAMS
    return False


def all_parameter_targets(model: nn.Module) -> list[PruneTarget]:
    """Every parameter of ``model``, as targets (the universe that ``include`` globs pick from)."""
    targets = []
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            targets.append(PruneTarget(full, module_name, param_name, module))
    return targets


def resolve_targets(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[PruneTarget]:
    """Select the tensors to prune.

    Args:
        model: the module whose parameters are addressed by name.
        include: ``fnmatch`` globs over parameter names. ``None`` means the default prunable
            weights (see :func:`default_targets`); otherwise any parameter whose name matches
            one of the globs, default or not (so ``"*.bias"`` opts biases in).
        exclude: globs removed from the selection afterwards.

    Returns:
        The selected targets, in ``named_parameters`` order.

    Raises:
        ValueError: if a glob matches nothing (the message lists the available names), or if
            nothing is left to prune.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [t.name for t in resolve_targets(model, exclude=["2.*"])]
        ['0.weight']
        >>> resolve_targets(model, include=["fc*"])
        Traceback (most recent call last):
        ...
        ValueError: `include` pattern 'fc*' matches no parameter. Available: 0.weight, 0.bias, 2.weight, 2.bias.
    """
    universe = all_parameter_targets(model)
    available = ", ".join(t.name for t in universe)
    if include is None:
        selected = default_targets(model)
    else:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(t.name, pattern) for t in universe):
                raise ValueError(f"`include` pattern {pattern!r} matches no parameter. Available: {available}.")
        selected = [t for t in universe if any(fnmatch.fnmatchcase(t.name, p) for p in include)]
    for pattern in exclude or ():
        if not any(fnmatch.fnmatchcase(t.name, pattern) for t in selected):
            names = ", ".join(t.name for t in selected)
            raise ValueError(f"`exclude` pattern {pattern!r} matches no selected parameter. Selected: {names}.")
    selected = [t for t in selected if not any(fnmatch.fnmatchcase(t.name, p) for p in exclude or ())]
    if not selected:
        raise ValueError(
            "No prunable tensor is left: the model has no Linear/Conv/Embedding/RNN/attention weights, "
            f"or `exclude` removed them all. Available parameters: {available or 'none'}. "
            "HINT: name the tensors to prune with `include`, e.g. include=['encoder.*.weight']."
        )
    return selected


def structured_targets(model: nn.Module, weights: Sequence[PruneTarget]) -> tuple[list[PruneTarget], list[str]]:
    """The tensors structured pruning masks: the selected Linear/Conv weights, their biases, BatchNorm affines.

    Structured pruning zeroes whole units, so besides the selected weights it masks the bias of
    each selected layer and the ``weight``/``bias`` of every affine BatchNorm (a pruned channel's
    ``gamma`` and ``beta``). Which slices go together is decided later, by tracing
    (:func:`lightning_autoprune.structured.find_unit_groups`).

    Returns:
        The targets, in ``named_parameters`` order, and the names of selected weights that
        structured pruning cannot prune (Embedding, RNN, attention, transposed or grouped
        convolutions).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        >>> found, skipped = structured_targets(model, default_targets(model))
        >>> [t.name for t in found], skipped
        (['0.weight', '0.bias', '1.weight', '1.bias', '2.weight', '2.bias'], [])
    """
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    def plain(module: nn.Module) -> bool:
        if isinstance(module, nn.Linear):
            return True
        return isinstance(module, _ConvNd) and not module.transposed and module.groups == 1

    chosen = {t.module_name for t in weights if t.param_name == "weight" and plain(t.module)}
    skipped = [t.name for t in weights if not (t.param_name == "weight" and plain(t.module))]
    found: list[PruneTarget] = []
    for target in all_parameter_targets(model):
        module = target.module
        if (target.module_name in chosen and target.param_name in ("weight", "bias")) or (
            isinstance(module, _BatchNorm) and module.affine and target.param_name in ("weight", "bias")
        ):
            found.append(target)
    return found, skipped


def check_disjoint(mine: Sequence[PruneTarget], others: Sequence[Sequence[PruneTarget]]) -> None:
    """Refuse two callbacks that would prune the same tensor (their masks would fight).

    Example:
        >>> targets = resolve_targets(nn.Linear(2, 2), None, None)
        >>> check_disjoint(targets, [[]])
        >>> check_disjoint(targets, [targets])
        Traceback (most recent call last):
        ...
        ValueError: Two AutoPrune callbacks claim the same tensors: weight. HINT: ...
    """
    names = {t.name for t in mine}
    for other in others:
        shared = sorted(names & {t.name for t in other})
        if shared:
            raise ValueError(
                f"Two AutoPrune callbacks claim the same tensors: {', '.join(shared)}. "
                "HINT: give each callback disjoint `include`/`exclude` patterns."
            )
