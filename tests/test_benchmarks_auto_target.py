"""The automatic-mode benchmark's bookkeeping: per-seed rows, the summary, joining invocations, the report.

The training itself (``fit``) is what ``make bench`` runs; here the rows are built by hand so the
arithmetic of the summary, the merge and the goal verdicts is checked exactly.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks import auto_target, report


def _row(seed: int, sparsity: float, test_drop: float, time_vs_dense: float) -> dict[str, Any]:
    dense = {"val_acc": 0.97, "test_acc": 0.96}
    return {
        "seed": seed,
        "dense": dense,
        "auto": {
            "sparsity": sparsity,
            "decisions": [
                {"epoch": 10, "decision": "accept", "margin": 0.005},
                {"epoch": 20, "decision": "stop", "reason": "the search window ended at epoch 20"},
            ],
        },
        # Fixed targets: 0.9 loses 0.5 point on test in every seed, 0.95 loses 1.5 points in odd seeds only.
        "autoprune_fixed": {
            "0.9": {"test_acc": dense["test_acc"] - 0.005},
            "0.95": {"test_acc": dense["test_acc"] - (0.015 if seed % 2 else 0.0)},
        },
        "auto_test_drop": test_drop,
        "auto_val_drop": test_drop / 2,
        "sweep_best_within_test": 0.9,
        "sweep_best_within_val": 0.9,
        "fixed_best_within_test": 0.95,
        "time_vs_dense": time_vs_dense,
        "time_vs_sweep": 0.4,
    }


def _payload(rows: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    entry = {"epochs": 30, "fixed_sweep": True, "seeds": rows, "summary": auto_target.summarize(rows)}
    return {
        "protocol": {
            "model": "MLP",
            "tolerance": auto_target.TOLERANCE,
            "sweep": [0.9, 0.95],
            "model_pruning_settings": "l1_unstructured",
            "autoprune_fixed_settings": "AutoPrune(target_sparsity=s)",
            "automatic_settings": "AutoPrune()",
        },
        "versions": {"threads": threads},
        "results": {"digits": entry},
    }


def test_best_within_takes_the_largest_sparsity_inside_the_tolerance() -> None:
    dense = {"test_acc": 0.97}
    rows = {"0.5": {"test_acc": 0.97}, "0.9": {"test_acc": 0.9601}, "0.95": {"test_acc": 0.95}}
    assert auto_target.best_within(rows, dense, "test_acc") == 0.9
    assert auto_target.best_within({"0.5": {"test_acc": 0.5}}, dense, "test_acc") == 0.0


def test_summary_counts_violations_above_the_tolerance_only() -> None:
    rows = [_row(0, 0.9, 0.01, 2.0), _row(1, 0.8, 0.02, 1.0), _row(2, 0.95, -0.01, 3.0)]
    summary = auto_target.summarize(rows)
    assert summary["test_violations"] == 1  # a drop of exactly the tolerance is not a violation
    assert summary["auto_sparsity_mean"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert summary["auto_sparsity_min"] == 0.8
    assert summary["time_vs_dense_median"] == 2.0


def test_merge_joins_invocations_seed_by_seed_and_records_them(tmp_path: Path) -> None:
    later = tmp_path / "later.json"
    first = tmp_path / "first.json"
    later.write_text(json.dumps(_payload([_row(2, 0.9, 0.02, 2.0), _row(3, 0.9, 0.0, 2.0)], threads=1)))
    first.write_text(json.dumps(_payload([_row(0, 0.8, 0.0, 1.0), _row(1, 0.8, 0.0, 1.0)], threads=2)))
    out = tmp_path / "merged.json"
    auto_target.merge([later, first], out)
    merged = json.loads(out.read_text())
    entry = merged["results"]["digits"]
    assert [row["seed"] for row in entry["seeds"]] == [0, 1, 2, 3]
    assert entry["summary"] == auto_target.summarize(entry["seeds"])
    assert entry["summary"]["test_violations"] == 1
    assert [source["seeds"]["digits"] for source in merged["merged_from"]] == [[2, 3], [0, 1]]
    assert not out.with_suffix(".tmp").exists()

    text = "\n".join(report.render_automatic(merged))
    assert "These results join 2 invocations with `--merge`: seeds 2, 3 (1 threads); seeds 0, 1 (2 threads)." in text
    # Seed 2's test drop of 2 points breaks the 1-point tolerance: 3 of 4 seeds within, 75%.
    assert "within the tolerance on test in 3 of 4 seeds (75%): **not met**" in text


def test_one_invocation_has_no_join_line_and_reports_the_realistic_figures() -> None:
    rows = [_row(seed, 0.96, 0.02 if seed == 0 else 0.0, 1.2) for seed in range(5)]
    text = "\n".join(report.render_automatic(_payload(rows, threads=2)))
    assert "These results join" not in text
    assert "within the tolerance on test in 4 of 5 seeds (80%): **not met**" in text
    assert "sparsity 0.960 (median) against the best fixed target's 0.95: met" in text
    assert "wall time 1.20x a dense run (median): met" in text
    assert "| 0.960 (0.960-0.960) |" in text


def test_noise_floor_reads_the_split_sizes_and_what_the_readings_did() -> None:
    rows = [_row(seed, 0.9, 0.01 * seed, 1.0) for seed in range(4)]
    lines = report.render_automatic(_payload(rows, threads=1))
    row = next(line for line in lines if line.startswith("| digits | 360 / 360 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    se_val = 100 * math.sqrt(0.97 * 0.03 / 360)
    se_test = 100 * math.sqrt(0.96 * 0.04 / 360)
    spread = 100 * statistics.stdev(0.01 * seed / 2 for seed in range(4))  # test drop minus val drop
    assert cells[2:] == [
        "0.970 / 0.960",
        f"{se_val:.2f} / {se_test:.2f} pt",
        "0.50 pt",
        f"{spread:.2f} pt",
        "0.9: 4 of 4, 0.95: 2 of 4",
        "4 of 4",
    ]


def test_split_sizes_are_the_data_modules_own() -> None:
    assert auto_target.split_sizes("digits") == (360, 360)
    with pytest.raises(ValueError, match="`dataset` must be one of digits, mnist1d, got 'cifar'"):
        auto_target.split_sizes("cifar")
