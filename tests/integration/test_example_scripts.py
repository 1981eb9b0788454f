"""Every script in ``examples/`` runs end to end, for one short epoch, through its own ``main(argv)``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

EXAMPLES = Path(__file__).parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # reports and checkpoints land here


@pytest.mark.filterwarnings("ignore:AutoPrune:UserWarning")
def test_digits_demo(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _load("digits_demo").main(["--epochs", "2", "--target", "0.5"])
    assert [row[0] for row in rows] == ["dense", "AutoPrune()", "target 0.5"]
    assert rows[2][2] == pytest.approx(0.5, abs=0.01)
    assert "test acc" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:AutoPrune prunes at the start of epoch 0:UserWarning")
def test_sequence_models_prune_recurrent_and_attention_weights(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "lstm", "transformer", "--epochs", "1", "--start_epoch", "0", "--target", "0.5"]
    results = _load("sequence_models").main([*argv, "--num_samples", "400", "--limit_batches", "2", "--quiet"])
    by_model = {r["model"]: r for r in results}
    assert by_model["lstm"]["tensors"]["net.weight_hh_l0"] > 0.2
    assert by_model["lstm"]["tensors"]["net.weight_ih_l0"] >= 0.0
    attention = {n: s for n, s in by_model["transformer"]["tensors"].items() if "in_proj_weight" in n}
    assert len(attention) == 2
    assert all(s > 0.2 for s in attention.values())
    assert "in_proj_weight" in capsys.readouterr().out


def test_finetune_from_checkpoint(tmp_path: Path) -> None:
    argv = ["--checkpoint", str(tmp_path / "dense.ckpt"), "--dense_epochs", "1", "--finetune_epochs", "1"]
    result = _load("finetune_checkpoint").main([*argv, "--prune_epochs", "1", "--limit_batches", "3"])
    assert (tmp_path / "dense.ckpt").exists()
    assert result["sparsity"] == pytest.approx(0.9, abs=2e-3)
    assert result["reloaded"] == pytest.approx(result["sparsity"], abs=0.01)  # biases are never pruned
    state = torch.load(tmp_path / "dense_pruned.ckpt", weights_only=True)
    assert "state_dict" in state


@pytest.mark.filterwarnings("ignore:AutoPrune:UserWarning")
def test_structured_cnn_compacts_and_times_both_models(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--epochs", "3", "--target", "0.5", "--importance", "taylor", "--limit_batches", "4", "--repeats", "10"]
    results = _load("structured_cnn").main(argv)
    assert results["compacted"]["params"] < results["dense"]["params"]
    assert results["compacted"]["flops"] < results["dense"]["flops"]
    assert all(row["latency_ms_b256"] > 0 for row in results.values())
    assert "compacted channel widths" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:AutoPrune:UserWarning")
def test_structured_cnn_round_to_gives_widths_in_multiples(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--epochs", "3", "--target", "0.6", "--round_to", "8", "--threads", "1", "--limit_batches", "4"]
    results = _load("structured_cnn").main([*argv, "--repeats", "10"])
    assert results["compacted"]["flops"] < results["dense"]["flops"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("compacted channel widths"))
    widths = [int(w) for w in line.split("[")[1].split("]")[0].split(",")]
    assert all(w % 8 == 0 for w in widths), widths
    assert widths != [32, 32, 32]
