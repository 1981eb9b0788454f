"""What the user sees after pruning: the summary table, ``report.md`` with plots, ``summary.json``.

Everything here works from the plain record that :meth:`AutoPrune.report_record` returns (JSON-ready
primitives), so a report can be rebuilt from a saved ``summary.json`` alone::

    record = json.loads(Path("summary.json").read_text())
    write_report(record, "rebuilt")

Optional parts of the record are shown when present and skipped (with a word saying so) when not:
``totals["flops_before"]``/``totals["flops_after"]``, the dense ``reference`` and ``final_metric``,
search ``decisions`` and ``importance_diagnostics`` (a list of dicts, one per pruning event, with
numeric fidelity entries such as ``spearman_learned``/``spearman_lamp`` and an optional
``feature_importances`` mapping of feature name to importance).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from rich.console import Console

#: Prefixes of fidelity entries in ``importance_diagnostics`` (``<metric>_<scorer>``), longest first.
FIDELITY_METRICS = (
    "precision_at_k",
    "precision@k",
    "spearman",
    "kendall",
    "pearson",
    "precision",
    "recall",
    "r2",
    "auc",
)
#: Plot files, in the order ``report.md`` shows them.
PLOTS = {
    "sparsity": "sparsity_over_epochs.png",
    "tradeoff": "metric_vs_sparsity.png",
    "layers": "layer_density.png",
    "importance": "importance_model.png",
}
FIGSIZE = (6.0, 3.5)
DPI = 110


def _default_file_mode() -> int:
    """``0o666`` less the process umask: what ``open()`` would give (``mkstemp`` gives ``0o600``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


# ---------------------------------------------------------------------------------------------- text
def render_summary(record: Mapping[str, Any]) -> str:
    """A plain-text table: per tensor shape, density and weights kept; totals and the metric.

    The fallback for :meth:`AutoPrune.summary` and for logs; :func:`print_summary` draws the same
    content as a ``rich`` table.

    Example:
        >>> record = {"layers": [{"name": "fc.weight", "shape": [4, 2], "numel": 8, "kept": 2, "density": 0.25}],
        ...           "sparsity": 0.75, "monitor": "val_acc", "reference": 0.9, "final_metric": 0.895,
        ...           "totals": {"params_model": 10, "params_model_nonzero": 4, "flops_before": None}}
        >>> print(render_summary(record))
        [AutoPrune] summary
        tensor                                   shape               density       kept
        fc.weight                                4x2                  0.2500          2
        total                                                         0.2500          2  (sparsity 0.7500)
        parameters: 10 -> 4 nonzero
        val_acc: dense 0.9000 -> final 0.8950 (-0.0050)
    """
    lines = ["[AutoPrune] summary", f"{'tensor':<40} {'shape':<18} {'density':>8} {'kept':>10}"]
    kept_total = numel_total = 0
    for layer in record["layers"]:
        lines.append(f"{layer['name']:<40} {_shape(layer):<18} {layer['density']:>8.4f} {layer['kept']:>10}")
        kept_total += layer["kept"]
        numel_total += layer["numel"]
    density = kept_total / numel_total if numel_total else 1.0
    lines.append(f"{'total':<40} {'':<18} {density:>8.4f} {kept_total:>10}  (sparsity {record['sparsity']:.4f})")
    for label, before, after in _total_rows(record):
        lines.append(f"{label}: {before} -> {after}")
    metric = _metric_line(record)
    if metric:
        lines.append(metric)
    return "\n".join(lines)


def print_summary(record: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the summary as ``rich`` tables: per tensor, totals, and the importance model's fidelity.

    Args:
        record: what :meth:`AutoPrune.report_record` returns.
        console: where to print; ``None`` prints to standard output (wide enough for every tensor
            name when the output is not a terminal, so logs keep whole names).

    Example:
        >>> from rich.console import Console
        >>> record = {"layers": [{"name": "fc.weight", "shape": [4, 2], "numel": 8, "kept": 2, "density": 0.25}],
        ...           "sparsity": 0.75, "monitor": None, "reference": None, "final_metric": None}
        >>> console = Console(record=True, width=100, file=open(os.devnull, "w"))
        >>> print_summary(record, console)
        >>> "fc.weight" in console.export_text()
        True
    """
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            longest = max((len(layer["name"]) for layer in record["layers"]), default=10)
            console = Console(width=max(100, longest + 60))

    table = Table(title=f"AutoPrune summary (sparsity {record['sparsity']:.2%})", title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("density", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("of", justify="right")
    kept_total = numel_total = 0
    for layer in record["layers"]:
        table.add_row(
            layer["name"], _shape(layer), f"{layer['density']:.4f}", f"{layer['kept']:,}", f"{layer['numel']:,}"
        )
        kept_total += layer["kept"]
        numel_total += layer["numel"]
    density = kept_total / numel_total if numel_total else 1.0
    table.add_section()
    table.add_row("total", "", f"{density:.4f}", f"{kept_total:,}", f"{numel_total:,}", style="bold")
    console.print(table)

    totals = Table(title="before -> after", title_justify="left")
    totals.add_column("")
    totals.add_column("before", justify="right")
    totals.add_column("after", justify="right")
    totals.add_column("change", justify="right")
    for label, before, after, change in _total_table_rows(record):
        totals.add_row(label, before, after, change)
    if totals.row_count:
        console.print(totals)

    fidelity = fidelity_table(record.get("importance_diagnostics"))
    if fidelity is not None:
        metrics, scorers, values, epoch = fidelity
        where = f" (held-out, event at epoch {epoch})" if epoch is not None else " (held-out)"
        title = f"importance model fidelity{where}"
        table = Table(title=title, title_justify="left", min_width=len(title))
        table.add_column("metric")
        for scorer in scorers:
            table.add_column(scorer, justify="right", style="bold" if scorer == "learned" else None)
        for metric in metrics:
            table.add_row(metric, *(_fmt(values.get((metric, scorer))) for scorer in scorers))
        console.print(table)


# ---------------------------------------------------------------------------------------------- files
def write_report(record: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``summary.json``, ``report.md`` and its PNG plots into ``directory``; return the folder.

    Every file is written atomically (a temporary file in the same folder, then renamed), so a
    reader never sees half a file; ``summary.json`` comes last, so it never describes plots that
    failed to be written. Plots that have no data (no diagnostics, a run that never
    pruned) are skipped and ``report.md`` says why.

    Example:
        >>> import tempfile
        >>> record = {"layers": [{"name": "fc.weight", "shape": [4, 2], "numel": 8, "kept": 2, "density": 0.25}],
        ...           "sparsity": 0.75, "monitor": "val_acc", "reference": 0.9, "final_metric": 0.9,
        ...           "timeline": [{"epoch": 0, "sparsity": 0.0, "target": 0.75, "metric": 0.9},
        ...                        {"epoch": 1, "sparsity": 0.75, "target": 0.75, "metric": 0.9}]}
        >>> folder = write_report(record, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
        ['layer_density.png', 'metric_vs_sparsity.png', 'report.md', 'sparsity_over_epochs.png',
         'summary.json']
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str | None] = {}
    drawers: dict[str, Callable[[Mapping[str, Any]], Figure | None]] = {
        "sparsity": plot_sparsity,
        "tradeoff": plot_tradeoff,
        "layers": plot_layers,
        "importance": plot_importance,
    }
    for key, draw in drawers.items():
        figure = draw(record)
        if figure is None:
            plots[key] = None
            continue
        _save_figure(figure, folder / PLOTS[key])
        plots[key] = PLOTS[key]
    _atomic_write_bytes(folder / "report.md", render_markdown(record, plots).encode())
    _atomic_write_bytes(folder / "summary.json", (json.dumps(record, indent=2) + "\n").encode())
    return folder


def render_markdown(record: Mapping[str, Any], plots: Mapping[str, str | None]) -> str:
    """The text of ``report.md``: settings, results, the plots that exist, and the tables behind them.

    Args:
        record: what :meth:`AutoPrune.report_record` returns.
        plots: plot key (see :data:`PLOTS`) -> file name next to ``report.md``, or ``None`` if skipped.

    Example:
        >>> record = {"layers": [], "sparsity": 0.0, "mode": "fixed", "target_sparsity": 0.5}
        >>> print(render_markdown(record, {}).splitlines()[0])
        # AutoPrune report
    """
    monitor = record.get("monitor") or "metric"
    out = ["# AutoPrune report", ""]
    settings = [
        ("mode", record.get("mode")),
        ("target sparsity", record.get("target_sparsity")),
        ("max metric drop", record.get("max_metric_drop") if record.get("mode") == "automatic" else None),
        ("importance", record.get("importance")),
        ("granularity", record.get("granularity")),
        ("schedule", record.get("schedule") if record.get("mode") != "automatic" else None),
        ("monitor", f"{record['monitor']} ({record.get('monitor_mode')})" if record.get("monitor") else None),
    ]
    out.append(" · ".join(f"**{k}** `{v}`" for k, v in settings if v is not None))
    out += ["", "## Result", ""]
    out.append(f"- sparsity reached: **{record['sparsity']:.2%}** of the prunable weights are exactly zero")
    metric = _metric_line(record)
    if metric:
        out.append(f"- {metric}")
    if record.get("stop_reason"):
        out.append(f"- the search stopped: {record['stop_reason']}")
    overhead = record.get("overhead_seconds") or {}
    if overhead:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in overhead.items() if isinstance(v, (int, float)))
        out.append(f"- time spent by AutoPrune: {parts}")
    rows = _total_table_rows(record)
    if rows:
        out += ["", "| | before | after | change |", "| --- | ---: | ---: | ---: |"]
        out += [f"| {label} | {before} | {after} | {change} |" for label, before, after, change in rows]

    captions = {
        "sparsity": ("Sparsity over epochs", f"Sparsity reached (solid) and the target (dashed), with {monitor}."),
        "tradeoff": (
            f"{monitor} vs sparsity",
            "The path of the run, epoch by epoch, from dense to pruned"
            + ("; accepted steps are circles, rolled-back steps crosses." if record.get("decisions") else "."),
        ),
        "layers": ("Density per tensor", "Fraction of each tensor's weights kept."),
        "importance": ("Importance model", "Feature importances, and fidelity of each scorer on held-out ablations."),
    }
    skipped = {
        "sparsity": "no epochs were recorded.",
        "tradeoff": f"no validated {monitor} was recorded.",
        "layers": "no tensors were pruned.",
        "importance": f"the `{record.get('importance')}` scorer records no diagnostics (only the learned scorer does).",
    }
    for key, (title, caption) in captions.items():
        out += ["", f"## {title}", ""]
        name = plots.get(key)
        out.append(f"![{title}]({name})\n\n{caption}" if name else f"No plot: {skipped[key]}")
        if key == "importance":
            out += _fidelity_markdown(record.get("importance_diagnostics"))

    out += ["", "## Tensors", "", "| tensor | shape | density | kept | of |", "| --- | --- | ---: | ---: | ---: |"]
    for layer in record["layers"]:
        out.append(
            f"| `{layer['name']}` | {_shape(layer)} | {layer['density']:.4f} | {layer['kept']:,} | {layer['numel']:,} |"
        )
    decisions = record.get("decisions") or []
    if decisions:
        out += ["", "## Search decisions", "", f"| epoch | decision | sparsity | {monitor} | drop | note |"]
        out.append("| ---: | --- | ---: | ---: | ---: | --- |")
        for d in decisions:
            sparsity = d.get("proposed") if d.get("decision") != "stop" else d.get("accepted")
            out.append(
                f"| {d.get('epoch')} | {d.get('decision')} | {_fmt(sparsity)} | {_fmt(d.get('value'))} "
                f"| {_fmt(d.get('drop'))} | {d.get('reason', '')} |"
            )
    events = record.get("events") or []
    if events:
        out += ["", "## Pruning events", "", f"| epoch | sparsity before | after | {monitor} before | after |"]
        out.append("| ---: | ---: | ---: | ---: | ---: |")
        for e in events:
            out.append(
                f"| {e.get('epoch')} | {_fmt(e.get('sparsity_before'))} | {_fmt(e.get('sparsity'))} "
                f"| {_fmt(e.get('metric_before'))} | {_fmt(e.get('metric_after'))} |"
            )
    out += ["", "`summary.json` holds everything above, machine-readable.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- plots
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
            lines.append(twin.axhline(record["reference"], color="C1", ls=":", lw=1, label=f"dense {monitor}"))
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
        ax.axhline(reference, color="C1", ls=":", lw=1, label=f"dense {monitor}")
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
        ax.text(1.02, y, f"{_big(layer['kept'])}/{_big(layer['numel'])}", va="center", fontsize=7)
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
    diagnostics = _diagnostics(record.get("importance_diagnostics"))
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
        low = min([0.0, *(v for v in values.values() if _is_number(v))])
        ax.set_ylim(low, 1.22)  # room above the bars for the legend
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncols=min(4, len(scorers)), loc="upper center", framealpha=0.9)
        ax.set_title("Fidelity" + (f" (event at epoch {epoch})" if epoch is not None else ""), fontsize=10)
    return figure


def fidelity_table(
    diagnostics: Any,
) -> tuple[list[str], list[str], dict[tuple[str, str], float], Any] | None:
    """Fidelity numbers of the last diagnostics entry as ``(metrics, scorers, values, epoch)``.

    Entries named ``<metric>_<scorer>`` (``spearman_learned``, ``precision_at_k_lamp``...) or nested
    as ``{"fidelity": {scorer: {metric: value}}}`` are understood; other numbers are ignored.
    ``None`` when there is nothing to show. The learned scorer comes first.

    Example:
        >>> fidelity_table([{"epoch": 3, "spearman_learned": 0.8, "spearman_lamp": 0.6}])
        (['spearman'], ['learned', 'lamp'], {('spearman', 'learned'): 0.8, ('spearman', 'lamp'): 0.6}, 3)
        >>> fidelity_table(None) is None
        True
    """
    entries = _diagnostics(diagnostics)
    if not entries:
        return None
    last = entries[-1]
    values: dict[tuple[str, str], float] = {}
    nested = last.get("fidelity")
    if isinstance(nested, Mapping):
        for scorer, numbers in nested.items():
            if isinstance(numbers, Mapping):
                for metric, value in numbers.items():
                    if _is_number(value):
                        values[(str(metric), str(scorer))] = float(value)
    for key, value in last.items():
        if not _is_number(value):
            continue
        for metric in FIDELITY_METRICS:
            if key.startswith(metric + "_") and len(key) > len(metric) + 1:
                values[(metric, key[len(metric) + 1 :])] = float(value)
                break
    if not values:
        return None
    metrics = list(dict.fromkeys(m for m, _ in values))
    scorers = list(dict.fromkeys(s for _, s in values))
    scorers.sort(key=lambda s: s != "learned")
    return metrics, scorers, values, last.get("epoch")


# ---------------------------------------------------------------------------------------------- helpers
def _figure(size: tuple[float, float] = FIGSIZE, columns: int = 1) -> tuple[Figure, Any]:
    """A new figure outside pyplot's global state (no GUI backend, nothing left open)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    return figure, figure.subplots(1, columns)


def _save_figure(figure: Figure, path: Path) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(tmp, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})  # fast; files stay small
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``: never half-written."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _shape(layer: Mapping[str, Any]) -> str:
    return "x".join(str(s) for s in layer["shape"])


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "n/a"


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _nan(values: Sequence[Any]) -> list[float]:
    return [float(v) if _is_number(v) else math.nan for v in values]


def _metric_line(record: Mapping[str, Any]) -> str | None:
    reference, final = record.get("reference"), record.get("final_metric")
    if not record.get("monitor") or (reference is None and final is None):
        return None
    change = f" ({final - reference:+.4f})" if _is_number(reference) and _is_number(final) else ""
    return f"{record['monitor']}: dense {_fmt(reference)} -> final {_fmt(final)}{change}"


def _total_rows(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, before, after)`` for parameters and FLOPs, where the record has them."""
    totals = record.get("totals") or {}
    rows = []
    if totals.get("params_model") is not None and totals.get("params_model_nonzero") is not None:
        rows.append(("parameters", f"{totals['params_model']:,}", f"{totals['params_model_nonzero']:,} nonzero"))
    if totals.get("flops_before") is not None and totals.get("flops_after") is not None:
        rows.append(("FLOPs", _big(totals["flops_before"]), _big(totals["flops_after"])))
    return rows


def _total_table_rows(record: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(label, before, after, change)`` rows of the totals table: parameters, FLOPs, the metric."""
    totals = record.get("totals") or {}
    rows = []
    pairs = [
        ("prunable weights", "params_prunable", "params_kept"),
        ("all parameters (nonzero)", "params_model", "params_model_nonzero"),
        ("FLOPs", "flops_before", "flops_after"),
    ]
    for label, before_key, after_key in pairs:
        before, after = totals.get(before_key), totals.get(after_key)
        if _is_number(before) and _is_number(after):
            change = f"{after / before - 1:+.1%}" if before else ""
            rows.append((label, _big(before), _big(after), change))
    reference, final = record.get("reference"), record.get("final_metric")
    if record.get("monitor") and (reference is not None or final is not None):
        change = f"{final - reference:+.4f}" if _is_number(reference) and _is_number(final) else ""
        rows.append((f"{record['monitor']} (dense -> final)", _fmt(reference), _fmt(final), change))
    return rows


def _big(value: float) -> str:
    """``1234567`` -> ``'1.23M'``; small integers stay exact.

    Example:
        >>> _big(1234567), _big(8832), _big(400000), _big(2.5e9)
        ('1.23M', '8,832', '400.0k', '2.50G')
    """
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e5, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}" if scale > 1e5 else f"{value / 1e3:.1f}k"
    return f"{value:,.0f}"


def _diagnostics(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, Mapping)]


def _feature_importances(entry: Mapping[str, Any]) -> dict[str, float]:
    raw = entry.get("feature_importances")
    if isinstance(raw, Mapping):
        return {str(k): float(v) for k, v in raw.items() if _is_number(v)}
    names = entry.get("feature_names")
    if isinstance(raw, list) and isinstance(names, list) and len(raw) == len(names):
        return {str(k): float(v) for k, v in zip(names, raw, strict=True) if _is_number(v)}
    return {}


def _fidelity_markdown(diagnostics: Any) -> list[str]:
    entries = _diagnostics(diagnostics)
    fidelity = fidelity_table(entries)
    if fidelity is None:
        return []
    metrics, scorers, values, _ = fidelity
    out = ["", "| metric | " + " | ".join(scorers) + " |", "| --- |" + " ---: |" * len(scorers)]
    for metric in metrics:
        out.append(f"| {metric} | " + " | ".join(_fmt(values.get((metric, s))) for s in scorers) + " |")
    if len(entries) > 1:
        out.append(f"\nLast of {len(entries)} pruning events; every event is in `summary.json`.")
    return out
