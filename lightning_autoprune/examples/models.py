"""Small classifiers for the bundled examples, one per common layer family.

Every model is a :class:`ClassifierModule` (cross-entropy training, accuracy metrics, a choice
of optimizer) whose subclass only builds ``self.net`` and ``forward``. Constructor arguments
are plain, typed values so that ``LightningCLI`` can configure them, and every model calls
``save_hyperparameters()`` so ``Cls.load_from_checkpoint(path)`` rebuilds it.

* :class:`MLPClassifier` -- ``nn.Linear`` stack (digits, MNIST-1D).
* :class:`CNN1DClassifier` -- ``nn.Conv1d`` (+ ``nn.BatchNorm1d``) stages (MNIST-1D).
* :class:`RecurrentClassifier` -- ``nn.GRU`` / ``nn.LSTM`` (MNIST-1D).
* :class:`TransformerClassifier` -- ``nn.TransformerEncoder`` (MNIST-1D).
* :class:`EmbeddingClassifier` -- ``nn.Embedding`` of the digits' integer pixel levels.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = [
    "CNN1DClassifier",
    "ClassifierModule",
    "EmbeddingClassifier",
    "MLPClassifier",
    "RecurrentClassifier",
    "TransformerClassifier",
]

OptimizerName = Literal["adam", "adamw", "sgd"]


class ClassifierModule(pl.LightningModule):
    """Base LightningModule for multiclass classification of ``(inputs, labels)`` batches.

    Trains with cross-entropy and logs ``train_loss`` (per epoch), ``val_loss`` / ``val_acc``
    and ``test_loss`` / ``test_acc``. Subclasses set ``self.net`` and implement ``forward``
    (returning logits); they must call ``self.save_hyperparameters()`` themselves, so that
    their own arguments are recorded too.

    Args:
        lr: Learning rate.
        weight_decay: Weight decay (L2 for ``"adam"`` and ``"sgd"``, decoupled for
            ``"adamw"``).
        optimizer: Which optimizer :meth:`configure_optimizers` builds.
        momentum: Momentum of ``"sgd"`` (ignored by the Adam variants).
        num_classes: Number of classes, for the accuracy metrics.
    """

    net: nn.Module

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
        num_classes: int = 10,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__()
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name: OptimizerName = optimizer
        self.momentum = momentum
        self.num_classes = num_classes
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def _loss_and_logits(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of one batch; logs the epoch mean as ``train_loss``.

        Args:
            batch: ``(inputs, labels)``.
            batch_idx: Index of the batch in the epoch.

        Returns:
            The loss tensor.
        """
        loss, _, _ = self._loss_and_logits(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``val_loss`` and ``val_acc`` (on the progress bar) for one batch.

        Args:
            batch: ``(inputs, labels)``.
            batch_idx: Index of the batch in the epoch.
        """
        loss, logits, y = self._loss_and_logits(batch)
        self.val_acc(logits, y)
        self.log("val_loss", loss, batch_size=len(y))
        self.log("val_acc", self.val_acc, prog_bar=True, batch_size=len(y))

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log ``test_loss`` and ``test_acc`` for one batch.

        Args:
            batch: ``(inputs, labels)``.
            batch_idx: Index of the batch in the epoch.
        """
        loss, logits, y = self._loss_and_logits(batch)
        self.test_acc(logits, y)
        self.log("test_loss", loss, batch_size=len(y))
        self.log("test_acc", self.test_acc, batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Build the optimizer named by ``optimizer`` over all parameters.

        Returns:
            An ``Adam``, ``AdamW`` or ``SGD`` (with ``momentum``) optimizer.
        """
        params = self.parameters()
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class MLPClassifier(ClassifierModule):
    """Multilayer perceptron: ``Flatten`` then ``Linear`` + ``ReLU`` per hidden layer.

    Args:
        in_features: Number of input features after flattening (64 for digits, 40 for
            MNIST-1D).
        hidden: Widths of the hidden layers; ``None`` means ``[256, 256]``.
        num_classes: Number of output classes.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: Momentum of ``"sgd"``.

    Example:
        >>> model = MLPClassifier(in_features=64, hidden=[32])
        >>> model(torch.zeros(8, 64)).shape
        torch.Size([8, 10])
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: list[int] | None = None,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        widths = [256, 256] if hidden is None else list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in widths:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)`` for inputs of shape ``(N, ...)``."""
        logits: Tensor = self.net(x)
        return logits


class CNN1DClassifier(ClassifierModule):
    """1D convolutional network for sequences of shape ``(N, length)``.

    Each stage is ``Conv1d`` (``padding=kernel_size // 2``; stride 2 on every stage after
    the first) -> optional ``BatchNorm1d`` -> ``ReLU``; then global average pooling over time
    and a ``Linear`` head.

    Args:
        length: Sequence length of the inputs (informational: global pooling accepts any
            length).
        channels: Output channels of each convolution stage; ``None`` means ``[32, 32, 32]``.
        kernel_size: Kernel size of every convolution (odd keeps stage 1 length-preserving).
        batchnorm: Whether to put a ``BatchNorm1d`` after each convolution.
        num_classes: Number of output classes.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: Momentum of ``"sgd"``.

    Example:
        >>> model = CNN1DClassifier(channels=[8, 8])
        >>> model(torch.zeros(4, 40)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        length: int = 40,
        channels: list[int] | None = None,
        kernel_size: int = 5,
        batchnorm: bool = True,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        widths = [32, 32, 32] if channels is None else list(channels)
        layers: list[nn.Module] = []
        prev = 1
        for i, width in enumerate(widths):
            layers.append(
                nn.Conv1d(
                    prev,
                    width,
                    kernel_size,
                    stride=1 if i == 0 else 2,
                    padding=kernel_size // 2,
                    bias=not batchnorm,
                )
            )
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            prev = width
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(prev, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)`` for inputs of shape ``(N, L)``."""
        logits: Tensor = self.net(x.unsqueeze(1))
        return logits


class RecurrentClassifier(ClassifierModule):
    """GRU or LSTM over a sequence ``(N, L)`` read as ``L`` steps of one feature each.

    The last layer's final hidden state feeds a ``Linear`` head.

    Args:
        cell: Recurrent cell type, ``"gru"`` or ``"lstm"``.
        hidden_size: Hidden state size of every layer.
        num_layers: Number of stacked recurrent layers.
        num_classes: Number of output classes.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: Momentum of ``"sgd"``.

    Example:
        >>> model = RecurrentClassifier(cell="lstm", hidden_size=16)
        >>> model(torch.zeros(4, 40)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        cell: Literal["gru", "lstm"] = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.net = rnn_cls(input_size=1, hidden_size=hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)`` for inputs of shape ``(N, L)``."""
        _, state = self.net(x.unsqueeze(-1))
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        logits: Tensor = self.head(h_n[-1])
        return logits


class TransformerClassifier(ClassifierModule):
    """Transformer encoder over a sequence ``(N, length)`` of scalar steps.

    Each step is embedded by ``Linear(1, d_model)`` plus a learned positional embedding,
    encoded by ``num_layers`` ``nn.TransformerEncoderLayer`` (``batch_first``, no dropout),
    mean-pooled over time and classified by a ``Linear`` head.

    Args:
        length: Sequence length of the inputs (size of the positional embedding).
        d_model: Embedding width.
        nhead: Number of attention heads (must divide ``d_model``).
        num_layers: Number of encoder layers.
        dim_feedforward: Hidden width of each layer's feed-forward block.
        num_classes: Number of output classes.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: Momentum of ``"sgd"``.

    Example:
        >>> model = TransformerClassifier(d_model=16, nhead=2, num_layers=1)
        >>> model(torch.zeros(4, 40)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        length: int = 40,
        d_model: int = 32,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        self.embed = nn.Linear(1, d_model)
        self.pos_embedding = nn.Parameter(torch.randn(1, length, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=0.0,
            batch_first=True,
        )
        self.net = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)`` for inputs of shape ``(N, length)``."""
        h = self.embed(x.unsqueeze(-1)) + self.pos_embedding
        logits: Tensor = self.head(self.net(h).mean(dim=1))
        return logits


class EmbeddingClassifier(ClassifierModule):
    """Embedding of quantized pixel levels, for :class:`~.data.DigitsDataModule` inputs.

    Digits pixels are integers ``0..16`` before the datamodule scales them to ``[0, 1]``; the
    model recovers the level as ``round(x * (num_embeddings - 1))``, looks each pixel's level
    up in an ``nn.Embedding``, flattens and classifies with a ``Linear`` head.

    Args:
        num_embeddings: Number of distinct pixel levels (17 for digits: ``0..16``).
        embedding_dim: Width of each pixel's embedding.
        length: Number of pixels per input (64 for 8x8 digits).
        num_classes: Number of output classes.
        lr: Learning rate.
        weight_decay: Weight decay of the optimizer.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        momentum: Momentum of ``"sgd"``.

    Example:
        >>> model = EmbeddingClassifier(embedding_dim=4)
        >>> model(torch.rand(8, 64)).shape
        torch.Size([8, 10])
    """

    def __init__(
        self,
        num_embeddings: int = 17,
        embedding_dim: int = 16,
        length: int = 64,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: OptimizerName = "adam",
        momentum: float = 0.9,
    ) -> None:
        """Build the module; the arguments are documented on the class."""
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            momentum=momentum,
            num_classes=num_classes,
        )
        self.save_hyperparameters()
        self.num_embeddings = num_embeddings
        self.net = nn.Embedding(num_embeddings, embedding_dim)
        self.head = nn.Linear(length * embedding_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape ``(N, num_classes)`` for float inputs ``(N, length)`` in ``[0, 1]``."""
        levels = torch.round(x.flatten(1) * (self.num_embeddings - 1)).long()
        levels = levels.clamp_(0, self.num_embeddings - 1)
        logits: Tensor = self.head(self.net(levels).flatten(1))
        return logits
