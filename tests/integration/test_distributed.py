"""Real multi-process runs: 2-process CPU DDP (gloo) and a training process killed with SIGKILL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parent / "scripts"


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "importance", "auto", "granularity"),
    [
        ("ddp", "taylor", False, "unstructured"),
        ("ddp_spawn", "lamp", False, "unstructured"),
        ("ddp", "lamp", True, "unstructured"),
        ("ddp_spawn", "learned", False, "unstructured"),
        ("ddp", "learned", True, "unstructured"),
        ("ddp", "learned", False, "structured"),
    ],
    ids=[
        "ddp-taylor-fixed",
        "ddp_spawn-lamp-fixed",
        "ddp-lamp-automatic",
        "ddp_spawn-learned-fixed",
        "ddp-learned-automatic",
        "ddp-learned-structured-fixed",
    ],
)
def test_every_rank_holds_identical_masks(
    strategy: str, importance: str, auto: bool, granularity: str, tmp_path: Path
) -> None:
    flags = ["--strategy", strategy, "--importance", importance, "--granularity", granularity]
    flags += ["--auto", "--epochs", "6"] if auto else []
    result = _run([str(SCRIPTS / "prune_ddp.py"), str(tmp_path), *flags])
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = sorted({int(p.stem.split("epoch")[1]) for p in tmp_path.glob("rank0_epoch*.pt")})
    assert epochs, "no rank wrote its masks"
    for epoch in epochs:
        rank0 = torch.load(tmp_path / f"rank0_epoch{epoch}.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"rank1_epoch{epoch}.pt", weights_only=True)
        assert rank0["masks"].keys() == rank1["masks"].keys()
        for name, mask in rank0["masks"].items():
            assert torch.equal(mask, rank1["masks"][name]), (epoch, name)
        assert rank0["sparsity"] == rank1["sparsity"]
        assert rank0["search"] == rank1["search"]
        assert rank0["scorer_rows"] == rank1["scorer_rows"]  # the learned scorer's state is broadcast too
    final = torch.load(tmp_path / f"rank0_epoch{epochs[-1]}.pt", weights_only=True)
    assert bool(final["scorer_rows"]) == (importance == "learned")
    if auto:
        assert final["search"]["decisions"], "the automatic search made no decision"
        assert final["sparsity"] > 0
    elif granularity == "structured":  # whole units: the target is approached from below
        assert 0.6 < final["sparsity"] <= 0.8
    else:
        assert final["sparsity"] == pytest.approx(0.8, abs=1e-3)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_masks(tmp_path: Path) -> None:
    script = str(SCRIPTS / "train_killable.py")
    uninterrupted, crashed = tmp_path / "uninterrupted", tmp_path / "crashed"
    assert _run([script, str(uninterrupted)]).returncode == 0

    killed = _run([script, str(crashed), "--kill-at-epoch", "3"])
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    assert not (crashed / "final_masks.pt").exists()
    last = crashed / "last.ckpt"
    assert last.exists()
    assert not list(crashed.glob("*.tmp*")), "a half-written file was left behind"

    resumed = _run([script, str(crashed), "--resume", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(uninterrupted / "final_masks.pt", weights_only=True)
    got = torch.load(crashed / "final_masks.pt", weights_only=True)
    for name, mask in expected["masks"].items():
        assert torch.equal(got["masks"][name], mask), name
    for name, tensor in expected["weights"].items():
        assert torch.equal(got["weights"][name], tensor), name
    assert [e["epoch"] for e in got["history"]] == [e["epoch"] for e in expected["history"]]
