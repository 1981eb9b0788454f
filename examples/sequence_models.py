"""Recurrent and attention weights pruned: a GRU, an LSTM and a Transformer encoder on MNIST-1D.

MNIST-1D signals (40 steps, generated locally) are read as sequences of one feature per step.
Each model trains with ``AutoPrune(target_sparsity=...)``; at the end the script prints test
accuracy and the sparsity of the recurrent (``weight_ih``/``weight_hh``) and attention
(``in_proj_weight``, ``out_proj.weight``) tensors, which are pruned like any Linear weight.

    python examples/sequence_models.py                       # gru, lstm and transformer
    python examples/sequence_models.py --models gru --target 0.9 --epochs 30
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from lightning.pytorch import LightningModule, seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import MNIST1DDataModule, RecurrentClassifier, TransformerClassifier, quiet_trainer

MODELS = ("gru", "lstm", "transformer")
#: Parameter name fragments worth showing: recurrent and attention weights.
SHOWN = ("weight_ih", "weight_hh", "in_proj_weight", "out_proj.weight")


def build(name: str) -> LightningModule:
    """The example model called ``name`` (``gru``, ``lstm`` or ``transformer``)."""
    if name == "transformer":
        return TransformerClassifier(d_model=32, nhead=4, num_layers=2, dim_feedforward=64, lr=3e-3)
    return RecurrentClassifier(cell=name, hidden_size=64, lr=3e-3)  # type: ignore[arg-type]


def run(name: str, args: argparse.Namespace, prune: bool = True) -> dict[str, Any]:
    """Train one model (with AutoPrune unless ``prune`` is false); return test accuracy and per-tensor sparsity."""
    seed_everything(args.seed, verbose=False)
    datamodule = MNIST1DDataModule(batch_size=128, num_samples=args.num_samples)
    model = build(name)
    callback = AutoPrune(
        target_sparsity=args.target,
        start_epoch=args.start_epoch,
        verbose=args.verbose,
        report_dir=f"{args.root}/{name}/autoprune",
    )
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        default_root_dir=args.root,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        limit_test_batches=args.limit_batches,
        callbacks=[callback] if prune else [],
    )
    trainer.fit(model, datamodule=datamodule)
    test_acc = float(trainer.test(model, datamodule=datamodule, verbose=False)[0]["test_acc"])
    tensors = {n: float((p == 0).float().mean()) for n, p in model.named_parameters() if any(s in n for s in SHOWN)}
    sparsity = callback.sparsity if prune else 0.0
    return {"model": name, "test_acc": test_acc, "sparsity": sparsity, "tensors": tensors}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models to run")
    parser.add_argument("--target", type=float, default=0.8, help="target sparsity (default 0.8)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model (default 30)")
    parser.add_argument("--start_epoch", type=int, default=None, help="first pruning epoch (default: automatic)")
    parser.add_argument("--num_samples", type=int, default=5000, help="MNIST-1D samples generated (default 5000)")
    parser.add_argument("--limit_batches", type=float, default=1.0, help="fraction or count of batches per epoch")
    parser.add_argument("--dense", action="store_true", help="also train each model dense, for comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="lightning_logs", help="where the AutoPrune reports go")
    parser.add_argument("--quiet", dest="verbose", action="store_false", help="no per-event lines or summary")
    args = parser.parse_args(argv)
    args.limit_batches = _limit(args.limit_batches)
    return args


def _limit(value: float) -> float | int | None:
    """``--limit_batches`` as the Trainer takes it: a count above 1, ``None`` for all."""
    if value == 1.0:
        return None
    return int(value) if value > 1 else value


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the chosen models and print one block per model; return the results."""
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [run(name, args) for name in args.models]
    dense = {name: run(name, args, prune=False)["test_acc"] for name in args.models} if args.dense else {}
    print()
    print(f"MNIST-1D as a sequence, target sparsity {args.target}, {args.epochs} epochs, seed {args.seed}")
    for result in results:
        versus = f" (dense {dense[result['model']]:.4f})" if result["model"] in dense else ""
        result["dense_acc"] = dense.get(result["model"])
        print(
            f"{result['model']:<12} test acc {result['test_acc']:.4f}{versus}   "
            f"overall sparsity {result['sparsity']:.4f}"
        )
        for tensor, sparsity in result["tensors"].items():
            print(f"    {tensor:<40} sparsity {sparsity:.4f}")
    return results


if __name__ == "__main__":
    main()
