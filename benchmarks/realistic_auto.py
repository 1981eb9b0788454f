"""Automatic mode on the realistic tier (issue #20): does one ``AutoPrune()`` fine-tune find the answer?

Per seed of the MNIST-1D ResNet, from the tier's dense state (``benchmarks/realistic.py`` trains and
saves it next to its record; the ``.pt`` is not in git, and this script trains it when it is missing):

* **dense**: fine-tune :data:`AUTO_EPOCHS` quarter-epochs with no callback: the reference for the
  test drop and the unit of wall time;
* **auto**: ``AutoPrune()`` with every default (learned importance, ``max_metric_drop=0.01`` on
  ``val_acc``), the same epochs, the same seed.

:data:`AUTO_EPOCHS` is 16 quarter-epochs (four passes over the 40,000 training signals). The dense
phase of the automatic mode needs ``2 * PLATEAU_PATIENCE`` = 6 validations before its plateau rule
can end it, and its default window ends at about 80% of the epochs (epoch 12 here), which leaves
about 7 search epochs: three or four accepted steps of one or two epochs each, about what 90% takes.
Validation has 5,000 signals (standard error 0.14 point at 99%), so the tolerance of one point is
resolved, unlike on the small protocol.

Against the fixed sparsities: the tier's fixed-target runs (``benchmarks/results/realistic``, every
method at 90/95/98%, 4 quarter-epochs of fine-tuning, against that tier's dense fine-tune of the
same 4 quarter-epochs) give, per seed, the largest sparsity any method reached within the tolerance
on test. The automatic run trains 16 quarter-epochs, four times theirs: the comparison of sparsity
says whether the search finds what the fixed sweep finds, not which is cheaper.

Results: one JSON per (workload, seed) under ``<out>/<workload>/seed<seed>.json`` and ``<out>/summary.json``.

Usage::

    python -m benchmarks.realistic_auto --seeds 0 1 2 --resume
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import protocol, realistic
from lightning_autoprune import AutoPrune

RESULTS = realistic.RESULTS / "automatic"
QUICK_RESULTS = realistic.QUICK_RESULTS / "automatic"
#: Fine-tuning epochs of both runs, in the tier's quarter-epochs.
AUTO_EPOCHS = 16
#: AutoPrune's default ``max_metric_drop``: the tolerance the results are judged against.
TOLERANCE = 0.01
WORKLOAD = "mnist1d-resnet"


def auto_workload(epochs: int = AUTO_EPOCHS, quick: bool = False) -> realistic.Workload:
    """The tier's ResNet workload with ``epochs`` fine-tuning quarter-epochs, validated after each."""
    base = realistic.WORKLOADS[WORKLOAD]
    budget = replace(base.budget, finetune_epochs=epochs, val_every=1)
    if quick:  # a check of the command, not of quality: 15-batch "epochs", 8 validation batches
        budget = replace(budget, dense_epochs=1, pretrain_batches=40, limit_train_batches=15, limit_val_batches=8)
    return replace(base, budget=budget)


def search_record(callback: AutoPrune) -> dict[str, Any]:
    """What the automatic search did: its dense-phase validations, reference, start, decisions and stop reason."""
    state = callback.search
    return {
        "reference": state.reference,
        "reference_epochs": list(state.reference_epochs) if state.reference_epochs else None,
        "start_epoch": state.start_epoch,
        "margin": state.margin,
        "noise": state.noise,
        "stop_reason": state.stop_reason,
        "dense_values": [list(v) for v in state.dense_values],
        "decisions": [dict(d) for d in state.decisions],
    }


def best_fixed_within(tier_records: Sequence[Mapping[str, Any]], seed: int, tolerance: float = TOLERANCE) -> dict:
    """Per seed, the largest fixed target any method reached within ``tolerance`` of that seed's dense test accuracy.

    Example:
        >>> rows = [{"setup": "w", "seed": 0, "method": "dense", "sparsity_target": 0.0, "test_acc": 0.99},
        ...         {"setup": "w", "seed": 0, "method": "lamp", "sparsity_target": 0.9, "test_acc": 0.985},
        ...         {"setup": "w", "seed": 0, "method": "lamp", "sparsity_target": 0.95, "test_acc": 0.97}]
        >>> best_fixed_within(rows, 0)
        {'sparsity': 0.9, 'methods': ['lamp'], 'targets': [0.9, 0.95]}
    """
    rows = [r for r in tier_records if r["seed"] == seed]
    dense = [r for r in rows if r["method"] == "dense"]
    if not dense:
        return {"sparsity": None, "methods": [], "targets": []}
    reference = dense[0]["test_acc"]
    fixed = [r for r in rows if r["method"] != "dense"]
    ok = [r for r in fixed if reference - r["test_acc"] <= tolerance + 1e-9]
    best = max((r["sparsity_target"] for r in ok), default=0.0)
    methods = sorted(r["method"] for r in ok if r["sparsity_target"] == best) if ok else []
    return {"sparsity": best, "methods": methods, "targets": sorted({r["sparsity_target"] for r in fixed})}


def run_seed(
    workload: realistic.Workload, datamodule: Any, seed: int, tier: Path, scratch: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """Dense and automatic fine-tunes of one seed, and what they say."""
    state = realistic.dense_state(workload, datamodule, seed, tier, scratch)
    _, dense = realistic.fit_and_test(workload, datamodule, state, seed, scratch)
    log(f"{workload.name} seed {seed}: dense fine-tune acc {dense['test_acc']:.4f} ({dense['fit_seconds']:.0f}s)")
    callback = AutoPrune(verbose=False, report=False)
    _, auto = realistic.fit_and_test(workload, datamodule, state, seed, scratch, callbacks=[callback])
    auto |= {"search": search_record(callback)}
    record: dict[str, Any] = {"setup": workload.name, "seed": seed, "budget": asdict(workload.budget)}
    record |= {"tolerance": TOLERANCE, "environment": protocol.environment(), "dense": dense, "auto": auto}
    record["test_drop"] = dense["test_acc"] - auto["test_acc"]
    record["within_tolerance"] = record["test_drop"] <= TOLERANCE + 1e-9
    record["time_vs_dense"] = auto["fit_seconds"] / dense["fit_seconds"]
    record["cpu_vs_dense"] = auto["fit_cpu_seconds"] / dense["fit_cpu_seconds"]
    record["fixed"] = best_fixed_within(protocol.load_records(tier), seed)
    log(
        f"{workload.name} seed {seed}: AutoPrune() sparsity {auto['sparsity']:.4f}, test drop "
        f"{100 * record['test_drop']:+.2f} pt, time x{record['time_vs_dense']:.2f} of dense "
        f"(fixed runs: best within tolerance {record['fixed']['sparsity']})"
    )
    return record


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Share within tolerance, sparsity against the fixed runs' best, and wall-time ratios, over seeds."""
    if not records:
        return {"seeds": []}
    fixed = [r["fixed"]["sparsity"] for r in records if r["fixed"]["sparsity"] is not None]
    return {
        "seeds": [r["seed"] for r in records],
        "within_tolerance_share": sum(r["within_tolerance"] for r in records) / len(records),
        "test_drop_mean": statistics.fmean(r["test_drop"] for r in records),
        "test_drop_max": max(r["test_drop"] for r in records),
        "sparsity_median": statistics.median(r["auto"]["sparsity"] for r in records),
        "sparsity_min": min(r["auto"]["sparsity"] for r in records),
        "fixed_best_within_median": statistics.median(fixed) if fixed else None,
        "time_vs_dense_median": statistics.median(r["time_vs_dense"] for r in records),
        "time_vs_dense_max": max(r["time_vs_dense"] for r in records),
        "cpu_vs_dense_median": statistics.median(r["cpu_vs_dense"] for r in records),
        "callback_share_median": statistics.median(
            r["auto"]["callback_seconds"] / r["auto"]["fit_seconds"] for r in records
        ),
    }


def load_summary(out: Path = RESULTS) -> dict[str, Any] | None:
    """The summary of every recorded seed under ``out``, or ``None`` while there is none."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob(f"{WORKLOAD}/seed*.json"))]
    return summarise(records) if records else None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(realistic.SEEDS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="skip seeds whose files exist")
    parser.add_argument("--quick", action="store_true", help="one seed, short fits, into results-quick/")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    protocol.quiet_benchmark()
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    tier = out.parent
    workload = auto_workload(epochs=8 if args.quick else AUTO_EPOCHS, quick=args.quick)
    seeds = [args.seeds[0]] if args.quick else args.seeds
    datamodule = workload.datamodule()
    datamodule.setup("fit")
    scratch = out / ".scratch"
    start = time.perf_counter()
    for index, seed in enumerate(seeds):
        path = out / workload.name / f"seed{seed}.json"
        if args.resume and path.exists():
            continue
        record = run_seed(workload, datamodule, seed, tier, scratch, realistic.say)
        protocol.write_json(path, record)
        done = time.perf_counter() - start
        realistic.say(f"{index + 1}/{len(seeds)} seeds done in {done / 60:.0f} min")
    summary = load_summary(out)
    if summary is not None:
        protocol.write_json(out / "summary.json", summary)
        realistic.say(f"summary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
