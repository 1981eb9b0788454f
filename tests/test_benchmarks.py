"""The benchmark protocol at tiny scale, its metrics, and the committed report.

``benchmarks`` is a package at the repository root; run the suite from there with
``python -m pytest`` (as ``make test`` does), which puts the root on ``sys.path``.
"""

from __future__ import annotations

import doctest
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from benchmarks import protocol, report
from benchmarks.protocol import Budget, CompoundingAmount, Grid
from lightning_autoprune import AutoPrune

ROOT = Path(__file__).resolve().parent.parent
TINY_BUDGET = Budget(
    dense_epochs=1,
    finetune_epochs=3,
    start_epoch=1,
    end_epoch=2,
    limit_train_batches=3,
    limit_val_batches=1,
    limit_test_batches=2,
    calibration_samples=64,
)
TINY_GRID = Grid(
    setups=["digits-mlp"],
    seeds=[0],
    sparsities=[0.5, 0.9],
    methods=["magnitude", "lamp", "default", "modelpruning", "layerwise_magnitude", "taylor2"],
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    summary = protocol.run_protocol(out, TINY_GRID, TINY_BUDGET, log=lambda line: None)
    return out, summary


def test_tiny_protocol_writes_one_file_per_run(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    base = out / protocol.TRACK / "digits-mlp"
    expected = {f"{m}/s{s:.2f}_seed0.json" for m in TINY_GRID.methods for s in TINY_GRID.sparsities}
    expected.add("dense/seed0.json")
    written = {p.relative_to(base).as_posix() for p in base.glob("*/*.json")}
    assert written == expected
    record = json.loads((base / "modelpruning" / "s0.90_seed0.json").read_text())
    for key in ("dataset", "model", "method", "sparsity_target", "seed", "test_acc", "effective_sparsity"):
        assert key in record
    assert record["environment"]["torch"] == torch.__version__
    assert (out / protocol.TRACK / "summary.json").exists()


def test_every_method_reaches_its_target(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    for record in protocol.load_records(out):
        if record["method"] == "dense":
            continue
        # ModelPruning rounds each compounding amount to whole weights: a few weights of slack.
        assert record["sparsity"] == pytest.approx(record["sparsity_target"], abs=1e-3)
        assert record["effective_sparsity"] >= record["sparsity"] - 1e-9


def test_default_is_labelled_with_what_it_resolves_to(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    records = [r for r in protocol.load_records(out) if r["method"] == "default"]
    assert records
    alias = protocol.default_alias(TINY_GRID.methods, TINY_BUDGET)
    for record in records:
        assert record.get("reused_from") == alias
        if alias is not None:
            original = protocol.run_path(out, "digits-mlp", alias, record["sparsity_target"], 0)
            assert json.loads(original.read_text())["test_acc"] == record["test_acc"]


def test_default_resolves_to_the_learned_scorer_and_to_no_other_method() -> None:
    # identical configurations, not identical attribute lists: every AutoPrune has the same attributes
    assert protocol.default_alias(["magnitude", "lamp", "learned"], TINY_BUDGET) == "learned"
    assert protocol.default_alias(["magnitude", "lamp"], TINY_BUDGET) is None


def test_summary_has_every_metric(tiny_run: tuple[Path, dict]) -> None:
    _, summary = tiny_run
    setup = summary["setups"]["digits-mlp"]
    entry = setup["methods"]["modelpruning"]
    assert set(entry["by_sparsity"]) == {"0.50", "0.90"}
    assert 0.0 <= entry["auc_mean"] <= 1.5
    assert entry["max_sparsity_within_1pt_mean"] in (0.0, 0.5, 0.9)
    assert entry["overhead_median"] is not None
    assert set(setup["comparisons"]) == {"magnitude", "lamp", "modelpruning", "layerwise_magnitude", "taylor2"}


def test_report_renders_tables_and_plots(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    _, summary = tiny_run
    text = report.render_report(summary)
    assert text == report.render_report(summary)
    assert "### digits-mlp" in text
    assert "| `modelpruning` |" in text
    assert "Where the default loses" in text
    assert torch.__version__ in text
    plots = report.write_plots(summary, tmp_path / "plots")
    assert [p.name for p in plots] == ["digits-mlp.png"]
    assert plots[0].stat().st_size > 1000


def test_a_method_run_on_part_of_the_grid_is_not_ranked_by_its_auc(tiny_run: tuple[Path, dict]) -> None:
    import copy

    _, summary = tiny_run
    partial = copy.deepcopy(summary)
    setup = partial["setups"]["digits-mlp"]
    entry = setup["methods"]["modelpruning"]
    del entry["by_sparsity"]["0.90"]  # as if its 90% runs were never made: its AUC covers 50% alone
    entry["auc_mean"] = 1.4  # higher than any complete method's
    text = report.render_report(partial)
    row = next(line for line in text.splitlines() if line.startswith("| `modelpruning` |"))
    assert "(s=0.50-0.50 only)" in row
    assert "**1.4000" not in row
    ranking = next(line for line in text.splitlines() if line.startswith("Ranked by normalised AUC"))
    ranked, _, unranked = ranking.partition("not ranked:")
    assert "`modelpruning`" not in ranked
    assert "`modelpruning` 1.4000 (s=0.50-0.50 only)" in unranked


def test_compounding_amount_reaches_the_cumulative_schedule() -> None:
    amount = CompoundingAmount(0.99, start=1, end=8)
    remaining = 1.0
    for epoch in range(12):
        remaining *= 1.0 - amount(epoch)
        assert 1.0 - remaining == pytest.approx(amount.cumulative(epoch + 1), abs=1e-12)
    assert 1.0 - remaining == pytest.approx(0.99)


def test_effective_sparsity_of_a_convolution_chain() -> None:
    conv = torch.ones(4, 1, 3)
    conv[2:] = 0.0  # channels 2 and 3 get no input
    head = torch.ones(5, 4)
    assert protocol.effective_sparsity([conv, head]) == pytest.approx(1 - (6 + 10) / (12 + 20))
    with pytest.raises(ValueError, match="not a chain"):
        protocol.effective_sparsity([conv, torch.ones(5, 3)])


def test_normalised_auc_is_one_without_loss() -> None:
    assert protocol.normalised_auc([0.5, 0.9, 0.99], [0.8, 0.8, 0.8], 0.8) == pytest.approx(1.0)
    assert math.isclose(protocol.normalised_auc([0.5], [0.0], 1.0), 0.5)


def test_paired_test_calls_only_significant_differences_real() -> None:
    same = protocol.paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["t_p"] is None
    noisy = protocol.paired_test([0.9, 0.8, 0.7, 0.6, 0.5], [0.91, 0.79, 0.71, 0.59, 0.5])
    assert noisy["t_p"] > 0.05


def test_quick_comparison_flags_only_moves_beyond_the_seed_spread() -> None:
    def summary(values: list[float]) -> dict:
        cell = {"test_acc_per_seed": values}
        dense = {"test_acc_per_seed": values}
        return {
            "setups": {
                "digits-mlp": {
                    "seeds": list(range(len(values))),
                    "dense": dense,
                    "methods": {"lamp": {"by_sparsity": {"0.90": cell}}},
                }
            }
        }

    full = summary([0.90, 0.92, 0.94])
    _, flagged = protocol.compare_quick(summary([0.90, 0.92]), full)
    assert flagged == []
    _, flagged = protocol.compare_quick(summary([0.80, 0.82]), full)
    assert len(flagged) == 2
    assert all(line.startswith("FLAGGED") for line in flagged)


def test_fidelity_check_counts_events_whose_step_ranked_below_another_candidate() -> None:
    """The step goes to the lowest measured loss; the summary says how often that ranking was not the best one."""

    def event(used: str, spearman: dict[str, float]) -> dict:
        fidelity = {name: {"spearman": value, "precision_at_k": 0.5} for name, value in spearman.items()}
        return {
            "fidelity": fidelity,
            "used": used,
            "step_losses": dict.fromkeys(spearman, 1.0),
            "fell_back": True,
            "blend_weight": 0.0,
        }

    runs = [
        {
            "importance_diagnostics": [
                event("lamp", {"lamp": 0.6, "taylor": 0.8}),
                event("taylor", {"lamp": 0.6, "taylor": 0.8}),
            ]
        }
    ]
    fidelity = protocol.importance_fidelity(runs)
    assert fidelity["below_best_share"] == 0.5
    assert fidelity["below_best_gap_mean"] == pytest.approx(0.1)
    assert protocol.fidelity_gap({"used": "learned", "fidelity": {}, "step_losses": {}}) is None
    lines = report._fidelity_table({"methods": {"learned": {"importance_fidelity": fidelity}}})
    assert any(
        "at 50% of the 2 labelled events that applied a prior's step (mean shortfall 0.100)" in line for line in lines
    )
    learned = event("learned", {"learned": 0.9, "taylor": 0.8})  # a blend: its own Spearman was not measured
    assert protocol.fidelity_gap(learned) is None


def test_steps_line_counts_events_that_passed_over_a_collapsing_step() -> None:
    runs = [
        {
            "importance_steps": [
                {"used": "lamp", "samples": 64, "collapsing": ["magnitude", "wanda"]},
                {"used": "lamp", "samples": 0, "collapsing": ["magnitude"]},
                {"used": "taylor", "samples": 64, "collapsing": []},
                {"used": "taylor", "samples": 0},  # recorded before the field existed
            ]
        }
    ]
    steps = protocol.step_shares(runs)
    assert steps["passed_over_events"] == 2
    (line,) = report._steps_line("default", steps)[1:]
    assert "At 2 events a candidate was passed over" in line
    assert "passed over" not in report._steps_line("default", steps | {"passed_over_events": 0})[1]


def test_docstring_examples() -> None:
    for module in (protocol, report):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_committed_report_matches_committed_results() -> None:
    results = ROOT / "benchmarks" / "results"
    assert (results / protocol.TRACK / "summary.json").exists(), "the committed benchmark results are missing"
    committed = (ROOT / "BENCHMARKS.md").read_text()
    summary = protocol.summarise(protocol.load_records(results))
    assert report.render_report(summary) == committed, "run `python -m benchmarks.report` and commit BENCHMARKS.md"


def test_budget_experiment_is_the_default_with_a_larger_label_budget_and_runs_only_when_named() -> None:
    budget = protocol.Budget()
    default = protocol.autoprune_callback(None, 0.9, budget, 0)
    (experiment,) = protocol.make_callbacks("learned_budget_0.2", 0.9, budget, 0, model=None)  # type: ignore[arg-type]
    assert isinstance(experiment, AutoPrune)
    mine, theirs = asdict(experiment.config), asdict(default.config)
    assert (mine.pop("label_budget"), theirs.pop("label_budget")) == (0.2, 0.05)
    assert mine == theirs
    assert "learned_budget_0.2" not in protocol.METHODS  # `make bench` does not run it
