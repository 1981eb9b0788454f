"""The summary in the terminal: a plain-text table, and the same content as ``rich`` tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lightning_autoprune.reporting.tables import (
    fidelity_table,
    fmt,
    metric_line,
    shape,
    speed_note,
    total_rows,
    total_table_rows,
)

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def render_summary(record: Mapping[str, Any]) -> str:
    """A plain-text table: per tensor shape, density and weights kept; totals and the metric.

    The fallback for :meth:`AutoPrune.summary` and for logs; :func:`print_summary` draws the same
    content as a ``rich`` table.

    Example:
        >>> record = {"layers": [{"name": "fc.weight", "shape": [4, 2], "numel": 8, "kept": 2, "density": 0.25}],
        ...           "sparsity": 0.75, "monitor": "val_acc", "reference": 0.9, "final_metric": 0.895,
        ...           "reference_label": "dense reference",
        ...           "totals": {"params_model": 10, "params_model_nonzero": 4}, "granularity": "structured"}
        >>> print(render_summary(record))
        [AutoPrune] summary
        tensor                                   shape               density       kept
        fc.weight                                4x2                  0.2500          2
        total                                                         0.2500          2  (sparsity 0.7500)
        parameters: 10 -> 4 nonzero
        val_acc: dense reference 0.9000 -> final 0.8950 (-0.0050)
    """
    lines = ["[AutoPrune] summary", f"{'tensor':<40} {'shape':<18} {'density':>8} {'kept':>10}"]
    kept_total = numel_total = 0
    for layer in record["layers"]:
        lines.append(f"{layer['name']:<40} {shape(layer):<18} {layer['density']:>8.4f} {layer['kept']:>10}")
        kept_total += layer["kept"]
        numel_total += layer["numel"]
    density = kept_total / numel_total if numel_total else 1.0
    lines.append(f"{'total':<40} {'':<18} {density:>8.4f} {kept_total:>10}  (sparsity {record['sparsity']:.4f})")
    for label, before, after in total_rows(record):
        lines.append(f"{label}: {before} -> {after}")
    metric = metric_line(record)
    if metric:
        lines.append(metric)
    note = speed_note(record)
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def print_summary(record: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the summary as ``rich`` tables: per tensor, totals, and the importance model's fidelity.

    Args:
        record: what :meth:`AutoPrune.report_record` returns.
        console: where to print; ``None`` prints to standard output (wide enough for every tensor
            name when the output is not a terminal, so logs keep whole names).

    Example:
        >>> import os
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
            layer["name"], shape(layer), f"{layer['density']:.4f}", f"{layer['kept']:,}", f"{layer['numel']:,}"
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
    for label, before, after, change in total_table_rows(record):
        totals.add_row(label, before, after, change)
    if totals.row_count:
        console.print(totals)
    note = speed_note(record)
    if note:
        console.print(f"note: {note}")

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
            table.add_row(metric, *(fmt(values.get((metric, scorer))) for scorer in scorers))
        console.print(table)
