"""The figures of ``report.md``, drawn with matplotlib outside pyplot's global state.

Each ``plot_*`` function takes the record and returns a :class:`~matplotlib.figure.Figure`, or
``None`` when the record has nothing for it to show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_autoprune.reporting.tables import big, diagnostics_list, fidelity_table, is_number, reference_label

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

#: Plot files, in the order ``report.md`` shows them.
PLOTS = {
    "sparsity": "sparsity_over_epochs.png",
    "tradeoff": "metric_vs_sparsity.png",
    "layers": "layer_density.png",
    "importance": "importance_model.png",
}
FIGSIZE = (6.0, 3.5)
DPI = 110


def plot_sparsity(record: Mapping[str, Any]) -> Figure | None:
    """Sparsity and target over epochs, with the monitored metric on a second axis; ``None`` without epochs."""
    timeline = record.get("timeline") or []
    if not timeline:
        return None
    figure, ax = _figure()
    epochs = [e["epoch"] for e in timeline]
    lines = ax.plot(epochs, [e["sparsity"] for e in timeline], color="C0", lw=2, marker="o", ms=3, label="sparsity")
    targets = [e.get("target") for e in timeline]
    if any(t is not None for t in targets):
        lines += ax.step(epochs, _nan(targets), where="post", color="C0", ls="--", lw=1, alpha=0.7, label="target")
    ax.set(xlabel="epoch", ylabel="sparsity", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    values = [e.get("metric") for e in timeline]
    if any(v is not None for v in values):
        twin = ax.twinx()
        monitor = record.get("monitor") or "metric"
        lines += twin.plot(epochs, _nan(values), color="C1", marker="s", ms=3, lw=1.5, label=monitor)
        if record.get("reference") is not None:
            label = f"{reference_label(record)} {monitor}"
            lines.append(twin.axhline(record["reference"], color="C1", ls=":", lw=1, label=label))
        twin.set_ylabel(monitor, color="C1")
        twin.tick_params(axis="y", colors="C1")
    rolled = [e["epoch"] for e in timeline if "rollback" in (e.get("decisions") or [])]
    marks = [ax.axvline(epoch, color="C3", alpha=0.35, lw=3, label="rollback") for epoch in rolled]
    lines += marks[:1]
    figure.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncols=5, fontsize=8)
    ax.set_title("Sparsity over epochs", fontsize=10)
    return figure


def plot_tradeoff(record: Mapping[str, Any]) -> Figure | None:
    """The monitored metric against sparsity along the run, accepted and rolled-back steps marked."""
    timeline = [e for e in record.get("timeline") or [] if e.get("metric") is not None]
    decisions = [d for d in record.get("decisions") or [] if d.get("decision") in ("accept", "rollback")]
    if not timeline and not decisions:
        return None
    monitor = record.get("monitor") or "metric"
    figure, ax = _figure()
    if timeline:
        xs, ys = [e["sparsity"] for e in timeline], [e["metric"] for e in timeline]
        ax.plot(xs, ys, color="0.6", lw=1, marker=".", ms=5, zorder=1, label="epochs (in order)")
        ax.scatter(xs[-1:], ys[-1:], marker="*", s=160, color="C2", edgecolor="k", zorder=4, label="final")
    reference = record.get("reference")
    if reference is not None:
        ax.axhline(reference, color="C1", ls=":", lw=1, label=f"{reference_label(record)} {monitor}")
        drop = record.get("max_metric_drop")
        if record.get("mode") == "automatic" and drop is not None:
            bound = reference - drop if record.get("monitor_mode", "max") == "max" else reference + drop
            ax.axhline(bound, color="C3", ls="--", lw=1, label="tolerance")
    styles = {"accept": ("o", "C0", "accepted"), "rollback": ("X", "C3", "rolled back")}
    for kind, (marker, color, label) in styles.items():
        chosen = [d for d in decisions if d["decision"] == kind and d.get("value") is not None]
        if chosen:
            ax.scatter(
                [d["proposed"] for d in chosen],
                [d["value"] for d in chosen],
                marker=marker,
                s=60,
                color=color,
                edgecolor="k",
                zorder=3,
                label=label,
            )
    ax.set(xlabel="sparsity", ylabel=monitor)
    ax.set_xlim(left=-0.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_title(f"{monitor} vs sparsity along the run", fontsize=10)
    return figure


def plot_layers(record: Mapping[str, Any]) -> Figure | None:
    """Horizontal bars of each pruned tensor's density, labelled with weights kept; ``None`` without tensors."""
    layers = record.get("layers") or []
    if not layers:
        return None
    height = max(FIGSIZE[1], 0.28 * len(layers) + 1.2)
    figure, ax = _figure((FIGSIZE[0], min(height, 12.0)))
    names = [_short(layer["name"], 40) for layer in layers]
    densities = [layer["density"] for layer in layers]
    positions = list(range(len(layers)))
    ax.barh(positions, densities, color="C0", height=0.7)
    for y, layer in zip(positions, layers, strict=True):  # a right-hand column: clear of bars and lines
        ax.text(1.02, y, f"{big(layer['kept'])}/{big(layer['numel'])}", va="center", fontsize=7)
    ax.set_yticks(positions, names, fontsize=7 if len(layers) > 8 else 8)
    ax.invert_yaxis()
    ax.set(xlabel="density (fraction of weights kept); at right: kept / total", xlim=(0, 1.3))
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.axvline(1 - record["sparsity"], color="C3", ls="--", lw=1, zorder=0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Density per tensor (dashed: overall {1 - record['sparsity']:.3f})", fontsize=10)
    return figure


def plot_importance(record: Mapping[str, Any]) -> Figure | None:
    """Feature importances and per-scorer fidelity from ``importance_diagnostics``; ``None`` without them."""
    diagnostics = diagnostics_list(record.get("importance_diagnostics"))
    if not diagnostics:
        return None
    importances = _feature_importances(diagnostics[-1])
    fidelity = fidelity_table(diagnostics)
    if not importances and fidelity is None:
        return None
    panels = int(bool(importances)) + int(fidelity is not None)
    figure, axes = _figure((FIGSIZE[0] * (1.0 if panels == 1 else 1.6), FIGSIZE[1]), columns=panels)
    axes_list = list(axes) if panels > 1 else [axes]
    if importances:
        ax = axes_list.pop(0)
        top = sorted(importances.items(), key=lambda kv: -abs(kv[1]))[:12]
        ax.barh(range(len(top)), [v for _, v in top], color="C2")
        ax.set_yticks(range(len(top)), [_short(k, 24) for k, _ in top], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="importance")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title("Feature importances" + (" (top 12)" if len(importances) > 12 else ""), fontsize=10)
    if fidelity is not None:
        ax = axes_list.pop(0)
        metrics, scorers, values, epoch = fidelity
        width = 0.8 / max(1, len(scorers))
        for j, scorer in enumerate(scorers):
            heights = [values.get((metric, scorer), math.nan) for metric in metrics]
            ax.bar(
                [i + (j - (len(scorers) - 1) / 2) * width for i in range(len(metrics))],
                heights,
                width=width,
                label=scorer,
                color=f"C{j}",
                edgecolor="k" if scorer == "learned" else None,
            )
        ax.set_xticks(range(len(metrics)), metrics, fontsize=8)
        ax.set(ylabel="held-out fidelity")
        ax.axhline(0, color="k", lw=0.5)
        low = min([0.0, *(v for v in values.values() if is_number(v))])
        ax.set_ylim(low, 1.22)  # room above the bars for the legend
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncols=min(4, len(scorers)), loc="upper center", framealpha=0.9)
        ax.set_title("Fidelity" + (f" (event at epoch {epoch})" if epoch is not None else ""), fontsize=10)
    return figure


def _figure(size: tuple[float, float] = FIGSIZE, columns: int = 1) -> tuple[Figure, Any]:
    """A new figure outside pyplot's global state (no GUI backend, nothing left open)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    return figure, figure.subplots(1, columns)


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _nan(values: Sequence[Any]) -> list[float]:
    return [float(v) if is_number(v) else math.nan for v in values]


def _feature_importances(entry: Mapping[str, Any]) -> dict[str, float]:
    raw = entry.get("feature_importances")
    if isinstance(raw, Mapping):
        return {str(k): float(v) for k, v in raw.items() if is_number(v)}
    names = entry.get("feature_names")
    if isinstance(raw, list) and isinstance(names, list) and len(raw) == len(names):
        return {str(k): float(v) for k, v in zip(names, raw, strict=True) if is_number(v)}
    return {}
