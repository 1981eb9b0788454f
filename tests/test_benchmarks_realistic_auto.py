"""The realistic tier's automatic-mode benchmark at miniature size: one seed per workload, its summary and sections."""

from __future__ import annotations

import doctest
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import protocol, realistic, realistic_auto, report

TINY_CHARS = {"train": 20_000, "val": 4_000, "test": 4_000}


def _budget(**kwargs: int) -> realistic.TierBudget:
    return realistic.TierBudget(
        dense_epochs=2,
        finetune_epochs=8,
        start_epoch=1,
        end_epoch=1,
        limit_train_batches=8,
        pretrain_batches=30,
        calibration_samples=32,
        **kwargs,
    )


@pytest.fixture(scope="module")
def tiny_auto(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tier = tmp_path_factory.mktemp("realistic")
    torch.set_num_threads(1)
    workload = replace(
        realistic.WORKLOADS["mnist1d-resnet"], samples=3000, widths=(8, 16), batch_size=32, budget=_budget()
    )
    datamodule = workload.datamodule()
    datamodule.setup("fit")
    record = realistic_auto.run_seed(workload, datamodule, 0, tier, tier / ".scratch", log=lambda _: None)
    return tier, record


def _tiny_lm() -> tuple[realistic.Workload, Any]:
    workload = replace(
        realistic.WORKLOADS["stdlib-charlm"],
        corpus_chars=TINY_CHARS,
        widths=(1, 16),
        batch_size=8,
        budget=_budget(limit_val_batches=4, limit_test_batches=4),
    )
    datamodule = workload.datamodule()
    datamodule.setup("fit")
    return workload, datamodule


#: One like-for-like fixed target (the setup's three would triple the fits and test nothing more).
TINY_LM_SETUP = replace(realistic_auto.SETUPS["stdlib-charlm"], matched_targets=(0.5,))


@pytest.fixture(scope="module")
def tiny_lm_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realistic_lm")


@pytest.fixture(scope="module")
def tiny_lm_auto(tiny_lm_tier: Path) -> dict:
    torch.set_num_threads(1)
    workload, datamodule = _tiny_lm()
    scratch = tiny_lm_tier / ".scratch"
    return realistic_auto.run_seed(workload, datamodule, 0, tiny_lm_tier, scratch, lambda _: None, TINY_LM_SETUP)


def test_one_seed_records_both_fits_the_search_and_the_ratios(tiny_auto: tuple[Path, dict]) -> None:
    tier, record = tiny_auto
    # The dense state was trained and saved where the tier keeps it, so the tier's runs can reuse it.
    assert realistic.dense_state_path(tier, "mnist1d-resnet", 0).exists()
    dense, auto = record["dense"], record["auto"]
    assert dense["events"] == 0
    assert dense["sparsity"] == 0.0
    assert [epoch for epoch, _ in dense["val_trace"]] == list(range(8)), "one validation per fine-tuning epoch"
    assert all(0.0 <= value <= 1.0 for _, value in dense["val_trace"]), "val_acc values"
    assert auto["callback_seconds"] > 0
    search = auto["search"]
    assert search["reference"] is not None, search
    assert search["dense_values"], "the dense phase validated before the search started"
    assert search["decisions"], "a search over 8 epochs decides at least once (or records why it stopped)"
    assert (record["metric"], record["mode"], record["tolerance"]) == ("test_acc", "max", 0.01)
    assert record["test_drop"] == pytest.approx(dense["test_acc"] - auto["test_acc"])
    assert record["within_tolerance"] == (record["test_drop"] <= 0.01 + 1e-9)
    assert record["time_vs_dense"] == pytest.approx(auto["fit_seconds"] / dense["fit_seconds"])
    assert record["fixed"]["sparsity"] is None, "the tiny tier has no fixed-target runs"


def test_the_language_model_is_judged_on_its_loss_in_nats(tiny_lm_auto: dict) -> None:
    record = tiny_lm_auto
    assert (record["metric"], record["mode"], record["tolerance"]) == ("test_loss", "min", 0.02)
    dense, auto = record["dense"], record["auto"]
    assert record["test_drop"] == pytest.approx(auto["test_loss"] - dense["test_loss"]), "a loss drops upward"
    assert len(dense["val_trace"]) == 8
    assert all(value > 0.5 for _, value in dense["val_trace"]), "values are losses in nats"
    search = auto["search"]
    assert search["dense_values"], "the dense phase validated val_loss"
    assert all(v > 0.5 for _, v in search["dense_values"]), "values are losses in nats, not accuracies"
    assert search["trend_uncertainty"] >= 0.0
    assert search["margin"] <= 0.01 + 1e-12, "the margin is capped at half the tolerance"
    if search["reference_rule"] != "trend":
        assert search["trend_uncertainty"] == 0.0, "no trend, nothing predicted"
    assert "monitor='val_loss'" in record["configuration"]


def test_the_language_model_reruns_its_fixed_targets_at_the_automatic_budget(tiny_lm_auto: dict) -> None:
    record = tiny_lm_auto
    matched = record["matched"]
    # Both schedules of an 8-epoch fine-tune: the tier's scaled (2-6) and the late one (6-7).
    assert [(r["target"], r["start_epoch"], r["end_epoch"]) for r in matched["runs"]] == [(0.5, 2, 6), (0.5, 6, 7)]
    for run in matched["runs"]:
        assert run["sparsity"] == pytest.approx(0.5, abs=0.01), "the fixed target was reached"
        assert run["test_drop"] == pytest.approx(run["test_loss"] - record["dense"]["test_loss"])
        assert run["within_tolerance"] == (run["test_drop"] <= 0.02 + 1e-9)
    held = [r["target"] for r in matched["runs"] if r["within_tolerance"]]
    assert matched["sparsity"] == max(held, default=0.0)
    assert matched["environment"]["git_commit"] == record["environment"]["git_commit"]


def test_a_seed_file_without_the_fixed_sweep_gets_it_added(tiny_lm_auto: dict, tiny_lm_tier: Path) -> None:
    """``--resume`` on a seed file written before the sweep existed runs the sweep alone and keeps the rest."""
    workload, datamodule = _tiny_lm()
    old = {k: v for k, v in tiny_lm_auto.items() if k != "matched"}
    # The dense state the first run saved in the tier is loaded, not trained again.
    saved = realistic.dense_state_path(tiny_lm_tier, "stdlib-charlm", 0).stat().st_mtime_ns
    scratch = tiny_lm_tier / ".scratch"
    added = realistic_auto.add_matched(old, workload, datamodule, tiny_lm_tier, scratch, TINY_LM_SETUP, lambda _: None)
    assert realistic.dense_state_path(tiny_lm_tier, "stdlib-charlm", 0).stat().st_mtime_ns == saved
    assert {k: v for k, v in added.items() if k != "matched"} == old
    assert [r["test_loss"] for r in added["matched"]["runs"]] == pytest.approx(
        [r["test_loss"] for r in tiny_lm_auto["matched"]["runs"]]
    ), "the same seed and dense state give the same fixed runs"


def test_summary_and_section_come_from_the_seed_files(
    tiny_auto: tuple[Path, dict], tiny_lm_auto: dict, tmp_path: Path
) -> None:
    _, record = tiny_auto
    protocol.write_json(tmp_path / "mnist1d-resnet" / "seed0.json", record)
    protocol.write_json(tmp_path / "stdlib-charlm" / "seed0.json", tiny_lm_auto)
    summaries = realistic_auto.load_summary(tmp_path)
    assert summaries is not None
    assert list(summaries) == ["mnist1d-resnet", "stdlib-charlm"]
    summary = summaries["mnist1d-resnet"]
    assert summary["seeds"] == [0]
    assert summary["sparsity_median"] == pytest.approx(record["auto"]["sparsity"], abs=1e-6)
    assert summary["fixed_best_within_median"] is None
    lines = report.render_realistic_automatic(summaries)
    assert "### mnist1d-resnet, automatic mode" in lines
    assert "### stdlib-charlm, automatic mode" in lines
    assert any(f"{summary['time_vs_dense_median']:.2f}x" in line for line in lines)
    assert any("within the 0.02-nat tolerance on test" in line for line in lines)
    assert any("against the best fixed target's (none measured): **not met**" in line for line in lines)
    lm = summaries["stdlib-charlm"]
    assert lm["matched_best_within"] == [tiny_lm_auto["matched"]["sparsity"]]
    assert [row[:3] for row in lm["matched_within"]] == [[0.5, 2, 6], [0.5, 6, 7]]
    assert any("at the same budget, median" in line for line in lines)
    assert "matched_best_within_median" not in summary, "the ResNet setup has no like-for-like sweep"
    assert realistic_auto.load_summary(tmp_path / "empty") is None
    assert report.render_realistic_automatic(None) == []


def test_goal_checks_judge_each_figure_against_its_goal() -> None:
    line = report._goal_checks(4, 5, 0.6, 0.7, 1.2)
    assert line == (
        "within the tolerance on test in 4 of 5 seeds (80%): **not met**; "
        "sparsity 0.600 (median) against the best fixed target's 0.7: **not met**; "
        "wall time 1.20x a dense run (median): met."
    )
    assert report._goal_checks(9, 10, 0.7, 0.7, 1.31).startswith(
        "within the tolerance on test in 9 of 10 seeds (90%): met; sparsity 0.700 (median) against the best fixed "
        "target's 0.7: met; wall time 1.31x"
    )


def test_reference_check_compares_each_verdict_with_the_measured_dense_value() -> None:
    """An accuracy reference 1 point below what the dense model reached accepted a step it should not have."""
    record = {
        "tolerance": 0.01,  # no "mode": older records are accuracies
        "dense": {"val_trace": [[3, 0.96], [4, 0.96]]},
        "auto": {
            "search": {
                "margin": 0.0,
                "decisions": [
                    {"epoch": 3, "decision": "accept", "reference": 0.95, "value": 0.945},
                    {"epoch": 4, "decision": "accept", "reference": 0.96, "value": 0.955},
                    {"epoch": 5, "decision": "accept", "reference": 0.96, "value": 0.955},  # no dense value
                    {"epoch": 5, "decision": "stop", "reason": "done"},
                ],
            }
        },
    }
    check = realistic_auto.reference_check(record)
    assert check["errors"] == pytest.approx([0.01, 0.0])
    assert check["flipped"] == [True, False]
    summary = {
        "decisions_checked": 2,
        "decisions_flipped": 1,
        "reference_error_abs_median": 0.005,
        "reference_error_min": 0.0,
        "reference_error_max": 0.01,
    }
    rows = report._reference_rows(summary, 100, "pt", 2)
    assert rows[0][1] == "0.500 (+0.000 to +1.000) pt"
    assert rows[1][1] == "1 of 2"
    assert report._reference_rows({"decisions_checked": 0}, 100, "pt", 2) == []


def test_docstring_examples() -> None:
    assert doctest.testmod(realistic_auto).failed == 0
