"""The PNG figures of ``report.md``, from real runs and from given diagnostics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib.image
from rich.console import Console

from lightning_autoprune import reporting

PLOT_PIXELS = (round(reporting.FIGSIZE[1] * reporting.DPI), round(reporting.FIGSIZE[0] * reporting.DPI))
DIAGNOSTICS = [
    {"epoch": 3, "spearman_learned": 0.5, "spearman_lamp": 0.25, "precision_at_k_learned": 0.375},
    {
        "epoch": 5,
        "spearman_learned": 0.8125,
        "spearman_lamp": 0.6875,
        "spearman_magnitude": 0.5625,
        "precision_at_k_learned": 0.71875,
        "precision_at_k_lamp": 0.65625,
        "precision_at_k_magnitude": 0.59375,
        "feature_importances": {"abs_weight": 0.5, "lamp": 0.3, "grad_weight": 0.2},
    },
]


def _record(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((run["folder"] / "summary.json").read_text())


def test_pngs_decode_with_the_expected_size(run: dict[str, Any]) -> None:
    for key in ("sparsity", "tradeoff", "layers"):
        image = matplotlib.image.imread(run["folder"] / reporting.PLOTS[key])
        assert image.shape[:2] == PLOT_PIXELS, key
        assert image[..., :3].std() > 0.05, f"{key} is blank"


def test_diagnostics_are_plotted_next_to_the_baselines(fixed_run: dict[str, Any], tmp_path: Path) -> None:
    record = {**_record(fixed_run), "importance_diagnostics": DIAGNOSTICS}
    folder = reporting.write_report(record, tmp_path)
    image = matplotlib.image.imread(folder / reporting.PLOTS["importance"])
    assert image.shape[0] == PLOT_PIXELS[0]
    text = (folder / "report.md").read_text()
    assert "| metric | learned | lamp | magnitude |" in text
    assert "| spearman | 0.8125 | 0.6875 | 0.5625 |" in text  # the last event's numbers, as given
    console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
    reporting.print_summary(record, console)
    shown = console.export_text()
    assert "event at epoch 5" in shown
    assert "0.7188" in shown
