"""Train the digits MLP with AutoPrune and epoch checkpoints; optionally SIGKILL itself mid-epoch.

Used by tests/test_distributed.py to prove crash safety with a real process and a real kill:

    python tests/integration/scripts/train_killable.py OUT_DIR [--kill-at-epoch 3] [--resume OUT_DIR/last.ckpt]

At the end of fit it writes OUT_DIR/final_masks.pt.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier


class KillMidEpoch(Callback):
    """Sends SIGKILL to this very process in the middle of epoch ``epoch``: no cleanup, no hooks."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.current_epoch == self.epoch and args[-1] == 2:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at-epoch", type=int, default=None)
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--importance", default="taylor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0 if args.resume is None else 1)  # a resumed run must not depend on its own seed
    autoprune = AutoPrune(target_sparsity=0.9, importance=args.importance, start_epoch=1, end_epoch=5, verbose=False)
    callbacks: list[Callback] = [autoprune, ModelCheckpoint(dirpath=args.out, save_last=True)]
    if args.kill_at_epoch is not None:
        callbacks.append(KillMidEpoch(args.kill_at_epoch))
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=7,
        limit_train_batches=6,
        limit_val_batches=2,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(args.out),
    )
    model = MLPClassifier(lr=1e-2)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=32), ckpt_path=args.resume)
    torch.save(
        {"masks": autoprune.masks, "weights": model.state_dict(), "history": autoprune.history},
        args.out / "final_masks.pt",
    )


if __name__ == "__main__":
    main()
