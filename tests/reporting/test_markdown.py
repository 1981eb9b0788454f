"""The files of a report from real (short) runs: ``report.md``, ``summary.json`` and its totals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_autoprune import AutoPrune, reporting


def _record(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((run["folder"] / "summary.json").read_text())


def test_report_files_exist(run: dict[str, Any]) -> None:
    names = {p.name for p in run["folder"].iterdir()}
    assert {"report.md", "summary.json", *[reporting.PLOTS[k] for k in ("sparsity", "tradeoff", "layers")]} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"


def test_summary_json_matches_the_models_sparsity(run: dict[str, Any]) -> None:
    record = _record(run)
    params = dict(run["model"].named_parameters())
    zeros = sum(int((params[layer["name"]] == 0).sum()) for layer in record["layers"])
    total = sum(params[layer["name"]].numel() for layer in record["layers"])
    assert record["sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    for layer in record["layers"]:
        assert layer["kept"] == int((params[layer["name"]] != 0).sum()), layer["name"]
    assert {layer["name"] for layer in record["layers"]} == {t.name for t in run["callback"].targets}


def test_unstructured_runs_report_no_compute_saving_and_say_why(fixed_run: dict[str, Any]) -> None:
    totals = _record(fixed_run)["totals"]
    # zeroed single weights are still multiplied by dense kernels: no MACs saved, so none reported
    assert "macs_before" not in totals
    assert "saves no CPU time" in (fixed_run["folder"] / "report.md").read_text()


def test_structured_macs_count_output_positions_like_torch_pruning(tmp_path: Path, fit_run: Any) -> None:
    from lightning_autoprune import count_flops
    from lightning_autoprune.examples import CNN1DClassifier, MNIST1DDataModule

    callback = AutoPrune(target_sparsity=0.5, start_epoch=1, end_epoch=1, granularity="structured", report=False)
    model = CNN1DClassifier(channels=[8, 8])
    fit_run(tmp_path, callback, 2, model, MNIST1DDataModule(batch_size=64, num_samples=600), limit_val_batches=1)
    totals = callback.report_record()["totals"]
    # Length 40: the first conv keeps 40 positions, the second (stride 2) 20, the head 1; one MAC each.
    weights = {t.name: t.param for t in callback.targets if t.param_name == "weight" and t.param.ndim > 1}
    conv1, conv2, head = weights.values()
    assert totals["macs_before"] == conv1.numel() * 40 + conv2.numel() * 20 + head.numel()
    assert totals["macs_after"] < totals["macs_before"]
    # the same unit as count_flops (Torch-Pruning's count), which adds biases, norms and activations
    dense_macs = count_flops(CNN1DClassifier(channels=[8, 8]), torch.zeros(1, 40))
    assert totals["macs_before"] <= dense_macs < 1.2 * totals["macs_before"]


def test_fixed_run_reaches_its_target(fixed_run: dict[str, Any]) -> None:
    assert _record(fixed_run)["sparsity"] == pytest.approx(0.6, abs=2e-3)


def test_markdown_links_plots_and_skips_missing_diagnostics(run: dict[str, Any]) -> None:
    text = (run["folder"] / "report.md").read_text()
    for key in ("sparsity", "tradeoff", "layers"):
        assert f"]({reporting.PLOTS[key]})" in text
    assert reporting.PLOTS["importance"] not in text
    assert "No plot: the `lamp` scorer records no diagnostics" in text


def test_automatic_report_lists_its_decisions(automatic_run: dict[str, Any]) -> None:
    record = _record(automatic_run)
    text = (automatic_run["folder"] / "report.md").read_text()
    assert record["decisions"], "the automatic run made no decision"
    assert "## Search decisions" in text
    for decision in record["decisions"]:
        assert f"| {decision['epoch']} | {decision['decision']} |" in text


def test_missing_macs_and_metric_are_shown_as_absent(fixed_run: dict[str, Any], tmp_path: Path) -> None:
    record = _record(fixed_run)
    record["totals"] = {**record["totals"], "macs_before": None, "macs_after": None}
    record["reference"] = None
    reporting.write_report(record, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "MACs" not in text
    assert f"{record['reference_label']} n/a" in text
    assert "MACs" not in reporting.render_summary(record)


def test_a_fixed_target_run_does_not_call_its_first_value_dense(fixed_run: dict[str, Any]) -> None:
    record = _record(fixed_run)
    first = record["events"][0]
    assert record["reference"] == first["metric_before"]
    assert record["reference_label"] == f"before pruning (epoch {first['epoch']})"
    summary = reporting.render_summary(record)
    assert f"before pruning (epoch {first['epoch']})" in summary
    assert "dense" not in summary.split("note:")[0]


def test_report_rebuilds_from_summary_json(run: dict[str, Any], tmp_path: Path) -> None:
    reporting.write_report(_record(run), tmp_path)
    assert (tmp_path / "report.md").read_text() == (run["folder"] / "report.md").read_text()


def test_a_failed_write_leaves_the_previous_report_intact(
    fixed_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record(fixed_run)
    reporting.write_report(record, tmp_path)
    before = (tmp_path / "report.md").read_text()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        reporting.write_report({**record, "sparsity": 0.99}, tmp_path)
    assert (tmp_path / "report.md").read_text() == before
    assert json.loads((tmp_path / "summary.json").read_text()) == record
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_automatic_mode_labels_its_reference_as_dense(automatic_run: dict[str, Any]) -> None:
    record = _record(automatic_run)
    # A 10-epoch fit from scratch may still climb when the search must start: then the dense trend.
    label = record["reference_label"]
    pattern = r"dense reference \((plateau (mean|best),|trend of) epochs \d+-\d+(, at the last validation)?\)$"
    assert re.match(pattern, label)
    assert "dense reference" in reporting.render_summary(record)
