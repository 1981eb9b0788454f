"""Structured pruning and compaction: a smaller, faster MNIST-1D CNN from one callback.

Trains the 1D CNN (3 x 32 channels, BatchNorm) on MNIST-1D twice with the same budget: dense,
and with ``AutoPrune(granularity="structured", target_sparsity=..., target_unit=...,
compact_on_fit_end=True)``,
which prunes whole channels (with their BatchNorm entries and the next layer's input columns) and
at the end of fit physically removes them. Prints test accuracy, parameters, FLOPs (per sample,
Torch-Pruning's counter) and the median CPU latency of the dense and the compacted model at
batch 1 and 256.

    python examples/structured_cnn.py                 # 30 epochs, 75% of the conv/linear FLOPs removed
    python examples/structured_cnn.py --target 0.5 --target_unit params --importance learned
    python examples/structured_cnn.py --target 0.6 --round_to 8 --threads 1   # widths in multiples of 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import CNN1DClassifier, MNIST1DDataModule, quiet_trainer
from lightning_autoprune.structured import count_flops, count_parameters


def _trainer(args: argparse.Namespace, callbacks: list[Any]) -> Trainer:
    return quiet_trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=callbacks,
    )


def median_latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Median wall time of one forward pass in milliseconds, after a warm-up, in inference mode."""
    model.eval()
    times = []
    with torch.inference_mode():
        for _ in range(max(3, repeats // 10)):
            model(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each fit (default 30)")
    parser.add_argument("--target", type=float, default=0.75, help="fraction to remove (default 0.75)")
    parser.add_argument(
        "--target_unit", default="flops", choices=["flops", "params"], help="what --target counts (default flops)"
    )
    parser.add_argument(
        "--importance",
        default=None,
        choices=["learned", "taylor", "magnitude", "random"],
        help="unit importance (default: AutoPrune's structured default, magnitude)",
    )
    parser.add_argument(
        "--round_to", type=int, default=1, help="keep a multiple of this many channels per layer (default 1: any)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the latency (default 2)")
    parser.add_argument("--limit_batches", type=float, default=1.0, help="fraction or count of batches per epoch")
    parser.add_argument("--repeats", type=int, default=200, help="timed forward passes per latency (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs", help="where the report and compacted_model.pt go")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.round_to < 1:
        parser.error(f"--round_to must be at least 1, got {args.round_to}")
    args.limit_batches = None if args.limit_batches == 1.0 else args.limit_batches
    if args.limit_batches is not None and args.limit_batches > 1:
        args.limit_batches = int(args.limit_batches)
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train dense and structurally pruned, compact, and print accuracy, size and latency side by side."""
    args = parse_args(argv)
    datamodule = MNIST1DDataModule(batch_size=64)
    results: dict[str, dict[str, float]] = {}
    models: dict[str, nn.Module] = {}

    seed_everything(args.seed, verbose=False)
    dense = CNN1DClassifier(channels=[32, 32, 32], lr=3e-3)
    trainer = _trainer(args, [])
    trainer.fit(dense, datamodule=datamodule)
    results["dense"] = {"test_acc": float(trainer.test(dense, datamodule=datamodule, verbose=False)[0]["test_acc"])}
    models["dense"] = dense

    seed_everything(args.seed, verbose=False)
    pruned = CNN1DClassifier(channels=[32, 32, 32], lr=3e-3)
    callback = AutoPrune(
        target_sparsity=args.target,
        granularity="structured",
        target_unit=args.target_unit,
        importance=args.importance,
        round_to=args.round_to,
        compact_on_fit_end=True,
    )
    trainer = _trainer(args, [callback])
    trainer.fit(pruned, datamodule=datamodule)
    assert callback.compacted_model is not None
    small = callback.compacted_model
    results["compacted"] = {"test_acc": float(trainer.test(small, datamodule=datamodule, verbose=False)[0]["test_acc"])}
    models["compacted"] = small

    torch.set_num_threads(args.threads)
    example = torch.randn(1, 40)
    for name, model in models.items():
        model.eval()
        results[name]["params"] = count_parameters(model)
        results[name]["flops"] = count_flops(model, example)
        for batch in (1, 256):
            repeats = args.repeats if batch == 1 else max(10, args.repeats // 4)
            results[name][f"latency_ms_b{batch}"] = median_latency_ms(model, torch.randn(batch, 40), repeats)
    print(f"{'':10} {'test acc':>9} {'params':>8} {'FLOPs':>8} {'ms @1':>7} {'ms @256':>8}")
    for name, row in results.items():
        print(
            f"{name:10} {row['test_acc']:9.4f} {int(row['params']):8,} {int(row['flops']):8,} "
            f"{row['latency_ms_b1']:7.3f} {row['latency_ms_b256']:8.3f}"
        )
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv1d)]
    print(
        f"compacted channel widths {widths}; batch-256 speed-up "
        f"{results['dense']['latency_ms_b256'] / results['compacted']['latency_ms_b256']:.2f}x"
    )
    return results


if __name__ == "__main__":
    main()
