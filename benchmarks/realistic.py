"""The realistic tier (issue #19): workloads that look like real use and still run on 2 CPU cores.

The small protocol (``benchmarks/protocol.py``) fits for 1 to 3 seconds on a few hundred test samples:
there the learned scorer's fixed cost per event is most of the fit and a 1-point difference is inside
binomial noise. This tier runs the same protocol (same methods code, same resumable per-run JSON,
same :func:`benchmarks.protocol.summarise` and paired tests) on two larger workloads
(``benchmarks/realistic_workloads.py``):

* ``mnist1d-resnet``: MNIST-1D at scale (40,000 / 5,000 / 15,000 signals, generated offline with explicit
  arguments and seed), a 1D ResNet with BatchNorm and residual blocks (232,906 parameters). Test
  accuracy's binomial standard error is at most 0.3 point for any accuracy above 84%.
* ``stdlib-charlm``: a character-level ``GPT2LMHeadModel`` (4 layers, width 128, context 128; 822k
  parameters) on the running interpreter's standard library sources, split by file (4M training,
  262,144 validation and 262,144 test characters). Metric: next-character loss in nats per character
  (bits per character alongside) and next-character accuracy; the tables give the across-seed std.
  AutoPrune and ModelPruning prune ``include=LM_INCLUDE`` (attention and MLP projections).

Per (workload, seed): train dense for ``dense_epochs``; fine-tune that state without pruning (the dense
reference); then, for every sparsity and method, fine-tune the same state with the method's callback
(cubic schedule, events at the starts of epochs ``start_epoch..end_epoch``) and test. Methods:
``random``, ``magnitude``, ``lamp``, ``taylor``, ``wanda`` (``|w|·‖x‖``), ``default`` (AutoPrune with no
``importance``: the learned scorer) and ``modelpruning`` (Lightning's global L1, no rewind). The paired
tests compare ``default`` with every other method, over seeds.

Every run records the fit's wall and CPU time, the callback's own time, the number of pruning events,
the process's peak resident memory so far (``ru_maxrss``), and the evaluation-set sizes. The dense
state of each seed is saved next to its record (``.pt``, ignored by git) so that ``--resume`` skips it.

**Grid, trimmed** (never the workload sizes): the ResNet at 0.9, 0.95 and 0.98 (0.8 left out), the
LM at 0.7 and 0.9 (0.5 left out: an LM fine-tune costs 1.6 to 2.9 times a ResNet one on the VMs
measured), 3 seeds of the LM and 10 of the ResNet (``Workload.seeds``; 5-9 added later, see
``results/realistic/STATUS.md``). The first
estimate (:func:`estimate_seconds`, from single-thread training steps timed on the shared 2-core VM:
ResNet 0.53 s per batch of 256, LM 2.1 s per batch of 64 windows) put this grid and the structured
track at about 19,400 s at one thread, one fit at a time. Measured instead,
from empty results with two single-thread jobs, one (workload, seed) unit each
(``benchmarks/parallel.py``): on one 2-core VM this grid without the LM's 0.7 took 124 min; on a
faster one (torch CPU capability AVX512, fits about twice as fast) the whole ``make bench-real``,
this grid and the structured track, took 70 min (``results/realistic/STATUS.md``). It runs this grid
and the structured track; the automatic mode (``benchmarks/realistic_auto.py``, 5 seeds) is
``make bench-real-auto``. The progress lines print the time left from the fits measured so far.

Usage::

    python -m benchmarks.realistic --resume     # the tier into benchmarks/results/realistic, one fit at a time
    python -m benchmarks.parallel realistic     # the same in two single-thread jobs (make bench-real)
    python -m benchmarks.realistic --quick      # one seed, one sparsity, 3 methods, short fits (make bench-real-quick)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from benchmarks import protocol
from benchmarks.realistic_workloads import (
    CORPUS_CHARS,
    LM_INCLUDE,
    CharLM,
    LargeMNIST1D,
    ResNet1D,
    StdlibCharData,
    StdlibCorpus,
    bits_per_char,
)
from lightning_autoprune.core import masks
from lightning_autoprune.core.files import atomic_torch_save
from lightning_autoprune.examples import quiet_trainer

TIER = "realistic"
RESULTS = protocol.RESULTS / TIER
QUICK_RESULTS = protocol.QUICK_RESULTS / TIER
METHODS: tuple[str, ...] = ("random", "magnitude", "lamp", "taylor", "wanda", "default", "modelpruning")
SEEDS: tuple[int, ...] = (0, 1, 2)
#: What ``make bench-real-quick`` runs: one seed, one sparsity per workload, three methods, short fits.
QUICK_METHODS: tuple[str, ...] = ("magnitude", "wanda", "default")


@dataclass(frozen=True)
class TierBudget(protocol.Budget):
    """:class:`benchmarks.protocol.Budget` plus how often to validate (validation never decides anything here).

    Attributes:
        val_every: validate every this many epochs (the last epoch always validates when it is a multiple).
        pretrain_batches: training batches per dense-training epoch (``None``: whole epochs).
    """

    val_every: int = 1
    pretrain_batches: int | float | None = None


@dataclass(frozen=True)
class Workload:
    """One (data, model) pair of the tier and its grid.

    Attributes:
        name: identifier in paths and tables.
        kind: ``"classifier"`` (ResNet on MNIST-1D) or ``"lm"`` (character GPT-2).
        description: one line for the report.
        sparsities: the grid's target sparsities.
        budget: the training budget.
        include: AutoPrune's ``include`` (``None``: its default tensors).
        samples: MNIST-1D samples generated (classifier).
        corpus_chars: characters per split (LM).
        widths: ResNet widths, or ``(layers, width)`` of the LM.
        batch_size: training batch size.
        seeds: the seeds the grid runs for this workload unless ``--seeds`` names others.
    """

    name: str
    kind: str
    description: str
    sparsities: tuple[float, ...]
    budget: TierBudget
    include: tuple[str, ...] | None = None
    samples: int = 60_000
    corpus_chars: Mapping[str, int] = field(default_factory=lambda: dict(CORPUS_CHARS))
    widths: tuple[int, int] = (64, 128)
    batch_size: int = 256
    seeds: tuple[int, ...] = SEEDS

    def datamodule(self) -> pl.LightningDataModule:
        """A fresh datamodule (data built on ``setup``)."""
        if self.kind == "classifier":
            return LargeMNIST1D(self.samples, batch_size=self.batch_size)
        return StdlibCharData(StdlibCorpus.build(dict(self.corpus_chars)), batch_size=self.batch_size)

    def build_model(self) -> pl.LightningModule:
        """A fresh, untrained model (the caller seeds first)."""
        if self.kind == "classifier":
            return ResNet1D(widths=self.widths)
        return CharLM(layers=self.widths[0], width=self.widths[1])


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "mnist1d-resnet",
            "classifier",
            "MNIST-1D at scale (40000/5000/15000, mnist1d generator, seed 42), ResNet1D (64, 128; 232,906 "
            "parameters), Adam 2e-3, batch 256",
            (0.9, 0.95, 0.98),
            # One fine-tuning pass over the training set in four quarter-epochs: events at the starts of
            # quarters 1..3, the last quarter at the target.
            TierBudget(dense_epochs=3, finetune_epochs=4, start_epoch=1, end_epoch=3, limit_train_batches=0.25),
            # 20 seeds: the default's differences to LAMP are a few tenths of a point, which 10 seeds
            # left at p = 0.10 and 0.18 (seeds 10-19 were added for that power, every method).
            seeds=tuple(range(20)),
        ),
        Workload(
            "stdlib-charlm",
            "lm",
            "character GPT-2 (4 layers, width 128, context 128; 822,272 parameters) on the Python stdlib sources "
            "(4M/262k/262k characters, split by file), AdamW 2e-3, batch 64",
            (0.7, 0.9),
            TierBudget(
                dense_epochs=2,
                finetune_epochs=4,
                start_epoch=1,
                end_epoch=3,
                limit_train_batches=20,
                pretrain_batches=80,
                val_every=4,
                # 64 windows = 8,192 characters per calibration set: 512 windows (the protocol's sample
                # count) made each learned event evaluate 65k characters per ablation.
                calibration_samples=64,
            ),
            include=tuple(LM_INCLUDE),
            widths=(4, 128),
            batch_size=64,
        ),
    )
}


def quick_workloads() -> list[Workload]:
    """The tier's workloads at full data size with short fits, one sparsity each (``make bench-real-quick``).

    One pruning event per fit (fine-tuning epochs 0 and 1, the event at the start of epoch 1) and
    validation on 8 batches only (validation decides nothing here); the test sets stay whole. The
    learned scorer's LM event alone took about 100 s in the first quick run, which had three.
    """
    resnet, lm = WORKLOADS["mnist1d-resnet"], WORKLOADS["stdlib-charlm"]
    one_event = {"finetune_epochs": 2, "start_epoch": 1, "end_epoch": 1, "limit_val_batches": 8}
    return [
        replace(
            resnet,
            sparsities=(0.9,),
            budget=replace(resnet.budget, dense_epochs=1, pretrain_batches=40, limit_train_batches=30, **one_event),
        ),
        replace(
            lm,
            sparsities=(0.9,),
            budget=replace(lm.budget, dense_epochs=1, pretrain_batches=20, limit_train_batches=4, **one_event),
        ),
    ]


# ---------------------------------------------------------------------------------------------- one fit
def _trainer(budget: TierBudget, epochs: int, callbacks: list[Callback], root: Path, pretrain: bool) -> Trainer:
    train_batches = budget.pretrain_batches if pretrain else budget.limit_train_batches
    limits = {"limit_train_batches": train_batches, "limit_val_batches": budget.limit_val_batches}
    limits |= {"limit_test_batches": budget.limit_test_batches}
    return quiet_trainer(
        max_epochs=epochs,
        devices=1,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
        check_val_every_n_epoch=max(1, min(budget.val_every, epochs)),
        **{k: v for k, v in limits.items() if v is not None},
    )


def _events(callbacks: Sequence[Callback], budget: TierBudget) -> int:
    """Pruning events of the fit: AutoPrune's history, or the epochs where ModelPruning's amount was positive."""
    count = 0
    for callback in callbacks:
        history = getattr(callback, "history", None)
        if history is not None:
            count += len(history)
        amount = getattr(callback, "amount", None)
        if callable(amount):
            count += sum(amount(epoch) > 0 for epoch in range(budget.finetune_epochs))
    return count


def eval_sizes(workload: Workload, datamodule: pl.LightningDataModule) -> dict[str, int]:
    """Samples (classifier) or characters (LM) in the validation and test sets."""
    if isinstance(datamodule, LargeMNIST1D):
        sizes = datamodule.sizes()
        return {"train_samples": sizes["train"], "val_samples": sizes["val"], "test_samples": sizes["test"]}
    assert isinstance(datamodule, StdlibCharData)
    assert datamodule.corpus is not None
    chars = datamodule.corpus.chars()
    return {"train_chars": chars["train"], "val_chars": chars["val"], "test_chars": chars["test"]}


def fit_and_test(
    workload: Workload,
    datamodule: pl.LightningDataModule,
    state: Mapping[str, Tensor] | None,
    seed: int,
    root: Path,
    method: str | None = None,
    sparsity: float = 0.0,
    callbacks: list[Callback] | None = None,
) -> tuple[pl.LightningModule, dict[str, Any]]:
    """Train (dense when ``state`` is ``None``, else fine-tune ``state`` with ``method``), test, and record.

    ``callbacks``, when given, replace ``method``'s (the automatic-mode benchmark passes ``AutoPrune()``).
    """
    budget = workload.budget
    seed_everything(seed, verbose=False)
    model = workload.build_model()
    if state is not None:
        model.load_state_dict(state)
    include = list(workload.include) if workload.include is not None else None
    if callbacks is None:
        callbacks = protocol.make_callbacks(method, sparsity, budget, seed, model, include) if method else []
    epochs = budget.dense_epochs if state is None else budget.finetune_epochs
    trainer = _trainer(budget, epochs, callbacks, root, pretrain=state is None)
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=datamodule)
        fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    row: dict[str, Any] = {
        "test_acc": float(test["test_acc"]),
        "test_loss": float(test["test_loss"]),
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "events": _events(callbacks, budget),
        # The machine's 1-minute load average around the fit: above the torch threads, other work shared
        # the cores and the times above are not this fit's alone.
        "load_average": [load_start, os.getloadavg()[0]],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    row |= eval_sizes(workload, datamodule)
    n_test = row.get("test_samples") or row["test_chars"]
    row["test_acc_se"] = math.sqrt(max(row["test_acc"] * (1 - row["test_acc"]), 0.0) / n_test)
    if workload.kind == "lm":
        row["test_bits_per_char"] = bits_per_char(row["test_loss"])
    timed = [c for c in callbacks if hasattr(c, "seconds_pruning")]
    row["callback_seconds"] = (
        sum(c.seconds_pruning + getattr(c, "seconds_enforcing", 0.0) for c in timed) if timed else None
    )
    protocol.record_scorer(row, callbacks)
    weights = protocol.effective_weights(model, include)
    zeros, total = masks.count_zeros(weights.values())
    row["sparsity"] = zeros / total
    # Residual and attention models are no chain of layers, so path-based effective sparsity is not traced.
    row["effective_sparsity"] = row["sparsity"]
    row["layer_density"] = {name: float((w != 0).float().mean()) for name, w in weights.items()}
    return model, row


# ---------------------------------------------------------------------------------------------- the grid
def estimate_seconds(
    workloads: Sequence[Workload], seeds: Sequence[int], methods: Sequence[str], per_fit: Mapping[str, float]
) -> float:
    """Seconds the grid takes, from seconds per dense training and per fine-tune of each workload.

    ``per_fit`` maps ``"<workload>/dense"`` and ``"<workload>/finetune"`` to seconds.

    Example:
        >>> w = replace(WORKLOADS["mnist1d-resnet"], sparsities=(0.9, 0.98))
        >>> estimate_seconds([w], [0, 1], ["magnitude"], {"mnist1d-resnet/dense": 100, "mnist1d-resnet/finetune": 10})
        260.0
    """
    total = 0.0
    for w in workloads:
        fits = 1 + len(w.sparsities) * len(methods)
        total += len(seeds) * (per_fit[f"{w.name}/dense"] + fits * per_fit[f"{w.name}/finetune"])
    return float(total)


class Progress:
    """Counts fits done and left, and estimates the time left from the mean seconds of each kind of fit."""

    def __init__(self, pending: Mapping[str, int], log: Callable[[str], None]) -> None:
        self.left = dict(pending)
        self.seconds: dict[str, list[float]] = {}
        self.log = log

    def done(self, kind: str, seconds: float, line: str) -> None:
        """Record one finished fit of ``kind`` and print ``line`` with the estimate."""
        self.left[kind] = max(0, self.left.get(kind, 0) - 1)
        self.seconds.setdefault(kind, []).append(seconds)
        known = {k: statistics.fmean(v) for k, v in self.seconds.items()}
        fallback = statistics.fmean(known.values())
        eta = sum(n * known.get(k, fallback) for k, n in self.left.items())
        self.log(f"{line} | {sum(self.left.values())} fits left, about {eta / 60:.0f} min")


def run_tier(
    out: Path,
    workloads: Sequence[Workload],
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] = METHODS,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the grid, one JSON per run under ``out/unstructured/``, and write ``out/summary.json``; return it.

    ``seeds``: the same seeds for every workload; ``None``: each workload's own (``Workload.seeds``).
    """
    env = protocol.environment()
    scratch = out / f".scratch-{os.getpid()}"  # its own: parallel jobs (benchmarks.parallel) share `out`
    plan: dict[str, list[tuple[int, list[tuple[str, float]], bool]]] = {}
    pending: dict[str, int] = {}
    for w in workloads:
        for seed in w.seeds if seeds is None else seeds:
            todo = [
                (m, s)
                for s in w.sparsities
                for m in methods
                if not (resume and protocol.run_path(out, w.name, m, s, seed).exists())
            ]
            dense_recorded = resume and protocol.run_path(out, w.name, "dense", None, seed).exists()
            if dense_recorded and not todo:
                continue  # every run of this seed is recorded: its dense state (not in git) is not needed
            dense_done = dense_recorded and dense_state_path(out, w.name, seed).exists()
            plan.setdefault(w.name, []).append((seed, todo, dense_done))
            pending[f"{w.name}/dense"] = pending.get(f"{w.name}/dense", 0) + (0 if dense_done else 1)
            pending[f"{w.name}/finetune"] = pending.get(f"{w.name}/finetune", 0) + len(todo) + (0 if dense_done else 1)
    progress = Progress(pending, log)
    counts = ", ".join(f"{k}: {v}" for k, v in pending.items())
    log(f"{sum(pending.values())} fits to run" + (f" ({counts})" if counts else ""))
    for w in workloads:
        if not plan.get(w.name):
            continue
        datamodule = w.datamodule()
        datamodule.setup("fit")
        for seed, todo, dense_done in plan[w.name]:
            base: dict[str, Any] = {
                "tier": TIER,
                "track": protocol.TRACK,
                "setup": w.name,
                "dataset": w.kind,
                "model": w.kind,
            }
            base |= {"seed": seed, "budget": asdict(w.budget), "environment": env, "description": w.description}
            if isinstance(datamodule, StdlibCharData) and datamodule.corpus is not None:
                base |= {"corpus_sha256": datamodule.corpus.sha256, "corpus_files": datamodule.corpus.files}
            state_path = dense_state_path(out, w.name, seed)
            if dense_done:
                state = torch.load(state_path, weights_only=True)
                tuned_seconds = json.loads(protocol.run_path(out, w.name, "dense", None, seed).read_text())
                tuned_seconds = tuned_seconds["fit_seconds"]
            else:
                state, dense = train_dense(w, datamodule, seed, state_path, scratch)
                progress.done(f"{w.name}/dense", dense["fit_seconds"], f"{w.name} seed {seed}: dense trained")
                _, tuned = fit_and_test(w, datamodule, state, seed, scratch)
                record = base | {"method": "dense", "sparsity_target": 0.0, "pretrained_acc": dense["test_acc"]}
                record |= {"pretrained_loss": dense["test_loss"], "pretrain_seconds": dense["fit_seconds"]}
                record |= {"pretrain_cpu_seconds": dense["fit_cpu_seconds"]} | tuned
                protocol.write_json(protocol.run_path(out, w.name, "dense", None, seed), record)
                tuned_seconds = tuned["fit_seconds"]
                progress.done(
                    f"{w.name}/finetune",
                    tuned["fit_seconds"],
                    f"{w.name} seed {seed}: dense acc {dense['test_acc']:.4f}, fine-tuned {tuned['test_acc']:.4f} "
                    f"loss {tuned['test_loss']:.4f} ({dense['fit_seconds']:.0f}s + {tuned['fit_seconds']:.0f}s)",
                )
            for method, sparsity in todo:
                _, row = fit_and_test(w, datamodule, state, seed, scratch, method, sparsity)
                record = base | {"method": method, "sparsity_target": sparsity, "dense_fit_seconds": tuned_seconds}
                protocol.write_json(protocol.run_path(out, w.name, method, sparsity, seed), record | row)
                progress.done(
                    f"{w.name}/finetune",
                    row["fit_seconds"],
                    f"{w.name} seed {seed} {method:>12} s={sparsity:.2f}: acc {row['test_acc']:.4f} "
                    f"loss {row['test_loss']:.4f} sparsity {row['sparsity']:.4f} ({row['fit_seconds']:.0f}s, "
                    f"callback {row['callback_seconds'] or 0:.1f}s, {row['events']} events)",
                )
    shutil.rmtree(scratch, ignore_errors=True)
    return write_summary(out)


def write_summary(out: Path) -> dict[str, Any]:
    """Write ``out/summary.json`` from every run file under ``out`` (fits nothing); return the summary."""
    summary = summarise(protocol.load_records(out))
    protocol.write_json(out / "summary.json", summary)
    return summary


def unit_cells(workload: Workload) -> list[tuple[str, float | None]]:
    """The ``(method, sparsity)`` runs of one seed of ``workload``: the dense fine-tune, then every cell."""
    return [("dense", None), *((m, s) for s in workload.sparsities for m in METHODS)]


def dense_state_path(out: Path, workload: str, seed: int) -> Path:
    """Where the tier under ``out`` keeps ``seed``'s dense state (ignored by git)."""
    return protocol.run_path(out, workload, "dense", None, seed).with_suffix(".pt")


def train_dense(
    workload: Workload, datamodule: pl.LightningDataModule, seed: int, path: Path, root: Path
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Train ``seed``'s dense model, save its state to ``path``; return the state and the fit's record."""
    model, row = fit_and_test(workload, datamodule, None, seed, root)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)  # a run killed mid-save leaves no truncated state for --resume to load
    return state, row


def dense_state(
    workload: Workload, datamodule: pl.LightningDataModule, seed: int, out: Path, root: Path
) -> dict[str, Tensor]:
    """The dense state of ``seed`` the tier under ``out`` saved, trained (and saved there) when it is missing."""
    path = dense_state_path(out, workload.name, seed)
    if path.exists():
        return torch.load(path, weights_only=True)
    return train_dense(workload, datamodule, seed, path, root)[0]


# ---------------------------------------------------------------------------------------------- summary
def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`benchmarks.protocol.summarise` of the tier's records, with the tier's own fields added.

    Per cell: test loss (nats; bits per character for the LM in the report), events, callback seconds,
    fit seconds, peak memory; per workload: evaluation sizes and paired tests of the loss.
    """
    summary = protocol.summarise(records)
    summary["tier"] = TIER
    for name, setup in summary["setups"].items():
        rows = [r for r in records if r["setup"] == name]
        dense = {r["seed"]: r for r in rows if r["method"] == "dense"}
        seeds = setup["seeds"]
        first = rows[0]
        setup["description"] = first.get("description", "")
        setup["eval_sizes"] = {
            k: first[k] for k in ("val_samples", "test_samples", "val_chars", "test_chars") if k in first
        }
        losses = [dense[s]["test_loss"] for s in seeds]
        setup["dense"]["test_loss_mean"] = statistics.fmean(losses)
        setup["dense"]["test_loss_std"] = statistics.stdev(losses) if len(losses) > 1 else 0.0
        setup["dense"]["pretrain_seconds_median"] = statistics.median(dense[s]["pretrain_seconds"] for s in seeds)
        setup["dense"]["test_acc_se_mean"] = statistics.fmean(dense[s]["test_acc_se"] for s in seeds)
        by_cell = {(r["method"], f"{r['sparsity_target']:.2f}", r["seed"]): r for r in rows}
        for method, entry in setup["methods"].items():
            for key, cell in entry["by_sparsity"].items():
                cell_rows = [by_cell[(method, key, s)] for s in seeds]
                values = [r["test_loss"] for r in cell_rows]
                cell["test_loss_mean"] = statistics.fmean(values)
                cell["test_loss_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
                cell["test_loss_per_seed"] = values
                cell["events_mean"] = statistics.fmean(r["events"] for r in cell_rows)
                callback = [r["callback_seconds"] for r in cell_rows if r.get("callback_seconds") is not None]
                cell["callback_seconds_median"] = statistics.median(callback) if callback else None
                cell["fit_seconds_median"] = statistics.median(r["fit_seconds"] for r in cell_rows)
                cell["peak_rss_mib_max"] = max(r["peak_rss_mib"] for r in cell_rows)
        loss_tests: dict[str, Any] = {}
        if "default" in setup["methods"]:
            for method, entry in setup["methods"].items():
                if method == "default":
                    continue
                for key in entry["by_sparsity"]:
                    if key not in setup["methods"]["default"]["by_sparsity"]:
                        continue
                    a = [by_cell[("default", key, s)]["test_loss"] for s in seeds]
                    b = [by_cell[(method, key, s)]["test_loss"] for s in seeds]
                    test = protocol.paired_test(a, b)
                    test["real"] = test["t_p"] is not None and test["t_p"] < 0.05
                    loss_tests.setdefault(method, {})[key] = test
        setup["loss_comparisons"] = loss_tests
    return summary


def grid_progress(results: Path = RESULTS, workloads: Sequence[Workload] | None = None) -> tuple[int, int]:
    """``(runs recorded, runs planned)`` of the unstructured grid: per workload and seed, dense plus every cell.

    Example:
        >>> grid_progress(Path("/nonexistent"), [WORKLOADS["mnist1d-resnet"]])
        (0, 440)
    """
    recorded = planned = 0
    for w in workloads if workloads is not None else WORKLOADS.values():
        for seed in w.seeds:
            cells = unit_cells(w)
            planned += len(cells)
            recorded += sum(protocol.run_path(results, w.name, m, s, seed).exists() for m, s in cells)
    return recorded, planned


def recorded_seconds(results: Path = RESULTS) -> dict[str, float]:
    """Summed wall seconds of every fit recorded under ``results``, per track directory.

    Counts each record's ``fit_seconds`` and ``pretrain_seconds`` at any depth (the automatic mode's
    records hold a dense and an automatic fit); ``dense_fit_seconds``, a copy of the dense fine-tune's
    time kept next to each method's, is not counted again. This is what a ``make bench-real`` from
    empty results runs in sequence, at the speeds those fits had.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> protocol.write_json(root / "automatic" / "w" / "seed0.json", {"dense": {"fit_seconds": 10.0},
        ...     "auto": {"fit_seconds": 12.0}})
        >>> protocol.write_json(root / "unstructured" / "w" / "m" / "s.json", {"fit_seconds": 5.0,
        ...     "dense_fit_seconds": 10.0, "pretrain_seconds": 1.0})
        >>> recorded_seconds(root)
        {'automatic': 22.0, 'unstructured': 6.0}
    """

    def total(node: Any) -> float:
        if isinstance(node, Mapping):
            own = sum(float(v) for k, v in node.items() if k in ("fit_seconds", "pretrain_seconds"))
            return own + sum(total(v) for v in node.values() if isinstance(v, (Mapping, list)))
        if isinstance(node, list):
            return sum(total(v) for v in node)
        return 0.0

    seconds: dict[str, float] = {}
    for track in sorted(p for p in results.iterdir() if p.is_dir()) if results.exists() else []:
        found = [total(json.loads(f.read_text())) for f in track.rglob("*.json") if f.name != "summary.json"]
        if found:
            seconds[track.name] = sum(found)
    return seconds


def load_summary(results: Path = RESULTS) -> dict[str, Any] | None:
    """The tier's summary from its run files, or ``None`` while none exist."""
    records = protocol.load_records(results)
    return summarise(records) if records else None


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, one sparsity, short fits, into results-quick/")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: each workload's own seeds")
    protocol.add_methods_argument(parser, METHODS)
    parser.add_argument("--resume", action="store_true", help="skip runs whose files exist")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    protocol.quiet_benchmark()
    workloads = quick_workloads() if args.quick else list(WORKLOADS.values())
    if args.workloads:
        workloads = [w for w in workloads if w.name in args.workloads]
    seeds = args.seeds if args.seeds is not None else ((0,) if args.quick else None)
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    if args.quick and not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = run_tier(out, workloads, seeds, methods, resume=args.resume, log=say)
    say(f"tier wall time {time.perf_counter() - start:.0f} s; summary in {out / 'summary.json'}")
    for name, setup in summary["setups"].items():
        dense = setup["dense"]
        say(f"{name}: dense acc {dense['test_acc_mean']:.4f} loss {dense['test_loss_mean']:.4f}")
        for method, entry in setup["methods"].items():
            for key, cell in entry["by_sparsity"].items():
                say(
                    f"{name} {method:>12} s={key}: acc {cell['test_acc_mean']:.4f} loss {cell['test_loss_mean']:.4f} "
                    f"fit {cell['fit_seconds_median']:.0f}s callback {cell['callback_seconds_median'] or 0:.1f}s"
                )
    return 0


def say(line: str) -> None:
    """Print one progress line of the benchmarks, prefixed as AutoPrune's own lines are."""
    print(f"[AutoPrune] {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
