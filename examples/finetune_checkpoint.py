"""Pruning while fine-tuning a pre-trained checkpoint: train dense, save, then prune from the checkpoint.

Step 1 trains the digits MLP dense and saves ``runs/finetune_checkpoint/dense.ckpt`` (skipped when
``--checkpoint`` names an existing file). Step 2 loads it with the ordinary ``MLPClassifier.load_from_checkpoint`` and
fine-tunes it with ``AutoPrune(target_sparsity=..., start_epoch=0)``: the weights are already
trained, so pruning may start at once. The pruned checkpoint loads into an unmodified
``MLPClassifier`` too.

    python examples/finetune_checkpoint.py                   # 20 dense epochs, then 10 pruning 90%
    python examples/finetune_checkpoint.py --checkpoint my.ckpt --target 0.95 --finetune_epochs 15
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier, quiet_trainer


def _trainer(epochs: int, args: argparse.Namespace, callbacks: list[Any]) -> Trainer:
    return quiet_trainer(
        max_epochs=epochs,
        default_root_dir=args.root,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=callbacks,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", default="runs/finetune_checkpoint/dense.ckpt", help="dense checkpoint: reused if it exists"
    )
    parser.add_argument("--dense_epochs", type=int, default=20, help="epochs of dense pre-training (default 20)")
    parser.add_argument("--finetune_epochs", type=int, default=10, help="epochs of pruning + fine-tuning")
    parser.add_argument("--target", type=float, default=0.9, help="target sparsity (default 0.9)")
    parser.add_argument("--prune_epochs", type=int, default=5, help="epochs over which sparsity ramps up")
    parser.add_argument("--limit_batches", type=float, default=1.0, help="fraction or count of batches per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs", help="where the AutoPrune report goes")
    args = parser.parse_args(argv)
    args.limit_batches = None if args.limit_batches == 1.0 else args.limit_batches
    if args.limit_batches is not None and args.limit_batches > 1:
        args.limit_batches = int(args.limit_batches)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Pre-train (or reuse) a dense checkpoint, prune it while fine-tuning, print both test accuracies."""
    args = parse_args(argv)
    seed_everything(args.seed, verbose=False)
    datamodule = DigitsDataModule(batch_size=64)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        dense = MLPClassifier(in_features=64, hidden=[256, 256], lr=1e-3)
        trainer = _trainer(args.dense_epochs, args, [])
        trainer.fit(dense, datamodule=datamodule)
        trainer.save_checkpoint(checkpoint)
        print(f"[AutoPrune] saved the dense model to {checkpoint}")

    model = MLPClassifier.load_from_checkpoint(checkpoint)
    dense_acc = float(_trainer(1, args, []).test(model, datamodule=datamodule, verbose=False)[0]["test_acc"])

    end_epoch = min(args.prune_epochs, args.finetune_epochs) - 1
    callback = AutoPrune(target_sparsity=args.target, start_epoch=0, end_epoch=end_epoch)
    trainer = _trainer(args.finetune_epochs, args, [callback])
    with warnings.catch_warnings():  # pruning at epoch 0 is the point here: the weights are trained
        warnings.filterwarnings("ignore", message="AutoPrune prunes at the start of epoch 0")
        trainer.fit(model, datamodule=datamodule)
    pruned_acc = float(trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"])
    pruned_path = checkpoint.with_name(checkpoint.stem + "_pruned.ckpt")
    trainer.save_checkpoint(pruned_path)
    reloaded = MLPClassifier.load_from_checkpoint(pruned_path)  # an unmodified class loads it

    print()
    print(f"digits MLP 64-256-256-10 from {checkpoint}, pruned to {args.target} over {args.finetune_epochs} epochs")
    print(f"dense checkpoint  test acc {dense_acc:.4f}")
    print(f"pruned fine-tuned test acc {pruned_acc:.4f}  ({100 * (pruned_acc - dense_acc):+.2f} points)")
    print(f"sparsity {callback.sparsity:.4f}; pruned checkpoint {pruned_path} reloads into MLPClassifier")
    zeros = sum(int((p == 0).sum()) for n, p in reloaded.named_parameters() if n.endswith("weight"))
    total = sum(p.numel() for n, p in reloaded.named_parameters() if n.endswith("weight"))
    return {
        "dense_acc": dense_acc,
        "pruned_acc": pruned_acc,
        "sparsity": callback.sparsity,
        "reloaded": zeros / total,
    }


if __name__ == "__main__":
    main()
