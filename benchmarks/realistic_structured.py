"""The realistic tier's structured track: the MNIST-1D ResNet at 2x and 4x fewer FLOPs, compacted.

Per seed it starts from the tier's dense ResNet (the state ``benchmarks/realistic.py`` saved, or a
dense training of its own with the same budget and seed, which gives the same state) and runs, with
the same training budget as the unstructured ResNet runs, through
:func:`benchmarks.structured.run_method`:

* the reference, ``AutoPrune(granularity="structured", target_unit="flops")`` with its structured default
  importance, then ``compact()``;
* Torch-Pruning 1.6 (``MagnitudeImportance(p=2)`` and ``TaylorImportance()``), globally, steered to the
  reference's final FLOPs on the same cubic schedule (:class:`benchmarks.structured.TorchPruningSchedule`);
* ``scratch``: the reference's compacted architecture re-initialised and trained from scratch for as many
  samples as the dense training plus the fine-tuning.

Latency: the dense and the compacted reference at batch 256, with 1 and 2 torch threads, dense and
compacted calls alternating (:func:`benchmarks.structured.time_models`). Records go under
``<out>/structured/mnist1d-resnet/``; compacted models are pickled next to them (``.pt``, ignored by git)
so that ``--resume`` can time them and train ``scratch`` without pruning again.

Usage::

    python -m benchmarks.realistic_structured --resume
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import seed_everything
from torch import nn

from benchmarks import protocol, realistic, structured
from lightning_autoprune.core.files import atomic_torch_save

TRACK = "structured"
WORKLOAD = "mnist1d-resnet"
LEVELS: dict[float, str] = {0.5: "2x", 0.75: "4x"}
REFERENCE = structured.REFERENCE
METHODS: tuple[str, ...] = (REFERENCE, "tp_magnitude", "tp_taylor", "scratch")
#: (warm-up calls, timed calls) per model at batch 256.
LATENCY_RUNS = (10, 60)
LATENCY_THREADS: tuple[int, ...] = (1, 2)
LATENCY_BATCH = 256


def run_path(out: Path, method: str, level: float, seed: int) -> Path:
    """Where one run's JSON goes.

    Example:
        >>> run_path(Path("r"), "tp_taylor", 0.75, 2).as_posix()
        'r/structured/mnist1d-resnet/tp_taylor/s0.75_seed2.json'
    """
    return out / TRACK / WORKLOAD / method / f"s{level:.2f}_seed{seed}.json"


def _model_path(out: Path, level: float, seed: int) -> Path:
    return run_path(out, REFERENCE, level, seed).with_suffix(".pt")


def _reinitialised(model: nn.Module) -> nn.Module:
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


def _scratch_epochs(budget: realistic.TierBudget) -> int:
    """Epochs that see as many samples as dense training plus fine-tuning (fine-tuning epochs may be partial)."""
    fraction = budget.limit_train_batches if isinstance(budget.limit_train_batches, float) else 1.0
    return round(budget.dense_epochs / fraction) + budget.finetune_epochs


def run_structured(
    out: Path,
    workload: realistic.Workload,
    seeds: Sequence[int] = realistic.SEEDS,
    levels: Sequence[float] = tuple(LEVELS),
    methods: Sequence[str] = METHODS,
    *,
    resume: bool = False,
    dense_states: Path | None = None,
    latency_runs: tuple[int, int] = LATENCY_RUNS,
    threads: Sequence[int] = LATENCY_THREADS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the track; ``dense_states`` is the unstructured tier's results root whose dense states are reused."""
    env = protocol.environment()
    scratch_root = out / ".scratch-structured"
    datamodule = workload.datamodule()
    datamodule.setup("fit")
    budget = workload.budget
    left = len(seeds) * len(levels) * len(methods)
    times: list[float] = []
    for seed in seeds:
        state = realistic.dense_state(workload, datamodule, seed, dense_states or out, scratch_root)
        dense = workload.build_model()
        dense.load_state_dict(state)
        dense.eval()
        for level in levels:
            base = {"tier": realistic.TIER, "track": TRACK, "setup": workload.name, "seed": seed, "level": level}
            base |= {"level_label": LEVELS.get(level, f"s={level:.2f}"), "budget": asdict(budget), "environment": env}
            reference: dict[str, Any] | None = None
            reference_model: nn.Module | None = None
            for method in methods:
                path = run_path(out, method, level, seed)
                left -= 1
                if resume and path.exists():
                    if method == REFERENCE:
                        reference = json.loads(path.read_text())
                        reference_model = torch.load(_model_path(out, level, seed), weights_only=False)
                    continue
                start = time.perf_counter()
                if method == "scratch":
                    if reference_model is None:
                        raise ValueError(f"scratch needs the {REFERENCE} run of seed {seed} at level {level}.")
                    seed_everything(seed, verbose=False)
                    final = _reinitialised(reference_model)
                    epochs = _scratch_epochs(budget)
                    row = structured._fit(final, datamodule, epochs, budget, scratch_root)  # type: ignore[arg-type]
                    row["test_acc"] = structured.evaluate(final, datamodule.test_dataloader())
                    row |= structured.size_fields(final)
                else:
                    row, final = structured.run_method(
                        method, level, seed, state, datamodule, budget, scratch_root, reference, workload.build_model
                    )
                row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                row["test_samples"] = len(datamodule.test_dataset)  # type: ignore[attr-defined]
                events: Any = row.get("autoprune_events") or row.get("tp_events") or []
                row["events"] = len(events)
                record = base | {"method": method} | row
                protocol.write_json(path, record)
                if method == REFERENCE:
                    reference, reference_model = record, final
                    _model_path(out, level, seed).parent.mkdir(parents=True, exist_ok=True)
                    atomic_torch_save(final, _model_path(out, level, seed))
                times.append(time.perf_counter() - start)
                log(
                    f"{workload.name} seed {seed} {method:>20} {base['level_label']}: acc {row['test_acc']:.4f} "
                    f"flops {row['flops']:,} ({times[-1]:.0f}s) | {left} runs left, about "
                    f"{left * statistics.fmean(times) / 60:.0f} min"
                )
            if reference_model is not None:
                inputs = datamodule.test_dataset.tensors[0][:LATENCY_BATCH]  # type: ignore[attr-defined]
                for count in threads:
                    path = out / TRACK / WORKLOAD / "latency" / f"t{count}_s{level:.2f}_seed{seed}.json"
                    if resume and path.exists():
                        continue
                    previous = torch.get_num_threads()
                    torch.set_num_threads(count)
                    try:
                        timed = structured.time_models(
                            {"dense": dense, "compacted": reference_model.eval()}, inputs, *latency_runs
                        )
                    finally:
                        torch.set_num_threads(previous)
                    speedup = timed["dense"]["median_ms"] / timed["compacted"]["median_ms"]
                    protocol.write_json(
                        path,
                        base
                        | {
                            "method": "latency",
                            "threads": count,
                            "batch": LATENCY_BATCH,
                            "timings": timed,
                            "speedup": speedup,
                        },
                    )
                    label = base["level_label"]
                    log(f"{workload.name} seed {seed} {label} latency at {count} thread(s): {speedup:.2f}x")
    summary = summarise(out)
    protocol.write_json(out / TRACK / WORKLOAD / "summary.json", summary)
    return summary


def summarise(out: Path) -> dict[str, Any]:
    """The track's summary from its run files under ``out``; empty ``levels`` while there are none.

    Per level: accuracy, FLOPs and parameters per method (mean ± std over seeds), paired tests of the
    reference against each other method, and the median latency speedup per thread count.
    """
    root = out / TRACK / WORKLOAD
    records = [json.loads(p.read_text()) for p in sorted(root.glob("*/*.json"))]
    runs = [r for r in records if r.get("method") not in (None, "latency")]
    latency = [r for r in records if r.get("method") == "latency"]
    summary: dict[str, Any] = {"levels": {}}
    for level in sorted({r["level"] for r in runs}):
        at_level = [r for r in runs if r["level"] == level]
        by_method: dict[str, dict[int, Mapping[str, Any]]] = {}
        for r in at_level:
            by_method.setdefault(r["method"], {})[r["seed"]] = r
        entry: dict[str, Any] = {"label": at_level[0]["level_label"], "methods": {}, "comparisons": {}, "latency": {}}
        for method, by_seed in by_method.items():
            rows = [by_seed[s] for s in sorted(by_seed)]
            accs = [r["test_acc"] for r in rows]
            entry["methods"][method] = {
                "seeds": sorted(by_seed),
                "test_acc_mean": statistics.fmean(accs),
                "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "flops_mean": statistics.fmean(r["flops"] for r in rows),
                "params_mean": statistics.fmean(r["params"] for r in rows),
                "fit_seconds_median": statistics.median(r["fit_seconds"] for r in rows),
                "callback_seconds_median": statistics.median(r.get("callback_seconds") or 0.0 for r in rows),
            }
        reference = by_method.get(REFERENCE, {})
        for method, by_seed in by_method.items():
            shared = sorted(set(by_seed) & set(reference))
            if method == REFERENCE or not shared:
                continue
            test = protocol.paired_test(
                [reference[s]["test_acc"] for s in shared], [by_seed[s]["test_acc"] for s in shared]
            )
            test["real"] = test["t_p"] is not None and test["t_p"] < 0.05
            entry["comparisons"][method] = test
        for count in sorted({r["threads"] for r in latency if r["level"] == level}):
            speedups = [r["speedup"] for r in latency if r["level"] == level and r["threads"] == count]
            entry["latency"][str(count)] = {"speedup_median": statistics.median(speedups), "runs": len(speedups)}
        summary["levels"][f"{level:.2f}"] = entry
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=realistic.RESULTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(realistic.SEEDS))
    parser.add_argument("--levels", nargs="+", type=float, default=list(LEVELS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="the quick tier's short ResNet budget")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for training (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    protocol.quiet_benchmark()
    workload = realistic.quick_workloads()[0] if args.quick else realistic.WORKLOADS[WORKLOAD]
    summary = run_structured(
        args.out,
        workload,
        args.seeds,
        args.levels,
        args.methods,
        resume=args.resume,
        dense_states=args.out,
        log=realistic.say,
    )
    for entry in summary["levels"].values():
        for method, cell in entry["methods"].items():
            realistic.say(
                f"{entry['label']} {method:>20}: acc {cell['test_acc_mean']:.4f} flops {cell['flops_mean']:,.0f}"
            )
        for count, cell in entry["latency"].items():
            realistic.say(f"{entry['label']} latency speedup at {count} thread(s): {cell['speedup_median']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
