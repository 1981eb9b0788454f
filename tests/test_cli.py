"""The LightningCLI path, run as a user would: a subprocess with flags, and one with a YAML config."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_autoprune import AutoPrune

BASE = [
    sys.executable,
    "-m",
    "lightning_autoprune.cli",
    "fit",
    "--model",
    "lightning_autoprune.examples.MLPClassifier",
    "--data",
    "lightning_autoprune.examples.DigitsDataModule",
    "--trainer.max_epochs",
    "3",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.logger",
    "false",
    "--trainer.accelerator",
    "cpu",
]


def _weight_sparsity(checkpoint: Path) -> float:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight")]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_callback_flags_from_the_command_line(tmp_path: Path) -> None:
    flags = [
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks+=lightning_autoprune.AutoPrune",
        "--trainer.callbacks.target_sparsity=0.6",
    ]
    result = _run([*BASE, *flags], cwd=tmp_path)
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    assert _weight_sparsity(checkpoint) == pytest.approx(0.6, abs=2e-3)
    assert "[AutoPrune] epoch 2: pruned to sparsity 0.6000" in result.stderr + result.stdout


@pytest.mark.slow
def test_yaml_config(tmp_path: Path) -> None:
    config = {
        "trainer": {
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "lightning_autoprune.AutoPrune",
                    "init_args": {"target_sparsity": 0.5, "importance": "magnitude"},
                }
            ],
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    _run([*BASE, "--config", str(path)], cwd=tmp_path)
    assert _weight_sparsity(next(tmp_path.rglob("*.ckpt"))) == pytest.approx(0.5, abs=2e-3)


def test_bundled_yaml_configs_parse(tmp_path: Path) -> None:
    for config in sorted(Path(__file__).parents[1].glob("examples/configs/*.yaml")):
        result = subprocess.run(
            [sys.executable, "-m", "lightning_autoprune.cli", "fit", "--config", str(config), "--print_config"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{config.name}: {result.stderr[-2000:]}"
        assert "lightning_autoprune.AutoPrune" in result.stdout


def test_help_documents_every_argument(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_autoprune.cli",
            "fit",
            "--trainer.callbacks.help",
            "lightning_autoprune.AutoPrune",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in inspect.signature(AutoPrune.__init__).parameters:
        if name != "self":
            assert f"--trainer.callbacks.{name}" in result.stdout, name
