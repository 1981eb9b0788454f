"""Automatic target vs a sweep of fixed sparsities: does one ``AutoPrune()`` run find the answer?

For each dataset and seed, in one process and on the same data and epochs:

- a dense run (the reference for drops, and the wall-time unit);
- ``AutoPrune()`` with all defaults: one run;
- Lightning's ``ModelPruning`` swept over fixed sparsities: ``l1_unstructured``, global,
  ``use_lottery_ticket_hypothesis=False``, pruning at each epoch end from epoch ``start`` to
  ``end`` with per-event amounts computed so the *cumulative* sparsity follows the same cubic
  schedule as AutoPrune's fixed mode (ModelPruning's amounts apply to the weights still left);
- ``AutoPrune(target_sparsity=s)`` (default importance, cubic) swept over the same sparsities.

Reports the sparsity reached, validation and test drops versus dense, how often the automatic
run's test drop exceeds the tolerance, and wall time versus one dense run and versus the sweep.

    python -m benchmarks.auto_target [--seeds 10] [--datasets digits mnist1d]

Ten seeds, not five: the goal is a violation rate of at most 1 in 5, and with five seeds one
violation more or less (a test drop 0.1 point either side of the tolerance) decides it. Seeds
0-4 and 5-9 can run as two invocations (``--first_seed 5``) and be joined with ``--merge``.

Writes ``benchmarks/results/auto_target.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelPruning

from benchmarks import protocol
from lightning_autoprune import AutoPrune, __version__
from lightning_autoprune.control.schedule import default_window, scheduled_sparsity
from lightning_autoprune.core.files import atomic_write_text
from lightning_autoprune.core.masks import count_zeros
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier, MNIST1DDataModule, quiet_trainer

RESULTS = Path(__file__).parent / "results" / "auto_target.json"
SWEEP = (0.5, 0.8, 0.9, 0.95, 0.98)
TOLERANCE = 0.01
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 30, "in_features": 64},
    "mnist1d": {"epochs": 60, "in_features": 40},
}


def model_pruning(target: float, epochs: int) -> ModelPruning:
    """Lightning's ModelPruning following AutoPrune's cubic schedule to ``target`` (stated settings)."""
    start, end = default_window(epochs)

    def cumulative(epoch: int) -> float:
        # ModelPruning prunes at the END of `epoch`; AutoPrune at the start of the next one.
        return scheduled_sparsity(epoch + 1, target, start=start, end=end)

    def amount(epoch: int) -> float:
        before, after = cumulative(epoch - 1), cumulative(epoch)
        return 0.0 if after <= before else 1.0 - (1.0 - after) / (1.0 - before)

    return ModelPruning(
        pruning_fn="l1_unstructured",
        amount=amount,
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=False,
        parameter_names=["weight"],
        verbose=0,
    )


def _datamodule(dataset: str) -> DigitsDataModule | MNIST1DDataModule:
    return DigitsDataModule(batch_size=64) if dataset == "digits" else MNIST1DDataModule(batch_size=128)


def split_sizes(dataset: str) -> tuple[int, int]:
    """Validation and test samples of ``dataset``: its data module's fixed split, which no seed changes."""
    if dataset not in DATASETS:
        raise ValueError(f"`dataset` must be one of {', '.join(DATASETS)}, got {dataset!r}.")
    datamodule = _datamodule(dataset)
    datamodule.setup("fit")
    if datamodule.val_dataset is None or datamodule.test_dataset is None:
        raise RuntimeError(f"{type(datamodule).__name__}.setup() built no validation or test split.")
    return len(datamodule.val_dataset), len(datamodule.test_dataset)


def fit(dataset: str, seed: int, callback: Callback | None) -> dict[str, float]:
    config = DATASETS[dataset]
    seed_everything(seed, verbose=False)
    datamodule = _datamodule(dataset)
    model = MLPClassifier(in_features=config["in_features"], hidden=[256, 256], lr=1e-3)
    trainer = quiet_trainer(max_epochs=config["epochs"], callbacks=[callback] if callback else [])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val_acc"]
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"]
    zeros, total = count_zeros(p.detach() for n, p in model.named_parameters() if n.endswith("weight"))
    return {"val_acc": float(val), "test_acc": float(test), "sparsity": zeros / total, "seconds": seconds}


#: Accuracies are float32 values (torchmetrics), so a drop of exactly the tolerance, 10 of 1000 test
#: samples, reads as 0.0100000501: the comparison allows this much, far below one sample.
FLOAT32_SLACK = 1e-6


def within_tolerance(drop: float, tolerance: float = TOLERANCE) -> bool:
    """Whether an accuracy ``drop`` (dense minus pruned) stays within ``tolerance``; exactly on it counts.

    Example:
        >>> within_tolerance(0.6140000224113464 - 0.6039999723434448), within_tolerance(0.011)
        (True, False)
    """
    return drop <= tolerance + FLOAT32_SLACK


def derived(row: dict[str, Any]) -> dict[str, Any]:
    """A seed's drops, best swept targets and time ratios, from its fits (``dense``, ``auto``, the sweeps)."""
    dense, auto, peer, fixed = row["dense"], row["auto"], row["model_pruning"], row["autoprune_fixed"]
    return {
        "auto_val_drop": dense["val_acc"] - auto["val_acc"],
        "auto_test_drop": dense["test_acc"] - auto["test_acc"],
        "sweep_best_within_val": best_within(peer, dense, "val_acc"),
        "sweep_best_within_test": best_within(peer, dense, "test_acc"),
        "fixed_best_within_test": best_within(fixed, dense, "test_acc") if fixed else None,
        "time_vs_dense": auto["seconds"] / dense["seconds"],
        "time_vs_sweep": auto["seconds"] / sum(r["seconds"] for r in peer.values()),
    }


def best_within(rows: dict[str, dict[str, float]], dense: dict[str, float], key: str) -> float:
    """Largest swept sparsity whose ``key`` accuracy stays within the tolerance of dense (0 if none)."""
    ok = [float(s) for s, row in rows.items() if within_tolerance(dense[key] - row[key])]
    return max(ok, default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first_seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no_fixed",
        action="store_true",
        help="skip the AutoPrune fixed-target sweep (the ModelPruning sweep still runs)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine the results of these files (one dataset each) into --out and exit",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    fit("digits", 0, None)  # warm-up
    results: dict[str, Any] = {}
    for dataset in args.datasets:
        per_seed = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            dense = fit(dataset, seed, None)
            auto_cb = AutoPrune(verbose=False, report=False)
            auto = fit(dataset, seed, auto_cb)
            auto["decisions"] = [dict(d) for d in auto_cb.search.decisions]  # type: ignore[assignment]
            auto["reference"] = auto_cb.search.reference  # type: ignore[assignment]
            peer = {str(s): fit(dataset, seed, model_pruning(s, DATASETS[dataset]["epochs"])) for s in SWEEP}
            fixed = (
                {}
                if args.no_fixed
                else {
                    str(s): fit(dataset, seed, AutoPrune(target_sparsity=s, verbose=False, report=False)) for s in SWEEP
                }
            )
            row: dict[str, Any] = {
                "seed": seed,
                "dense": dense,
                "auto": auto,
                "model_pruning": peer,
                "autoprune_fixed": fixed,
            }
            row.update(derived(row))
            per_seed.append(row)
            print(
                f"[AutoPrune] {dataset} seed {seed}: dense test {dense['test_acc']:.4f}; "
                f"auto sparsity {auto['sparsity']:.4f} "
                f"test drop {100 * row['auto_test_drop']:+.2f} pt; ModelPruning best within 1pt (test) "
                f"{row['sweep_best_within_test']}; time x{row['time_vs_dense']:.2f} of dense",
                flush=True,
            )
        results[dataset] = {
            "epochs": DATASETS[dataset]["epochs"],
            "fixed_sweep": not args.no_fixed,
            "seeds": per_seed,
            "summary": summarize(per_seed),
        }

    payload = {
        "protocol": {
            "model": "MLP in-256-256-10, Adam lr 1e-3",
            "tolerance": TOLERANCE,
            "sweep": list(SWEEP),
            "model_pruning_settings": "l1_unstructured, use_global_unstructured=True, "
            "use_lottery_ticket_hypothesis=False, parameter_names=['weight'], cumulative cubic schedule",
            "autoprune_fixed_settings": (
                f"AutoPrune(target_sparsity=s), otherwise defaults: importance={AutoPrune().importance!r}, "
                "schedule='cubic', default window"
            ),
            "automatic_settings": "AutoPrune() defaults",
        },
        "versions": {
            "lightning_autoprune": __version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "environment": protocol.environment(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    for dataset, entry in results.items():
        print(dataset, json.dumps(entry["summary"], indent=1))


def merge(paths: list[Path], out: Path) -> None:
    """Write one results file holding the datasets of ``paths`` (runs of this script with ``--datasets``)."""
    payloads = [json.loads(path.read_text()) for path in paths]
    merged = dict(payloads[0])
    merged["results"] = {}
    # Which invocation measured which seeds, so the report can say the results were joined.
    merged["merged_from"] = [
        {
            "seeds": {name: [row["seed"] for row in entry["seeds"]] for name, entry in payload["results"].items()},
            "versions": payload["versions"],
            "environment": payload.get("environment"),
        }
        for payload in payloads
    ]
    for payload in payloads:  # files of one dataset and different seeds are joined seed by seed
        for name, entry in payload["results"].items():
            earlier = merged["results"][name]["seeds"] if name in merged["results"] else []
            seeds = sorted([*earlier, *entry["seeds"]], key=lambda row: row["seed"])
            merged["results"][name] = {**entry, "seeds": seeds}
    for entry in merged["results"].values():  # derived again, so every file is judged by this script's rules
        for row in entry["seeds"]:
            row.update(derived(row))
        entry["summary"] = summarize(entry["seeds"])
    atomic_write_text(out, json.dumps(merged, indent=2) + "\n")


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    sparsity = [r["auto"]["sparsity"] for r in rows]
    return {
        "auto_sparsity_mean": statistics.mean(sparsity),
        "auto_sparsity_min": min(sparsity),
        "auto_test_drop_mean": statistics.mean(r["auto_test_drop"] for r in rows),
        "auto_val_drop_mean": statistics.mean(r["auto_val_drop"] for r in rows),
        "test_violations": sum(not within_tolerance(r["auto_test_drop"]) for r in rows),
        "seeds": len(rows),
        "sweep_best_within_test_median": statistics.median(r["sweep_best_within_test"] for r in rows),
        "sweep_best_within_val_median": statistics.median(r["sweep_best_within_val"] for r in rows),
        "fixed_best_within_test_median": (
            statistics.median(r["fixed_best_within_test"] for r in rows)
            if all(r["fixed_best_within_test"] is not None for r in rows)
            else None
        ),
        "time_vs_dense_median": statistics.median(r["time_vs_dense"] for r in rows),
        "time_vs_sweep_median": statistics.median(r["time_vs_sweep"] for r in rows),
    }


if __name__ == "__main__":
    main()
