"""The files of a report: ``report.md`` with its PNG plots, and ``summary.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_autoprune.core.files import atomic_write, atomic_write_text
from lightning_autoprune.reporting.plots import (
    DPI,
    PLOTS,
    plot_importance,
    plot_layers,
    plot_sparsity,
    plot_tradeoff,
)
from lightning_autoprune.reporting.tables import (
    diagnostics_list,
    fidelity_table,
    fmt,
    metric_line,
    shape,
    speed_note,
    total_table_rows,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


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
    atomic_write_text(folder / "report.md", render_markdown(record, plots))
    atomic_write_text(folder / "summary.json", json.dumps(record, indent=2) + "\n")
    return folder


def rewrite_text(record: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Rewrite ``report.md`` and ``summary.json`` of a report :func:`write_report` wrote, keeping its plots.

    For what is known only after the report was first written (the result of compaction).

    Example:
        >>> import tempfile
        >>> record = {"layers": [], "sparsity": 0.5, "compaction": {"error": "it failed"}}
        >>> folder = rewrite_text(record, tempfile.mkdtemp())
        >>> "compaction failed" in (folder / "report.md").read_text()
        True
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {key: name if (folder / name).exists() else None for key, name in PLOTS.items()}
    atomic_write_text(folder / "report.md", render_markdown(record, plots))
    atomic_write_text(folder / "summary.json", json.dumps(record, indent=2) + "\n")
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
    metric = metric_line(record)
    if metric:
        out.append(f"- {metric}")
    if record.get("stop_reason"):
        out.append(f"- the search stopped: {record['stop_reason']}")
    note = speed_note(record)
    if note:
        out.append(f"- note: {note}")
    compaction = record.get("compaction") or {}
    if compaction.get("error"):
        out.append(f"- compaction failed, the masked model was kept: {compaction['error']}")
    elif compaction.get("params_after") is not None:
        out.append(
            f"- compacted model: {compaction['params_before']:,} -> {compaction['params_after']:,} parameters, "
            f"saved to `{compaction['path']}`"
        )
    overhead = record.get("overhead_seconds") or {}
    if overhead:
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in overhead.items() if isinstance(v, (int, float)))
        out.append(f"- time spent by AutoPrune: {parts}")
    rows = total_table_rows(record)
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
            out += _allocation_markdown(record.get("importance_diagnostics"))

    out += ["", "## Tensors", "", "| tensor | shape | density | kept | of |", "| --- | --- | ---: | ---: | ---: |"]
    for layer in record["layers"]:
        out.append(
            f"| `{layer['name']}` | {shape(layer)} | {layer['density']:.4f} | {layer['kept']:,} | {layer['numel']:,} |"
        )
    decisions = record.get("decisions") or []
    if decisions:
        out += ["", "## Search decisions", "", f"| epoch | decision | sparsity | {monitor} | drop | note |"]
        out.append("| ---: | --- | ---: | ---: | ---: | --- |")
        for d in decisions:
            sparsity = d.get("proposed") if d.get("decision") != "stop" else d.get("accepted")
            out.append(
                f"| {d.get('epoch')} | {d.get('decision')} | {fmt(sparsity)} | {fmt(d.get('value'))} "
                f"| {fmt(d.get('drop'))} | {d.get('reason', '')} |"
            )
    events = record.get("events") or []
    if events:
        out += ["", "## Pruning events", "", f"| epoch | sparsity before | after | {monitor} before | after |"]
        out.append("| ---: | ---: | ---: | ---: | ---: |")
        for e in events:
            out.append(
                f"| {e.get('epoch')} | {fmt(e.get('sparsity_before'))} | {fmt(e.get('sparsity'))} "
                f"| {fmt(e.get('metric_before'))} | {fmt(e.get('metric_after'))} |"
            )
    out += ["", "`summary.json` holds everything above, machine-readable.", ""]
    return "\n".join(out)


def _save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG at ``path``, atomically (fast compression; the files stay small)."""
    atomic_write(path, lambda out: figure.savefig(out, dpi=DPI, format="png", pil_kwargs={"compress_level": 1}))


def _allocation_markdown(diagnostics: Any) -> list[str]:
    """Why the last learned event pruned what it did: each tensor's share under the applied step and under Taylor."""
    entries = [e for e in diagnostics_list(diagnostics) if isinstance(e.get("layer_removed"), Mapping)]
    if not entries:
        return []
    last = entries[-1]
    used = last.get("used", "learned")
    losses = last.get("step_losses") or {}
    out = [
        "",
        f"Epoch {last.get('epoch')}: the step applied was `{used}`'s, the lowest measured calibration loss "
        f"({', '.join(f'{name} {fmt(value)}' for name, value in losses.items())}). Share of each tensor's kept "
        "weights it pruned, against Taylor's step:",
        "",
        f"| tensor | `{used}` | `taylor` |",
        "| --- | ---: | ---: |",
    ]
    for name, shares in last["layer_removed"].items():
        out.append(f"| `{name}` | {fmt(shares.get(used))} | {fmt(shares.get('taylor'))} |")
    return out


def _fidelity_markdown(diagnostics: Any) -> list[str]:
    entries = diagnostics_list(diagnostics)
    fidelity = fidelity_table(entries)
    if fidelity is None:
        return []
    metrics, scorers, values, _ = fidelity
    out = ["", "| metric | " + " | ".join(scorers) + " |", "| --- |" + " ---: |" * len(scorers)]
    for metric in metrics:
        out.append(f"| {metric} | " + " | ".join(fmt(values.get((metric, s))) for s in scorers) + " |")
    if len(entries) > 1:
        out.append(f"\nLast of {len(entries)} pruning events; every event is in `summary.json`.")
    return out
