"""Feature rows for the learned importance models: one per weight, or one per unit.

Every prunable weight gets one row of :data:`FEATURE_NAMES` (float32). Rows are computed
vectorised in torch, one tensor at a time and, for a large tensor, in chunks of rows
(:meth:`FeatureTable.rows`), so memory stays linear in the number of connections and a model never
has its whole feature table in memory at once.

Features whose raw scale differs between models (``|w|``, gradients, activations) are divided by
a *global* scale (the mean absolute value over every kept weight of every tensor at this event),
so they stay comparable across layers, which is what a global ranking needs, and across models,
which is what a pretrained importance model needs. Heavy-tailed ones are then put on a log10
scale. The names say which: ``log_`` features are ``log10(value / scale + 1e-6)``.

For structured pruning, :func:`unit_features` gives one row of :data:`UNIT_FEATURE_NAMES` per unit.

Example:
    >>> import torch
    >>> from lightning_autoprune.scoring.base import ScoreInputs
    >>> w = {"a": torch.tensor([[1.0, -2.0], [0.5, 0.0]])}
    >>> m = {"a": torch.tensor([[True, True], [True, False]])}
    >>> table = FeatureTable(ScoreInputs(w, m))
    >>> rows = table.rows("a", torch.arange(4))
    >>> rows.shape == (4, len(FEATURE_NAMES))
    True
    >>> [round(v, 3) for v in rows[:, FEATURE_NAMES.index("layer_percentile")].tolist()]
    [0.5, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_autoprune.scoring.base import ScoreInputs
from lightning_autoprune.scoring.formulas import taylor2_scores
from lightning_autoprune.scoring.learned.priors import SortedSquares
from lightning_autoprune.scoring.units import EPS as UNIT_EPS
from lightning_autoprune.scoring.units import taylor_parts
from lightning_autoprune.structured import UnitGroup, kept_units, unit_costs, unit_sums

#: The columns of a feature row, in order. See :class:`FeatureTable` for each definition.
FEATURE_NAMES: tuple[str, ...] = (
    "log_abs_weight",
    "layer_normalised_weight",
    "layer_percentile",
    "log_lamp",
    "gradient",
    "gradient_times_weight",
    "log_fisher",
    "log_optimizer_fisher",
    "taylor2",
    "movement",
    "log_drift",
    "log_input_norm",
    "log_wanda",
    "log_output_norm",
    "depth",
    "log2_fan_in",
    "log2_fan_out",
    "layer_density",
    "parameter_share",
    "progress",
    "target_sparsity",
)
_EPS = 1e-6
_TINY = 1e-30
#: The most entries :func:`_global_scales` reads of a tensor at once (whole rows, at least one).
SCALE_BLOCK = 1 << 18

#: Columns of :func:`unit_features`, in order.
UNIT_FEATURE_NAMES: tuple[str, ...] = (
    "log_rms_producer",
    "log_rms_consumer",
    "rms_layer_normalised",
    "log_norm_affine",
    "log_taylor_first",
    "log_taylor_second",
    "log_taylor_loss",
    "log_taylor_per_param",
    "taylor_layer_percentile",
    "log_activation",
    "depth",
    "log_units",
    "layer_density",
    "log_cost",
    "progress",
    "target_sparsity",
)


@dataclass
class _Layer:
    """The whole-tensor quantities one tensor's rows are gathered from (flat views, no copies of the weights)."""

    weight: Tensor
    mask: Tensor
    grad: Tensor
    fisher: Tensor
    adam: Tensor
    movement: Tensor
    initial: Tensor
    squares: SortedSquares  # percentile and LAMP of any entries, from one values-only sort
    input_norm: Tensor | None  # per input unit
    output_norm: Tensor | None  # per output unit
    inner: int  # entries per (output unit, input unit) pair: the kernel size
    transposed: bool  # stored [in, out] (transformers' Conv1D) instead of [out, in, ...]
    fan_in: int
    fan_out: int
    mean_abs: float
    constants: Tensor  # depth, log2 fan-in, log2 fan-out, density, share, progress, target


class FeatureTable:
    """Feature rows of every prunable connection, gathered on demand.

    Definitions (``w`` weight, ``g`` mean calibration gradient, ``F`` mean squared per-batch
    calibration gradient, ``x_j`` the input unit a weight reads, ``S_q`` the global scale of ``q``):

    ========================== =====================================================================
    ``log_abs_weight``         ``log10(|w| / S_w + 1e-6)``
    ``layer_normalised_weight`` ``|w|`` over the mean ``|w|`` of the tensor's kept weights
    ``layer_percentile``       rank of ``|w|`` among the tensor's kept weights, in ``[0, 1]``
                               (pruned weights: 0; equal weights share the lowest rank)
    ``log_lamp``               ``log10(LAMP score + 1e-6)`` (:func:`~lightning_autoprune.scoring.formulas.lamp_scores`)
    ``gradient``               ``g / S_g``
    ``gradient_times_weight``  ``g * w / S_gw``
    ``log_fisher``             ``log10(F / S_F + 1e-6)``
    ``log_optimizer_fisher``   the same for the optimizer's ``exp_avg_sq`` (free with Adam); ``F``
                               where the optimizer keeps none
    ``taylor2``                ``(-g * w + w**2 * F / 2) / S``: second-order Taylor loss change of
                               removing the weight
    ``movement``               ``-sum_t w_t * g_t`` since the previous event, over its global scale
    ``log_drift``              ``log10(|w - w_init| / S_w + 1e-6)``
    ``log_input_norm``         ``log10(||x_j|| / S_x + 1e-6)``, 0 where activations are unknown
    ``log_wanda``              ``log10(|w| * ||x_j|| / S + 1e-6)`` (Wanda, Sun et al. 2023)
    ``log_output_norm``        ``log10`` of the output unit's activation norm over its global scale
    ``depth``                  tensor index / (number of tensors - 1), in the model's order
    ``log2_fan_in``            ``log2`` of the inputs per output unit (input units x kernel)
    ``log2_fan_out``           ``log2`` of the output units (for a weight stored ``[in, out]``,
                               named in ``inputs.transposed``, the units are read the other way)
    ``layer_density``          the tensor's kept fraction before this event
    ``parameter_share``        the tensor's share of all prunable weights
    ``progress``               training progress, ``epoch / max_epochs``
    ``target_sparsity``        the overall sparsity this event prunes to
    ========================== =====================================================================

    Missing inputs (no gradients, no optimizer state, no activations) give the neutral value of
    their column (0 for linear columns; the column is built from ``|w|`` alone otherwise), so a
    table can be built from weights and masks only.

    Args:
        inputs: the scorer inputs of one pruning event.
        squares: where a tensor's :class:`SortedSquares` come from, when the caller already sorts
            them (the learned scorer's priors); ``None``: built here.
    """

    def __init__(self, inputs: ScoreInputs, squares: Callable[[str], SortedSquares] | None = None) -> None:
        self.inputs = inputs
        self._squares = squares
        self.names = list(inputs.weights)
        self._scales = _global_scales(inputs)
        self._total = sum(w.numel() for w in inputs.weights.values())
        self._cache: tuple[str, _Layer] | None = None

    def num_rows(self, name: str) -> int:
        """Rows of tensor ``name`` (its number of entries)."""
        return self.inputs.weights[name].numel()

    def rows(self, name: str, index: Tensor) -> Tensor:
        """Feature rows ``(len(index), len(FEATURE_NAMES))`` of the flat entries ``index`` of tensor ``name``."""
        layer = self._layer(name)
        s = self._scales
        index = index.to(layer.weight.device)
        w = layer.weight[index]
        absw = w.abs()
        g = layer.grad[index]
        fisher = layer.fisher[index]
        if layer.transposed:  # stored [in, out]: flat index = in_unit * fan_out + out_unit
            in_unit, out_unit = index // layer.fan_out, index % layer.fan_out
        else:
            in_unit = (index // layer.inner) % layer.fan_in
            out_unit = index // (layer.inner * layer.fan_in)
        x = layer.input_norm[in_unit] if layer.input_norm is not None else torch.full_like(absw, s["x"])
        percentile, lamp = layer.squares.percentile_and_lamp(index)
        columns = [
            _log(absw / s["w"]),
            absw / layer.mean_abs,
            percentile,
            _log(lamp),
            g / s["g"],
            g * w / s["gw"],
            _log(fisher / s["F"]),
            _log(layer.adam[index] / s["adam"]),
            taylor2_scores(w, g, fisher) / s["t2"],
            layer.movement[index] / s["mv"],
            _log((w - layer.initial[index]).abs() / s["w"]),
            _log(x / s["x"]),
            _log(absw * x / s["wanda"]),
            _log(layer.output_norm[out_unit] / s["y"]) if layer.output_norm is not None else torch.zeros_like(absw),
        ]
        table = torch.stack(columns, dim=1)
        return torch.cat([table, layer.constants.expand(len(index), -1)], dim=1).float()

    def _layer(self, name: str) -> _Layer:
        # One tensor's whole-tensor quantities are cached, so chunked calls for one tensor do not
        # recompute the sort behind the percentile and LAMP columns; only one tensor is held.
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        self._cache = None  # the previous tensor's quantities go before this one's are built
        layer = self._build_layer(name)
        self._cache = (name, layer)
        return layer

    def _build_layer(self, name: str) -> _Layer:
        inputs = self.inputs
        weight = inputs.weights[name].detach().float()
        mask = inputs.masks[name].to(weight.device)
        flat_w = weight.reshape(-1)
        flat_m = mask.reshape(-1)
        zeros = flat_w.new_zeros(1).expand(flat_w.numel())  # a view: no tensor-sized allocation
        grad = _flat(inputs.grad_mean, name, zeros)
        fisher = _flat(inputs.grad_sq_mean, name, zeros)
        adam = _flat(inputs.exp_avg_sq, name, fisher)
        movement = _flat(inputs.movement, name, zeros)
        initial = _flat(inputs.initial_weights, name, flat_w)
        transposed = _is_transposed(inputs, name, weight)
        fan_out, fan_in_units, inner = _geometry(weight, transposed)
        kept = int(torch.count_nonzero(flat_m))
        abs_sum = sum(
            float((flat_w[i : i + SCALE_BLOCK].abs() * flat_m[i : i + SCALE_BLOCK]).sum())
            for i in range(0, flat_w.numel(), SCALE_BLOCK)
        )
        mean_abs = abs_sum / max(kept, 1) or 1.0
        index = self.names.index(name)
        constants = torch.tensor(
            [
                index / max(len(self.names) - 1, 1),
                math.log2(fan_in_units * inner),
                math.log2(fan_out),
                kept / max(flat_w.numel(), 1),
                flat_w.numel() / max(self._total, 1),
                inputs.progress,
                inputs.target_sparsity,
            ],
            dtype=torch.float32,
            device=weight.device,
        )
        return _Layer(
            weight=flat_w,
            mask=flat_m,
            grad=grad,
            fisher=fisher,
            adam=adam,
            movement=movement,
            initial=initial,
            squares=self._squares(name) if self._squares is not None else SortedSquares(flat_w, flat_m),
            input_norm=_units(inputs.input_norms, name, fan_in_units),
            output_norm=_units(inputs.output_norms, name, fan_out),
            inner=inner,
            transposed=transposed,
            fan_in=fan_in_units,
            fan_out=fan_out,
            mean_abs=mean_abs,
            constants=constants,
        )


def _is_transposed(inputs: ScoreInputs, name: str, weight: Tensor) -> bool:
    return name in inputs.transposed and weight.ndim == 2


def _geometry(weight: Tensor, transposed: bool) -> tuple[int, int, int]:
    """Output units, input units and entries per (output, input) pair of a weight.

    ``[out, in, *kernel]`` for Linear, Conv, RNN and attention weights; ``[in, out]`` when ``transposed``.
    """
    if transposed:
        return weight.shape[1], weight.shape[0], 1
    fan_out = weight.shape[0] if weight.ndim >= 1 else 1
    fan_in = weight.shape[1] if weight.ndim >= 2 else 1
    return fan_out, fan_in, max(1, weight.numel() // max(1, fan_out * fan_in))


def _flat(source: Mapping[str, Tensor] | None, name: str, default: Tensor) -> Tensor:
    if source is None or name not in source:
        return default
    return source[name].detach().float().reshape(-1).to(default.device)


def _units(source: Mapping[str, Tensor] | None, name: str, count: int) -> Tensor | None:
    """Per-unit activation norms, or ``None`` where unknown or of another size (grouped conv...)."""
    if source is None or name not in source or source[name].numel() != count:
        return None
    return source[name].detach().float().reshape(-1)


def _log(values: Tensor) -> Tensor:
    return torch.log10(values + _EPS)


def _global_scales(inputs: ScoreInputs) -> dict[str, float]:
    """Mean absolute value over every kept weight of every tensor, per scaled quantity (see :class:`FeatureTable`).

    Each tensor is read in blocks of rows of at most :data:`SCALE_BLOCK` entries, so the
    temporaries stay a few MB however large the tensor.
    """
    sums = dict.fromkeys(("w", "g", "gw", "F", "adam", "t2", "mv", "wanda"), 0.0)
    count = 0
    x_sum, x_count, y_sum, y_count = 0.0, 0, 0.0, 0
    for name, weight in inputs.weights.items():
        transposed = _is_transposed(inputs, name, weight)
        fan_out, fan_in, inner = _geometry(weight, transposed)
        x = _units(inputs.input_norms, name, fan_in)
        rows = weight.shape[0] if weight.ndim >= 1 else 1
        w_all = weight.detach().float().reshape(rows, -1)
        keep_all = inputs.masks[name].reshape(rows, -1).to(w_all.device)
        sources = {
            key: _rows(source, name, rows)
            for key, source in (
                ("g", inputs.grad_mean),
                ("F", inputs.grad_sq_mean),
                ("adam", inputs.exp_avg_sq),
                ("mv", inputs.movement),
            )
        }
        unit_parts: list[Tensor] = []
        per_unit = None
        step = max(1, SCALE_BLOCK // max(1, w_all.shape[1]))
        for start in range(0, rows, step):
            block = slice(start, start + step)
            w = w_all[block]
            keep = keep_all[block].float()
            zeros = torch.zeros_like(w)
            g = sources["g"][block] if sources["g"] is not None else zeros
            fisher = sources["F"][block] if sources["F"] is not None else zeros
            adam = sources["adam"][block] if sources["adam"] is not None else fisher
            mv = sources["mv"][block] if sources["mv"] is not None else zeros
            count += int(torch.count_nonzero(keep))
            kept_abs = w.abs() * keep
            sums["w"] += float(kept_abs.sum())
            sums["g"] += float((g.abs() * keep).sum())
            sums["gw"] += float(((g * w).abs() * keep).sum())
            sums["F"] += float((fisher * keep).sum())
            sums["adam"] += float((adam * keep).sum())
            sums["t2"] += float((taylor2_scores(w, g, fisher).abs() * keep).sum())
            sums["mv"] += float((mv.abs() * keep).sum())
            if x is not None:
                if transposed:  # rows are input units
                    unit_parts.append(kept_abs.view(-1, fan_out).sum(dim=1))
                else:  # rows are output units
                    part = kept_abs.reshape(-1, fan_in, inner).sum(dim=(0, 2))
                    per_unit = part if per_unit is None else per_unit + part
        if x is not None:
            x_sum += float(x.sum())
            x_count += x.numel()
            per_unit = torch.cat(unit_parts) if transposed else per_unit
            if per_unit is not None:
                sums["wanda"] += float(per_unit @ x)
        y = _units(inputs.output_norms, name, fan_out)
        if y is not None:
            y_sum += float(y.sum())
            y_count += y.numel()
    scales = {key: (value / max(count, 1)) or 1.0 for key, value in sums.items()}
    scales["x"] = (x_sum / x_count if x_count else 1.0) or 1.0
    scales["y"] = (y_sum / y_count if y_count else 1.0) or 1.0
    if scales["wanda"] == 1.0 and not x_count:
        scales["wanda"] = scales["w"] * scales["x"]
    for key, value in scales.items():
        scales[key] = max(value, _TINY)
    return scales


def _rows(source: Mapping[str, Tensor] | None, name: str, rows: int) -> Tensor | None:
    """``source[name]`` as float32 ``[rows, -1]`` (a view where it can be), or ``None`` where missing."""
    if source is None or name not in source:
        return None
    return source[name].detach().float().reshape(rows, -1)


def _unit_log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(0.0) + UNIT_EPS)


def _rms(group: UnitGroup, weights: Mapping[str, Tensor], roles: Sequence[str]) -> Tensor:
    squares = unit_sums(group, {n: w.double().pow(2) for n, w in weights.items()}, roles=roles)
    counts = unit_sums(group, {n: torch.ones_like(w, dtype=torch.float64) for n, w in weights.items()}, roles=roles)
    return (squares / counts.clamp_min(1.0)).sqrt()


def unit_features(groups: Sequence[UnitGroup], inputs: ScoreInputs) -> Tensor:
    """One float32 row per unit of every group (groups in order), columns :data:`UNIT_FEATURE_NAMES`.

    Needs the calibration gradient statistics; activation norms are used where recorded.
    ``log_`` unit features are natural logs, ``log(value + 1e-12)``.

    Example:
        >>> from lightning_autoprune.structured import Slice
        >>> g = UnitGroup("a", 2, (Slice("w", 0, torch.arange(2), torch.arange(2), "producer"),), 0.0)
        >>> w = {"w": torch.tensor([[1.0, 1.0], [2.0, 0.0]])}
        >>> inputs = ScoreInputs(w, {"w": torch.ones(2, 2, dtype=torch.bool)})
        >>> inputs.grad_mean, inputs.grad_sq_mean = {"w": torch.ones(2, 2)}, {"w": torch.ones(2, 2)}
        >>> unit_features([g], inputs).shape == (2, len(UNIT_FEATURE_NAMES))
        True
    """
    columns: list[Tensor] = []
    output_norms = inputs.output_norms or {}
    for group in groups:
        units = group.units
        rms = _rms(group, inputs.weights, ("producer",))
        consumer = _rms(group, inputs.weights, ("consumer",))
        alive = kept_units(group, inputs.masks)
        mean_rms = rms[alive].mean() if bool(alive.any()) else torch.tensor(1.0, dtype=torch.float64)
        affine = unit_sums(group, {n: w.double().abs() for n, w in inputs.weights.items()}, roles=("norm",))
        first, second = taylor_parts(group, inputs)
        cost = unit_costs(group, inputs.masks, inputs.cost_weights).clamp_min(1.0)
        per_param = (first + second) / cost
        percentile = torch.zeros(units, dtype=torch.float64)
        percentile[per_param.argsort(stable=True)] = torch.arange(units, dtype=torch.float64) / max(1, units - 1)
        activation = torch.zeros(units, dtype=torch.float64)
        producers = [s.param for s in group.slices if s.role == "producer" and s.param.endswith("weight")]
        norms = [output_norms[p].double().cpu() for p in producers if p in output_norms]
        if norms and all(n.numel() == units for n in norms):
            activation = torch.stack(norms).mean(dim=0)
        columns.append(
            torch.stack(
                [
                    _unit_log(rms),
                    _unit_log(consumer),
                    rms / mean_rms.clamp_min(UNIT_EPS),
                    _unit_log(affine),
                    _unit_log(first),
                    _unit_log(second),
                    _unit_log(first + second),
                    _unit_log(per_param),
                    percentile,
                    _unit_log(activation),
                    torch.full((units,), group.depth, dtype=torch.float64),
                    torch.full((units,), math.log(units), dtype=torch.float64),
                    torch.full((units,), float(alive.double().mean()), dtype=torch.float64),
                    _unit_log(cost),
                    torch.full((units,), inputs.progress, dtype=torch.float64),
                    torch.full((units,), inputs.target_sparsity, dtype=torch.float64),
                ],
                dim=1,
            )
        )
    return torch.cat(columns).float() if columns else torch.zeros(0, len(UNIT_FEATURE_NAMES))
