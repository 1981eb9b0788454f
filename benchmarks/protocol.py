"""The unstructured pruning benchmark (after Blalock et al. 2020): one protocol, every method through the same code.

Protocol, per (setup, seed):

1. ``seed_everything(seed)``, build the model, train it **dense** for ``Budget.dense_epochs`` epochs
   and keep its state in memory. Its test accuracy is recorded as ``pretrained_acc``.
2. **Dense fine-tune**: reseed, load the dense state into a fresh model, train another
   ``Budget.finetune_epochs`` epochs without pruning. Its test accuracy is the *dense reference*
   that "within 1 point of dense" and the normalised AUC use (it had exactly as much training as
   every pruned model), and its fit time is the baseline of the overhead.
3. For every sparsity and method: reseed, load the same dense state into a fresh model (a fresh
   Adam optimizer), fine-tune for ``Budget.finetune_epochs`` epochs with the method's callback, and
   test. Every method prunes on the same cubic schedule (Zhu & Gupta) with events at the points
   between epochs ``start_epoch - 1`` and ``start_epoch``, ..., ``end_epoch - 1`` and ``end_epoch``,
   then fine-tunes at the target until the end.

Methods (``METHODS``):

* ``random``, ``magnitude`` (global ``|w|``), ``lamp``, ``taylor``, ``learned`` (the pretrained
  importance model refined on the run's own group ablations): ``AutoPrune(importance=...)``. The
  learned runs also record the scorer's per-event held-out fidelity (``importance_diagnostics``).
* ``default``: ``AutoPrune(target_sparsity=s)`` with no ``importance`` argument. If that callback is
  configured identically to one of the named methods in the same invocation (today: ``learned``), its
  runs are not repeated: the records are copied and marked ``reused_from`` (training is
  deterministic on CPU, so a rerun would give the same numbers).
* ``layerwise_magnitude``: the same ``|w|`` scores, but every tensor is pruned to the scheduled
  sparsity on its own (uniform per-layer sparsity), with :func:`lightning_autoprune.core.selection.select_masks`
  called per tensor. Implemented here as :class:`BenchmarkPruning`, which copies AutoPrune's
  mechanics (same targets, schedule, event timing, mask enforcement after every optimizer step,
  optimizer state zeroed at pruned entries).
* ``taylor2``: signed second-order Taylor, ``score = -g * w + 1/2 * w**2 * F`` with ``g`` the mean
  calibration gradient and ``F`` the mean squared per-batch gradient (a Fisher diagonal), both from
  :func:`lightning_autoprune.core.calibration.gradient_statistics` on ``calibration_samples`` training
  samples drawn as AutoPrune draws them; selected globally with the same per-layer floor
  (``min_layer_density``) as AutoPrune. Also :class:`BenchmarkPruning`.
* ``modelpruning``: Lightning's ``ModelPruning(pruning_fn="l1_unstructured", use_global_unstructured=True,
  use_lottery_ticket_hypothesis=False, parameters_to_prune=<AutoPrune's tensors>, amount=CompoundingAmount(...))``.
  Its ``amount`` is a fraction of the weights *still unpruned* (``torch.nn.utils.prune`` applies
  it to the entries whose mask is still 1), so the amount at each event is
  ``(s_k - s_{k-1}) / (1 - s_{k-1})`` for the cumulative cubic targets ``s_k``; see
  :class:`CompoundingAmount`. It prunes at ``on_train_epoch_end`` of epoch ``e``, which is the
  moment AutoPrune prunes at the start of epoch ``e + 1``.
* ``modelpruning_lth``: the same, keeping ModelPruning's default ``use_lottery_ticket_hypothesis=True``:
  after every event the kept weights are reset to their values when fitting started, which here is
  the trained dense model (not a random initialisation).

Both ModelPruning configurations prune the same tensors as AutoPrune: with ``parameters_to_prune``
left empty, ModelPruning would also prune every bias (its ``parameter_names`` default is
``("weight", "bias")``), and BatchNorm weights of the CNN.

Metrics (computed by :func:`summarise`):

* **Test accuracy** at each sparsity: mean ± sample std over seeds.
* **Sparsity** (fraction of exact zeros in the effective weights: ``weight_orig * weight_mask``
  where ModelPruning's reparametrisation is still present) and **effective sparsity**
  (:func:`effective_sparsity`: a weight also counts as pruned when it lies on no input-to-output
  path of nonzero weights).
* **Normalised AUC**: with ``x = log2(1 / (1 - s))`` (log2 of the compression ratio) and
  ``y = acc(s) / acc_dense`` (both per seed), the trapezoid area under ``y(x)`` over the points
  ``s = 0`` (where ``y = 1`` by definition) and every sparsity of the grid, divided by the largest
  ``x``. A method that keeps dense accuracy at every sparsity scores 1.0. Mean ± std over seeds.
* **Largest sparsity within 1 point of dense**: per seed, the largest grid sparsity whose accuracy
  is at least ``acc_dense - 0.01`` (0 if none); reported as mean over seeds, the per-seed values,
  and the value for the mean curves.
* **Overhead**: per run, ``cpu(fit with pruning) / cpu(dense fine-tune of the same seed) - 1``
  (process CPU time, which other work on a shared machine disturbs far less than wall time); the
  median over seeds and sparsities. The same ratio of wall times is kept as ``overhead_wall_median``.
  For AutoPrune and :class:`BenchmarkPruning` also the (wall) time the callback itself measured
  (pruning events + mask enforcement) as a share of the fit's wall time.
* **Paired comparison** of ``default`` against every other method at each sparsity, over seeds:
  paired t-test (``scipy.stats.ttest_rel``) and Wilcoxon signed-rank test, two-sided. With 5
  seeds the Wilcoxon test cannot go below p = 0.0625, so the verdict uses the t-test: a difference
  is called *real* only where its p < 0.05 (no correction for the many comparisons).

Results: one JSON file per run under ``<out>/<track>/<setup>/<method>/s<sparsity>_seed<seed>.json``
(``dense/seed<seed>.json`` for the dense runs) and ``<out>/<track>/summary.json``.

Usage::

    python -m benchmarks.protocol                 # full protocol into benchmarks/results
    python -m benchmarks.protocol --quick         # representative subset into results-quick/
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import Tensor, nn

import lightning_autoprune
from lightning_autoprune import AutoPrune
from lightning_autoprune.control import schedule as schedules
from lightning_autoprune.control.controller import FixedSchedule
from lightning_autoprune.core import calibration, masks, selection
from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.files import atomic_write_text
from lightning_autoprune.core.targets import resolve_targets
from lightning_autoprune.examples import (
    CNN1DClassifier,
    DigitsDataModule,
    MLPClassifier,
    MNIST1DDataModule,
    quiet_trainer,
)
from lightning_autoprune.examples.models import OptimizerName
from lightning_autoprune.scoring import formulas

TRACK = "unstructured"
SPARSITIES: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
AUTOPRUNE_METHODS: tuple[str, ...] = ("random", "magnitude", "lamp", "taylor", "learned", "learned_unbudgeted")
#: AutoPrune methods run only when ``--methods`` names them: questions about the default that
#: ``make bench`` does not ask. ``learned_budget_0.2``: the default with a label budget of 20% of
#: the training samples, which on the protocol's short fits pays for a step measurement at every
#: event (docs/architecture.md, "Inside a learned event").
EXPERIMENT_METHODS: tuple[str, ...] = ("learned_budget_0.2",)
#: AutoPrune methods that are not an `importance` name: their arguments.
METHOD_ARGUMENTS: dict[str, dict[str, Any]] = {
    "learned_unbudgeted": {"importance": "learned", "label_budget": None},
    "learned_budget_0.2": {"importance": "learned", "label_budget": 0.2},
}
BENCHMARK_METHODS: tuple[str, ...] = ("layerwise_magnitude", "taylor2")
MODELPRUNING_METHODS: tuple[str, ...] = ("modelpruning", "modelpruning_lth")
METHODS: tuple[str, ...] = (*AUTOPRUNE_METHODS, *BENCHMARK_METHODS, "default", *MODELPRUNING_METHODS)
#: Settings of the representative subset that ``make bench-quick`` runs.
QUICK = {
    "setups": ("digits-mlp",),
    "seeds": (0, 1),
    "sparsities": (0.9, 0.95, 0.98),
    "methods": ("magnitude", "taylor", "default", "modelpruning"),
}
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QUICK_RESULTS = ROOT / "results-quick"
#: Decimal places kept for floats in result files (keeps files small and diffs readable).
DIGITS = 6


@dataclass(frozen=True)
class Setup:
    """One (dataset, model, training recipe) triple.

    Attributes:
        name: identifier used in paths and tables, e.g. ``"digits-mlp"``.
        dataset: dataset name.
        model: model name.
        description: one line for the report.
        hidden: the MLP's hidden widths.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``), for dense training and fine-tuning.
        lr: the learning rate.
        weight_decay: the optimizer's weight decay.
        momentum: SGD's momentum.
    """

    name: str
    dataset: str
    model: str
    description: str
    hidden: tuple[int, ...] = (256, 256)
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9

    def datamodule(self) -> pl.LightningDataModule:
        """A fresh datamodule with the fixed split."""
        if self.dataset == "digits":
            return DigitsDataModule(batch_size=64)
        return MNIST1DDataModule(batch_size=128)

    def build_model(self) -> pl.LightningModule:
        """A fresh, untrained model (the caller seeds the global RNG first)."""
        if self.model == "cnn":
            return CNN1DClassifier()
        in_features = 64 if self.dataset == "digits" else 40
        return MLPClassifier(
            in_features=in_features,
            hidden=list(self.hidden),
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
        )


SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("digits-mlp", "digits", "mlp", "sklearn digits (1077/360/360, stratified), MLP 64-256-256-10, Adam 1e-3"),
        Setup("mnist1d-mlp", "mnist1d", "mlp", "MNIST-1D (3200/800/1000), MLP 40-256-256-10, Adam 1e-3"),
        Setup(
            "mnist1d-cnn", "mnist1d", "cnn", "MNIST-1D (3200/800/1000), CNN1DClassifier (3x Conv1d 32 + BN), Adam 1e-3"
        ),
        # Training recipes other than Adam on a wide MLP: gradient-based features and the pretrained
        # model see other optimiser statistics (no Adam second moments) and other layer shapes.
        Setup(
            "mnist1d-mlp-sgd",
            "mnist1d",
            "mlp",
            "MNIST-1D (3200/800/1000), MLP 40-256-256-10, SGD 0.05 with momentum 0.9 and weight decay 5e-4",
            optimizer="sgd",
            lr=0.05,
            weight_decay=5e-4,
        ),
        Setup(
            "mnist1d-deep-narrow",
            "mnist1d",
            "mlp",
            "MNIST-1D (3200/800/1000), deep narrow MLP 40-(64 x 6)-10, Adam 1e-3",
            hidden=(64,) * 6,
        ),
    )
}


@dataclass(frozen=True)
class Budget:
    """Training budget shared by every method.

    Attributes:
        dense_epochs: epochs of the shared dense training.
        finetune_epochs: epochs every method (and the dense fine-tune) trains from the dense state.
        start_epoch: fine-tuning epoch at whose start the first pruning event happens.
        end_epoch: fine-tuning epoch at whose start the target is reached.
        min_layer_density: per-tensor floor of every global selection (AutoPrune's default).
        calibration_samples: training samples for the gradient-based scorers.
        limit_train_batches: passed to the Trainer (a count, a fraction of an epoch, or ``None``: whole epochs).
        limit_val_batches: passed to the Trainer; for tests.
        limit_test_batches: passed to the Trainer; for tests.
    """

    dense_epochs: int = 20
    finetune_epochs: int = 12
    start_epoch: int = 1
    end_epoch: int = 8
    min_layer_density: float = 0.002
    calibration_samples: int = 512
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None

    def describe(self) -> str:
        """One sentence for the report."""
        return (
            f"dense training {self.dense_epochs} epochs; then every method (and the dense reference) fine-tunes "
            f"{self.finetune_epochs} epochs from that state, pruning on a cubic schedule at the starts of epochs "
            f"{self.start_epoch}..{self.end_epoch} of fine-tuning (target reached at epoch {self.end_epoch}, then "
            f"{self.finetune_epochs - self.end_epoch} epochs at the target)"
        )


@dataclass
class Grid:
    """What one invocation runs.

    Attributes:
        setups: names of :data:`SETUPS` entries.
        seeds: training seeds.
        sparsities: target sparsities.
        methods: names from :data:`METHODS`.
    """

    setups: Sequence[str] = field(default_factory=lambda: tuple(SETUPS))
    seeds: Sequence[int] = SEEDS
    sparsities: Sequence[float] = SPARSITIES
    methods: Sequence[str] = METHODS


# ---------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class CompoundingAmount:
    """``ModelPruning``'s ``amount`` callable that makes the cumulative sparsity follow a schedule.

    ``ModelPruning`` calls ``amount(current_epoch)`` in ``on_train_epoch_end`` and passes a float to
    ``torch.nn.utils.prune``, which prunes that fraction of the entries *still unpruned*. Going from
    cumulative sparsity ``a`` to ``b`` therefore takes the amount ``(b - a) / (1 - a)``. The event at
    the end of epoch ``e`` plays the role of AutoPrune's event at the start of epoch ``e + 1``.

    Attributes:
        target: final sparsity.
        start: AutoPrune-style ``start_epoch`` of the schedule.
        end: AutoPrune-style ``end_epoch``.
        kind: schedule kind.

    Example:
        >>> amount = CompoundingAmount(0.9, start=1, end=4)
        >>> [round(amount(e), 4) for e in range(5)]
        [0.5203, 0.557, 0.4632, 0.1233, 0.0]
        >>> remaining = 1.0
        >>> for e in range(5):
        ...     remaining *= 1 - amount(e)
        >>> round(1 - remaining, 6)
        0.9
    """

    target: float
    start: int
    end: int
    kind: schedules.ScheduleKind = "cubic"

    def cumulative(self, epoch: int) -> float:
        """Sparsity AutoPrune holds during ``epoch`` (after its event at that epoch's start)."""
        return schedules.scheduled_sparsity(epoch, self.target, start=self.start, end=self.end, kind=self.kind)

    def __call__(self, epoch: int) -> float:
        """Fraction of the remaining weights to prune at the end of ``epoch``."""
        before, after = self.cumulative(epoch), self.cumulative(epoch + 1)
        if after <= before:
            return 0.0
        return (after - before) / (1.0 - before)


class LayerwiseSelector:
    """Each tensor pruned on its own to the target by its own scores (uniform per-layer sparsity)."""

    def __call__(self, scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], target: float) -> dict[str, Tensor]:
        """Every tensor's own top-k at ``target``."""
        new_masks: dict[str, Tensor] = {}
        for name, score in scores.items():
            new_masks.update(selection.select_masks({name: score}, {name: masks[name]}, target))
        return new_masks


class BenchmarkPruning(Callback):
    """Benchmark-side pruning for criteria that ``AutoPrune`` does not offer, on AutoPrune's own engine.

    Same tensors (:func:`~lightning_autoprune.core.targets.resolve_targets`), same schedule
    (:class:`~lightning_autoprune.control.controller.FixedSchedule`), events at epoch starts, and the
    same :class:`~lightning_autoprune.core.engine.PruningEngine` keeping the masks: pruned weights and
    their optimizer state zeroed at each event, masks re-applied after every optimizer step. Unlike
    AutoPrune it does not mask gradients before the step (the results it committed were measured
    without), which changes nothing a kept weight sees.

    Args:
        target_sparsity: final sparsity.
        criterion: ``"layerwise_magnitude"`` (each tensor pruned to the scheduled sparsity by ``|w|``)
            or ``"taylor2"`` (signed second-order Taylor, selected globally).
        start_epoch: first pruning epoch.
        end_epoch: epoch whose start reaches the target.
        min_layer_density: per-tensor floor of the global selection (``taylor2``).
        calibration_samples: training samples for the ``taylor2`` gradient statistics.
        seed: seeds the calibration sampling.
    """

    def __init__(
        self,
        target_sparsity: float,
        criterion: str,
        start_epoch: int,
        end_epoch: int,
        min_layer_density: float = 0.002,
        calibration_samples: int = 512,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if criterion not in BENCHMARK_METHODS:
            raise ValueError(f"`criterion` must be one of {', '.join(BENCHMARK_METHODS)}, got {criterion!r}.")
        self.criterion = criterion
        self.schedule = FixedSchedule(target_sparsity, (start_epoch, end_epoch), kind="cubic")
        self.min_layer_density = min_layer_density
        self.calibration_samples = calibration_samples
        self.generator = torch.Generator().manual_seed(seed)
        self.engine = PruningEngine([], LayerwiseSelector())
        self.seconds_pruning = 0.0

    @property
    def seconds_enforcing(self) -> float:
        """Seconds the engine spent re-applying masks after optimizer steps."""
        return self.engine.seconds_enforcing

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the tensors to prune."""
        if stage == "fit":
            selector = LayerwiseSelector() if self.criterion == "layerwise_magnitude" else None
            self.engine = PruningEngine(resolve_targets(pl_module), selector or WeightSelector(self.min_layer_density))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hook mask enforcement onto every optimizer step."""
        self.engine.start(trainer.optimizers)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune when the schedule asks for more sparsity than the masks hold."""
        epoch = trainer.current_epoch
        if self.schedule.due(epoch, progress=self.engine.mask_progress(), last_target=0.0):
            start = time.perf_counter()
            weights = self.engine.weights
            if self.criterion == "layerwise_magnitude":
                scores = {name: weight.abs() for name, weight in weights.items()}
            else:
                scores = self._taylor2_scores(trainer, pl_module, weights)
            self.engine.apply(self.engine.select(scores, self.schedule.target_for(epoch)), trainer.optimizers)
            self.seconds_pruning += time.perf_counter() - start

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer hooks."""
        self.engine.stop()

    def _taylor2_scores(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        loader = trainer.train_dataloader
        assert isinstance(loader, torch.utils.data.DataLoader)
        batches = calibration.calibration_batches(loader, self.calibration_samples, self.generator)
        assert isinstance(batches, list)

        def loss_fn(batch: Any, batch_idx: int) -> Tensor:
            loss = pl_module.training_step(batch, batch_idx)
            assert isinstance(loss, Tensor)
            return loss

        params = {t.name: t.param for t in self.engine.targets}
        with calibration.evaluation_mode(pl_module), calibration.muted_logging(pl_module):
            grad_mean, fisher = calibration.gradient_statistics(loss_fn, batches, params)
        return taylor2_scores(weights, grad_mean, fisher)


def taylor2_scores(
    weights: Mapping[str, Tensor], grad_mean: Mapping[str, Tensor], fisher: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Signed second-order Taylor estimate of the loss increase when a weight is set to zero.

    ``L(w - w_i e_i) - L(w) ≈ -g_i w_i + 1/2 F_ii w_i**2`` with ``g`` the mean gradient and ``F`` the
    diagonal empirical Fisher (mean squared per-batch gradient) standing in for the Hessian; the
    formula is :func:`lightning_autoprune.scoring.formulas.taylor2_scores`, in float32.

    Example:
        >>> w = {"a": torch.tensor([1.0, -2.0])}
        >>> taylor2_scores(w, {"a": torch.tensor([0.5, 0.5])}, {"a": torch.tensor([1.0, 0.0])})
        {'a': tensor([0., 1.])}
    """
    return {
        name: formulas.taylor2_scores(w.float(), grad_mean[name].float(), fisher[name].float())
        for name, w in weights.items()
    }


def autoprune_callback(
    importance: str | None, sparsity: float, budget: Budget, seed: int, include: Sequence[str] | None = None
) -> AutoPrune:
    """The AutoPrune callback of a method; ``importance=None`` leaves AutoPrune's default, ``include`` its targets."""
    kwargs: dict[str, Any] = {
        "target_sparsity": sparsity,
        "schedule": "cubic",
        "start_epoch": budget.start_epoch,
        "end_epoch": budget.end_epoch,
        "min_layer_density": budget.min_layer_density,
        "calibration_samples": budget.calibration_samples,
        "seed": seed,
        "verbose": False,
        "report": False,
    }
    if importance in METHOD_ARGUMENTS:
        kwargs.update(METHOD_ARGUMENTS[importance])
    elif importance is not None:
        kwargs["importance"] = importance
    if include is not None:
        kwargs["include"] = list(include)
    return AutoPrune(**kwargs)


def _configuration(callback: AutoPrune) -> dict[str, Any]:
    """The callback's validated configuration: equal for identically configured callbacks."""
    return asdict(callback.config)


def default_alias(methods: Sequence[str], budget: Budget) -> str | None:
    """The named AutoPrune method that ``default`` is identical to, if any of ``methods`` is.

    Example:
        >>> default_alias(["magnitude", "lamp"], Budget()) in (None, "lamp", "magnitude")
        True
    """
    default = _configuration(autoprune_callback(None, 0.5, budget, 0))
    for method in methods:
        if method in AUTOPRUNE_METHODS and _configuration(autoprune_callback(method, 0.5, budget, 0)) == default:
            return method
    return None


def make_callbacks(
    method: str,
    sparsity: float,
    budget: Budget,
    seed: int,
    model: pl.LightningModule,
    include: Sequence[str] | None = None,
) -> list[Callback]:
    """The callbacks that implement ``method`` at ``sparsity`` (see the module docstring).

    ``include`` (AutoPrune's argument) chooses the pruned tensors for the AutoPrune and ModelPruning
    methods; ``None`` keeps AutoPrune's default tensors.
    """
    if method in AUTOPRUNE_METHODS or method in EXPERIMENT_METHODS or method == "wanda":
        return [autoprune_callback(method, sparsity, budget, seed, include)]
    if method == "default":
        return [autoprune_callback(None, sparsity, budget, seed, include)]
    if method in BENCHMARK_METHODS:
        return [
            BenchmarkPruning(
                sparsity,
                method,
                budget.start_epoch,
                budget.end_epoch,
                min_layer_density=budget.min_layer_density,
                calibration_samples=budget.calibration_samples,
                seed=seed,
            )
        ]
    if method in MODELPRUNING_METHODS:
        parameters = [(t.module, t.param_name) for t in resolve_targets(model, include=include)]
        return [
            ModelPruning(
                pruning_fn="l1_unstructured",
                parameters_to_prune=parameters,
                amount=CompoundingAmount(sparsity, budget.start_epoch, budget.end_epoch),
                use_global_unstructured=True,
                use_lottery_ticket_hypothesis=method == "modelpruning_lth",
                verbose=0,
            )
        ]
    raise ValueError(f"`method` must be one of {', '.join((*METHODS, *EXPERIMENT_METHODS))}, got {method!r}.")


# ---------------------------------------------------------------------------------------------- metrics
def effective_weights(model: nn.Module, include: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The weights the forward pass uses, for AutoPrune's tensors (default, or ``include``), in model order.

    Where ModelPruning's reparametrisation is still in place, that is ``weight_orig * weight_mask``.
    """
    result: dict[str, Tensor] = {}
    for target in resolve_targets(model, include=include):
        module, name = target.module, target.param_name
        if hasattr(module, f"{name}_orig") and hasattr(module, f"{name}_mask"):
            weight = getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
        else:
            weight = getattr(module, name)
        result[target.name] = weight.detach().clone()
    return result


def effective_sparsity(weights: Sequence[Tensor]) -> float:
    """Sparsity counting weights that lie on no input-to-output path of nonzero weights as pruned.

    ``weights`` is a chain of layers (``Linear`` ``(out, in)`` or ``Conv`` ``(out, in, *kernel)``), each
    consuming the units (features or channels) the previous one produces. A unit is reachable from the
    input if some nonzero weight connects it to a reachable unit of the previous layer (every input unit
    is reachable), and reaches the output likewise backwards. A nonzero weight counts as effective only
    if its input unit is reachable and its output unit reaches the output. Biases are ignored (a unit
    fed only by its bias is a constant). Elementwise layers (ReLU, BatchNorm, pooling) do not break paths.

    Raises:
        ValueError: if consecutive layers do not chain.

    Example:
        >>> w1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]])   # unit 1 of the hidden layer gets no input
        >>> w2 = torch.tensor([[0.0, 3.0]])               # the output reads only hidden unit 1
        >>> effective_sparsity([w1, w2])
        1.0
        >>> round(effective_sparsity([w1, torch.tensor([[2.0, 0.0]])]), 4)
        0.6667
    """
    links = [(w != 0).reshape(w.shape[0], w.shape[1], -1).any(-1) for w in weights]
    for index in range(1, len(links)):
        if links[index].shape[1] != links[index - 1].shape[0]:
            raise ValueError(
                f"Layer {index} takes {links[index].shape[1]} inputs but layer {index - 1} gives "
                f"{links[index - 1].shape[0]} outputs: not a chain."
            )
    forward = [torch.ones(links[0].shape[1], dtype=torch.bool)]
    for link in links:
        forward.append((link.float() @ forward[-1].float()) > 0)
    backward = [torch.ones(links[-1].shape[0], dtype=torch.bool)]
    for link in reversed(links):
        backward.append((link.float().T @ backward[-1].float()) > 0)
    backward.reverse()  # backward[i]: units after layer i-1 (inputs of layer i) that reach the output
    effective = total = 0
    for index, weight in enumerate(weights):
        alive_in = forward[index].view(1, -1, *([1] * (weight.dim() - 2)))
        alive_out = backward[index + 1].view(-1, 1, *([1] * (weight.dim() - 2)))
        effective += int(((weight != 0) & alive_in & alive_out).sum())
        total += weight.numel()
    return 1.0 - effective / total if total else 0.0


def normalised_auc(sparsities: Sequence[float], accuracies: Sequence[float], dense: float) -> float:
    """Area under ``acc / dense`` against ``log2(1 / (1 - s))`` from ``s = 0``, over the largest x.

    Example:
        >>> normalised_auc([0.5, 0.75], [0.9, 0.9], 0.9)
        1.0
        >>> round(normalised_auc([0.5, 0.75], [0.9, 0.0], 0.9), 4)
        0.75
    """
    points = sorted(zip(sparsities, accuracies, strict=True))
    xs = [0.0] + [math.log2(1.0 / (1.0 - s)) for s, _ in points]
    ys = [1.0] + [a / dense for _, a in points]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / xs[-1]


def max_sparsity_within(sparsities: Sequence[float], accuracies: Sequence[float], dense: float, tol: float) -> float:
    """Largest sparsity whose accuracy is at least ``dense - tol``; 0 if none is.

    Example:
        >>> max_sparsity_within([0.5, 0.9, 0.99], [0.95, 0.945, 0.5], 0.955, 0.01)
        0.9
    """
    ok = [s for s, a in zip(sparsities, accuracies, strict=True) if a >= dense - tol - 1e-12]
    return max(ok, default=0.0)


# ---------------------------------------------------------------------------------------------- running
def _trainer(budget: Budget, epochs: int, callbacks: list[Callback], root: Path) -> Trainer:
    limits: dict[str, Any] = {
        key: value
        for key, value in (
            ("limit_train_batches", budget.limit_train_batches),
            ("limit_val_batches", budget.limit_val_batches),
            ("limit_test_batches", budget.limit_test_batches),
        )
        if value is not None
    }
    return quiet_trainer(
        max_epochs=epochs,
        devices=1,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
        **limits,
    )


def _fit_and_test(
    setup: Setup,
    datamodule: pl.LightningDataModule,
    state: Mapping[str, Tensor] | None,
    seed: int,
    epochs: int,
    budget: Budget,
    root: Path,
    method: str | None = None,
    sparsity: float = 0.0,
) -> tuple[pl.LightningModule, dict[str, Any]]:
    seed_everything(seed, verbose=False)
    model = setup.build_model()
    if state is not None:
        model.load_state_dict(state)
    callbacks = make_callbacks(method, sparsity, budget, seed, model) if method is not None else []
    trainer = _trainer(budget, epochs, callbacks, root)
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=datamodule)
        fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    row: dict[str, Any] = {"test_acc": float(test["test_acc"]), "fit_seconds": fit_seconds}
    row["fit_cpu_seconds"] = fit_cpu_seconds
    callback_seconds = [
        getattr(c, "seconds_pruning", 0.0) + getattr(c, "seconds_enforcing", 0.0)
        for c in callbacks
        if hasattr(c, "seconds_pruning")
    ]
    row["callback_seconds"] = sum(callback_seconds) if callback_seconds else None
    record_scorer(row, callbacks)
    weights = effective_weights(model)
    zeros, total = masks.count_zeros(weights.values())
    row["sparsity"] = zeros / total
    row["effective_sparsity"] = effective_sparsity(list(weights.values()))
    row["layer_density"] = {name: float((w != 0).float().mean()) for name, w in weights.items()}
    return model, row


def _cpu_model() -> str:
    """The CPU as ``/proc/cpuinfo`` names it (Linux): model name, family, model, stepping and MHz.

    A VM's model name can be as generic as "Intel(R) Xeon(R) Processor", and two VMs with one
    instruction set ran the same forward passes 16-25% apart; the numbers tell them apart. Elsewhere:
    ``platform.processor()``.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or "unknown"
    return (
        f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, model "
        f"{fields.get('model', '?')}, stepping {fields.get('stepping', '?')}, {fields.get('cpu MHz', '?')} MHz)"
    )


def environment() -> dict[str, Any]:
    """Versions, threads and the CPU's vector instruction set, stored in every result file.

    ``cpu_capability`` (``AVX512``, ``AVX2``, ...) is the kernel set torch dispatches to, one reason
    why a seed trains to other numbers on another machine: the realistic tier's language model, same
    seed, code and thread count, reached a test loss of 2.504 on one VM and 2.550 on an earlier one.
    """
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_autoprune": lightning_autoprune.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "git_commit": _git("rev-parse", "HEAD"),
        "package_modified": bool(_git("status", "--porcelain", "lightning_autoprune")),
    }


def _git(*args: str) -> str:
    """Output of a git command in the repository, or ``""`` where git is unavailable."""
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def run_path(out: Path, setup: str, method: str, sparsity: float | None, seed: int) -> Path:
    """Where one run's JSON goes.

    Example:
        >>> run_path(Path("r"), "digits-mlp", "lamp", 0.9, 3).as_posix()
        'r/unstructured/digits-mlp/lamp/s0.90_seed3.json'
    """
    base = out / TRACK / setup / method
    return base / (f"seed{seed}.json" if sparsity is None else f"s{sparsity:.2f}_seed{seed}.json")


def _write(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_rounded(dict(record)), indent=1, sort_keys=True) + "\n")


def run_protocol(
    out: Path,
    grid: Grid | None = None,
    budget: Budget | None = None,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the grid, write one JSON per run and the summary; return the summary.

    Args:
        out: results root; files go under ``out/<track>/``.
        grid: setups, seeds, sparsities and methods (default: the full protocol).
        budget: training budget (default: :class:`Budget`).
        resume: keep existing run files of a setup and seed instead of rerunning them (the dense
            model is retrained, deterministically, when any run of that seed is missing).
        log: where progress lines go.
    """
    grid = grid or Grid()
    budget = budget or Budget()
    env = environment()
    alias = default_alias(grid.methods, budget) if "default" in grid.methods else None
    scratch = out / TRACK / ".scratch"
    for setup_name in grid.setups:
        setup = SETUPS[setup_name]
        datamodule = setup.datamodule()
        datamodule.setup("fit")
        for seed in grid.seeds:
            pending = [
                (m, s)
                for s in grid.sparsities
                for m in grid.methods
                if not (resume and run_path(out, setup_name, m, s, seed).exists())
            ]
            dense_path = run_path(out, setup_name, "dense", None, seed)
            if not pending and dense_path.exists():
                continue
            base = {"track": TRACK, "setup": setup_name, "dataset": setup.dataset, "model": setup.model, "seed": seed}
            base |= {"budget": asdict(budget), "environment": env}
            dense_model, dense = _fit_and_test(setup, datamodule, None, seed, budget.dense_epochs, budget, scratch)
            state = {k: v.detach().clone() for k, v in dense_model.state_dict().items()}
            _, tuned = _fit_and_test(setup, datamodule, state, seed, budget.finetune_epochs, budget, scratch)
            dense_record = base | {"method": "dense", "sparsity_target": 0.0, "pretrained_acc": dense["test_acc"]}
            dense_record |= {"pretrain_seconds": dense["fit_seconds"], "pretrain_cpu_seconds": dense["fit_cpu_seconds"]}
            dense_record |= tuned
            _write(dense_path, dense_record)
            log(f"{setup_name} seed {seed}: dense {dense['test_acc']:.4f}, fine-tuned dense {tuned['test_acc']:.4f}")
            for method, sparsity in pending:
                if method == "default" and alias is not None:
                    continue
                _, row = _fit_and_test(
                    setup, datamodule, state, seed, budget.finetune_epochs, budget, scratch, method, sparsity
                )
                record = base | {
                    "method": method,
                    "sparsity_target": sparsity,
                    "dense_fit_seconds": tuned["fit_seconds"],
                }
                _write(run_path(out, setup_name, method, sparsity, seed), record | row)
                log(
                    f"{setup_name} seed {seed} {method:>20} s={sparsity:.2f}: acc {row['test_acc']:.4f} "
                    f"sparsity {row['sparsity']:.4f} effective {row['effective_sparsity']:.4f} "
                    f"({row['fit_seconds']:.1f}s)"
                )
            if alias is not None:
                for method, sparsity in pending:
                    if method == "default":
                        reused = json.loads(run_path(out, setup_name, alias, sparsity, seed).read_text())
                        reused |= {"method": "default", "reused_from": alias, "resolved_importance": alias}
                        _write(run_path(out, setup_name, "default", sparsity, seed), reused)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = summarise(load_records(out))
    write_json(out / TRACK / "summary.json", summary)
    return summary


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every run record under ``out/<track>/``, in a stable order."""
    records = []
    for path in sorted((out / TRACK).glob("*/*/*.json")):
        records.append(json.loads(path.read_text()))
    return records


def quiet_benchmark() -> None:
    """Silence Lightning's, Fabric's and transformers' info logs and Python warnings for a benchmark's own lines."""
    for name in ("lightning.pytorch", "lightning.fabric", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as sorted, rounded, indented JSON, atomically (``--resume`` trusts any file it finds)."""
    _write(path, data)


# ---------------------------------------------------------------------------------------------- summary
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Two-sided paired t-test and Wilcoxon signed-rank test of ``a - b``; ``None`` p-values when undefined.

    Example:
        >>> paired_test([0.9, 0.91, 0.92], [0.9, 0.91, 0.92])["t_p"] is None
        True
    """
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    result: dict[str, Any] = {
        "mean_diff": statistics.fmean(diffs),
        "wins": sum(d > 1e-12 for d in diffs),
        "losses": sum(d < -1e-12 for d in diffs),
        "ties": sum(abs(d) <= 1e-12 for d in diffs),
        "t_p": None,
        "wilcoxon_p": None,
    }
    nonzero = [d for d in diffs if abs(d) > 1e-12]
    if len(diffs) >= 2 and len(nonzero) >= 1 and statistics.pstdev(diffs) > 1e-12:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result["t_p"] = float(stats.ttest_rel(a, b).pvalue)
            result["wilcoxon_p"] = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 1 else None
    elif nonzero:  # every difference identical and nonzero: the t statistic is infinite
        result["t_p"] = 0.0
    return result


def summarise(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate run records into the metrics of the module docstring (JSON-ready)."""
    records = list(records)
    by_setup: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_setup.setdefault(record["setup"], []).append(record)
    summary: dict[str, Any] = {"track": TRACK, "setups": {}}
    if records:
        first = records[0]
        summary["budget"] = first["budget"]
        summary["environment"] = first["environment"]
        summary["total_run_seconds"] = sum(
            r["fit_seconds"] + r.get("pretrain_seconds", 0.0) for r in records if "reused_from" not in r
        )
        summary["total_run_cpu_seconds"] = sum(
            r.get("fit_cpu_seconds", 0.0) + r.get("pretrain_cpu_seconds", 0.0)
            for r in records
            if "reused_from" not in r
        )
        summary["runs"] = len(records)
    for name in sorted(by_setup, key=lambda n: list(SETUPS).index(n) if n in SETUPS else len(SETUPS)):
        summary["setups"][name] = _summarise_setup(by_setup[name])
    return summary


def record_scorer(row: dict[str, Any], callbacks: Sequence[Any]) -> None:
    """Add the learned scorer's per-event records to ``row``: held-out fidelity and the steps applied."""
    for callback in callbacks:
        scorer = getattr(callback, "scorer", None)
        for key, attribute in (("importance_diagnostics", "diagnostics"), ("importance_steps", "steps")):
            records = getattr(scorer, attribute, None)
            if records:
                row[key] = _rounded(records)


def step_shares(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which step the learned scorer applied at every event of ``runs``, labelled or not.

    Returns the number of events, the share of events per applied candidate, the share whose
    step was measured, the median calibration samples a measured step was compared on, and the
    number of events that passed over a candidate whose step would take a layer down to its floor
    (``collapsing``, recorded since 9980778). Empty when the runs carry no ``importance_steps``.

    Example:
        >>> steps = [{"used": "lamp", "samples": 64, "collapsing": ["magnitude"]}, {"used": "taylor", "samples": 0}]
        >>> step_shares([{"importance_steps": steps}])  # doctest: +NORMALIZE_WHITESPACE
        {'events': 2, 'used_share': {'lamp': 0.5, 'taylor': 0.5}, 'measured_share': 0.5, 'samples_median': 64,
         'passed_over_events': 1}
    """
    events = [e for r in runs for e in r.get("importance_steps") or []]
    if not events:
        return {}
    measured = [e["samples"] for e in events if e["samples"] > 0]
    return {
        "events": len(events),
        "used_share": _shares([e["used"] for e in events]),
        "measured_share": len(measured) / len(events),
        "samples_median": statistics.median(measured) if measured else 0,
        "passed_over_events": sum(1 for e in events if e.get("collapsing")),
    }


def importance_fidelity(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Held-out fidelity of the learned scorer over every pruning event of ``runs``, next to the formulas'.

    Per scorer: the mean (and median) over events of the Spearman correlation and precision@k
    against the held-out group ablations, and the share of events where it fell back to its prior.
    Empty when the runs carry no ``importance_diagnostics``.

    Example:
        >>> event = {"fidelity": {"learned": {"spearman": 0.9, "precision_at_k": 0.5}}, "fell_back": False,
        ...          "blend_weight": 1.0}
        >>> importance_fidelity([{"importance_diagnostics": [event]}])["spearman_mean"]
        {'learned': 0.9}
    """
    events = [e for r in runs for e in r.get("importance_diagnostics") or []]
    if not events:
        return {}
    scorers = list(events[0]["fidelity"])
    out: dict[str, Any] = {"events": len(events)}
    for metric in ("spearman", "precision_at_k"):
        values = {s: [e["fidelity"][s][metric] for e in events] for s in scorers}
        out[f"{metric}_mean"] = {s: statistics.fmean(v) for s, v in values.items()}
        out[f"{metric}_median"] = {s: statistics.median(v) for s, v in values.items()}
    out["fell_back_share"] = statistics.fmean(float(e["fell_back"]) for e in events)
    out["blend_weight_mean"] = statistics.fmean(e["blend_weight"] for e in events)
    used = [e["used"] for e in events if "used" in e]
    if used:  # which candidate's step each event applied (lowest measured calibration loss)
        out["used_share"] = _shares(used)
    gaps = [gap for gap in map(fidelity_gap, events) if gap is not None]
    if gaps:
        out["below_best_share"] = statistics.fmean(float(gap > 0) for gap in gaps)
        out["below_best_gap_mean"] = statistics.fmean(gaps)
        out["below_best_events"] = len(gaps)
    return out


def fidelity_gap(event: Mapping[str, Any]) -> float | None:
    """How far the applied prior's held-out Spearman fell below the best of the event's other priors.

    The priors compared are those whose steps the event measured (``step_losses``) and whose ranking
    the held-out check scored; 0 when the applied one ranked best; ``None`` for an event without both
    records, and for one that applied the learned step (a blend of the learned ranking into Taylor's
    bands, whose own Spearman was not measured).

    Example:
        >>> fid = {"taylor": {"spearman": 0.96}, "magnitude": {"spearman": 0.92}, "taylor2": {"spearman": 0.99}}
        >>> round(fidelity_gap({"used": "magnitude", "fidelity": fid, "step_losses": {"taylor": 1, "magnitude": 0}}), 3)
        0.04
    """
    used, fidelity, losses = event.get("used"), event.get("fidelity") or {}, event.get("step_losses") or {}
    scored = [name for name in losses if name in fidelity and name != "learned"]
    if used not in scored:
        return None
    return max(fidelity[name]["spearman"] for name in scored) - fidelity[used]["spearman"]


def _shares(names: Sequence[str]) -> dict[str, float]:
    """The share of each name in ``names``, in order of first appearance."""
    return {name: names.count(name) / len(names) for name in sorted(set(names), key=names.index)}


def _summarise_setup(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    dense = {r["seed"]: r for r in records if r["method"] == "dense"}
    seeds = sorted(dense)
    runs: dict[str, dict[float, dict[int, Mapping[str, Any]]]] = {}
    for r in records:
        if r["method"] != "dense" and r["seed"] in dense:
            runs.setdefault(r["method"], {}).setdefault(r["sparsity_target"], {})[r["seed"]] = r
    methods = [m for m in METHODS if m in runs] + sorted(m for m in runs if m not in METHODS)
    dense_acc = [dense[s]["test_acc"] for s in seeds]
    pre_acc = [dense[s]["pretrained_acc"] for s in seeds]
    first = records[0]
    out: dict[str, Any] = {
        "dataset": first["dataset"],
        "model": first["model"],
        "seeds": seeds,
        "dense": {
            "test_acc_mean": _mean_std(dense_acc)[0],
            "test_acc_std": _mean_std(dense_acc)[1],
            "test_acc_per_seed": dense_acc,
            "pretrained_acc_mean": _mean_std(pre_acc)[0],
            "pretrained_acc_std": _mean_std(pre_acc)[1],
            "fit_seconds_median": statistics.median(dense[s]["fit_seconds"] for s in seeds),
            "fit_cpu_seconds_median": statistics.median(dense[s].get("fit_cpu_seconds", math.nan) for s in seeds),
        },
        "methods": {},
        "comparisons": {},
    }
    for method in methods:
        grid = runs[method]
        sparsities = sorted(s for s in grid if all(seed in grid[s] for seed in seeds))
        if not sparsities:
            continue
        entry: dict[str, Any] = {"by_sparsity": {}}
        if any("reused_from" in r for by_seed in grid.values() for r in by_seed.values()):
            entry["reused_from"] = next(r["reused_from"] for by_seed in grid.values() for r in by_seed.values())
        for s in sparsities:
            rows = [grid[s][seed] for seed in seeds]
            acc_mean, acc_std = _mean_std([r["test_acc"] for r in rows])
            entry["by_sparsity"][f"{s:.2f}"] = {
                "test_acc_mean": acc_mean,
                "test_acc_std": acc_std,
                "test_acc_per_seed": [r["test_acc"] for r in rows],
                "sparsity_mean": statistics.fmean(r["sparsity"] for r in rows),
                "effective_sparsity_mean": statistics.fmean(r["effective_sparsity"] for r in rows),
            }
        per_seed_auc = [
            normalised_auc(sparsities, [grid[s][seed]["test_acc"] for s in sparsities], dense[seed]["test_acc"])
            for seed in seeds
        ]
        per_seed_max = [
            max_sparsity_within(
                sparsities, [grid[s][seed]["test_acc"] for s in sparsities], dense[seed]["test_acc"], 0.01
            )
            for seed in seeds
        ]
        mean_curve = [entry["by_sparsity"][f"{s:.2f}"]["test_acc_mean"] for s in sparsities]
        entry["auc_mean"], entry["auc_std"] = _mean_std(per_seed_auc)
        entry["max_sparsity_within_1pt_mean"] = statistics.fmean(per_seed_max)
        entry["max_sparsity_within_1pt_per_seed"] = per_seed_max
        entry["max_sparsity_within_1pt_of_mean_curve"] = max_sparsity_within(
            sparsities, mean_curve, statistics.fmean(dense_acc), 0.01
        )
        for key, clock in (("overhead_median", "fit_cpu_seconds"), ("overhead_wall_median", "fit_seconds")):
            ratios = [
                grid[s][seed][clock] / dense[seed][clock] - 1.0
                for s in sparsities
                for seed in seeds
                if dense[seed].get(clock) and grid[s][seed].get(clock) is not None
            ]
            entry[key] = statistics.median(ratios) if ratios else None
        shares = [
            grid[s][seed]["callback_seconds"] / grid[s][seed]["fit_seconds"]
            for s in sparsities
            for seed in seeds
            if grid[s][seed].get("callback_seconds") is not None and grid[s][seed]["fit_seconds"] > 0
        ]
        entry["callback_share_median"] = statistics.median(shares) if shares else None
        entry["fit_cpu_seconds_median"] = statistics.median(
            grid[s][seed].get("fit_cpu_seconds", math.nan) for s in sparsities for seed in seeds
        )
        entry["fit_seconds_median"] = statistics.median(
            grid[s][seed]["fit_seconds"] for s in sparsities for seed in seeds
        )
        fidelity = importance_fidelity([grid[s][seed] for s in sparsities for seed in seeds])
        if fidelity:
            entry["importance_fidelity"] = fidelity
        steps = step_shares([grid[s][seed] for s in sparsities for seed in seeds])
        if steps:
            entry["importance_steps"] = steps
        out["methods"][method] = entry
    if "default" in out["methods"]:
        reference = runs["default"]
        for method in out["methods"]:
            if method == "default":
                continue
            comparison: dict[str, Any] = {}
            for key in out["methods"][method]["by_sparsity"]:
                s = float(key)
                if key not in out["methods"]["default"]["by_sparsity"]:
                    continue
                a = [reference[s][seed]["test_acc"] for seed in seeds]
                b = [runs[method][s][seed]["test_acc"] for seed in seeds]
                test = paired_test(a, b)
                test["real"] = test["t_p"] is not None and test["t_p"] < 0.05
                comparison[key] = test
            out["comparisons"][method] = comparison
    return out


# ---------------------------------------------------------------------------------------------- quick check
def compare_quick(quick: Mapping[str, Any], full: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Compare a quick summary with the committed full one: table lines and ``FLAGGED`` lines.

    A quick mean is flagged when it differs from the full mean over the *same seeds* by more than the
    full run's seed spread (its sample std over all seeds, at least 0.001).
    """
    header = f"{'setup':<12} {'method':<20} {'sparsity':>8} {'quick':>8} {'full(same seeds)':>17}"
    lines = [f"{header} {'full mean±std':>16} {'delta':>8}"]
    flagged: list[str] = []

    def check(
        setup: str,
        method: str,
        key: str,
        quick_vals: Sequence[float],
        full_vals: Sequence[float],
        quick_seeds: Sequence[int],
        full_seeds: Sequence[int],
    ) -> None:
        shared = [full_vals[full_seeds.index(s)] for s in quick_seeds if s in full_seeds]
        q = statistics.fmean(quick_vals)
        same = statistics.fmean(shared) if shared else statistics.fmean(full_vals)
        mean, std = _mean_std(full_vals)
        delta = q - same
        line = f"{setup:<12} {method:<20} {key:>8} {q:8.4f} {same:17.4f} {mean:9.4f}±{std:6.4f} {delta:+8.4f}"
        lines.append(line)
        if abs(delta) > max(std, 0.001):
            flagged.append(f"FLAGGED {line.strip()}  (moved more than the seed spread {max(std, 0.001):.4f})")

    for setup, entry in quick.get("setups", {}).items():
        reference = full.get("setups", {}).get(setup)
        if reference is None:
            flagged.append(f"FLAGGED {setup}: no committed full results to compare with")
            continue
        qs, fs = entry["seeds"], reference["seeds"]
        check(
            setup, "dense", "0.00", entry["dense"]["test_acc_per_seed"], reference["dense"]["test_acc_per_seed"], qs, fs
        )
        for method, m_entry in entry["methods"].items():
            f_entry = reference["methods"].get(method)
            for key, cell in m_entry["by_sparsity"].items():
                if f_entry is None or key not in f_entry["by_sparsity"]:
                    flagged.append(f"FLAGGED {setup} {method} {key}: not in the committed full results")
                    continue
                full_cell = f_entry["by_sparsity"][key]
                check(setup, method, key, cell["test_acc_per_seed"], full_cell["test_acc_per_seed"], qs, fs)
    return lines, flagged


# ---------------------------------------------------------------------------------------------- CLI
def add_methods_argument(parser: argparse.ArgumentParser, methods: Sequence[str]) -> None:
    """``--methods``: any of ``methods`` (the default run) or of :data:`EXPERIMENT_METHODS` (run only when named)."""
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*methods, *EXPERIMENT_METHODS],
        default=None,
        help=f"default: every method but {', '.join(EXPERIMENT_METHODS)} (run only when named)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the representative subset, into results-quick/")
    parser.add_argument("--out", type=Path, default=None, help="results root (default: benchmarks/results)")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--sparsities", nargs="+", type=float, default=None)
    add_methods_argument(parser, METHODS)
    parser.add_argument("--resume", action="store_true", help="keep run files that already exist")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    quiet_benchmark()
    preset: Mapping[str, Sequence[Any]] = (
        QUICK if args.quick else {"setups": tuple(SETUPS), "seeds": SEEDS, "sparsities": SPARSITIES, "methods": METHODS}
    )
    grid = Grid(
        setups=args.setups or preset["setups"],
        seeds=args.seeds if args.seeds is not None else preset["seeds"],
        sparsities=args.sparsities or preset["sparsities"],
        methods=args.methods or preset["methods"],
    )
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    if not args.resume and (out / TRACK).exists():
        for setup in grid.setups:
            shutil.rmtree(out / TRACK / setup, ignore_errors=True)
    start = time.perf_counter()
    summary = run_protocol(out, grid, resume=args.resume, log=lambda line: print(f"[AutoPrune] {line}", flush=True))
    print(
        f"[AutoPrune] protocol wall time: {time.perf_counter() - start:.0f} s; "
        f"summary in {out / TRACK / 'summary.json'}"
    )
    if args.quick:
        full_records = load_records(RESULTS)
        if not full_records:
            print(f"[AutoPrune] FLAGGED no committed full results under {RESULTS / TRACK} to compare with")
            return 0
        print(f"[AutoPrune] quick run vs the committed full results ({RESULTS / TRACK}):")
        lines, flagged = compare_quick(summary, summarise(full_records))
        print("\n".join(lines))
        print("\n".join(flagged) if flagged else "No metric moved beyond the seed spread of the committed results.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
