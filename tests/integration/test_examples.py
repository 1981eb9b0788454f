"""Tests of the bundled example datamodules and models (``lightning_autoprune.examples``)."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_autoprune.examples import (
    QUIET_TRAINER_KWARGS,
    ClassifierModule,
    CNN1DClassifier,
    DigitsDataModule,
    EmbeddingClassifier,
    MLPClassifier,
    MNIST1DDataModule,
    RecurrentClassifier,
    TransformerClassifier,
)
from lightning_autoprune.examples import data as data_mod

DIGITS_SIZES = (1077, 360, 360)
MNIST1D_SIZES = (3200, 800, 1000)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def trainer_kwargs() -> dict[str, Any]:
    """Settings of a quick, quiet CPU trainer (one short epoch, nothing written to disk)."""
    return {**QUIET_TRAINER_KWARGS, "max_epochs": 1, "limit_train_batches": 5, "limit_val_batches": 2}


@pytest.fixture(scope="module")
def mnist1d() -> MNIST1DDataModule:
    """The default MNIST-1D datamodule, set up once for the module (generation takes seconds)."""
    dm = MNIST1DDataModule()
    dm.setup("fit")
    return dm


@pytest.fixture
def digits() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


def _splits(dm: DigitsDataModule | MNIST1DDataModule) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """The train, validation and test datasets of a datamodule that has been set up."""
    assert dm.train_dataset is not None
    assert dm.val_dataset is not None
    assert dm.test_dataset is not None
    return dm.train_dataset, dm.val_dataset, dm.test_dataset


def _labels(dataset: TensorDataset) -> np.ndarray:
    return dataset.tensors[1].numpy()


def _class_fractions(y: np.ndarray, num_classes: int = 10) -> np.ndarray:
    return np.bincount(y, minlength=num_classes) / len(y)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_disjoint_and_complete(digits: DigitsDataModule) -> None:
    assert tuple(len(ds) for ds in _splits(digits)) == DIGITS_SIZES
    indices = (digits.train_idx, digits.val_idx, digits.test_idx)
    train, val, test = (set(idx.tolist()) for idx in indices if idx is not None)
    assert len(train) + len(val) + len(test) == 1797
    assert not train & val
    assert not train & test
    assert not val & test
    assert train | val | test == set(range(1797))


def test_digits_tensors(digits: DigitsDataModule) -> None:
    assert (digits.num_features, digits.num_classes) == (64, 10)
    for ds in _splits(digits):
        x, y = ds.tensors
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1] == 64
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
        # Pixels are the integers 0..16 divided by 16.
        assert torch.equal(x * 16, torch.round(x * 16))
        assert set(y.unique().tolist()) == set(range(10))


def test_digits_split_is_stratified(digits: DigitsDataModule) -> None:
    reference = _class_fractions(np.concatenate([_labels(ds) for ds in _splits(digits)]))
    for ds in _splits(digits):
        np.testing.assert_allclose(_class_fractions(_labels(ds)), reference, atol=0.02)


def test_digits_split_ignores_global_seeds() -> None:
    splits = []
    for seed in (0, 12345):
        _seed_all(seed)
        dm = DigitsDataModule()
        dm.setup("fit")
        splits.append((dm.train_idx, dm.val_idx, dm.test_idx))
    for a, b in zip(*splits, strict=True):
        np.testing.assert_array_equal(a, b)


def test_digits_setup_is_idempotent(digits: DigitsDataModule) -> None:
    train = digits.train_dataset
    digits.setup("test")
    digits.setup("fit")
    assert digits.train_dataset is train


def test_digits_loaders(digits: DigitsDataModule) -> None:
    # Validation and test loaders are in a fixed order; training reshuffles each pass.
    first = torch.cat([y for _, y in digits.val_dataloader()])
    assert torch.equal(first, torch.cat([y for _, y in digits.val_dataloader()]))
    assert torch.equal(first, _splits(digits)[1].tensors[1])
    torch.manual_seed(0)
    order_a = torch.cat([y for _, y in digits.train_dataloader()])
    order_b = torch.cat([y for _, y in digits.train_dataloader()])
    assert not torch.equal(order_a, order_b)
    assert torch.equal(order_a.sort().values, order_b.sort().values)
    x, _ = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 64)


def test_loaders_before_setup_raise() -> None:
    with pytest.raises(RuntimeError, match="setup"):
        DigitsDataModule().train_dataloader()


# ----------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_split_sizes_and_tensors(mnist1d: MNIST1DDataModule) -> None:
    assert (mnist1d.num_features, mnist1d.num_classes, mnist1d.length) == (40, 10, 40)
    assert tuple(len(ds) for ds in _splits(mnist1d)) == MNIST1D_SIZES
    for ds in _splits(mnist1d):
        x, y = ds.tensors
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1:] == (40,)
        assert torch.isfinite(x).all()
        assert set(y.unique().tolist()) == set(range(10))


def test_mnist1d_split_is_stratified(mnist1d: MNIST1DDataModule) -> None:
    train, val, test = (_labels(ds) for ds in _splits(mnist1d))
    reference = _class_fractions(train)
    # Validation is carved out with stratification; the test split is mnist1d's own (a shuffle).
    np.testing.assert_allclose(_class_fractions(val), reference, atol=0.005)
    np.testing.assert_allclose(_class_fractions(test), reference, atol=0.02)


def test_mnist1d_validation_is_carved_from_train(mnist1d: MNIST1DDataModule) -> None:
    cached = data_mod._MNIST1D_CACHE[5000]
    train, val, test = _splits(mnist1d)
    together = torch.cat([train.tensors[0], val.tensors[0]]).numpy()
    # Same rows as mnist1d's training part, in some order, and none of its test rows.
    np.testing.assert_array_equal(np.sort(together, axis=0), np.sort(cached["x"], axis=0))
    np.testing.assert_array_equal(test.tensors[0].numpy(), cached["x_test"])


def test_mnist1d_generation_leaves_global_rng_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_MNIST1D_CACHE", {})  # force a real generation
    _seed_all(7)
    expected = (random.random(), np.random.rand(3), torch.rand(3))
    _seed_all(7)
    MNIST1DDataModule(num_samples=200).setup("fit")
    assert 200 in data_mod._MNIST1D_CACHE
    got = (random.random(), np.random.rand(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_mnist1d_split_ignores_global_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    splits: list[tuple[Tensor, ...]] = []
    for seed in (0, 999):
        monkeypatch.setattr(data_mod, "_MNIST1D_CACHE", {})  # regenerate under each seed
        _seed_all(seed)
        dm = MNIST1DDataModule(num_samples=500)
        dm.setup("fit")
        splits.append(tuple(t for ds in _splits(dm) for t in ds.tensors))
    assert [len(t) for t in splits[0][::2]] == [320, 80, 100]
    for a, b in zip(*splits, strict=True):
        assert torch.equal(a, b)


def test_mnist1d_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_MNIST1D_CACHE", {})
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)  # as if mnist1d were not installed
    with pytest.raises(ImportError, match=r"pip install lightning_autoprune\[examples\]"):
        MNIST1DDataModule(num_samples=200).setup("fit")


def test_mnist1d_arrays_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod, "_MNIST1D_CACHE", {})
    first, second = MNIST1DDataModule(num_samples=100), MNIST1DDataModule(num_samples=100)
    first.setup("fit")
    arrays = data_mod._MNIST1D_CACHE[100]
    second.setup("fit")
    assert list(data_mod._MNIST1D_CACHE) == [100]
    assert data_mod._MNIST1D_CACHE[100] is arrays  # generated once, reused by the second
    assert torch.equal(_splits(first)[1].tensors[0], _splits(second)[1].tensors[0])
    # Datasets hold copies: training code cannot corrupt the cache through them.
    _splits(first)[2].tensors[0].zero_()
    assert np.abs(arrays["x_test"]).sum() > 0


# ----------------------------------------------------------------------------- models

ModelCase = tuple[Callable[[], ClassifierModule], str]

MODEL_CASES: dict[str, ModelCase] = {
    "mlp-digits": (lambda: MLPClassifier(in_features=64, hidden=[32, 16]), "digits"),
    "mlp-mnist1d": (lambda: MLPClassifier(in_features=40, hidden=[32]), "mnist1d"),
    "embedding-digits": (lambda: EmbeddingClassifier(embedding_dim=4), "digits"),
    "cnn1d-mnist1d": (lambda: CNN1DClassifier(channels=[8, 16], kernel_size=3), "mnist1d"),
    "cnn1d-nobn-mnist1d": (lambda: CNN1DClassifier(channels=[8], batchnorm=False), "mnist1d"),
    "gru-mnist1d": (lambda: RecurrentClassifier(cell="gru", hidden_size=16), "mnist1d"),
    "lstm-mnist1d": (lambda: RecurrentClassifier(cell="lstm", hidden_size=16, num_layers=2), "mnist1d"),
    "transformer-mnist1d": (
        lambda: TransformerClassifier(d_model=16, nhead=2, num_layers=1, dim_feedforward=32, optimizer="adamw"),
        "mnist1d",
    ),
}


def _datamodule(kind: str, request: pytest.FixtureRequest) -> pl.LightningDataModule:
    return DigitsDataModule() if kind == "digits" else request.getfixturevalue("mnist1d")


@pytest.mark.parametrize("case", MODEL_CASES.keys())
def test_model_trains_one_epoch(case: str, trainer_kwargs: dict[str, Any], request: pytest.FixtureRequest) -> None:
    factory, kind = MODEL_CASES[case]
    torch.manual_seed(0)
    model = factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(**trainer_kwargs)
    trainer.fit(model, datamodule=_datamodule(kind, request))
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_acc"} <= metrics.keys()
    assert 0.0 <= float(metrics["val_acc"]) <= 1.0
    assert math.isfinite(float(metrics["train_loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), "no weight was updated"


@pytest.mark.parametrize("case", MODEL_CASES.keys())
def test_checkpoint_roundtrip(
    case: str, trainer_kwargs: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    factory, kind = MODEL_CASES[case]
    torch.manual_seed(0)
    model = factory()
    trainer = pl.Trainer(**{**trainer_kwargs, "limit_train_batches": 2, "limit_val_batches": 1})
    trainer.fit(model, datamodule=_datamodule(kind, request))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = type(model).load_from_checkpoint(path, map_location="cpu")
    assert dict(loaded.hparams) == dict(model.hparams)  # non-default constructor args were saved
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    x = torch.rand(4, 64 if kind == "digits" else 40)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize(
    ("name", "expected"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_configure_optimizers(name: str, expected: type[torch.optim.Optimizer]) -> None:
    model = MLPClassifier(hidden=[8], optimizer=name, lr=0.05, weight_decay=1e-4, momentum=0.5)  # type: ignore[arg-type]
    optimizer = model.configure_optimizers()
    assert type(optimizer) is expected
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.05, 1e-4)
    if name == "sgd":
        assert group["momentum"] == 0.5
    assert len(group["params"]) == len(list(model.parameters()))


def test_invalid_choices_raise() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        MLPClassifier(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cell"):
        RecurrentClassifier(cell="rnn")  # type: ignore[arg-type]


def test_default_architectures() -> None:
    mlp = MLPClassifier()
    widths = [m.out_features for m in mlp.net.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 256, 10]
    cnn = CNN1DClassifier()
    convs = [m for m in cnn.net.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [32, 32, 32]
    assert [c.stride[0] for c in convs] == [1, 2, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in cnn.net.modules()) == 3
    assert cnn(torch.zeros(2, 40)).shape == (2, 10)
    assert RecurrentClassifier()(torch.zeros(2, 40)).shape == (2, 10)
    assert TransformerClassifier()(torch.zeros(2, 40)).shape == (2, 10)


def test_embedding_classifier_recovers_pixel_levels() -> None:
    model = EmbeddingClassifier()
    seen: list[Tensor] = []
    model.net.register_forward_hook(lambda _module, args, _output: seen.append(args[0]))
    levels = torch.randint(0, 17, (5, 64))
    assert model(levels / 16.0).shape == (5, 10)
    # The embedding is looked up with exactly the integer pixel levels the digits started from.
    assert torch.equal(seen[0], levels)


def test_digits_mlp_reaches_90_percent(trainer_kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    dm = DigitsDataModule()
    model = MLPClassifier()
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 8, "limit_train_batches": None, "limit_val_batches": None})
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == 8
    assert float(trainer.callback_metrics["val_acc"]) > 0.90
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert result["test_acc"] > 0.90
