"""What the user sees after pruning: the summary table, ``report.md`` with plots, ``summary.json``.

Everything here works from the plain record that :meth:`AutoPrune.report_record` returns (JSON-ready
primitives), so a report can be rebuilt from a saved ``summary.json`` alone::

    record = json.loads(Path("summary.json").read_text())
    write_report(record, "rebuilt")

Optional parts of the record are shown when present and skipped (with a word saying so) when not:
``totals["macs_before"]``/``totals["macs_after"]`` (multiply-accumulates per sample; structured
runs only), the dense ``reference`` and ``final_metric``,
search ``decisions`` and ``importance_diagnostics`` (a list of dicts, one per pruning event, with
numeric fidelity entries such as ``spearman_learned``/``spearman_lamp`` and an optional
``feature_importances`` mapping of feature name to importance).

The modules: :mod:`~lightning_autoprune.reporting.console` (the terminal summary),
:mod:`~lightning_autoprune.reporting.markdown` (``report.md`` and ``summary.json``),
:mod:`~lightning_autoprune.reporting.plots` (the figures) and
:mod:`~lightning_autoprune.reporting.tables` (the numbers all three show). Nothing here imports
Lightning or the callback; ``rich`` and ``matplotlib`` are imported when a summary or a figure is drawn.
"""

from __future__ import annotations

from lightning_autoprune.reporting.console import print_summary, render_summary
from lightning_autoprune.reporting.markdown import render_markdown, rewrite_text, write_report
from lightning_autoprune.reporting.plots import (
    DPI,
    FIGSIZE,
    PLOTS,
    plot_importance,
    plot_layers,
    plot_sparsity,
    plot_tradeoff,
)
from lightning_autoprune.reporting.tables import FIDELITY_METRICS, fidelity_table

__all__ = [
    "DPI",
    "FIDELITY_METRICS",
    "FIGSIZE",
    "PLOTS",
    "fidelity_table",
    "plot_importance",
    "plot_layers",
    "plot_sparsity",
    "plot_tradeoff",
    "print_summary",
    "render_markdown",
    "render_summary",
    "rewrite_text",
    "write_report",
]
