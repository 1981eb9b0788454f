r"""``lightning-autoprune``: LightningCLI with AutoPrune as its own argument group.

Every run prunes: the ``--autoprune.*`` options configure the :class:`~lightning_autoprune.AutoPrune`
callback that is always added to the Trainer. The bundled example models and data are selectable
by class name, and any LightningModule/DataModule by import path::

    lightning-autoprune fit --model MLPClassifier --data DigitsDataModule \\
        --trainer.max_epochs 30 --autoprune.target_sparsity 0.9
    lightning-autoprune fit --model my_package.MyModel --data my_package.MyData
    lightning-autoprune fit --help                      # every option, AutoPrune's explained
    lightning-autoprune fit --config examples/configs/digits_mlp.yaml

An AutoPrune listed in ``--trainer.callbacks`` (the way a plain ``LightningCLI`` adds it) takes
the group's place, so configs written for plain LightningCLI keep working here.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from lightning_autoprune.callback import AutoPrune

# Imported so that jsonargparse resolves their short class names (``--model MLPClassifier``).
from lightning_autoprune.examples import (  # noqa: F401
    CNN1DClassifier,
    DigitsDataModule,
    EmbeddingClassifier,
    MLPClassifier,
    MNIST1DDataModule,
    RecurrentClassifier,
    TransformerClassifier,
)

#: The argument group holding AutoPrune's constructor arguments.
GROUP = "autoprune"


class AutoPruneCLI(LightningCLI):
    """LightningCLI whose Trainer always gets an :class:`~lightning_autoprune.AutoPrune` from ``--autoprune.*``.

    If ``trainer.callbacks`` already holds an AutoPrune (a config written for plain LightningCLI),
    that one is used instead; setting ``--autoprune.*`` options as well is then an error, since
    only one of the two can apply.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``autoprune`` group (its help comes from AutoPrune's docstring)."""
        parser.add_lightning_class_args(AutoPrune, GROUP)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer with the group's AutoPrune, unless ``trainer.callbacks`` brings its own."""
        parser = self._parser(self.subcommand)
        trainer_config = self._get(self.config_init, "trainer", default={})
        listed = trainer_config.get("callbacks") or []
        listed = listed if isinstance(listed, list) else [listed]
        if not any(isinstance(callback, AutoPrune) for callback in listed):
            return super().instantiate_trainer(**kwargs)
        group = self._get(self.config, GROUP).as_dict()
        defaults = parser.get_defaults()[GROUP].as_dict()
        changed = sorted(key for key, value in group.items() if value != defaults.get(key, value))
        if changed:
            raise ValueError(
                "AutoPrune is configured twice: in `trainer.callbacks` and through "
                f"{', '.join(f'`--{GROUP}.{key}`' for key in changed)}. HINT: keep one; `--{GROUP}.*` is "
                "the short form, `trainer.callbacks` lets several AutoPrune callbacks prune disjoint tensors."
            )
        extra = [self._get(self.config_init, key) for key in parser.callback_keys if key != GROUP]
        return self._instantiate_trainer({**trainer_config, **kwargs}, extra)


def main(args: ArgsType = None) -> None:
    """The ``lightning-autoprune`` console script: parse ``args`` (default ``sys.argv[1:]``) and run.

    Returns nothing, so the console script exits with status 0 on success; use :func:`make_cli`
    to keep the CLI object.
    """
    make_cli(args)


def make_cli(args: ArgsType = None, run: bool = True) -> AutoPruneCLI:
    """Build (and by default run) the CLI; return it, with its ``model``, ``datamodule`` and ``trainer``.

    Args:
        args: overrides ``sys.argv[1:]``: a list of strings, or a config dict.
        run: whether to run a subcommand; ``False`` parses and instantiates only (then ``args``
            has no subcommand).

    Example:
        >>> cli = make_cli(["--model", "MLPClassifier", "--data", "DigitsDataModule", "--trainer.logger", "false",
        ...                 "--autoprune.target_sparsity", "0.9"], run=False)
        >>> [c.target_sparsity for c in cli.trainer.callbacks if isinstance(c, AutoPrune)]
        [0.9]
    """
    return AutoPruneCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
