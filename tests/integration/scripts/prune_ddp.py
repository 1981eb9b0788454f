"""Run AutoPrune under a 2-process CPU DDP strategy and save every rank's masks at every event.

Used by tests/test_distributed.py as a real subprocess (DDP re-launches the script per rank).

    python tests/integration/scripts/prune_ddp.py OUT_DIR --strategy ddp --importance lamp [--auto]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier


class DestroyProcessGroup(Callback):
    """Destroy the gloo process group when fit ends, as torch asks of every distributed program.

    Lightning destroys it at exit only for NCCL. Left to interpreter shutdown, a ``ddp_spawn`` child
    aborted there ("terminate called without an active exception", SIGABRT) in 4 of 8 runs of the
    learned scorer; with this callback, in 0 of 8.
    """

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class SaveMasks(Callback):
    """After AutoPrune's hook, write this rank's masks and sparsity for the epoch."""

    def __init__(self, autoprune: AutoPrune, out: Path) -> None:
        self.autoprune = autoprune
        self.out = out

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        masks = {name: mask.cpu() for name, mask in self.autoprune.masks.items()}
        path = self.out / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt"
        scorer = self.autoprune.scorer
        online = getattr(scorer, "online", None)  # the weight scorer's rows; the unit scorer's labels
        scorer_rows = [len(y) for y in (online.rows_y if online is not None else getattr(scorer, "labels", []))]
        state = {"masks": masks, "sparsity": self.autoprune.sparsity, "search": self.autoprune.search.to_dict()}
        torch.save({**state, "scorer_rows": scorer_rows}, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--importance", default="lamp")
    parser.add_argument("--auto", action="store_true")
    parser.add_argument("--granularity", default="unstructured")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    seed_everything(0)
    if args.auto:
        autoprune = AutoPrune(
            importance=args.importance,
            granularity=args.granularity,
            start_epoch=1,
            end_epoch=args.epochs - 1,
            label_budget=None,  # label at every event, so the broadcast of the scorer's rows is tested
            verbose=False,
        )
    else:
        autoprune = AutoPrune(
            target_sparsity=0.8,
            importance=args.importance,
            granularity=args.granularity,
            label_groups=32,
            label_budget=None,  # label at every event, so the broadcast of the scorer's rows is tested
            start_epoch=1,
            end_epoch=args.epochs - 2,
            verbose=False,
        )
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy=args.strategy,
        max_epochs=args.epochs,
        limit_train_batches=4,
        limit_val_batches=2,
        callbacks=[autoprune, SaveMasks(autoprune, args.out), DestroyProcessGroup()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(args.out),
    )
    trainer.fit(MLPClassifier(lr=1e-2), datamodule=DigitsDataModule(batch_size=32))


if __name__ == "__main__":
    main()
