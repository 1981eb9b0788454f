"""The structured benchmark track at tiny scale: files, summary fields, FLOPs matching, report section."""

from __future__ import annotations

import doctest
import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import report, structured
from benchmarks.protocol import Budget

TINY_BUDGET = Budget(
    dense_epochs=1,
    finetune_epochs=3,
    start_epoch=1,
    end_epoch=2,
    limit_train_batches=3,
    limit_val_batches=1,
    limit_test_batches=1,
    calibration_samples=64,
)
METHODS = (structured.REFERENCE, structured.ROUNDED, "tp_magnitude", "scratch")
TINY_GRID = structured.Grid(seeds=[0], levels=[0.5], methods=METHODS)


@pytest.fixture(scope="module")
def tiny_track(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("structured")
    structured.run_track(out, TINY_GRID, TINY_BUDGET, log=lambda line: None)
    summary = structured.run_latency(
        out, [0], [0.5], runs={1: (1, 3), 256: (1, 2)}, rounds=2, threads=(1, 2), log=lambda line: None
    )
    return out, summary


def test_the_reference_is_autoprune_with_its_structured_default() -> None:
    assert structured.REFERENCE == "autoprune_magnitude"


def test_one_file_per_run_and_the_models_latency_needs(tiny_track: tuple[Path, dict]) -> None:
    out, _ = tiny_track
    base = structured.track_dir(out)
    written = {p.relative_to(base).as_posix() for p in base.glob("*/*.json")}
    timed = {f"latency/{m}_t{t}_s0.50_seed0.json" for m in structured.LATENCY_METHODS for t in (1, 2)}
    assert written == {"dense/seed0.json"} | timed | {f"{m}/s0.50_seed0.json" for m in METHODS}
    assert (base / "models" / "dense_seed0.pt").exists()
    for method in structured.LATENCY_METHODS:
        assert (base / "models" / f"{method}_s0.50_seed0.pt").exists()
    assert (out / structured.TRACK / "summary.json").exists()
    record = json.loads((base / "tp_magnitude" / "s0.50_seed0.json").read_text())
    for key in ("method", "level", "seed", "test_acc", "params", "flops", "widths", "budget", "tp_events"):
        assert key in record
    assert record["environment"]["torch"] == torch.__version__
    assert [e["epoch"] for e in record["tp_events"]] == [1, 2]  # the same epochs as AutoPrune's events


def test_compacted_model_is_smaller_and_matches_the_masked_one(tiny_track: tuple[Path, dict]) -> None:
    out, _ = tiny_track
    dense = json.loads(structured.run_path(out, "dense", None, 0).read_text())
    reference = json.loads(structured.run_path(out, structured.REFERENCE, 0.5, 0).read_text())
    assert reference["params"] < dense["params"]
    assert reference["flops"] < dense["flops"]
    assert reference["widths"] != dense["widths"]
    assert reference["test_acc"] == pytest.approx(reference["masked_test_acc"], abs=2e-3)
    # the level counts FLOPs of the masked conv/linear layers: whole channels stop just below it
    assert reference["target_unit"] == "flops"
    assert 0.4 <= reference["flops_sparsity"] <= 0.5
    rounded = json.loads(structured.run_path(out, structured.ROUNDED, 0.5, 0).read_text())
    assert rounded["widths"] != reference["widths"]
    assert all(w % 8 == 0 or w == d for w, d in zip(rounded["widths"], dense["widths"], strict=True))
    assert rounded["flops_sparsity"] <= 0.5


def test_rivals_match_the_reference_flops(tiny_track: tuple[Path, dict]) -> None:
    out, _ = tiny_track
    reference = json.loads(structured.run_path(out, structured.REFERENCE, 0.5, 0).read_text())
    tp = json.loads(structured.run_path(out, "tp_magnitude", 0.5, 0).read_text())
    scratch = json.loads(structured.run_path(out, "scratch", 0.5, 0).read_text())
    assert tp["flops"] == pytest.approx(reference["flops"], rel=0.05)
    assert tp["reference_flops"] == reference["flops"]
    assert scratch["widths"] == reference["widths"]
    assert scratch["flops"] == reference["flops"]
    assert scratch["params"] == reference["params"]


def test_summary_fields_and_goals(tiny_track: tuple[Path, dict]) -> None:
    _, summary = tiny_track
    assert summary["target_units"] == ["flops"]
    level = summary["levels"]["0.50"]
    assert level["label"] == "2x"
    assert set(level["methods"]) == set(METHODS)
    for method, cell in level["methods"].items():
        assert 0.0 <= cell["test_acc_mean"] <= 1.0
        assert cell["params_vs_dense"] > 1.0
        if method != structured.ROUNDED:  # rounded widths are not matched to the reference's FLOPs
            assert cell["flops_vs_reference_mean"] == pytest.approx(1.0, rel=0.05)
    assert set(level["comparisons"]) == {"tp_magnitude", structured.ROUNDED, "scratch", "dense"}
    assert not any(test["real"] for test in level["comparisons"].values())  # one seed proves nothing
    assert set(level["latency"]) == {f"{m}@{t}" for m in structured.LATENCY_METHODS for t in (1, 2)}
    for timed in level["latency"].values():
        for batch in ("batch_1", "batch_256"):
            cell = timed[batch]
            assert cell["dense_ms_median"] > 0
            assert cell["compact_ms_median"] > 0
            assert cell["ratio_per_seed"] == [pytest.approx(cell["ratio_median"])]
            assert cell["ratio_min_round"] <= cell["ratio_median"] <= cell["ratio_max_round"]
        assert timed["rounds"] == 2
    assert level["latency"][f"{structured.ROUNDED}@1"]["threads"] == 1
    goals = summary["goals"]
    assert goals["a"]["met"] in (True, False)
    candidates = goals["a"]["levels"]["0.50"]["candidates"]
    assert {(c["method"], c["threads"]) for c in candidates} == {
        (m, t) for m in structured.LATENCY_METHODS for t in (1, 2)
    }
    assert goals["b"]["levels"]["0.50"]["complete"] is False  # tp_taylor was not run
    assert goals["b"]["met"] is False


def test_resume_keeps_existing_runs(tiny_track: tuple[Path, dict]) -> None:
    out, _ = tiny_track
    path = structured.run_path(out, "scratch", 0.5, 0)
    before = path.stat().st_mtime_ns
    structured.run_track(out, TINY_GRID, TINY_BUDGET, resume=True, log=lambda line: None)
    assert path.stat().st_mtime_ns == before


def test_rivals_need_the_reference_run(tmp_path: Path) -> None:
    grid = structured.Grid(seeds=[0], levels=[0.5], methods=["scratch"])
    with pytest.raises(ValueError, match=structured.REFERENCE):
        structured.run_track(tmp_path, grid, TINY_BUDGET, log=lambda line: None)


def test_latency_without_the_dense_run_names_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dense_seed0\.pt.*Run `python -m benchmarks\.structured --out "):
        structured.run_latency(tmp_path, [0], [0.5], log=lambda line: None)


def test_latency_without_a_saved_model_names_the_training_command(
    tiny_track: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny_track
    copy = tmp_path / "results"
    shutil.copytree(out, copy)
    structured.model_path(copy, structured.ROUNDED, 0.5, 0).unlink()  # as in a clone: run files, no models
    with pytest.raises(FileNotFoundError, match=rf"{structured.ROUNDED}_s0\.50_seed0\.pt.*make bench"):
        structured.run_latency(copy, [0], [0.5], log=lambda line: None)


def test_report_renders_the_structured_section(tiny_track: tuple[Path, dict]) -> None:
    out, summary = tiny_track
    lines = report.render_structured(summary)
    text = "\n".join(lines)
    assert text.startswith("## Structured track")
    assert "### 2x: `target_sparsity=0.5`" in text
    assert "| `tp_magnitude` |" in text
    assert "dense / compacted" in text
    assert f"compacted `{structured.ROUNDED}` model, 1 torch thread " in text
    assert "### Goals" in text
    assert structured.load_summary(out / "nothing-here") is None


def test_docstring_examples() -> None:
    assert doctest.testmod(structured, optionflags=doctest.ELLIPSIS).failed == 0
