"""The Trainer adapter: with :mod:`~lightning_autoprune.callback`, the only module that touches Lightning.

It turns a running ``Trainer`` and ``LightningModule`` into what the pure parts need: a loss closure
built from ``training_step``, the training loader, the model's example inputs, the optimizers'
second moments, the monitored metric and its mode, rank-0 computation broadcast to every rank,
logging through ``pl_module.log``, and the check that the strategy keeps whole parameters.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from lightning_autoprune.core import calibration
from lightning_autoprune.core.snapshot import detached
from lightning_autoprune.event import TrainingAccess

T = TypeVar("T")

#: The prefix of every line the callback prints.
PREFIX = "[AutoPrune]"


def info(message: str) -> None:
    """Print ``message`` once (on global rank 0), with the package's prefix."""
    rank_zero_info(f"{PREFIX} {message}")


class ProgressLine:
    r"""Progress of long work on one line: rewritten in place on a terminal, written once when done in a log.

    Args:
        stream: where a terminal line goes; ``None``: standard error.

    Example:
        >>> import io
        >>> log = io.StringIO()  # not a terminal: only the final state is kept, as one line
        >>> line = ProgressLine(log)
        >>> line("measured 64/128", False)
        >>> line("measured 128/128", True)
        >>> log.getvalue()
        'measured 128/128\n'
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    @rank_zero_only
    def __call__(self, message: str, done: bool) -> None:
        """Show ``message``; ``done`` ends the line."""
        stream = self.stream if self.stream is not None else sys.stderr
        if stream.isatty():
            stream.write("\r" + message + "\x1b[K" + ("\n" if done else ""))
        elif done:
            stream.write(message + "\n")
        stream.flush()


def check_supported_strategy(strategy: object) -> None:
    """Refuse sharded strategies: masks address whole parameters, which those split or flatten.

    Under FSDP, DeepSpeed or tensor/model parallelism a rank holds a flattened shard, so a mask
    computed for the full tensor would prune the wrong entries. Lightning runs FSDP on GPUs only.

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
        >>> check_supported_strategy(DDPStrategy())
        >>> check_supported_strategy(FSDPStrategy())
        Traceback (most recent call last):
        ...
        ValueError: AutoPrune does not support the sharded strategy `FSDPStrategy`: ...
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise ValueError(
            f"AutoPrune does not support the sharded strategy `{type(strategy).__name__}`: its masks address "
            "whole parameters, and this strategy splits or flattens them across ranks, so the wrong entries "
            "would be pruned. HINT: use strategy='ddp' (or 'ddp_spawn'), which keeps a full copy on every rank."
        )


def detect_monitor(metrics: Mapping[str, Any]) -> str | None:
    """Pick the metric to monitor from those logged: validation accuracy-like first, then ``val_loss``.

    Example:
        >>> detect_monitor({"train_loss": 1.0, "val_loss": 0.5, "val_acc": 0.9})
        'val_acc'
        >>> detect_monitor({"val_loss": 0.5}), detect_monitor({"train_loss": 1.0})
        ('val_loss', None)
    """
    names = sorted(metrics)
    validation = [n for n in names if "val" in n.lower() and not n.startswith("autoprune/")]
    for name in validation:
        lowered = name.lower()
        if "acc" in lowered:
            return name
    if "val_loss" in metrics:
        return "val_loss"
    losses = [n for n in validation if "loss" in n.lower()]
    return losses[0] if losses else None


def infer_mode(metric: str) -> Literal["max", "min"]:
    """``"min"`` for loss- or error-like metric names, else ``"max"``.

    Example:
        >>> infer_mode("val_loss"), infer_mode("val_acc")
        ('min', 'max')
    """
    lowered = metric.lower()
    return "min" if any(word in lowered for word in ("loss", "error", "err", "perplexity", "mse", "mae")) else "max"


class Monitor:
    """The monitored metric: resolved from ``callback_metrics`` on first sight, then read by name.

    Args:
        name: the metric to monitor; ``None`` detects one (:func:`detect_monitor`).
        mode: ``"max"`` or ``"min"``; ``None`` infers it from the name (:func:`infer_mode`).
    """

    def __init__(self, name: str | None, mode: Literal["max", "min"] | None) -> None:
        self.name = name
        self.mode = mode
        self.resolved: tuple[str, Literal["max", "min"]] | None = None

    @property
    def label(self) -> str:
        """The metric's name for messages."""
        return self.resolved[0] if self.resolved else str(self.name)

    @property
    def resolved_mode(self) -> Literal["max", "min"] | None:
        """The mode once the metric is known."""
        return self.resolved[1] if self.resolved else None

    def value(self, trainer: pl.Trainer) -> float | None:
        """The metric's current value, or ``None`` while it is not logged yet."""
        metrics = trainer.callback_metrics
        if self.resolved is None:
            if self.name is not None:
                if self.name not in metrics:
                    if not metrics:
                        return None
                    available = ", ".join(sorted(metrics)) or "none"
                    raise ValueError(
                        f"`monitor`={self.name!r} is not logged. Logged metrics: {available}. "
                        "HINT: log it in `validation_step` with `self.log(...)`."
                    )
                self.resolved = (self.name, self.mode or infer_mode(self.name))
            else:
                detected = detect_monitor(metrics)
                if detected is None:
                    return None
                self.resolved = (detected, self.mode or infer_mode(detected))
                info(f"monitoring {detected!r} (mode={self.resolved[1]}); set `monitor` to choose.")
        value = metrics.get(self.resolved[0])
        return float(value) if value is not None else None


def log(pl_module: pl.LightningModule, name: str, value: float, prog_bar: bool = False) -> None:
    """Log an epoch-level value through the module, so every Lightning logger receives it.

    The callback's values are the same on every rank (rank 0 decides and broadcasts), so under DDP
    the mean that ``sync_dist`` takes is that value; syncing also tells Lightning it is reduced.
    """
    sync = pl_module.trainer.world_size > 1
    pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=sync, prog_bar=prog_bar)


def log_metrics(pl_module: pl.LightningModule, rows: Iterable[tuple[str, float, bool]]) -> None:
    """:func:`log` each ``(name, value, prog_bar)``."""
    for name, value, prog_bar in rows:
        log(pl_module, name, value, prog_bar=prog_bar)


def batch_samples(batch: Any) -> int | None:
    """The number of samples in a batch, or ``None`` for a batch whose size cannot be read."""
    try:
        return int(extract_batch_size(batch))
    except (MisconfigurationException, RecursionError):
        return None


class ValidationTally:
    """Counts the samples (and, for classification batches, the labels) of one validation run when asked to.

    The automatic mode uses the count for the metric's binomial noise and the label counts for the
    chance level. Labels are read from ``(inputs, labels, ...)`` batches and from dict batches with
    a ``"labels"``, ``"label"`` or ``"y"`` entry, when they are a 1-D integer tensor with one entry
    per sample; other batches leave the labels unknown.

    Example:
        >>> tally = ValidationTally()
        >>> tally.start(True)
        >>> tally.add((torch.zeros(4, 2), torch.tensor([0, 1, 1, 1])))
        >>> tally.add((torch.zeros(1, 2), torch.tensor([2])))
        >>> tally.take(), tally.take()
        ((5, {0: 1, 1: 3, 2: 1}), (None, None))
    """

    def __init__(self) -> None:
        self.samples: int | None = None
        self.labels: dict[int, int] | None = None

    def start(self, counting: bool) -> None:
        """Begin a validation run: count its samples if ``counting``, else count nothing."""
        self.samples = 0 if counting else None
        self.labels = {} if counting else None

    def add(self, batch: Any) -> None:
        """Add a batch; an opaque batch drops the count, a batch without labels drops the label counts."""
        if self.samples is None:
            return
        found = batch_samples(batch)
        self.samples = None if found is None else self.samples + found
        labels = batch_labels(batch) if found is not None and self.labels is not None else None
        if labels is None or labels.numel() != found:
            self.labels = None
            return
        assert self.labels is not None
        values, counts = torch.unique(labels, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            self.labels[int(value)] = self.labels.get(int(value), 0) + int(count)

    def take(self) -> tuple[int | None, dict[int, int] | None]:
        """``(samples, label counts)`` (``None``: not counted or unknown), once."""
        taken = (self.samples, self.labels)  # an unknown count drops the labels with it (see add)
        self.samples, self.labels = None, None
        return taken


def batch_labels(batch: Any) -> Tensor | None:
    """The class labels of a batch, if it carries them as a 1-D integer tensor; ``None`` otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        labels = batch[1]
    elif isinstance(batch, Mapping):
        labels = next((batch[k] for k in ("labels", "label", "y") if k in batch), None)
    else:
        return None
    if isinstance(labels, Tensor) and labels.dim() == 1 and not labels.is_floating_point() and not labels.is_complex():
        return labels.detach().cpu()
    return None


def on_rank_zero(trainer: pl.Trainer, compute: Callable[[], T], extra: Callable[[], Any]) -> tuple[T, Any]:
    """Run ``compute`` on global rank 0 and broadcast its result and ``extra()`` (taken after it) to every rank.

    A failure on rank 0 is broadcast too, so the other ranks raise instead of hanging.
    """
    if trainer.world_size == 1:
        return compute(), None
    outcome: tuple[str, Any] = ("ok", None)
    if trainer.is_global_zero:
        try:
            outcome = ("ok", compute())
        except Exception as err:  # re-raised on every rank below
            outcome = ("error", f"{type(err).__name__}: {err}")
    sent = extra() if trainer.is_global_zero else None
    outcome, sent = trainer.strategy.broadcast((outcome, sent), src=0)
    status, result = outcome
    if status == "error":
        raise RuntimeError(f"on global rank 0: {result}")
    return result, sent


def broadcast(trainer: pl.Trainer, value: T) -> T:
    """Rank 0's ``value`` on every rank (itself on a single process)."""
    return trainer.strategy.broadcast(value, src=0) if trainer.world_size > 1 else value


def training_loader(trainer: pl.Trainer, purpose: str) -> torch.utils.data.DataLoader:
    """The one training ``DataLoader``; ``purpose`` names what needs it in the error otherwise."""
    loader = trainer.train_dataloader
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise ValueError(f"{purpose} needs one training DataLoader for calibration, got {type(loader).__name__}.")
    return loader


def loss_closure(trainer: pl.Trainer, pl_module: pl.LightningModule, importance: str) -> Callable[[Any, int], Tensor]:
    """``loss(batch, batch_idx)``: the scalar loss ``training_step`` returns for a batch, moved to the device."""

    def loss_fn(batch: Any, batch_idx: int) -> Tensor:
        batch = trainer.strategy.batch_to_device(batch)
        out = pl_module.training_step(batch, batch_idx)
        loss = out["loss"] if isinstance(out, Mapping) else out
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ValueError(
                f"importance={importance!r} needs `training_step` to return the scalar loss (or a dict "
                f"with 'loss'), got {type(out).__name__}."
            )
        return loss

    return loss_fn


def optimizer_second_moments(trainer: pl.Trainer, params: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """Adam-style ``exp_avg_sq`` of every parameter that has one, or ``None``."""
    moments: dict[str, Tensor] = {}
    for optimizer in trainer.optimizers:
        for name, param in params.items():
            value = optimizer.state.get(param, {}).get("exp_avg_sq")
            if isinstance(value, Tensor) and value.shape == param.shape:
                moments[name] = value.detach()
    return moments or None


def example_inputs(
    trainer: pl.Trainer, pl_module: pl.LightningModule, seed: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What the model is called with: ``example_input_array``, else the inputs ``training_step`` passes.

    One training batch, drawn with a generator of its own (the callback's generator, and so a
    resumed run, stay unaffected), goes through ``training_step`` in eval mode without gradients
    or logging, and the first call of the module's ``forward`` is recorded. Called directly, not
    through the Trainer: under DDP, Lightning redirects ``forward`` to ``training_step`` while its
    wrapper runs.
    """
    example = pl_module.example_input_array
    if example is not None:
        if isinstance(example, Mapping):
            return (), dict(example)
        return (tuple(example) if isinstance(example, tuple) else (example,)), {}
    loader = trainer.train_dataloader
    if not isinstance(loader, torch.utils.data.DataLoader):
        raise ValueError(
            "granularity='structured' traces the model on one training batch, but the training loader is "
            f"{type(loader).__name__}, not a DataLoader. HINT: set `self.example_input_array` in your "
            "LightningModule."
        )
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not seen:
            seen.append((detached(args), detached(kwargs)))

    batches = calibration.calibration_batches(loader, 1, torch.Generator().manual_seed(seed))
    assert isinstance(batches, list)
    handle = pl_module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with calibration.evaluation_mode(pl_module), calibration.muted_logging(pl_module), torch.no_grad():
            pl_module.training_step(trainer.strategy.batch_to_device(batches[0]), 0)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(
            "granularity='structured' traces the model to find coupled layers, but `training_step` never "
            "called the module itself. HINT: set `self.example_input_array` in your LightningModule, or "
            "call `self(x)` in `training_step`."
        )
    return seen[0]


def report_directory(trainer: pl.Trainer, report_dir: str | None) -> Path:
    """``report_dir``, or an ``autoprune`` folder in the Trainer's log directory (its root without a logger)."""
    if report_dir is not None:
        return Path(report_dir)
    base = trainer.log_dir if trainer.log_dir is not None else trainer.default_root_dir
    return Path(base) / "autoprune"


def progress(trainer: pl.Trainer, epoch: int) -> float:
    """Training progress at ``epoch``: ``epoch / max_epochs``, 0 without a finite ``max_epochs``."""
    return epoch / trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0.0


def trained_samples(trainer: pl.Trainer, epoch: int) -> int | None:
    """Training samples seen before ``epoch`` on this rank: epochs so far x batches per epoch x batch size.

    ``None`` where the batch size or the number of batches is unknown (a batch sampler, an
    iterable dataset without a length).
    """
    batches = trainer.num_training_batches
    size = getattr(trainer.train_dataloader, "batch_size", None)
    if not isinstance(size, int) or not math.isfinite(batches) or batches <= 0:
        return None
    return epoch * int(batches) * size


def training_access(
    trainer: pl.Trainer, pl_module: pl.LightningModule, importance: str, seed: int, epoch: int
) -> TrainingAccess:
    """What a pruning event needs from this Trainer, for :class:`~lightning_autoprune.event.EventPipeline`."""
    return TrainingAccess(
        module=pl_module,
        loader=lambda purpose: training_loader(trainer, purpose),
        loss_fn=loss_closure(trainer, pl_module, importance),
        second_moments=lambda params: optimizer_second_moments(trainer, params),
        example_inputs=lambda: example_inputs(trainer, pl_module, seed),
        progress=progress(trainer, epoch),
        trained_samples=trained_samples(trainer, epoch),
    )
