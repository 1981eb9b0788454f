"""The command line: ``lightning-autoprune`` (LightningCLI + an ``--autoprune.*`` group) and plain LightningCLI.

Parsing, ``--help``, ``--print_config`` and plain LightningCLI run in-process (importing Lightning
in a new process costs seconds); one training run goes through the console script, as a user would.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from lightning_autoprune import AutoPrune
from lightning_autoprune.cli import AutoPruneCLI, main, make_cli

ROOT = Path(__file__).parents[2]
DATA = ["--model", "MLPClassifier", "--data", "DigitsDataModule"]
SHORT_RUN = [
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


def callbacks_of(trainer: Trainer) -> list[Callback]:
    """``trainer.callbacks``: Lightning sets it from outside the class, so mypy does not know it."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


def _weight_sparsity(checkpoint: Path) -> float:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weights = [v for k, v in state.items() if k.endswith("weight")]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs pass ``args``; pytest's own ``sys.argv`` would make LightningCLI warn."""
    monkeypatch.setattr(sys, "argv", ["lightning-autoprune"])


def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


# ------------------------------------------------------------------ in-process: parsing, help, config
def test_help_explains_every_autoprune_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    block = text[text.index("--autoprune.target_sparsity TARGET_SPARSITY") :]
    for name in inspect.signature(AutoPrune.__init__).parameters:
        if name != "self":
            assert f"--autoprune.{name}" in text, name
    assert "fraction of the prunable weights to remove" in block  # the docstring's words, not just names
    assert "MLPClassifier" in text
    assert "DigitsDataModule" in text


def test_short_class_names_and_import_paths_resolve() -> None:
    by_name = make_cli([*DATA, "--trainer.logger", "false", "--autoprune.target_sparsity", "0.8"], run=False)
    by_path = make_cli(
        [
            "--model",
            "lightning_autoprune.examples.RecurrentClassifier",
            "--model.cell",
            "lstm",
            "--data",
            "lightning_autoprune.examples.MNIST1DDataModule",
            "--trainer.logger",
            "false",
        ],
        run=False,
    )
    assert type(by_name.model).__name__ == "MLPClassifier"
    assert type(by_name.datamodule).__name__ == "DigitsDataModule"
    assert [c.target_sparsity for c in callbacks_of(by_name.trainer) if isinstance(c, AutoPrune)] == [0.8]
    assert by_path.model.hparams.cell == "lstm"
    assert sum(isinstance(c, AutoPrune) for c in callbacks_of(by_path.trainer)) == 1


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = [*DATA, "--autoprune.target_sparsity", "0.9", "--autoprune.include", "['net.*.weight']"]
    first = _print_config(flags, capsys)
    config = tmp_path / "config.yaml"
    config.write_text(first)
    second = _print_config(["--config", str(config)], capsys)
    assert second == first
    parsed = yaml.safe_load(first)
    assert parsed["autoprune"]["target_sparsity"] == 0.9
    assert parsed["autoprune"]["include"] == ["net.*.weight"]
    assert parsed["model"]["class_path"] == "lightning_autoprune.examples.MLPClassifier"


@pytest.mark.parametrize("config", sorted(ROOT.glob("examples/configs/*.yaml")), ids=lambda p: p.name)
def test_bundled_yaml_configs_parse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parsed = yaml.safe_load(_print_config(["--config", str(config)], capsys))
    assert parsed["autoprune"]["target_sparsity"] == yaml.safe_load(config.read_text())["autoprune"]["target_sparsity"]


def test_an_autoprune_in_trainer_callbacks_replaces_the_group() -> None:
    cli = make_cli(
        [*DATA, "--trainer.logger", "false", "--trainer.callbacks+=lightning_autoprune.AutoPrune"], run=False
    )
    assert isinstance(cli, AutoPruneCLI)
    assert sum(isinstance(c, AutoPrune) for c in callbacks_of(cli.trainer)) == 1


def test_configuring_autoprune_twice_is_an_error() -> None:
    args = [*DATA, "--trainer.callbacks+=lightning_autoprune.AutoPrune", "--autoprune.target_sparsity", "0.5"]
    with pytest.raises(ValueError, match=r"configured twice.*`--autoprune.target_sparsity`"):
        make_cli(args, run=False)


# ------------------------------------------------------------------ subprocesses: real training runs
@pytest.mark.slow
def test_fit_through_the_autoprune_group(tmp_path: Path) -> None:
    flags = ["--trainer.default_root_dir", str(tmp_path), "--autoprune.target_sparsity", "0.6"]
    script = Path(sys.executable).with_name("lightning-autoprune")  # the installed console script
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_autoprune.cli"]
    result = _run([*command, "fit", *DATA, *SHORT_RUN, *flags], cwd=tmp_path)
    assert _weight_sparsity(next(tmp_path.rglob("*.ckpt"))) == pytest.approx(0.6, abs=2e-3)
    assert "-> 0.6000 (learned)" in result.stderr + result.stdout
    assert (tmp_path / "autoprune" / "report.md").exists()


def test_plain_lightning_cli_with_callback_flags(tmp_path: Path) -> None:
    """A user's own LightningCLI (no lightning_autoprune code) adds AutoPrune with ``--trainer.callbacks+=``."""
    flags = [
        "--model",
        "lightning_autoprune.examples.MLPClassifier",
        "--data",
        "lightning_autoprune.examples.DigitsDataModule",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.callbacks+=lightning_autoprune.AutoPrune",
        "--trainer.callbacks.target_sparsity=0.6",
    ]
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=["fit", *SHORT_RUN, *flags],
    )
    assert [type(c) for c in callbacks_of(cli.trainer)].count(AutoPrune) == 1
    assert _weight_sparsity(next(tmp_path.rglob("*.ckpt"))) == pytest.approx(0.6, abs=2e-3)
