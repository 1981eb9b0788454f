"""Automatic mode on the realistic tier (issue #20): does one ``AutoPrune()`` fine-tune find the answer?

Per workload and seed, from the tier's dense state (``benchmarks/realistic.py`` trains and saves it
next to its record; the ``.pt`` is not in git, and this script trains it when it is missing):

* **dense**: fine-tune :attr:`AutoSetup.epochs` epochs with no callback: the reference for the test
  drop and the unit of wall time;
* **auto**: ``AutoPrune`` in automatic mode (no ``target_sparsity``), the same epochs, the same seed.

The two workloads (:data:`SETUPS`):

* ``mnist1d-resnet``: ``AutoPrune()`` with every default (learned importance, ``max_metric_drop=0.01``
  on ``val_acc``), 16 quarter-epochs (four passes over the 40,000 training signals). The dense phase
  needs ``2 * PLATEAU_PATIENCE`` = 6 validations before its plateau rule can end it, and the default
  window ends at about 80% of the epochs (epoch 12 here), which leaves about 7 search epochs: three or
  four accepted steps of one or two epochs each, about what 90% takes. Validation has 5,000 signals
  (standard error 0.14 point at 99%), so the tolerance of one point is resolved.
* ``stdlib-charlm``: the character GPT-2 judged by its loss, ``AutoPrune(monitor="val_loss",
  mode="min", max_metric_drop=0.02, include=LM_INCLUDE)`` (a tolerance of 0.02 nats per character),
  16 epochs of 10 training batches (64 windows of 128 characters each), validated on 16 batches
  (131,072 characters) after each; tested on the whole 262,144-character test split.

Against the fixed sparsities: the tier's fixed-target runs (``benchmarks/results/realistic``, every
method at its sparsities, fine-tuned for the tier's shorter budget against that tier's dense
fine-tune of the same budget) give, per seed, the largest sparsity any method reached within the
tolerance on test. The automatic runs train longer than those: the comparison of sparsity says
whether the search finds what the fixed sweep finds, not which is cheaper.

Each seed file also holds the dense fine-tune's validation value after every epoch (``dense.val_trace``):
the trajectory the search's reference stands for.

Results: one JSON per (workload, seed) under ``<out>/<workload>/seed<seed>.json`` and ``<out>/summary.json``.

Usage::

    python -m benchmarks.realistic_auto --resume                       # both workloads, seeds 0-4
    python -m benchmarks.realistic_auto --workloads stdlib-charlm --seeds 0 1 2 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from benchmarks import protocol, realistic
from lightning_autoprune import AutoPrune
from lightning_autoprune.control.search import Mode, metric_drop, within_tolerance

RESULTS = realistic.RESULTS / "automatic"
QUICK_RESULTS = realistic.QUICK_RESULTS / "automatic"
#: Seeds of ``make bench-real-auto`` (issue #20 asks for at least 5 on the realistic workloads).
SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class AutoSetup:
    """How the automatic mode runs, and is judged, on one workload of the tier.

    Attributes:
        workload: the tier's workload (:data:`benchmarks.realistic.WORKLOADS`).
        epochs: fine-tuning epochs of both runs, validated after each.
        monitor: AutoPrune's ``monitor``; the test drop is judged on its test counterpart.
        mode: ``"max"`` (accuracy) or ``"min"`` (loss).
        tolerance: AutoPrune's ``max_metric_drop``, in the monitor's units.
        defaults: the run is ``AutoPrune()`` with every default (then ``monitor``, ``mode`` and
            ``tolerance`` state what those defaults are).
        limit_train_batches: training batches per epoch (``None``: the workload's).
        limit_val_batches: validation batches (``None``: the workload's).
        matched_targets: fixed sparsities also fine-tuned for this setup's own budget (AutoPrune's
            default importance, both :meth:`matched_schedules`): the like-for-like fixed sweep.
    """

    workload: str
    epochs: int
    monitor: str
    mode: Mode
    tolerance: float
    defaults: bool = False
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    matched_targets: tuple[float, ...] = ()

    @property
    def test_metric(self) -> str:
        """The test counterpart of :attr:`monitor` (``val_acc`` -> ``test_acc``)."""
        return "test_" + self.monitor.removeprefix("val_")

    @staticmethod
    def matched_schedules(epochs: int) -> tuple[tuple[int, int], ...]:
        """``(start_epoch, end_epoch)`` of the like-for-like fixed runs of a fine-tune of ``epochs`` epochs.

        The tier's own schedule scaled to ``epochs`` (events from a quarter of the fine-tune, the target at
        three quarters), and a late one (from three quarters, the target at the last epoch), which leaves
        the pruned model less time to fall behind a dense model that is still learning.

        Example:
            >>> AutoSetup.matched_schedules(16)
            ((4, 12), (12, 15))
        """
        return (epochs // 4, 3 * epochs // 4), (3 * epochs // 4, epochs - 1)

    def callback(self, include: Sequence[str] | None) -> AutoPrune:
        """The automatic-mode callback of this setup."""
        if self.defaults:
            return AutoPrune(verbose=False, report=False)
        return AutoPrune(
            monitor=self.monitor,
            mode=self.mode,
            max_metric_drop=self.tolerance,
            include=list(include) if include is not None else None,
            verbose=False,
            report=False,
        )

    def label(self) -> str:
        """How the run was configured, for the report."""
        if self.defaults:
            return f"`AutoPrune()` with every default ({self.monitor}, tolerance {self.tolerance:g})"
        return (
            f"`AutoPrune(monitor='{self.monitor}', mode='{self.mode}', max_metric_drop={self.tolerance:g}, "
            "include=<the tier's LM tensors>)`"
        )


SETUPS: dict[str, AutoSetup] = {
    setup.workload: setup
    for setup in (
        AutoSetup("mnist1d-resnet", 16, "val_acc", "max", 0.01, defaults=True),
        # The tier's fixed runs of the language model fine-tune 4 epochs of 20 batches; these 16 epochs of 10
        # train twice as long while the dense model keeps learning, so its fixed targets are rerun at this budget.
        AutoSetup(
            "stdlib-charlm",
            16,
            "val_loss",
            "min",
            0.02,
            limit_train_batches=10,
            limit_val_batches=16,
            matched_targets=(0.5, 0.6, 0.7),
        ),
    )
}


def auto_workload(setup: AutoSetup, quick: bool = False) -> realistic.Workload:
    """The tier's workload of ``setup`` with its fine-tuning epochs and limits, validated after each epoch."""
    base = realistic.WORKLOADS[setup.workload]
    budget = replace(base.budget, finetune_epochs=8 if quick else setup.epochs, val_every=1)
    if setup.limit_train_batches is not None:
        budget = replace(budget, limit_train_batches=setup.limit_train_batches)
    if setup.limit_val_batches is not None:
        budget = replace(budget, limit_val_batches=setup.limit_val_batches)
    if quick:  # a check of the command, not of quality: short "epochs", 8 validation batches at most
        batches = 15 if base.kind == "classifier" else 3
        budget = replace(
            budget, dense_epochs=1, pretrain_batches=4 * batches, limit_train_batches=batches, limit_val_batches=8
        )
    return replace(base, budget=budget)


class ValidationTrace(Callback):
    """Records ``(epoch, value)`` of ``monitor`` after each validation of a fit (the dense fine-tune's trajectory).

    The dense fine-tune's curve is what the automatic search's reference stands for; recorded, it
    shows how far the dense model moved after the search started (issue #20: on the language model
    the dense loss kept falling, and the search's reference did not follow it).
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.values: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keep this validation's value of ``monitor`` (nothing during the sanity check)."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.values.append((trainer.current_epoch, round(float(value), 6)))


def search_record(callback: AutoPrune) -> dict[str, Any]:
    """What the automatic search did: its dense-phase validations, reference, start, decisions and stop reason."""
    state = callback.search
    return {
        "reference": state.reference,
        "reference_epochs": list(state.reference_epochs) if state.reference_epochs else None,
        "reference_rule": state.reference_rule,
        "trend_slope": state.trend_slope,
        # What the dense model would gain by the last epoch beyond the prediction if its curve kept its slope:
        # the margin covers it up to half the tolerance.
        "trend_uncertainty": state.trend_uncertainty,
        "final_reference": state.final_reference,
        "start_epoch": state.start_epoch,
        "margin": state.margin,
        "noise": state.noise,
        "stop_reason": state.stop_reason,
        "dense_values": [list(v) for v in state.dense_values],
        "decisions": [dict(d) for d in state.decisions],
    }


def best_fixed_within(tier_records: Sequence[Mapping[str, Any]], seed: int, setup: AutoSetup) -> dict:
    """Per seed, the largest fixed target any method of ``setup``'s workload reached within its tolerance on test.

    Example:
        >>> rows = [{"setup": "w", "seed": 0, "method": "dense", "sparsity_target": 0.0, "test_acc": 0.99},
        ...         {"setup": "w", "seed": 0, "method": "lamp", "sparsity_target": 0.9, "test_acc": 0.985},
        ...         {"setup": "w", "seed": 0, "method": "lamp", "sparsity_target": 0.95, "test_acc": 0.97},
        ...         {"setup": "other", "seed": 0, "method": "dense", "sparsity_target": 0.0, "test_acc": 0.5}]
        >>> best_fixed_within(rows, 0, AutoSetup("w", 16, "val_acc", "max", 0.01))
        {'sparsity': 0.9, 'methods': ['lamp'], 'targets': [0.9, 0.95]}
    """
    rows = [r for r in tier_records if r["seed"] == seed and r["setup"] == setup.workload]
    dense = [r for r in rows if r["method"] == "dense"]
    if not dense:
        return {"sparsity": None, "methods": [], "targets": []}
    reference, key = dense[0][setup.test_metric], setup.test_metric
    fixed = [r for r in rows if r["method"] != "dense"]
    ok = [r for r in fixed if within_tolerance(reference, r[key], setup.mode, setup.tolerance)]
    best = max((r["sparsity_target"] for r in ok), default=0.0)
    methods = sorted(r["method"] for r in ok if r["sparsity_target"] == best) if ok else []
    return {"sparsity": best, "methods": methods, "targets": sorted({r["sparsity_target"] for r in fixed})}


def run_seed(
    workload: realistic.Workload,
    datamodule: Any,
    seed: int,
    tier: Path,
    scratch: Path,
    log: Callable[[str], None],
    setup: AutoSetup | None = None,
) -> dict[str, Any]:
    """Dense and automatic fine-tunes of one seed, and what they say (``setup``: the workload's, by default)."""
    setup = setup or SETUPS[workload.name]
    key, unit = setup.test_metric, ("pt" if setup.mode == "max" else "nats")
    scale = 100 if setup.mode == "max" else 1
    state = realistic.dense_state(workload, datamodule, seed, tier, scratch)
    trace = ValidationTrace(setup.monitor)
    _, dense = realistic.fit_and_test(workload, datamodule, state, seed, scratch, callbacks=[trace])
    dense["val_trace"] = [list(v) for v in trace.values]
    log(f"{workload.name} seed {seed}: dense fine-tune {key} {dense[key]:.4f} ({dense['fit_seconds']:.0f}s)")
    callback = setup.callback(workload.include)
    _, auto = realistic.fit_and_test(workload, datamodule, state, seed, scratch, callbacks=[callback])
    auto |= {"search": search_record(callback)}
    record: dict[str, Any] = {"setup": workload.name, "seed": seed, "budget": asdict(workload.budget)}
    record |= {"metric": key, "mode": setup.mode, "tolerance": setup.tolerance, "configuration": setup.label()}
    record |= {"environment": protocol.environment(), "dense": dense, "auto": auto}
    record["test_drop"] = metric_drop(dense[key], auto[key], setup.mode)
    record["within_tolerance"] = within_tolerance(dense[key], auto[key], setup.mode, setup.tolerance)
    record["time_vs_dense"] = auto["fit_seconds"] / dense["fit_seconds"]
    record["cpu_vs_dense"] = auto["fit_cpu_seconds"] / dense["fit_cpu_seconds"]
    record["fixed"] = best_fixed_within(protocol.load_records(tier), seed, setup)
    log(
        f"{workload.name} seed {seed}: AutoPrune sparsity {auto['sparsity']:.4f}, test drop "
        f"{scale * record['test_drop']:+.3f} {unit}, time x{record['time_vs_dense']:.2f} of dense "
        f"(fixed runs: best within tolerance {record['fixed']['sparsity']})"
    )
    if setup.matched_targets:
        record["matched"] = matched_fixed(workload, datamodule, state, seed, scratch, setup, dense[key], log)
    return record


def matched_fixed(
    workload: realistic.Workload,
    datamodule: Any,
    state: Mapping[str, torch.Tensor],
    seed: int,
    scratch: Path,
    setup: AutoSetup,
    dense_value: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The like-for-like fixed sweep: ``setup.matched_targets`` fine-tuned for the automatic run's own budget.

    Each target runs with AutoPrune's default importance under both :meth:`AutoSetup.matched_schedules`,
    from the same dense state and seed as the automatic run, validated only after the last epoch
    (validation decides nothing in fixed-target mode), and is judged against the same dense
    fine-tune (``dense_value``, the test metric). ``sparsity`` is the largest target within the
    tolerance under either schedule (0.0 when none is).
    """
    key, epochs, runs = setup.test_metric, workload.budget.finetune_epochs, []
    for start, end in AutoSetup.matched_schedules(epochs):
        budget = replace(workload.budget, start_epoch=start, end_epoch=end, val_every=epochs)
        for target in setup.matched_targets:
            _, row = realistic.fit_and_test(
                replace(workload, budget=budget), datamodule, state, seed, scratch, method="default", sparsity=target
            )
            drop = metric_drop(dense_value, row[key], setup.mode)
            runs.append(
                {
                    "target": target,
                    "start_epoch": start,
                    "end_epoch": end,
                    key: row[key],
                    "test_drop": drop,
                    "within_tolerance": within_tolerance(dense_value, row[key], setup.mode, setup.tolerance),
                    "sparsity": row["sparsity"],
                    "fit_seconds": row["fit_seconds"],
                    "fit_cpu_seconds": row["fit_cpu_seconds"],
                }
            )
            log(
                f"{workload.name} seed {seed}: fixed {target:g} over epochs {start}-{end} at the same budget, "
                f"test drop {drop:+.4f}"
            )
    best = max((r["target"] for r in runs if r["within_tolerance"]), default=0.0)
    return {"method": "default", "sparsity": best, "runs": runs, "environment": protocol.environment()}


def seed_finished(setup: AutoSetup, record: Mapping[str, Any]) -> bool:
    """Whether a seed file holds every run of ``setup``: with a like-for-like sweep, that sweep too.

    Example:
        >>> seed_finished(SETUPS["stdlib-charlm"], {"seed": 0}), seed_finished(SETUPS["mnist1d-resnet"], {"seed": 0})
        (False, True)
    """
    return not setup.matched_targets or "matched" in record


def add_matched(
    record: dict[str, Any],
    workload: realistic.Workload,
    datamodule: Any,
    tier: Path,
    scratch: Path,
    setup: AutoSetup,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``record`` (a seed file written before the like-for-like sweep existed) with its ``matched`` runs added."""
    seed = record["seed"]
    state = realistic.dense_state(workload, datamodule, seed, tier, scratch)
    matched = matched_fixed(workload, datamodule, state, seed, scratch, setup, record["dense"][setup.test_metric], log)
    return {**record, "matched": matched}


def reference_check(record: Mapping[str, Any]) -> dict[str, Any]:
    """Each decision's reference against the dense fine-tune's measured validation at the same epoch.

    The search compares the pruned model with a reference that stands for the dense model at that
    epoch (the plateau's value, or the dense trend's prediction). The dense fine-tune of the same
    seed, data order and epochs records what the dense model actually reached (``dense.val_trace``).
    Per accept/rollback decision: ``error``, how much more lenient the reference was than the
    measured dense value, in the metric's units (positive: the reference asked less of the pruned
    model than the dense model achieved); and whether the verdict would have been the other one
    against the measured value, with the same margin and tolerance.

    Example:
        >>> record = {"mode": "min", "tolerance": 0.02, "dense": {"val_trace": [[7, 2.50], [8, 2.48]]},
        ...           "auto": {"search": {"margin": 0.0, "decisions": [
        ...               {"epoch": 7, "decision": "accept", "reference": 2.51, "value": 2.525},
        ...               {"epoch": 8, "decision": "rollback", "reference": 2.47, "value": 2.495}]}}}
        >>> check = reference_check(record)
        >>> [round(e, 3) for e in check["errors"]], check["flipped"]
        ([0.01, -0.01], [True, True])
    """
    trace = {int(epoch): value for epoch, value in record["dense"].get("val_trace") or []}
    search = record["auto"]["search"]
    mode, tolerance = record.get("mode", "max"), record["tolerance"]
    errors: list[float] = []
    flipped: list[bool] = []
    for decision in search["decisions"]:
        reference, value, epoch = decision.get("reference"), decision.get("value"), decision["epoch"]
        if decision["decision"] not in ("accept", "rollback") or reference is None or value is None:
            continue
        if epoch not in trace:
            continue
        allowed = tolerance - decision.get("margin", search["margin"])
        errors.append(metric_drop(trace[epoch], reference, mode))
        flipped.append(
            within_tolerance(reference, value, mode, allowed) != within_tolerance(trace[epoch], value, mode, allowed)
        )
    return {"errors": errors, "flipped": flipped}


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One workload's seeds: share within tolerance, sparsity against the fixed runs' best, wall-time ratios."""
    if not records:
        return {"seeds": []}
    fixed = [r["fixed"]["sparsity"] for r in records if r["fixed"]["sparsity"] is not None]
    first = records[0]
    within = sum(r["within_tolerance"] for r in records)
    checks = [reference_check(r) for r in records]
    errors = [e for c in checks for e in c["errors"]]
    return {
        "seeds": [r["seed"] for r in records],
        "metric": first.get("metric", "test_acc"),
        "mode": first.get("mode", "max"),
        "tolerance": first["tolerance"],
        "configuration": first.get("configuration", "`AutoPrune()` with every default"),
        "epochs": first["budget"]["finetune_epochs"],
        "train_batches": first["budget"]["limit_train_batches"],
        "within_tolerance_seeds": within,
        "within_tolerance_share": within / len(records),
        "test_drop_mean": statistics.fmean(r["test_drop"] for r in records),
        "test_drop_max": max(r["test_drop"] for r in records),
        "test_drops": [r["test_drop"] for r in records],
        "sparsity_median": statistics.median(r["auto"]["sparsity"] for r in records),
        "sparsity_min": min(r["auto"]["sparsity"] for r in records),
        "fixed_best_within_median": statistics.median(fixed) if fixed else None,
        **matched_summary(records),
        "time_vs_dense_median": statistics.median(r["time_vs_dense"] for r in records),
        "time_vs_dense_max": max(r["time_vs_dense"] for r in records),
        "cpu_vs_dense_median": statistics.median(r["cpu_vs_dense"] for r in records),
        "callback_share_median": statistics.median(
            r["auto"]["callback_seconds"] / r["auto"]["fit_seconds"] for r in records
        ),
        "reference_error_abs_median": statistics.median(abs(e) for e in errors) if errors else None,
        "reference_error_min": min(errors, default=None),
        "reference_error_max": max(errors, default=None),
        "decisions_checked": len(errors),
        "decisions_flipped": sum(f for c in checks for f in c["flipped"]),
    }


def matched_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The like-for-like fixed sweep over seeds: the median best target, and per run, how many seeds held.

    Empty while no record has the sweep (``matched``).

    Example:
        >>> runs = lambda ok: [{"target": 0.7, "start_epoch": 12, "end_epoch": 15, "within_tolerance": ok}]
        >>> records = [{"matched": {"sparsity": 0.7, "runs": runs(True)}},
        ...            {"matched": {"sparsity": 0.0, "runs": runs(False)}}]
        >>> matched_summary(records)
        {'matched_best_within': [0.7, 0.0], 'matched_best_within_median': 0.35, 'matched_within': [[0.7, 12, 15, 1, 2]]}
    """
    matched = [r["matched"] for r in records if "matched" in r]
    if not matched:
        return {}
    counts: dict[tuple[float, int, int], list[int]] = {}
    for sweep in matched:
        for run in sweep["runs"]:
            held = counts.setdefault((run["target"], run["start_epoch"], run["end_epoch"]), [0, 0])
            held[0] += bool(run["within_tolerance"])
            held[1] += 1
    best = [m["sparsity"] for m in matched]
    return {
        "matched_best_within": best,
        "matched_best_within_median": statistics.median(best),
        "matched_within": [[*key, *held] for key, held in sorted(counts.items())],
    }


def load_summary(out: Path = RESULTS) -> dict[str, dict[str, Any]] | None:
    """Per workload, the summary of every recorded seed under ``out``; ``None`` while there is none."""
    summaries = {}
    for name in SETUPS:
        records = [json.loads(p.read_text()) for p in sorted(out.glob(f"{name}/seed*.json"))]
        if records:
            summaries[name] = summarise(records)
    return summaries or None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="skip seeds whose files exist")
    parser.add_argument("--quick", action="store_true", help="one seed, short fits, into results-quick/")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    protocol.quiet_benchmark()
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    tier = out.parent
    seeds = [args.seeds[0]] if args.quick else args.seeds
    scratch = out / f".scratch-{os.getpid()}"  # its own: parallel jobs (benchmarks.parallel) share `out`
    start, done, total = time.perf_counter(), 0, len(seeds) * len(args.workloads)
    for name in args.workloads:
        setup = SETUPS[name]
        workload = auto_workload(setup, quick=args.quick)
        datamodule = workload.datamodule()
        datamodule.setup("fit")
        for seed in seeds:
            path = out / workload.name / f"seed{seed}.json"
            done += 1
            if args.resume and path.exists():
                record = json.loads(path.read_text())
                if seed_finished(setup, record):
                    continue
                record = add_matched(record, workload, datamodule, tier, scratch, setup, realistic.say)
            else:
                record = run_seed(workload, datamodule, seed, tier, scratch, realistic.say, setup)
            protocol.write_json(path, record)
            realistic.say(f"{done}/{total} (workload, seed) runs done in {(time.perf_counter() - start) / 60:.0f} min")
    shutil.rmtree(scratch, ignore_errors=True)
    summary = write_summary(out)
    if summary is not None:
        realistic.say(f"summary: {summary}")
    return 0


def write_summary(out: Path) -> dict[str, dict[str, Any]] | None:
    """Write ``out/summary.json`` from every seed file under ``out`` (fits nothing); ``None`` while there is none."""
    summary = load_summary(out)
    if summary is not None:
        protocol.write_json(out / "summary.json", summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
