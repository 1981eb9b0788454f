"""The summary in the terminal: the plain-text table and the ``rich`` tables, from real runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lightning_autoprune import reporting


def _record(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((run["folder"] / "summary.json").read_text())


def test_rich_summary_lists_every_tensor(run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    record = _record(run)
    reporting.print_summary(record)
    text = capsys.readouterr().out
    for layer in record["layers"]:
        assert layer["name"] in text
        assert "x".join(map(str, layer["shape"])) in text
        assert f"{layer['density']:.4f}" in text
    assert f"{record['totals']['params_prunable']:,}" in text
    assert record["monitor"] in text


def test_macs_are_shown_when_present(fixed_run: dict[str, Any]) -> None:
    record = _record(fixed_run)
    record["totals"] = {**record["totals"], "macs_before": 2_000_000, "macs_after": 500_000}
    assert "MACs per sample: 2.00M -> 500.0k" in reporting.render_summary(record)


def test_unstructured_summary_says_it_saves_no_cpu_time(fixed_run: dict[str, Any]) -> None:
    assert "saves no CPU time" in reporting.render_summary(_record(fixed_run))
