"""AutoPrune with granularity='structured': real Trainers on digits, coupled masks, compaction, exact resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import CNN1DClassifier, DigitsDataModule, MLPClassifier
from lightning_autoprune.structured import count_flops


def _cnn() -> CNN1DClassifier:
    return CNN1DClassifier(length=64, channels=[12, 12], lr=1e-2)


def _channel_is_dead(model: CNN1DClassifier, conv: int, channel: int) -> bool:
    net = cast(nn.Sequential, model.net)
    conv_layer, norm = cast(nn.Conv1d, net[conv]), cast(nn.BatchNorm1d, net[conv + 1])
    return bool((conv_layer.weight[channel] == 0).all() and norm.weight[channel] == 0)


def test_structured_cnn_prunes_coupled_channels_and_compacts(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        target_sparsity=0.6,
        granularity="structured",
        importance="learned",
        label_groups=16,
        start_epoch=1,
        end_epoch=3,
        compact_on_fit_end=True,
        report_dir=str(tmp_path / "report"),
        verbose=False,
    )
    model = _cnn()
    trainer = Trainer(max_epochs=4, limit_train_batches=6, limit_val_batches=2, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(model, datamodule=digits)

    assert 0.5 <= autoprune.sparsity <= 0.6  # structured steps undershoot, never overshoot
    assert autoprune.scorer.diagnostics, "the learned unit scorer checked itself at every event"
    net = cast(nn.Sequential, model.net)
    head = cast(nn.Linear, net[-1])
    for conv, consumer in ((0, 3), (3, None)):  # a dead channel is dead in its conv, its BN and its consumer
        for channel in range(cast(nn.Conv1d, net[conv]).out_channels):
            dead = _channel_is_dead(model, conv, channel)
            beta_zero = bool(cast(nn.BatchNorm1d, net[conv + 1]).bias[channel] == 0)
            assert dead == beta_zero
            if consumer is not None and dead:
                assert (cast(nn.Conv1d, net[consumer]).weight[:, channel] == 0).all()
            if consumer is None and dead:
                assert (head.weight[:, channel] == 0).all()
    assert (head.weight != 0).any(dim=1).all(), "the classifier's outputs are never pruned"

    small = autoprune.compacted_model
    assert small is not None
    assert isinstance(small, CNN1DClassifier)
    widths = [m.out_channels for m in cast(nn.Sequential, small.net) if isinstance(m, torch.nn.Conv1d)]
    expected = [sum(not _channel_is_dead(model, c, k) for k in range(12)) for c in (0, 3)]
    assert widths == expected
    assert sum(widths) < 24
    x = cast(TensorDataset, digits.val_dataloader().dataset).tensors[0][:32]
    model.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))
    loaded = torch.load(tmp_path / "report" / "compacted_model.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert (tmp_path / "report" / "report.md").exists()


@pytest.mark.parametrize("importance", ["taylor", "learned"])
def test_structured_resume_gives_identical_masks(
    importance: str,
    digits: DigitsDataModule,
    trainer_kwargs: dict[str, Any],
    tmp_path: Path,
    stop_after: Callable[[int], Callback],
) -> None:
    def make_callback() -> AutoPrune:
        return AutoPrune(
            target_sparsity=0.7,
            granularity="structured",
            importance=importance,
            label_groups=16,
            start_epoch=1,
            end_epoch=4,
            report=False,
            verbose=False,
        )

    common = {**trainer_kwargs, "max_epochs": 6, "limit_train_batches": 4, "limit_val_batches": 1}
    seed_everything(0)
    uninterrupted = make_callback()
    model_a = MLPClassifier(lr=1e-2)
    Trainer(callbacks=[uninterrupted], **common).fit(model_a, datamodule=digits)

    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    interrupted = Trainer(
        callbacks=[make_callback(), checkpoint, stop_after(2)], **{**common, "enable_checkpointing": True}
    )
    interrupted.fit(MLPClassifier(lr=1e-2), datamodule=digits)

    seed_everything(1234)
    resumed = make_callback()
    model_b = MLPClassifier(lr=1e-2)
    Trainer(callbacks=[resumed], **common).fit(model_b, datamodule=digits, ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert set(resumed.masks) == set(uninterrupted.masks)
    for name, mask in uninterrupted.masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    hidden = next(m for m in cast(nn.Sequential, model_a.net) if isinstance(m, torch.nn.Linear)).weight
    assert 0 < int((hidden == 0).all(dim=1).sum()) < hidden.shape[0], "whole neurons were pruned"


def test_structured_automatic_mode_stays_within_tolerance(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any]
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        granularity="structured", importance="taylor", start_epoch=3, end_epoch=9, verbose=False, report=False
    )
    scored: list[int] = []
    score_units = autoprune.scorer.score_units

    def counting(groups: Any, inputs: Any) -> Any:
        scored.append(1)
        return score_units(groups, inputs)

    autoprune.scorer.score_units = counting
    trainer = Trainer(max_epochs=12, limit_train_batches=8, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(MLPClassifier(lr=1e-2), datamodule=digits)
    record = autoprune.report_record()
    # A step after a rollback selects units from the keys of the restored state instead of scoring it again.
    rollbacks = [d for d in autoprune.search.decisions if d["decision"] == "rollback"]
    assert rollbacks
    assert len(scored) < len(autoprune.history)
    assert record["mode"] == "automatic"
    assert autoprune.search.stop_reason
    final = trainer.callback_metrics["val_acc"].item()
    assert autoprune.search.reference is not None
    assert final >= autoprune.search.reference - 0.01 + autoprune.search.margin - 1e-6
    assert record["totals"]["macs_after"] <= record["totals"]["macs_before"]


@pytest.mark.parametrize("round_to", [1, 4])
def test_automatic_mode_with_a_flops_target_stays_within_tolerance(
    round_to: int, digits: DigitsDataModule, trainer_kwargs: dict[str, Any]
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(granularity="structured", target_unit="flops", round_to=round_to, verbose=False, report=False)
    # Whole epochs: on half epochs this CNN still climbed 7 points per epoch when the search had to
    # start, so the reference followed that trend and no step could keep up with it.
    trainer = Trainer(max_epochs=12, callbacks=[autoprune], **trainer_kwargs)
    model = _cnn()
    trainer.fit(model, datamodule=digits)
    widths = [sum(not _channel_is_dead(model, conv, k) for k in range(12)) for conv in (0, 3)]
    assert all(w % round_to == 0 for w in widths), widths
    assert autoprune.search.stop_reason
    assert autoprune.search.reference is not None
    assert trainer.callback_metrics["val_acc"].item() >= autoprune.search.reference - 0.01 - 1e-6
    flops = autoprune.flops_sparsity
    assert flops is not None
    assert flops > 0.0, "the search accepted at least one step"
    accepted = autoprune.search.accepted
    assert flops <= accepted + 1e-9  # whole channels stop at or below the accepted FLOPs fraction
    assert trainer.callback_metrics["autoprune/flops_sparsity"].item() == pytest.approx(flops)


def test_structured_default_importance_is_the_group_magnitude() -> None:
    assert AutoPrune(granularity="structured").importance == "magnitude"
    assert not AutoPrune(granularity="structured").scorer.needs_gradients  # no calibration passes
    assert AutoPrune().importance == "learned"  # unstructured keeps the learned default
    assert AutoPrune(granularity="structured", importance="learned").importance == "learned"


def test_structured_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"granularity='structured', `importance` must be one of .* got 'lamp'"):
        AutoPrune(granularity="structured", importance="lamp")
    with pytest.raises(ValueError, match="`compact_on_fit_end`=True needs granularity='structured'"):
        AutoPrune(compact_on_fit_end=True)
    with pytest.raises(ValueError, match="`compact_on_fit_end` must be True or False, got 'yes'"):
        AutoPrune(granularity="structured", compact_on_fit_end="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`target_unit` must be one of 'params', 'flops', got 'macs'"):
        AutoPrune(granularity="structured", target_unit="macs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`target_unit`='flops' needs granularity='structured'.*'unstructured'"):
        AutoPrune(target_unit="flops")
    with pytest.raises(ValueError, match="`round_to` must be an integer >= 1, got 0"):
        AutoPrune(granularity="structured", round_to=0)
    with pytest.raises(ValueError, match=r"`round_to`=8 .* needs granularity='structured', got .*'unstructured'"):
        AutoPrune(round_to=8)


def test_structured_model_without_prunable_units_fails_clearly(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any]
) -> None:
    autoprune = AutoPrune(target_sparsity=0.5, granularity="structured", importance="magnitude", verbose=False)
    model = MLPClassifier(hidden=[])  # a single Linear: all its units are the model's outputs
    trainer = Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    with pytest.raises(ValueError, match=r"found no unit it can prune.*'net.1' \(produces the model's output\)"):
        trainer.fit(model, datamodule=digits)
    assert trainer.global_step == 0, "it fails before the first epoch trains, not at the first pruning event"


def test_structured_prunes_only_when_the_schedule_moves(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any]
) -> None:
    seed_everything(0)
    autoprune = AutoPrune(
        target_sparsity=0.5,
        granularity="structured",
        importance="taylor",
        start_epoch=1,
        end_epoch=3,
        report=False,
        verbose=False,
    )
    trainer = Trainer(max_epochs=7, limit_train_batches=4, limit_val_batches=1, callbacks=[autoprune], **trainer_kwargs)
    trainer.fit(_cnn(), datamodule=digits)
    assert autoprune.sparsity < 0.5  # whole channels stop just below the target ...
    assert [event["epoch"] for event in autoprune.history] == [1, 2, 3]  # ... and no event follows end_epoch


def test_flops_target_reaches_the_flops_fraction_and_resumes_exactly(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any], tmp_path: Path, stop_after: Callable[[int], Callback]
) -> None:
    """target_unit='flops' removes that share of the conv/linear FLOPs (the compacted model agrees), not of params."""

    def make_callback() -> AutoPrune:
        return AutoPrune(
            target_sparsity=0.6,
            granularity="structured",
            target_unit="flops",
            importance="taylor",
            start_epoch=1,
            end_epoch=3,
            compact_on_fit_end=True,
            report_dir=str(tmp_path / "report"),
            verbose=False,
        )

    common = {**trainer_kwargs, "max_epochs": 5, "limit_train_batches": 4, "limit_val_batches": 1}
    seed_everything(0)
    autoprune = make_callback()
    model = _cnn()
    trainer = Trainer(callbacks=[autoprune], **common)
    trainer.fit(model, datamodule=digits)

    flops = autoprune.flops_sparsity
    assert flops is not None
    assert 0.5 <= flops <= 0.6  # whole channels stop just below the FLOPs target
    assert abs(autoprune.sparsity - flops) > 0.02, "parameters and FLOPs shares differ on a CNN"
    assert trainer.callback_metrics["autoprune/flops_sparsity"].item() == pytest.approx(flops)
    assert autoprune.history[-1]["flops_sparsity"] == pytest.approx(flops)
    totals = autoprune.report_record(model)["totals"]
    assert 1.0 - totals["macs_after"] / totals["macs_before"] == pytest.approx(flops)
    # the physically smaller model costs that much less, counted by Torch-Pruning (which adds BN and bias ops)
    compacted = autoprune.compacted_model
    assert compacted is not None
    example = torch.zeros(1, 64)
    removed = 1.0 - count_flops(compacted, example) / count_flops(_cnn(), example)
    assert removed == pytest.approx(flops, abs=0.03)

    seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    interrupted = Trainer(
        callbacks=[make_callback(), checkpoint, stop_after(1)], **{**common, "enable_checkpointing": True}
    )
    interrupted.fit(_cnn(), datamodule=digits)
    seed_everything(1234)
    resumed = make_callback()
    model_b = _cnn()
    Trainer(callbacks=[resumed], **common).fit(model_b, datamodule=digits, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for name, mask in autoprune.masks.items():
        assert torch.equal(resumed.masks[name], mask), name


def test_round_to_keeps_channel_counts_multiples_through_a_real_run(
    digits: DigitsDataModule, trainer_kwargs: dict[str, Any]
) -> None:
    """With round_to=4 every conv keeps 4, 8 or 12 of its 12 channels at every event, and compaction agrees."""
    seed_everything(0)
    autoprune = AutoPrune(
        target_sparsity=0.6,
        granularity="structured",
        target_unit="flops",
        round_to=4,
        start_epoch=1,
        end_epoch=3,
        compact_on_fit_end=True,
        report=False,
        verbose=False,
    )
    widths_per_event: list[list[int]] = []

    class Widths(Callback):
        def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:  # runs after AutoPrune's hook
            widths_per_event.append(
                [sum(not _channel_is_dead(pl_module, conv, k) for k in range(12)) for conv in (0, 3)]
            )

    model = _cnn()
    trainer = Trainer(
        max_epochs=5, limit_train_batches=4, limit_val_batches=1, callbacks=[autoprune, Widths()], **trainer_kwargs
    )
    trainer.fit(model, datamodule=digits)
    assert all(w % 4 == 0 for widths in widths_per_event for w in widths), widths_per_event
    flops = autoprune.flops_sparsity
    assert flops is not None
    assert 0.3 < flops <= 0.6  # rounded widths: still below the target, never above
    assert widths_per_event[-1] != [12, 12], "something was pruned"
    compacted = autoprune.compacted_model
    assert compacted is not None
    assert isinstance(compacted, CNN1DClassifier)
    assert [
        m.out_channels for m in cast(nn.Sequential, compacted.net) if isinstance(m, torch.nn.Conv1d)
    ] == widths_per_event[-1]
