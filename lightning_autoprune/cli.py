r"""``lightning-autoprune``: LightningCLI over any LightningModule and DataModule, AutoPrune ready.

Pick a model and data by import path (the bundled examples work offline) and add the callback
with one flag::

    lightning-autoprune fit --model lightning_autoprune.examples.MLPClassifier \\
        --data lightning_autoprune.examples.DigitsDataModule --trainer.max_epochs 30 \\
        --trainer.callbacks+=lightning_autoprune.AutoPrune --trainer.callbacks.target_sparsity=0.9

``--trainer.callbacks.help lightning_autoprune.AutoPrune`` explains every AutoPrune option.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI


def main(args: ArgsType = None) -> LightningCLI:
    """Run the CLI; ``args`` overrides ``sys.argv`` (a list of strings or a config dict)."""
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
