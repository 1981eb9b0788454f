"""The realistic tier's two workloads, built offline and deterministically (see ``benchmarks/realistic.py``).

* **MNIST-1D at scale** (:class:`LargeMNIST1D`, :class:`ResNet1D`): 60,000 signals from the ``mnist1d``
  package's procedural generator with explicit arguments and seed (its download path is never used),
  40,000 / 5,000 / 15,000 for training / validation / test. The model is a 1D ResNet (BatchNorm,
  two stages of two basic residual blocks, 64 and 128 channels), 232,906 parameters.
* **A character-level language model** (:class:`StdlibCorpus`, :class:`CharLM`): transformers'
  ``GPT2LMHeadModel`` from a small ``GPT2Config`` (4 layers, width 128, 4 heads, context 128), no
  weights or tokenizer downloaded. The corpus is the running interpreter's standard library sources
  (``sysconfig.get_paths()["stdlib"]``, ``*.py`` files in sorted order, ``site-packages`` left out),
  split *by file* with a CRC32 of the file's relative path, over a fixed vocabulary (printable ASCII,
  newline and tab; everything else is the unknown token 0). Metric: next-character loss in nats
  (and bits) per character, and next-character accuracy.
"""

from __future__ import annotations

import hashlib
import math
import random
import sysconfig
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_autoprune.examples.models import ClassifierModule

# ---------------------------------------------------------------------------------------------- MNIST-1D
#: The generator's arguments, written out (not taken from the package's defaults, which may change).
MNIST1D_ARGS: dict[str, Any] = {
    "num_samples": 60_000,
    "train_split": 40_000 / 60_000,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 0.02,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}
#: How many of the generator's held-out samples become validation; the rest are the test set.
MNIST1D_VAL = 5_000


def generate_mnist1d(num_samples: int = MNIST1D_ARGS["num_samples"], seed: int = 42) -> dict[str, np.ndarray]:
    """MNIST-1D from ``mnist1d.data.make_dataset`` with :data:`MNIST1D_ARGS`, leaving the global RNGs untouched.

    ``make_dataset`` reseeds ``random`` and ``np.random`` itself; the caller's states are restored.
    The held-out part (``1 - train_split``) is split in order into validation (the first
    ``num_samples * MNIST1D_VAL / 60000`` samples) and test.

    Returns:
        ``x``/``y`` for train, ``x_val``/``y_val`` and ``x_test``/``y_test`` (float32 signals, int64 labels).
    """
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = dict(MNIST1D_ARGS) | {"num_samples": num_samples, "seed": seed}
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(ObjectView(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    held_x, held_y = np.asarray(raw["x_test"], np.float32), np.asarray(raw["y_test"], np.int64)
    n_val = round(num_samples * MNIST1D_VAL / MNIST1D_ARGS["num_samples"])
    return {
        "x": np.asarray(raw["x"], np.float32),
        "y": np.asarray(raw["y"], np.int64),
        "x_val": held_x[:n_val],
        "y_val": held_y[:n_val],
        "x_test": held_x[n_val:],
        "y_test": held_y[n_val:],
    }


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y))


class LargeMNIST1D(pl.LightningDataModule):
    """MNIST-1D at scale: 40,000 / 5,000 / 15,000 signals (``num_samples`` scales all three).

    Args:
        num_samples: generated samples (60,000 for the tier; tests use a few hundred).
        batch_size: loader batch size.
    """

    def __init__(self, num_samples: int = MNIST1D_ARGS["num_samples"], batch_size: int = 256) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.datasets: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Generate once per datamodule."""
        if self.datasets:
            return
        arrays = generate_mnist1d(self.num_samples)
        self.datasets = {
            "train": _tensors(arrays["x"], arrays["y"]),
            "val": _tensors(arrays["x_val"], arrays["y_val"]),
            "test": _tensors(arrays["x_test"], arrays["y_test"]),
        }

    @property
    def test_dataset(self) -> TensorDataset:
        """The test split (the structured track takes its compaction examples from it)."""
        self.setup()
        return self.datasets["test"]

    def sizes(self) -> dict[str, int]:
        """Samples per split."""
        self.setup()
        return {name: len(ds) for name, ds in self.datasets.items()}

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches."""
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation batches, in order."""
        return DataLoader(self.datasets["val"], batch_size=1024)

    def test_dataloader(self) -> DataLoader[Any]:
        """Test batches, in order."""
        return DataLoader(self.datasets["test"], batch_size=1024)


class BasicBlock1D(nn.Module):
    """Two ``Conv1d(k=3) + BatchNorm`` with a residual connection (a 1x1 projection where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet1D(ClassifierModule):
    """A 1D ResNet for 40-step MNIST-1D signals: stem, two stages of two basic blocks, pooled linear head.

    Args:
        widths: channels of the stem/first stage and of the second stage (downsampled by 2).
        lr: Adam learning rate.

    Example:
        >>> sum(p.numel() for p in ResNet1D().parameters())
        232906
    """

    def __init__(self, widths: Sequence[int] = (64, 128), lr: float = 2e-3) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        w1, w2 = widths
        self.net = nn.Sequential(
            nn.Conv1d(1, w1, 5, padding=2, bias=False),
            nn.BatchNorm1d(w1),
            nn.ReLU(),
            BasicBlock1D(w1, w1),
            BasicBlock1D(w1, w1),
            BasicBlock1D(w1, w2, stride=2),
            BasicBlock1D(w2, w2),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(w2, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``(batch, 1, 40)`` signals (or ``(batch, 40)``, as the structured track counts FLOPs)."""
        return self.net(x.unsqueeze(1) if x.dim() == 2 else x)


# ---------------------------------------------------------------------------------------------- corpus
#: The fixed vocabulary: index 0 is the unknown token, then newline, tab and printable ASCII.
VOCAB = "\n\t" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB) + 1
CONTEXT = 128
#: Characters kept per split, in file order (validation and test are cut to these sizes).
CORPUS_CHARS = {"train": 4_000_000, "val": 262_144, "test": 262_144}


def encode(text: str) -> Tensor:
    r"""Characters to token ids (uint8; unknown characters are 0).

    Example:
        >>> encode("a\n\u00e9").tolist()
        [68, 1, 0]
    """
    table = np.zeros(128, dtype=np.uint8)
    for index, char in enumerate(VOCAB, start=1):
        table[ord(char)] = index
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.where(codes < 128, table[np.minimum(codes, 127)], 0).astype(np.uint8)
    return torch.from_numpy(ids.copy())


def split_of(relative_path: str) -> str:
    """The split a stdlib file belongs to: CRC32 of its relative path, 1 in 10 validation, 1 in 10 test.

    Example:
        >>> split_of("json/__init__.py") in ("train", "val", "test")
        True
    """
    bucket = zlib.crc32(relative_path.encode()) % 10
    return "val" if bucket == 0 else "test" if bucket == 1 else "train"


@dataclass(frozen=True)
class StdlibCorpus:
    """The character corpus: token ids per split, and what they were built from.

    Attributes:
        ids: ``{"train"|"val"|"test": uint8 tensor}``.
        files: files per split.
        sha256: digest of the three splits' ids, to tell whether two machines trained on the same corpus.
        root: the stdlib folder read.
    """

    ids: dict[str, Tensor]
    files: dict[str, int]
    sha256: str
    root: str

    @classmethod
    def build(cls, chars: dict[str, int] | None = None, root: str | None = None) -> StdlibCorpus:
        """Read ``*.py`` under ``root`` (default: this interpreter's stdlib) in sorted order, split by file.

        Each split takes whole files in order until it holds ``chars[split]`` characters, then is cut there.
        """
        limits = chars or CORPUS_CHARS
        base = Path(root or sysconfig.get_paths()["stdlib"])
        parts: dict[str, list[str]] = {name: [] for name in limits}
        sizes = dict.fromkeys(limits, 0)
        files = dict.fromkeys(limits, 0)
        paths = sorted(
            p.relative_to(base).as_posix()
            for p in base.rglob("*.py")
            if "site-packages" not in p.parts and "dist-packages" not in p.parts
        )
        for relative in paths:
            split = split_of(relative)
            if sizes[split] >= limits[split]:
                if all(sizes[s] >= limits[s] for s in limits):
                    break
                continue
            text = (base / relative).read_text(encoding="utf-8", errors="replace")
            parts[split].append(text)
            sizes[split] += len(text)
            files[split] += 1
        ids = {name: encode("".join(texts))[: limits[name]] for name, texts in parts.items()}
        digest = hashlib.sha256(b"".join(ids[name].numpy().tobytes() for name in sorted(ids))).hexdigest()
        return cls(ids=ids, files=files, sha256=digest, root=str(base))

    def chars(self) -> dict[str, int]:
        """Characters per split."""
        return {name: int(t.numel()) for name, t in self.ids.items()}


class Windows(Dataset):
    """Non-overlapping windows of ``context + 1`` characters: ``(input ids, next-character ids)``."""

    def __init__(self, ids: Tensor, context: int = CONTEXT) -> None:
        self.ids = ids
        self.context = context

    def __len__(self) -> int:
        return max(0, (self.ids.numel() - 1) // self.context)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.context
        window = self.ids[start : start + self.context + 1].long()
        return window[:-1], window[1:]


class StdlibCharData(pl.LightningDataModule):
    """The corpus as a datamodule (:class:`Windows` of 128 characters).

    Args:
        corpus: a built :class:`StdlibCorpus` (built on ``setup`` if ``None``).
        batch_size: training batch size.
    """

    def __init__(self, corpus: StdlibCorpus | None = None, batch_size: int = 64) -> None:
        super().__init__()
        self.corpus = corpus
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        """Build the corpus once."""
        if self.corpus is None:
            self.corpus = StdlibCorpus.build()

    def _windows(self, split: str) -> Windows:
        self.setup()
        assert self.corpus is not None
        return Windows(self.corpus.ids[split])

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training windows."""
        return DataLoader(self._windows("train"), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation windows, in order."""
        return DataLoader(self._windows("val"), batch_size=256)

    def test_dataloader(self) -> DataLoader[Any]:
        """Test windows, in order."""
        return DataLoader(self._windows("test"), batch_size=256)


def gpt2_config(layers: int = 4, width: int = 128, heads: int = 4) -> Any:
    """The small ``GPT2Config`` of the tier (no download)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=CONTEXT,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


#: What AutoPrune prunes in the LM: GPT-2's attention and MLP projections (``transformers`` ``Conv1D``).
LM_INCLUDE = ["*.c_attn.weight", "*.c_proj.weight", "*.c_fc.weight"]


class CharLM(pl.LightningModule):
    """``GPT2LMHeadModel`` on characters; logs ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (nats/char).

    Args:
        layers: transformer blocks.
        width: embedding width.
        lr: AdamW learning rate.
    """

    def __init__(self, layers: int = 4, width: int = 128, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import GPT2LMHeadModel

        self.lm = GPT2LMHeadModel(gpt2_config(layers, width))
        self.lr = lr
        self.val_acc = MulticlassAccuracy(num_classes=VOCAB_SIZE, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=VOCAB_SIZE, average="micro")

    def forward(self, ids: Tensor) -> Tensor:
        """Next-character logits, ``(batch, context, vocab)``."""
        return self.lm(input_ids=ids).logits

    def _loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x).reshape(-1, VOCAB_SIZE)
        return F.cross_entropy(logits, y.reshape(-1)), logits, y.reshape(-1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Mean next-character cross-entropy (nats)."""
        loss, _, _ = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch[1].numel())
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` and ``val_acc``, weighted by characters."""
        loss, logits, y = self._loss(batch)
        self.val_acc(logits, y)
        self.log("val_loss", loss, batch_size=y.numel())
        self.log("val_acc", self.val_acc, batch_size=y.numel())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_acc``, weighted by characters."""
        loss, logits, y = self._loss(batch)
        self.test_acc(logits, y)
        self.log("test_loss", loss, batch_size=y.numel())
        self.log("test_acc", self.test_acc, batch_size=y.numel())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over every parameter."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)


def bits_per_char(nats: float) -> float:
    """Nats per character to bits per character.

    Example:
        >>> round(bits_per_char(math.log(2)), 6)
        1.0
    """
    return nats / math.log(2)
