"""The realistic tier at miniature sizes: deterministic workloads, the ResNet's size, one end-to-end run."""

from __future__ import annotations

import doctest
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks import protocol, realistic, realistic_structured, realistic_workloads, report
from benchmarks.realistic_workloads import ResNet1D, StdlibCorpus, generate_mnist1d, split_of

TINY_CHARS = {"train": 20_000, "val": 4_000, "test": 4_000}


def test_mnist1d_generation_is_deterministic_and_split_as_documented() -> None:
    a, b = generate_mnist1d(300), generate_mnist1d(300)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (len(a["y"]), len(a["y_val"]), len(a["y_test"])) == (200, 25, 75)


def test_corpus_split_is_deterministic_and_by_file() -> None:
    first, second = StdlibCorpus.build(TINY_CHARS), StdlibCorpus.build(TINY_CHARS)
    assert first.sha256 == second.sha256
    assert first.chars() == TINY_CHARS
    assert split_of("json/__init__.py") == split_of("json/__init__.py")


def test_resnet_has_the_documented_size() -> None:
    assert sum(p.numel() for p in ResNet1D().parameters()) == 232_906


def _tiny(workload: realistic.Workload, **kwargs: Any) -> realistic.Workload:
    budget = realistic.TierBudget(
        dense_epochs=1,
        finetune_epochs=2,
        start_epoch=1,
        end_epoch=1,
        limit_train_batches=2,
        pretrain_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        calibration_samples=32,
    )
    return replace(workload, budget=budget, sparsities=(0.5,), **kwargs)


@pytest.fixture(scope="module")
def tiny_tier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("realistic")
    torch.set_num_threads(1)
    workloads = [
        _tiny(realistic.WORKLOADS["mnist1d-resnet"], samples=300, widths=(8, 16), batch_size=32),
        _tiny(realistic.WORKLOADS["stdlib-charlm"], corpus_chars=TINY_CHARS, widths=(1, 16), batch_size=8),
    ]
    summary = realistic.run_tier(out, workloads, seeds=[0], methods=["wanda", "modelpruning"], log=lambda _: None)
    return out, summary


def test_tiny_tier_writes_one_record_per_run_with_costs(tiny_tier: tuple[Path, dict]) -> None:
    out, _ = tiny_tier
    paths = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert "unstructured/stdlib-charlm/wanda/s0.50_seed0.json" in paths
    assert len(paths) == 2 * 3 + 1  # dense + 2 methods per workload, and the summary
    record = json.loads((out / "unstructured/mnist1d-resnet/wanda/s0.50_seed0.json").read_text())
    assert record["events"] == 1
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
    for key in ("fit_seconds", "fit_cpu_seconds", "callback_seconds", "peak_rss_mib", "test_samples"):
        assert record[key] > 0


def test_resume_skips_finished_runs(tiny_tier: tuple[Path, dict]) -> None:
    out, _ = tiny_tier
    lines: list[str] = []
    workload = _tiny(realistic.WORKLOADS["mnist1d-resnet"], samples=300, widths=(8, 16), batch_size=32)
    realistic.run_tier(out, [workload], seeds=[0], methods=["wanda"], resume=True, log=lines.append)
    assert lines == ["0 fits to run"]


def test_tiny_summary_has_loss_and_paired_tests_and_renders(tiny_tier: tuple[Path, dict]) -> None:
    out, summary = tiny_tier
    lm = summary["setups"]["stdlib-charlm"]
    assert lm["methods"]["wanda"]["by_sparsity"]["0.50"]["test_loss_mean"] > 0
    assert lm["eval_sizes"] == {"val_chars": 4_000, "test_chars": 4_000}
    text = "\n".join(report.render_realistic(out, plots=None))
    assert "stdlib-charlm" in text
    assert "bits per character" in text


def test_realistic_section_says_not_run_yet_without_results(tmp_path: Path) -> None:
    text = "\n".join(report.render_realistic(tmp_path, plots=None))
    assert "Not run yet" in text


def test_docstring_examples() -> None:
    for module in (realistic, realistic_structured, realistic_workloads):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
    assert protocol.TRACK == "unstructured"


def test_tiny_structured_track_compacts_and_times(tmp_path: Path) -> None:
    workload = _tiny(realistic.WORKLOADS["mnist1d-resnet"], samples=300, widths=(8, 16), batch_size=32)
    summary = realistic_structured.run_structured(
        tmp_path, workload, [0], [0.5], latency_runs=(1, 2), threads=(1,), log=lambda _: None
    )
    level = summary["levels"]["0.50"]
    assert set(level["methods"]) == set(realistic_structured.METHODS)
    reference = level["methods"][realistic_structured.REFERENCE]
    assert reference["flops_mean"] == level["methods"]["scratch"]["flops_mean"]
    assert level["latency"]["1"]["runs"] == 1
    assert "tp_taylor" in level["comparisons"]
    text = "\n".join(report.render_realistic_structured(summary))
    assert "2x fewer FLOPs" in text
    assert "at 1 thread(s)" in text
