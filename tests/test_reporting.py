"""The report of real (short) runs: summary table, ``report.md`` with PNG plots, ``summary.json``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from rich.console import Console

from lightning_autoprune import AutoPrune, reporting
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier

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


def _fit(
    tmp: Path,
    callback: AutoPrune,
    max_epochs: int,
    model: LightningModule | None = None,
    datamodule: LightningDataModule | None = None,
    **trainer_extra: Any,
) -> dict[str, Any]:
    seed_everything(0, verbose=False)
    model = model or MLPClassifier(hidden=[64, 64], lr=1e-2)
    trainer = Trainer(
        max_epochs=max_epochs,
        limit_train_batches=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp),
        callbacks=[callback],
        **trainer_extra,
    )
    trainer.fit(model, datamodule=datamodule or DigitsDataModule(batch_size=64))
    return {"model": model, "callback": callback, "folder": tmp / "autoprune"}


@pytest.fixture(scope="module")
def fixed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fit to 60% sparsity over epochs 1..2; the report goes to the default folder."""
    callback = AutoPrune(target_sparsity=0.6, start_epoch=1, end_epoch=2, importance="lamp")
    return _fit(tmp_path_factory.mktemp("fixed"), callback, 4)


@pytest.fixture(scope="module")
def automatic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real fit in automatic mode (accept/rollback decisions); short, so its budget warning is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*automatic search has only", category=UserWarning)
        return _fit(tmp_path_factory.mktemp("automatic"), AutoPrune(importance="lamp"), 10)


@pytest.fixture(params=["fixed_run", "automatic_run"])
def run(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(request.param)


def _record(run: dict[str, Any]) -> dict[str, Any]:
    return json.loads((run["folder"] / "summary.json").read_text())


def test_report_files_exist(run: dict[str, Any]) -> None:
    names = {p.name for p in run["folder"].iterdir()}
    assert {"report.md", "summary.json", *[reporting.PLOTS[k] for k in ("sparsity", "tradeoff", "layers")]} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"


def test_pngs_decode_with_the_expected_size(run: dict[str, Any]) -> None:
    for key in ("sparsity", "tradeoff", "layers"):
        image = matplotlib.image.imread(run["folder"] / reporting.PLOTS[key])
        assert image.shape[:2] == PLOT_PIXELS, key
        assert image[..., :3].std() > 0.05, f"{key} is blank"


def test_summary_json_matches_the_models_sparsity(run: dict[str, Any]) -> None:
    record = _record(run)
    params = dict(run["model"].named_parameters())
    zeros = sum(int((params[layer["name"]] == 0).sum()) for layer in record["layers"])
    total = sum(params[layer["name"]].numel() for layer in record["layers"])
    assert record["sparsity"] == pytest.approx(zeros / total, abs=1e-12)
    for layer in record["layers"]:
        assert layer["kept"] == int((params[layer["name"]] != 0).sum()), layer["name"]
    assert {layer["name"] for layer in record["layers"]} == {t.name for t in run["callback"].targets}


def test_flops_totals_count_the_kept_weights_of_every_layer(fixed_run: dict[str, Any]) -> None:
    totals = _record(fixed_run)["totals"]
    # MLP 64-64-64-10: each weight is one multiply-add (2 FLOPs) per sample.
    assert totals["flops_before"] == 2 * (64 * 64 + 64 * 64 + 64 * 10)
    params = dict(fixed_run["model"].named_parameters())
    kept = sum(int((params[t.name] != 0).sum()) for t in fixed_run["callback"].targets)
    assert totals["flops_after"] == 2 * kept
    assert "FLOPs" in (fixed_run["folder"] / "report.md").read_text()


def test_conv_flops_count_output_positions(tmp_path: Path) -> None:
    from lightning_autoprune.examples import CNN1DClassifier, MNIST1DDataModule

    callback = AutoPrune(target_sparsity=0.5, start_epoch=1, end_epoch=1, importance="lamp", report=False)
    model = CNN1DClassifier(channels=[8, 8])
    _fit(tmp_path, callback, 2, model, MNIST1DDataModule(batch_size=64, num_samples=600), limit_val_batches=1)
    totals = callback.report_record()["totals"]
    # Length 40: the first conv keeps 40 positions, the second (stride 2) 20, the head 1.
    conv1, conv2, head = (t.param for t in callback.targets)
    assert totals["flops_before"] == 2 * (conv1.numel() * 40 + conv2.numel() * 20 + head.numel())
    assert totals["flops_after"] < totals["flops_before"]


def test_fixed_run_reaches_its_target(fixed_run: dict[str, Any]) -> None:
    assert _record(fixed_run)["sparsity"] == pytest.approx(0.6, abs=2e-3)


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


def test_diagnostics_are_plotted_next_to_the_baselines(
    fixed_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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


def test_missing_flops_and_metric_are_shown_as_absent(fixed_run: dict[str, Any], tmp_path: Path) -> None:
    record = _record(fixed_run)
    record["totals"] = {**record["totals"], "flops_before": None, "flops_after": None}
    record["reference"] = None
    reporting.write_report(record, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "FLOPs" not in text
    assert "dense n/a" in text
    assert "FLOPs" not in reporting.render_summary(record)


def test_flops_are_shown_when_present(fixed_run: dict[str, Any]) -> None:
    record = _record(fixed_run)
    record["totals"] = {**record["totals"], "flops_before": 2_000_000, "flops_after": 500_000}
    assert "FLOPs: 2.00M -> 500.0k" in reporting.render_summary(record)


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
