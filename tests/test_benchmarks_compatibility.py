"""The compatibility table's script: rows, cells and the README block it rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import compatibility


def test_an_unimportable_model_is_a_row_that_says_so() -> None:
    def build() -> None:
        raise ModuleNotFoundError("No module named 'torchvision'")

    row = compatibility.run_model("torchvision resnet18", build, log=lambda line: None)  # type: ignore[arg-type]
    assert "torchvision" in row["unavailable"]
    assert "not importable here" in compatibility.render_table([row])


def test_cells_show_shares_ratios_and_errors() -> None:
    row = {
        "model": "m",
        "unstructured": {"pruned_share": 0.75, "embeddings_pruned": []},
        "structured": {"ok": True, "params_before": 200, "params_after": 100, "latency_ratio": 1.5},
        "checkpoint": {"ok": True},
        "resume": {"ok": False, "error": "ValueError: masks differ"},
    }
    table = compatibility.render_table([row])
    assert "| m | 75% of all parameters | yes: 2.00x fewer parameters, 1.50x faster | yes | no: ValueError" in table


def test_readme_block_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{compatibility.START}\nold\n{compatibility.END}\noutro\n")
    compatibility.update_readme("| new |", readme)
    assert readme.read_text() == f"intro\n{compatibility.START}\n| new |\n{compatibility.END}\noutro\n"
    readme.write_text("no block")
    with pytest.raises(ValueError, match="no <!-- compatibility:start -->"):
        compatibility.update_readme("| new |", readme)


def test_transformers_resnet_row_is_measured_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    row = compatibility.run_model("transformers ResNet", compatibility.hf_resnet, log=lambda line: None)
    assert row["unstructured"]["pruned_share"] > 0.5
    assert row["structured"]["ok"]
    assert row["structured"]["params_after"] < row["structured"]["params_before"]
    assert row["structured"]["max_output_difference"] < 1e-4
    assert row["checkpoint"]["ok"]
    assert row["resume"]["ok"]
