from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_autoprune.core.calibration import (
    batch_size,
    calibration_batches,
    evaluation_mode,
    first_samples,
    gradient_statistics,
    muted_logging,
)


def test_map_style_sampling_is_seeded_and_leaves_global_rng_alone() -> None:
    loader = DataLoader(TensorDataset(torch.arange(100.0)), batch_size=16, shuffle=True)
    state = torch.get_rng_state()
    a = calibration_batches(loader, 40, torch.Generator().manual_seed(7))
    b = calibration_batches(loader, 40, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert [x[0].tolist() for x in a] == [x[0].tolist() for x in b]
    assert sum(len(x[0]) for x in a) == 40
    assert len(set(torch.cat([x[0] for x in a]).tolist())) == 40


def test_iterable_dataset_takes_leading_batches() -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return iter(torch.arange(50.0))

    batches = calibration_batches(DataLoader(Stream(), batch_size=8), 20, torch.Generator())
    assert [len(b) for b in batches] == [8, 8, 8]


def test_gradient_statistics_match_direct_autograd() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]

    def loss_fn(batch: Any, idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    mean, sq = gradient_statistics(loss_fn, batches, {"weight": model.weight})
    per_batch = [torch.autograd.grad(loss_fn(b, i), model.weight)[0] for i, b in enumerate(batches)]
    assert torch.allclose(mean["weight"], torch.stack(per_batch).mean(0))
    assert torch.allclose(sq["weight"], (torch.stack(per_batch) ** 2).mean(0))
    assert model.weight.grad is None  # .grad buffers untouched


def test_evaluation_mode_restores_mixed_flags() -> None:
    model = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(3))
    model[1].eval()
    with evaluation_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training
    assert model[0].training
    assert not model[1].training


def test_muted_logging_silences_and_restores() -> None:
    class Logs(LightningModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("x", 1.0)
            return torch.tensor(0.0)

    module = Logs()
    with muted_logging(module):
        assert module.training_step(None, 0) == 0  # would raise outside a Trainer if log were live
    assert "log" not in module.__dict__
    assert module.log.__func__ is LightningModule.log  # type: ignore[attr-defined]


def test_gradient_statistics_differentiate_frozen_parameters_and_refreeze_them() -> None:
    layer = torch.nn.Linear(2, 1, bias=False)
    layer.requires_grad_(False)
    batches = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]])]
    mean, _ = gradient_statistics(lambda b, i: layer(b).sum(), batches, {"w": layer.weight})
    assert torch.equal(mean["w"], torch.tensor([[2.0, 1.0]]))
    assert not layer.weight.requires_grad
    assert layer.weight.grad is None


def test_first_samples_cut_every_batch_structure_and_refuse_batches_without_tensors() -> None:
    pairs = [(torch.arange(4.0), torch.zeros(4)), (torch.arange(4.0, 8.0), torch.ones(4))]
    cut = first_samples(pairs, 5)
    assert [b[0].tolist() for b in cut] == [[0.0, 1.0, 2.0, 3.0], [4.0]]
    assert [b[1].tolist() for b in cut] == [[0.0] * 4, [1.0]]
    assert isinstance(cut[1], tuple)
    # A mapping batch keeps its keys; a tensor of another length and a scalar stay whole.
    batch = {"ids": torch.zeros(8, 3), "table": torch.ones(2), "length": torch.tensor(3), "name": "x"}
    (one,) = first_samples([batch], 3)
    assert one["ids"].shape == (3, 3)
    assert one["table"].shape == (2,)
    assert one["length"].item() == 3
    assert one["name"] == "x"
    assert first_samples(pairs, 100) == pairs  # fewer samples than asked: all of them
    assert batch_size(pairs[0]) == 4
    with pytest.raises(ValueError, match="holds no tensor with a batch dimension"):
        first_samples(["text"], 1)
