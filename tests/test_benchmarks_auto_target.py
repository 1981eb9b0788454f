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


def _fits(dense: tuple[float, float], drops: dict[float, float]) -> dict[str, dict[str, float]]:
    """Fixed-target fits that lose ``drops[target]`` of accuracy against ``dense`` on validation and test."""
    return {
        str(t): {"val_acc": dense[0] - d, "test_acc": dense[1] - d, "sparsity": t, "seconds": 1.0}
        for t, d in drops.items()
    }


def _sweep(best: float) -> dict[float, float]:
    """Drops of a sweep whose best target within 1 point is ``best``: nothing up to it, 2 points beyond."""
    return {t: 0.0 if t <= best else 0.02 for t in (0.5, 0.8, 0.9, 0.95, 0.98)}


def _row(
    seed: int,
    sparsity: float,
    test_drop: float,
    time_vs_dense: float,
    *,
    dense: tuple[float, float] = (0.97, 0.96),
    bests: tuple[float, float] = (0.9, 0.95),
    fixed: dict[float, float] | None = None,
    stopped_by: str = "the search window ended at epoch 20",
    margins: tuple[float, ...] = (0.005,),
) -> dict[str, Any]:
    """One seed's fits, and what ``auto_target.derived`` makes of them.

    ``bests``: the ModelPruning and AutoPrune sweeps' best targets within 1 point on test;
    ``fixed``: the AutoPrune sweep's drops instead.
    """
    decisions: list[dict[str, Any]] = [
        {"epoch": 10 + i, "decision": "accept", "margin": m} for i, m in enumerate(margins)
    ]
    row: dict[str, Any] = {
        "seed": seed,
        "dense": {"val_acc": dense[0], "test_acc": dense[1], "seconds": 1.0},
        "auto": {
            "sparsity": sparsity,
            "val_acc": dense[0] - test_drop / 2,
            "test_acc": dense[1] - test_drop,
            "seconds": time_vs_dense,
            "decisions": [*decisions, {"epoch": 20, "decision": "stop", "reason": stopped_by}],
        },
        "model_pruning": _fits(dense, _sweep(bests[0])),
        "autoprune_fixed": _fits(dense, fixed if fixed is not None else _sweep(bests[1])),
    }
    return row | auto_target.derived(row)


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


def test_a_drop_of_exactly_the_tolerance_in_float32_accuracies_is_within_it() -> None:
    dense, pruned = 0.6140000224113464, 0.6039999723434448  # 614 and 604 of 1000, as float32
    assert auto_target.within_tolerance(dense - pruned)
    assert not auto_target.within_tolerance(dense - pruned + 0.001)  # one sample more
    rows = {"0.9": {"test_acc": pruned}}
    assert auto_target.best_within(rows, {"test_acc": dense}, "test_acc") == 0.9


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
    # Sparsity median 0.96, mean 0.864; each seed's best fixed target is the larger sweep's: 0.98, 0.95, 0.8,
    # 0.9, 0.95, whose median is 0.95 (the AutoPrune sweep's alone, 0.95, 0.8, 0.8, 0.8, 0.95, has 0.8).
    rows = [
        _row(0, 0.90, 0.02, 1.2, bests=(0.98, 0.95)),
        _row(1, 0.96, 0.0, 1.1, bests=(0.9, 0.95)),
        _row(2, 0.97, 0.0, 1.5, bests=(0.5, 0.8)),
        _row(3, 0.50, 0.0, 1.4, bests=(0.9, 0.8)),
        _row(4, 0.99, 0.0, 1.0, bests=(0.8, 0.95)),
    ]
    text = "\n".join(report.render_automatic(_payload(rows, threads=2)))
    assert "These results join" not in text
    assert "within the tolerance on test in 4 of 5 seeds (80%): **not met**" in text
    assert "sparsity 0.960 (median) against the best fixed target's 0.95: met" in text
    assert "wall time 1.20x a dense run (median): met" in text
    assert "| 0.960 (0.500-0.990) |" in text


def test_noise_floor_reads_the_split_sizes_and_what_the_readings_did() -> None:
    # Fixed targets: 0.9 loses 0.5 point on test in every seed, 0.95 loses 1.5 points in odd seeds only.
    rows = [
        _row(seed, 0.9, 0.01 * seed, 1.0, dense=dense, fixed={0.9: 0.005, 0.95: 0.015 if seed % 2 else 0.0}, margins=m)
        for seed, dense, m in [
            (0, (0.97, 0.96), (0.005,)),
            (1, (0.95, 0.92), (0.004, 0.004, 0.004)),  # one seed, one margin
            (2, (0.99, 0.97), (0.006,)),
            (3, (0.93, 0.95), (0.007,)),
        ]
    ]
    rows[2]["auto"]["decisions"][-1]["reason"] = "3 consecutive steps broke the tolerance"
    del rows[3]["autoprune_fixed"]["0.95"]  # a seed without that fixed run
    lines = report.render_automatic(_payload(rows, threads=1))
    row = next(line for line in lines if line.startswith("| digits | 360 / 360 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    val, test = (0.97 + 0.95 + 0.99 + 0.93) / 4, (0.96 + 0.92 + 0.97 + 0.95) / 4
    se_val, se_test = (100 * math.sqrt(p * (1 - p) / 360) for p in (val, test))
    gaps = [0.01 * seed / 2 for seed in range(4)]  # test drop minus val drop
    assert cells[2:] == [
        f"{val:.3f} / {test:.3f}",
        f"{se_val:.2f} / {se_test:.2f} pt",
        "0.55 pt",  # the median of the seeds' margins 0.5, 0.4, 0.6, 0.7: per decision it would be 0.45
        f"{100 * statistics.fmean(gaps):+.2f} ± {100 * statistics.stdev(gaps):.2f} pt",
        "0.9: 4 of 4, 0.95: 2 of 3",  # 0.95 loses 1.5 points in odd seeds; seed 3 has no run
        "3 of 4",
    ]


def test_noise_floor_of_one_seed_has_no_spread() -> None:
    lines = report.render_automatic(_payload([_row(0, 0.9, 0.0, 1.0)], threads=1))
    row = next(line for line in lines if line.startswith("| digits | 360 / 360 |"))
    assert [cell.strip() for cell in row.strip("|").split("|")][5] == "n/a"


def test_split_sizes_are_the_data_modules_own() -> None:
    assert auto_target.split_sizes("digits") == (360, 360)
    assert auto_target.split_sizes("mnist1d") == (800, 1000)
    with pytest.raises(ValueError, match="`dataset` must be one of digits, mnist1d, got 'cifar'"):
        auto_target.split_sizes("cifar")


def test_merge_keeps_each_invocations_machine_and_the_report_names_it(tmp_path: Path) -> None:
    parts = []
    for seed, cpu in ((0, "AMD EPYC (family 25)"), (1, "Intel Xeon (family 6)")):
        path = tmp_path / f"part{seed}.json"
        payload = _payload([_row(seed, 0.9, 0.0, 1.0)], threads=1)
        payload["environment"] = {"cpu_model": cpu, "cpu_capability": "AVX512", "git_commit": "0123456789"}
        path.write_text(json.dumps(payload))
        parts.append(path)
    out = tmp_path / "merged.json"
    auto_target.merge(parts, out)
    merged = json.loads(out.read_text())
    machines = [source["environment"]["cpu_model"] for source in merged["merged_from"]]
    assert machines == ["AMD EPYC (family 25)", "Intel Xeon (family 6)"]
    text = "\n".join(report.render_automatic(merged))
    assert "seeds 0 (1 threads, AMD EPYC (family 25)); seeds 1 (1 threads, Intel Xeon (family 6))." in text
    assert "Machine:" not in text  # two machines: each is named in the join line
    single = report.render_automatic(json.loads(parts[0].read_text()))
    assert single[-1] == "Machine: AMD EPYC (family 25), torch kernels AVX512; commit 0123456."
    assert "Machine:" not in "\n".join(report.render_automatic(_payload([_row(0, 0.9, 0.0, 1.0)], threads=1)))
