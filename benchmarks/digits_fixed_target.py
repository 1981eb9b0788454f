"""Fixed-target pruning of the digits MLP: dense vs AutoPrune (LAMP, magnitude) at 90% sparsity.

Each seed trains a dense run and one pruned run per scorer with identical seed, data, optimizer
and epochs; the runs are interleaved so that machine noise hits them alike. Overhead is the
paired ratio of wall times (pruned / dense - 1), reported as a median over seeds, next to the
time the callback itself measured (pruning events + mask enforcement).

    python benchmarks/digits_fixed_target.py [--seeds 5] [--epochs 30] [--target 0.9]

Writes ``benchmarks/results/digits_fixed_target.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_autoprune import AutoPrune, __version__
from lightning_autoprune.core.masks import count_zeros
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier

RESULTS = Path(__file__).parent / "results" / "digits_fixed_target.json"


def fit_once(seed: int, epochs: int, callback: AutoPrune | None) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(batch_size=64)
    model = MLPClassifier(in_features=64, hidden=[256, 256], lr=1e-3)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback] if callback else [],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    zeros, total = count_zeros(p for n, p in model.named_parameters() if n.endswith("weight"))
    row = {"test_acc": float(test["test_acc"]), "sparsity": zeros / total, "fit_seconds": seconds}
    if callback is not None:
        row["callback_seconds"] = callback.seconds_pruning + callback.seconds_enforcing
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    fit_once(0, 1, None)  # warm-up: first-call costs go to no measured run
    runs: dict[str, list[dict[str, float]]] = {"dense": [], "lamp": [], "magnitude": []}
    for seed in range(args.seeds):
        runs["dense"].append(fit_once(seed, args.epochs, None))
        for scorer in ("lamp", "magnitude"):
            callback = AutoPrune(target_sparsity=args.target, importance=scorer, verbose=False, report=False)
            runs[scorer].append(fit_once(seed, args.epochs, callback))

    summary = {}
    for method, rows in runs.items():
        accs = [r["test_acc"] for r in rows]
        entry = {
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "sparsity_mean": statistics.mean(r["sparsity"] for r in rows),
            "fit_seconds_median": statistics.median(r["fit_seconds"] for r in rows),
        }
        if method != "dense":
            ratios = [r["fit_seconds"] / d["fit_seconds"] - 1 for r, d in zip(rows, runs["dense"], strict=True)]
            entry["overhead_vs_dense_median"] = statistics.median(ratios)
            entry["callback_share_median"] = statistics.median(r["callback_seconds"] / r["fit_seconds"] for r in rows)
        summary[method] = entry

    result = {
        "protocol": {
            "model": "MLP 64-256-256-10, Adam lr 1e-3, batch 64",
            "data": "sklearn digits, fixed stratified 60/20/20 split",
            "epochs": args.epochs,
            "target_sparsity": args.target,
            "schedule": "cubic, default window",
            "seeds": list(range(args.seeds)),
        },
        "versions": {
            "lightning_autoprune": __version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    for method, entry in summary.items():
        line = f"{method:<10} test acc {100 * entry['test_acc_mean']:.2f} ± {100 * entry['test_acc_std']:.2f}"
        line += f"  sparsity {entry['sparsity_mean']:.4f}  fit {entry['fit_seconds_median']:.2f}s"
        if "overhead_vs_dense_median" in entry:
            line += f"  overhead {100 * entry['overhead_vs_dense_median']:+.1f}%"
            line += f" (callback's own {100 * entry['callback_share_median']:.1f}%)"
        print(line)


if __name__ == "__main__":
    main()
