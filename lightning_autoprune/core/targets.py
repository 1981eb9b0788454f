"""Which tensors to prune: default prunable weights, narrowed by include/exclude globs.

Parameters are addressed by their fully qualified names in the LightningModule
(``"net.0.weight"``), so configurations stay plain strings that YAML and the CLI can express.

Weight layers are recognised by what they are, not only by class, so models the user did not
write are covered: ``nn.Linear`` and layers that carry its attribute contract, Conv layers,
transformers' ``Conv1D`` (GPT-2's projections, weight stored ``[in, out]``, found without importing
transformers), LSTM/GRU/RNN and ``MultiheadAttention``. Some tensors are left dense by default, each
for a stated reason (:data:`SKIP_REASONS`): embeddings and the output heads tied to them, frozen
parameters and LoRA adapters. A tensor shared by several modules (tied weights) is one target,
named by its first name in ``named_parameters``, and globs match any of its names.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

#: Module types whose ``weight`` is pruned by default.
_WEIGHT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_EMBEDDING_MODULES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)
_RNN_MODULES: tuple[type[nn.Module], ...] = (nn.LSTM, nn.GRU, nn.RNN)
_MHA_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
#: Module names of LoRA-style adapters (PEFT's ``lora_A``/``lora_B``/``lora_embedding_A``...):
#: the low-rank update is not the prunable weight; the wrapped base layer's weight is.
_ADAPTER_PREFIX = "lora_"

#: Why a weight-bearing tensor is left dense by default: the reasons the setup message gives.
SKIP_REASONS: dict[str, str] = {
    "embedding": "embedding (token or position lookup table)",
    "tied": "embedding tied to an output head",
    "frozen": "frozen (requires_grad=False)",
    "adapter": "LoRA adapter (the base layer's weight is the prunable one)",
}
#: Share of a model's weight-bearing parameters that may sit in layers no rule knows before
#: :func:`uncovered_warning` speaks up.
UNCOVERED_SHARE = 0.10


@dataclass(frozen=True)
class PruneTarget:
    """One prunable tensor.

    Attributes:
        name: fully qualified parameter name in the root module, e.g. ``"net.0.weight"`` (for a
            tensor shared by several modules, its first name in ``named_parameters``).
        module_name: name of the module that owns it, e.g. ``"net.0"``.
        param_name: the attribute on that module, e.g. ``"weight"``.
        module: the owning module.
        transposed: the weight is stored ``[in, out]`` (transformers' ``Conv1D``): its output
            units run along dim 1 and its input units along dim 0, the reverse of ``nn.Linear``.
        aliases: the tensor's other names, where modules share it (a head tied to an embedding).
    """

    name: str
    module_name: str
    param_name: str
    module: nn.Module
    transposed: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def param(self) -> nn.Parameter:
        """The parameter itself (looked up each time, so a replaced parameter is followed)."""
        param = getattr(self.module, self.param_name)
        assert isinstance(param, nn.Parameter)
        return param

    @property
    def out_dim(self) -> int:
        """The dimension of the weight that indexes output units (0, or 1 for a transposed weight)."""
        return 1 if self.transposed else 0

    @property
    def in_dim(self) -> int:
        """The dimension of the weight that indexes input units (1, or 0 for a transposed weight)."""
        return 0 if self.transposed else 1


@dataclass(frozen=True)
class TargetSelection:
    """What :func:`select_targets` decided, with the reasons a user is told at setup.

    Attributes:
        targets: the tensors to prune, in ``named_parameters`` order.
        skipped: weight-bearing tensors a rule leaves dense by default, with the reason (empty
            when ``include`` chose the tensors).
        uncovered: weight-bearing tensors (floating point, two or more dimensions) that no rule
            knows and no reason skipped (empty when ``include`` chose the tensors).
        uncovered_share: their share of all weight-bearing parameters, counted once per tensor.
    """

    targets: list[PruneTarget]
    skipped: dict[str, str] = field(default_factory=dict)
    uncovered: list[str] = field(default_factory=list)
    uncovered_share: float = 0.0


def is_conv1d_transposed(module: object) -> bool:
    """Whether ``module`` is transformers' ``Conv1D``: a linear map whose weight is stored ``[in, out]``.

    Recognised by its class name, its ``nf`` (output features) and a 2-D ``weight`` shaped
    ``(nx, nf)``, so transformers need not be importable; any object may be asked (Torch-Pruning's
    stand-ins for operations are not).

    Example:
        >>> class Conv1D(nn.Module):
        ...     def __init__(self, nf, nx):
        ...         super().__init__()
        ...         self.nf, self.weight = nf, nn.Parameter(torch.zeros(nx, nf))
        >>> is_conv1d_transposed(Conv1D(3, 4)), is_conv1d_transposed(nn.Conv1d(4, 3, 1))
        (True, False)
    """
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is ``nn.Linear`` or carries its contract.

    The contract: integer ``in_features`` and ``out_features`` and a 2-D ``weight`` parameter shaped
    ``(out_features, in_features)``, so the layer computes ``x @ weight.T`` over the last dim.

    Example:
        >>> class Dense(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.in_features, self.out_features = 4, 3
        ...         self.weight = nn.Parameter(torch.zeros(3, 4))
        >>> is_linear_like(Dense()), is_linear_like(nn.Linear(2, 2)), is_linear_like(nn.LayerNorm(2))
        (True, True, False)
    """
    if isinstance(module, nn.Linear):
        return True
    weight = getattr(module, "weight", None)
    out_features, in_features = getattr(module, "out_features", None), getattr(module, "in_features", None)
    return (
        isinstance(weight, nn.Parameter)
        and isinstance(out_features, int)
        and isinstance(in_features, int)
        and tuple(weight.shape) == (out_features, in_features)
    )


@dataclass(frozen=True)
class _Name:
    """One name under which a tensor is registered: full name, owning module's name, attribute, module."""

    full: str
    module_name: str
    param_name: str
    module: nn.Module


def _tensors(model: nn.Module) -> list[tuple[nn.Parameter, list[_Name]]]:
    """Every distinct parameter tensor with all its names, in order of first appearance."""
    found: dict[int, tuple[nn.Parameter, list[_Name]]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            found.setdefault(id(param), (param, []))[1].append(_Name(full, module_name, param_name, module))
    return list(found.values())


def _kind(module: nn.Module, param_name: str) -> str | None:
    """``"weight"`` for a default prunable weight, ``"embedding"`` for an embedding table, else ``None``."""
    if isinstance(module, _EMBEDDING_MODULES):
        return "embedding" if param_name == "weight" else None
    if param_name == "weight" and (
        isinstance(module, _WEIGHT_MODULES) or is_conv1d_transposed(module) or is_linear_like(module)
    ):
        return "weight"
    if isinstance(module, _RNN_MODULES):
        return "weight" if param_name.startswith(("weight_ih_l", "weight_hh_l")) else None
    if isinstance(module, nn.MultiheadAttention):
        return "weight" if param_name in _MHA_PARAMS else None
    return None


def is_linear_map(module: nn.Module) -> bool:
    """Whether ``module`` computes a linear map over the last dim of its input (Linear, Linear-like, ``Conv1D``).

    Its input and output units are the last dim of its input and output, whatever way its weight is stored.

    Example:
        >>> is_linear_map(nn.Linear(2, 3)), is_linear_map(nn.Conv1d(2, 3, 1))
        (True, False)
    """
    return is_linear_like(module) or is_conv1d_transposed(module)


def _target(names: Sequence[_Name], owner: _Name | None = None) -> PruneTarget:
    """The target of one tensor, named by its first name; ``owner`` is the layer whose rule chose it."""
    first = names[0]
    layer = owner or first
    aliases = tuple(n.full for n in names[1:])
    transposed = is_conv1d_transposed(layer.module) and layer.param_name == "weight"
    return PruneTarget(first.full, first.module_name, first.param_name, first.module, transposed, aliases)


def _weight_bearing(param: nn.Parameter) -> bool:
    return param.is_floating_point() and param.ndim >= 2


def _default_decision(param: nn.Parameter, names: Sequence[_Name]) -> tuple[str, _Name | None]:
    """``("target", layer)``, ``(reason key, None)`` for a skip, ``("uncovered", None)`` or ``("", None)``."""
    kinds = [(_kind(n.module, n.param_name), n) for n in names]
    weight = next((n for kind, n in kinds if kind == "weight"), None)
    if any(part.startswith(_ADAPTER_PREFIX) for n in names for part in n.module_name.split(".")):
        return ("adapter", None) if weight is not None or _weight_bearing(param) else ("", None)
    if any(kind == "embedding" for kind, _ in kinds):
        return ("tied" if weight is not None else "embedding"), None
    if weight is None:
        if not _weight_bearing(param):
            return "", None
        return ("embedding" if "embed" in names[0].param_name.lower() else "uncovered"), None
    if not param.requires_grad:
        return "frozen", None
    return "target", weight


def default_targets(model: nn.Module) -> list[PruneTarget]:
    """Every weight that is pruned by default, in ``named_parameters`` order.

    Covers Linear (and layers with its ``in_features``/``out_features``/``weight`` contract),
    Conv1d/2d/3d (and transposed), transformers' ``Conv1D``, the input and hidden weights of
    LSTM/GRU/RNN, and MultiheadAttention projections (its output projection is a Linear). Biases,
    normalisation layers and other parameters are left alone, and so are embeddings (and output
    heads tied to them), frozen parameters and LoRA adapters: see :func:`select_targets`.

    Example:
        >>> model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 8), nn.LayerNorm(8), nn.LSTM(8, 3))
        >>> [t.name for t in default_targets(model)]
        ['1.weight', '3.weight_ih_l0', '3.weight_hh_l0']
    """
    return _select_default(model).targets


def _select_default(model: nn.Module) -> TargetSelection:
    targets: list[PruneTarget] = []
    skipped: dict[str, str] = {}
    uncovered: list[str] = []
    uncovered_size = total = 0
    for param, names in _tensors(model):
        decision, layer = _default_decision(param, names)
        if _weight_bearing(param) or decision == "target":
            total += param.numel()
        if decision == "target":
            targets.append(_target(names, layer))
        elif decision == "uncovered":
            uncovered.append(names[0].full)
            uncovered_size += param.numel()
        elif decision:
            reason = SKIP_REASONS[decision]
            if decision == "tied":
                heads = [n.full for n in names if _kind(n.module, n.param_name) == "weight"]
                reason = f"{reason} ({', '.join(heads)})"
            skipped[names[0].full] = reason
    return TargetSelection(targets, skipped, uncovered, uncovered_size / total if total else 0.0)


def all_parameter_targets(model: nn.Module) -> list[PruneTarget]:
    """Every distinct parameter of ``model``, as targets (the universe that ``include`` globs pick from).

    A tensor registered under several names (tied weights) is one target, named by its first name,
    with the others as its ``aliases``.

    Example:
        >>> embedding = nn.Embedding(5, 4)
        >>> head = nn.Linear(4, 5, bias=False)
        >>> head.weight = embedding.weight
        >>> [(t.name, t.aliases) for t in all_parameter_targets(nn.Sequential(embedding, head))]
        [('0.weight', ('1.weight',))]
    """
    targets = []
    for _, names in _tensors(model):
        layer = next((n for n in names if _kind(n.module, n.param_name) == "weight"), None)
        targets.append(_target(names, layer))
    return targets


def _matches(target: PruneTarget, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for name in (target.name, *target.aliases))


def select_targets(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> TargetSelection:
    """Select the tensors to prune, and say what the defaults left dense and why.

    Args:
        model: the module whose parameters are addressed by name.
        include: ``fnmatch`` globs over parameter names. ``None`` means the default prunable
            weights (see :func:`default_targets`); otherwise any parameter whose name (or one of
            its tied names) matches one of the globs, default or not (so ``"*.bias"`` opts biases
            in, and a frozen or embedding tensor named here is pruned).
        exclude: globs removed from the selection afterwards.

    Returns:
        The selection: targets in ``named_parameters`` order, each tensor once; with
        ``include=None`` also the skipped tensors with their reasons and the weight-bearing
        tensors no rule covers.

    Raises:
        ValueError: if a glob matches nothing (the message lists the available names), or if
            nothing is left to prune.

    Example:
        >>> model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        >>> model[1].requires_grad_(False)
        Linear(in_features=4, out_features=4, bias=True)
        >>> selection = select_targets(model)
        >>> [t.name for t in selection.targets]
        ['2.weight']
        >>> selection.skipped
        {'0.weight': 'embedding (token or position lookup table)', '1.weight': 'frozen (requires_grad=False)'}
        >>> [t.name for t in select_targets(model, include=["1.weight", "2.weight"]).targets]
        ['1.weight', '2.weight']
        >>> select_targets(model, exclude=["2.*"])
        Traceback (most recent call last):
        ...
        ValueError: No prunable tensor is left: ... Left dense by default: 0.weight (embedding ...); 1.weight ...
    """
    universe = all_parameter_targets(model)
    available = ", ".join(t.name for t in universe)
    default: TargetSelection | None = None
    if include is None:
        default = _select_default(model)
        selected = default.targets
    else:
        for pattern in include:
            if not any(_matches(t, pattern) for t in universe):
                raise ValueError(f"`include` pattern {pattern!r} matches no parameter. Available: {available}.")
        selected = [t for t in universe if any(_matches(t, p) for p in include)]
    for pattern in exclude or ():
        if not any(_matches(t, pattern) for t in selected):
            names = ", ".join(t.name for t in selected)
            raise ValueError(f"`exclude` pattern {pattern!r} matches no selected parameter. Selected: {names}.")
    selected = [t for t in selected if not any(_matches(t, p) for p in exclude or ())]
    if not selected:
        skipped = default.skipped if default is not None else {}
        left = "; ".join(f"{name} ({reason})" for name, reason in skipped.items())
        raise ValueError(
            "No prunable tensor is left: the model has no Linear/Conv/RNN/attention weights that train, "
            f"or `exclude` removed them all. Available parameters: {available or 'none'}. "
            + (f"Left dense by default: {left}. " if left else "")
            + "HINT: name the tensors to prune with `include`, e.g. include=['encoder.*.weight']."
        )
    if default is None:
        return TargetSelection(selected)
    return TargetSelection(selected, default.skipped, default.uncovered, default.uncovered_share)


def resolve_targets(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[PruneTarget]:
    """Select the tensors to prune: the targets of :func:`select_targets`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [t.name for t in resolve_targets(model, exclude=["2.*"])]
        ['0.weight']
        >>> resolve_targets(model, include=["fc*"])
        Traceback (most recent call last):
        ...
        ValueError: `include` pattern 'fc*' matches no parameter. Available: 0.weight, 0.bias, 2.weight, 2.bias.
    """
    return select_targets(model, include, exclude).targets


def include_patterns(names: Sequence[str]) -> list[str]:
    """Globs that name ``names``, with layer indices as ``*`` (``h.0.w`` and ``h.1.w`` give ``h.*.w``).

    Example:
        >>> include_patterns(["h.0.attn.weight", "h.1.attn.weight", "head.weight"])
        ['h.*.attn.weight', 'head.weight']
    """
    return list(dict.fromkeys(re.sub(r"(^|\.)\d+(?=\.)", r"\1*", name) for name in names))


def skipped_message(selection: TargetSelection) -> str | None:
    """The setup line naming the tensors the defaults left dense, by reason; ``None`` if none.

    Example:
        >>> model = nn.Sequential(nn.Embedding(9, 4), nn.Linear(4, 2))
        >>> print(skipped_message(select_targets(model)))
        AutoPrune leaves these tensors dense by default: embedding (token or position lookup table): 0.weight. HINT: ...
    """
    if not selection.skipped:
        return None
    by_reason: dict[str, list[str]] = {}
    for name, reason in selection.skipped.items():
        by_reason.setdefault(reason, []).append(name)
    parts = "; ".join(f"{reason}: {', '.join(names)}" for reason, names in by_reason.items())
    return (
        f"AutoPrune leaves these tensors dense by default: {parts}. HINT: name them in `include` to prune them "
        "(`include` replaces the defaults, so list the default tensors too)."
    )


def uncovered_warning(selection: TargetSelection, threshold: float = UNCOVERED_SHARE) -> str | None:
    """A warning when more than ``threshold`` of the weight-bearing parameters sit in layers no rule knows.

    Example:
        >>> class Custom(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = nn.Parameter(torch.zeros(8, 8))
        ...         self.head = nn.Linear(8, 2)
        >>> print(uncovered_warning(select_targets(Custom())))
        AutoPrune prunes only the layers it recognises, and 80% of the model's ... covers: proj. ...
        >>> uncovered_warning(select_targets(Custom())).endswith("include=['head.weight', 'proj'].")
        True
    """
    if not selection.uncovered or selection.uncovered_share <= threshold:
        return None
    names = [t.name for t in selection.targets] + selection.uncovered
    return (
        f"AutoPrune prunes only the layers it recognises, and {selection.uncovered_share:.0%} of the model's "
        f"weight-bearing parameters sit in layers no rule covers: {', '.join(selection.uncovered)}. They stay "
        "dense, and the target sparsity counts only the recognised layers. HINT: if they are weights of linear "
        f"maps, prune them too with include={include_patterns(names)!r}."
    )


def is_plain_layer(module: object) -> bool:
    """A layer structured pruning handles: a Linear, transformers' ``Conv1D``, or an ordinary convolution.

    An ordinary convolution is neither transposed nor grouped.

    Example:
        >>> is_plain_layer(nn.Linear(2, 3)), is_plain_layer(nn.Conv2d(4, 4, 3, groups=4)), is_plain_layer(nn.ReLU())
        (True, False, False)
    """
    from torch.nn.modules.conv import _ConvNd

    if isinstance(module, nn.Linear) or is_conv1d_transposed(module):
        return True
    return isinstance(module, _ConvNd) and not module.transposed and module.groups == 1


def structured_targets(model: nn.Module, weights: Sequence[PruneTarget]) -> tuple[list[PruneTarget], list[str]]:
    """The tensors structured pruning masks: the selected Linear/Conv1D/Conv weights, their biases, BatchNorm affines.

    Structured pruning zeroes whole units, so besides the selected weights it masks the bias of
    each selected layer and the ``weight``/``bias`` of every affine BatchNorm (a pruned channel's
    ``gamma`` and ``beta``). Which slices go together is decided later, by tracing
    (:func:`lightning_autoprune.structured.find_unit_groups`).

    Returns:
        The targets, in ``named_parameters`` order, and the names of selected weights that
        structured pruning cannot prune (Embedding, RNN, attention, transposed or grouped
        convolutions). transformers' ``Conv1D`` (GPT-2's projections) is pruned like a Linear.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        >>> found, skipped = structured_targets(model, default_targets(model))
        >>> [t.name for t in found], skipped
        (['0.weight', '0.bias', '1.weight', '1.bias', '2.weight', '2.bias'], [])
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    chosen = {t.module_name for t in weights if t.param_name == "weight" and is_plain_layer(t.module)}
    skipped = [t.name for t in weights if not (t.param_name == "weight" and is_plain_layer(t.module))]
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


def targets_for_run(
    model: nn.Module,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    *,
    structured: bool = False,
    others: Sequence[Sequence[PruneTarget]] = (),
) -> TargetSelection:
    """The tensors one callback prunes, with the warnings setup gives about them.

    :func:`select_targets`, narrowed to what structured pruning handles when ``structured``
    (:func:`structured_targets`), and checked against the tensors other callbacks on the same
    Trainer prune (:func:`check_disjoint`). Warns when more than a tenth of the weights sit in
    layers no rule knows (:func:`uncovered_warning`) and when structured pruning leaves selected
    tensors unpruned.

    Returns:
        The selection, whose ``targets`` are the tensors to mask.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        >>> [t.name for t in targets_for_run(model, None, None).targets]
        ['0.weight', '2.weight']
        >>> [t.name for t in targets_for_run(model, None, ["2.*"], structured=True).targets]
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    selection = select_targets(model, include, exclude)
    warning = uncovered_warning(selection)
    if warning is not None:
        warnings.warn(warning, UserWarning, stacklevel=3)
    targets = selection.targets
    if structured:
        targets, left = structured_targets(model, targets)
        if left:
            warnings.warn(
                "AutoPrune (granularity='structured') leaves these selected tensors unpruned: structured "
                f"pruning handles Linear, transformers' Conv1D and ordinary Conv layers only: {', '.join(left)}.",
                UserWarning,
                stacklevel=3,
            )
    check_disjoint(targets, others)
    return replace(selection, targets=targets)
