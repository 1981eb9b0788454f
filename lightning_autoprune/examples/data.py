"""Small, offline datasets for the bundled examples.

Both datamodules build their data locally (nothing is ever downloaded) and use a *fixed*
split: the partition into train / validation / test depends only on a constant
``random_state``, never on the training seed, so runs with different seeds are evaluated on
exactly the same examples.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsDataModule", "MNIST1DDataModule"]

_SPLIT_RANDOM_STATE = 0
"""Constant seed of every split; independent of the training seed by design."""

_MNIST1D_CACHE: dict[int, dict[str, np.ndarray]] = {}
"""Generated MNIST-1D arrays keyed by ``num_samples`` (generation takes a few seconds)."""


def _tensor_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """Copy features and labels into a float32 / int64 :class:`TensorDataset`.

    Copies (not views), so the tensors never alias the cached arrays.
    """
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))


class _SplitDataModule(pl.LightningDataModule):
    """Shared loader logic: subclasses fill the three datasets in :meth:`setup`."""

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None
        self.test_dataset: TensorDataset | None = None

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader[Any]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must be called before its loaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled loader over the training split."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Unshuffled loader over the validation split."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        """Unshuffled loader over the test split."""
        return self._loader(self.test_dataset, shuffle=False)


class DigitsDataModule(_SplitDataModule):
    """The 8x8 handwritten digits of :func:`sklearn.datasets.load_digits`, bundled with sklearn.

    1797 images flattened to 64 features scaled to ``[0, 1]`` (pixel values divided by 16),
    10 classes, split 60/20/20 into train / validation / test with a fixed, stratified split
    (``random_state=0``). The row indices of each split (into ``load_digits()``) are kept as
    :attr:`train_idx`, :attr:`val_idx` and :attr:`test_idx` after :meth:`setup`.

    Args:
        batch_size: Examples per batch for every loader.
        num_workers: ``DataLoader`` worker processes (``0`` loads in the main process).

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> [len(ds) for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)]
        [1077, 360, 360]
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, x.dtype, y.dtype
        (torch.Size([32, 64]), torch.float32, torch.int64)
    """

    num_features: int = 64
    num_classes: int = 10

    def __init__(self, batch_size: int = 64, num_workers: int = 0) -> None:
        """Store the settings; data are loaded in :meth:`setup`."""
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.train_idx: np.ndarray | None = None
        self.val_idx: np.ndarray | None = None
        self.test_idx: np.ndarray | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits and build all three splits (once; later calls do nothing).

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ...); every stage
                gets all three splits.
        """
        if self.train_dataset is not None:
            return
        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int64)
        idx = np.arange(len(y))
        rest_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=y, random_state=_SPLIT_RANDOM_STATE)
        train_idx, val_idx = train_test_split(
            rest_idx, test_size=0.25, stratify=y[rest_idx], random_state=_SPLIT_RANDOM_STATE
        )
        self.train_idx, self.val_idx, self.test_idx = train_idx, val_idx, test_idx
        self.train_dataset = _tensor_dataset(x[train_idx], y[train_idx])
        self.val_dataset = _tensor_dataset(x[val_idx], y[val_idx])
        self.test_dataset = _tensor_dataset(x[test_idx], y[test_idx])


def _generate_mnist1d(num_samples: int) -> dict[str, np.ndarray]:
    """Generate MNIST-1D locally, leaving Python's and NumPy's global RNG state untouched.

    ``mnist1d.data.make_dataset`` reseeds ``random`` and ``np.random`` globally (with its own
    fixed seed, so the data are deterministic); the caller's RNG state is saved and restored.
    Results are cached per ``num_samples``.
    """
    cached = _MNIST1D_CACHE.get(num_samples)
    if cached is not None:
        return cached
    try:
        from mnist1d.data import get_dataset_args, make_dataset
        from mnist1d.utils import ObjectView
    except ImportError as err:
        raise ImportError(
            "MNIST1DDataModule generates its data with the `mnist1d` package, which is not installed. "
            "HINT: `pip install lightning_autoprune[examples]`."
        ) from err

    arg_dict = get_dataset_args(as_dict=True)
    arg_dict["num_samples"] = num_samples
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        raw = make_dataset(ObjectView(arg_dict))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays: dict[str, np.ndarray] = {
        "x": np.asarray(raw["x"], dtype=np.float32),
        "y": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }
    _MNIST1D_CACHE[num_samples] = arrays
    return arrays


class MNIST1DDataModule(_SplitDataModule):
    """MNIST-1D (Greydanus, 2020): 40-step 1D signals of 10 digit templates, generated locally.

    The data are generated with ``mnist1d.data.make_dataset`` (never downloaded; the package comes
    with ``pip install lightning_autoprune[examples]``); its own
    80/20 split gives train and test, and 20% of the train part is carved out, stratified and
    with a fixed ``random_state=0``, as validation: 3200 / 800 / 1000 for the default 5000
    samples. Generation takes a few seconds and is cached per ``num_samples`` for the process.
    Features are float32 of shape ``(N, 40)``, labels int64.

    Args:
        batch_size: Examples per batch for every loader.
        num_workers: ``DataLoader`` worker processes (``0`` loads in the main process).
        num_samples: Total examples generated (train + validation + test), a multiple of 10.

    Example:
        >>> dm = MNIST1DDataModule(batch_size=64)
        >>> dm.num_features, dm.num_classes, dm.length
        (40, 10, 40)
    """

    num_features: int = 40
    num_classes: int = 10
    length: int = 40

    def __init__(self, batch_size: int = 128, num_workers: int = 0, num_samples: int = 5000) -> None:
        """Store the settings; data are generated in :meth:`setup`."""
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        self.num_samples = num_samples

    def setup(self, stage: str | None = None) -> None:
        """Generate (or fetch from the cache) the data and build all three splits, once.

        Args:
            stage: Lightning stage (``"fit"``, ``"validate"``, ``"test"``, ...); every stage
                gets all three splits.
        """
        if self.train_dataset is not None:
            return
        arrays = _generate_mnist1d(self.num_samples)
        x_train, x_val, y_train, y_val = train_test_split(
            arrays["x"],
            arrays["y"],
            test_size=0.2,
            stratify=arrays["y"],
            random_state=_SPLIT_RANDOM_STATE,
        )
        self.train_dataset = _tensor_dataset(x_train, y_train)
        self.val_dataset = _tensor_dataset(x_val, y_val)
        self.test_dataset = _tensor_dataset(arrays["x_test"], arrays["y_test"])
