"""The demo behind ``make demo``: a digits MLP trained dense, pruned automatically, and pruned to 90%.

All runs share the seed, data, epochs and optimizer; the only difference is the AutoPrune
callback: ``AutoPrune()`` (prune as far as validation accuracy allows, within 1 point) and
``AutoPrune(target_sparsity=0.9)``. Prints test accuracy, the sparsity reached and the callback's
own share of the training time.

    python examples/digits_demo.py [--target 0.9] [--importance learned] [--epochs 30]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from lightning.pytorch import seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.core.masks import count_zeros
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier, quiet_trainer


def run(epochs: int, seed: int, callback: AutoPrune | None) -> tuple[float, float, float]:
    seed_everything(seed, verbose=False)
    datamodule = DigitsDataModule(batch_size=64)
    model = MLPClassifier(in_features=64, hidden=[256, 256], lr=1e-3)
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback] if callback else [])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    test_acc = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"]
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    zeros, total = count_zeros(weights)
    return float(test_acc), zeros / total, seconds


def main(argv: list[str] | None = None) -> list[tuple[Any, ...]]:
    """Run dense, ``AutoPrune()`` and a fixed target; print the table and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.9, help="target sparsity (default 0.9)")
    parser.add_argument(
        "--importance", default="learned", help="scorer: learned (the default), lamp, magnitude, taylor, random"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    run(1, args.seed, None)  # warm-up, so neither timed run pays for first-call costs
    rows = [("dense", *run(args.epochs, args.seed, None), None)]
    for label, callback in (
        ("AutoPrune()", AutoPrune(importance=args.importance)),
        (f"target {args.target}", AutoPrune(target_sparsity=args.target, importance=args.importance)),
    ):
        acc, sparsity, seconds = run(args.epochs, args.seed, callback)
        rows.append((label, acc, sparsity, seconds, (callback.seconds_pruning + callback.seconds_enforcing) / seconds))

    dense_acc = rows[0][1]
    print()
    print(f"digits MLP 64-256-256-10, {args.epochs} epochs, seed {args.seed}, importance={args.importance}")
    print(f"{'':<14} {'test acc':>9} {'change':>8} {'sparsity':>9} {'fit time':>9} {'AutoPrune time':>15}")
    for label, acc, sparsity, seconds, share in rows:
        own = "" if share is None else f"{100 * share:.1f}%"
        change = f"{100 * (acc - dense_acc):+.2f}"
        print(f"{label:<14} {acc:>9.4f} {change:>8} {sparsity:>9.4f} {seconds:>8.1f}s {own:>15}")
    return rows


if __name__ == "__main__":
    main()
