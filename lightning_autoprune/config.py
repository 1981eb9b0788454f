"""The callback's configuration: every constructor argument, validated once, and the schedule window.

:func:`make_config` checks the arguments a user passes to ``AutoPrune(...)`` and returns a frozen
:class:`AutoPruneConfig`, so a bad configuration fails when it is parsed (LightningCLI constructs the
callback before fitting), never deep inside an epoch. :func:`resolve_window` turns the optional
``start_epoch``/``end_epoch`` into the epochs of this Trainer's run.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Literal

from lightning_autoprune.control import schedule as schedules
from lightning_autoprune.control import search
from lightning_autoprune.scoring import UNIT_SCORERS

_GRANULARITIES = ("unstructured", "structured")
_TARGET_UNITS = ("params", "flops")
_MODES = ("max", "min")


@dataclass(frozen=True)
class AutoPruneConfig:
    """Every ``AutoPrune`` argument after validation (``importance`` resolved to its default).

    The fields and their meaning are those of :class:`~lightning_autoprune.AutoPrune`'s arguments.

    Example:
        >>> config = make_config(target_sparsity=0.9)
        >>> config.importance, config.automatic
        ('learned', False)
        >>> make_config(granularity="structured").importance
        'magnitude'
    """

    target_sparsity: float | None = None
    max_metric_drop: float = 0.01
    monitor: str | None = None
    mode: Literal["max", "min"] | None = None
    importance: str = "learned"
    estimator: str | None = None
    label_groups: int = 128
    label_budget: float | None = 0.05
    granularity: Literal["unstructured", "structured"] = "unstructured"
    target_unit: Literal["params", "flops"] = "params"
    round_to: int = 1
    compact_on_fit_end: bool = False
    schedule: schedules.ScheduleKind = "cubic"
    start_epoch: int | None = None
    end_epoch: int | None = None
    frequency: int = 1
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    min_layer_density: float = 0.002
    calibration_samples: int | None = None
    seed: int = 0
    verbose: bool = True
    report: bool = True
    report_dir: str | None = None
    reference: float | None = None

    @property
    def automatic(self) -> bool:
        """Whether sparsity is driven by the metric tolerance (``target_sparsity=None``)."""
        return self.target_sparsity is None

    def settings(self) -> dict[str, object]:
        """What the report states about the run's configuration."""
        return {
            "mode": "automatic" if self.automatic else "fixed",
            "importance": self.importance,
            "granularity": self.granularity,
            "schedule": self.schedule,
            "max_metric_drop": self.max_metric_drop,
            "target_sparsity": self.target_sparsity,
            "reference_given": self.reference is not None,
        }

    @property
    def structured(self) -> bool:
        """Whether whole units are pruned."""
        return self.granularity == "structured"


def make_config(**arguments: object) -> AutoPruneConfig:
    """Validate ``AutoPrune``'s arguments and return them as a frozen config.

    ``importance=None`` resolves to ``"learned"`` (unstructured) or ``"magnitude"`` (structured);
    ``include``/``exclude`` lists become tuples.

    Example:
        >>> make_config(target_sparsity=1.5)
        Traceback (most recent call last):
        ...
        ValueError: `target_sparsity` must be in [0, 1) or None, got 1.5.
    """
    fields = {f.name for f in dataclasses.fields(AutoPruneConfig)}
    unknown = sorted(set(arguments) - fields)
    if unknown:
        raise TypeError(f"Unknown AutoPrune argument(s): {', '.join(unknown)}. Allowed: {', '.join(sorted(fields))}.")
    values = {f.name: f.default for f in dataclasses.fields(AutoPruneConfig)}
    values.update(arguments)
    if arguments.get("importance") is None:
        values["importance"] = "magnitude" if values["granularity"] == "structured" else "learned"
    for name in ("include", "exclude"):
        if values[name] is not None:
            values[name] = tuple(values[name])  # type: ignore[arg-type]
    checked = {k: values[k] for k in _VALIDATED}
    validate(**checked)  # type: ignore[arg-type]
    return AutoPruneConfig(**values)  # type: ignore[arg-type]


def validate(
    *,
    reference: float | None,
    target_sparsity: float | None,
    max_metric_drop: float,
    mode: str | None,
    granularity: str,
    importance: str,
    target_unit: str,
    round_to: int,
    compact_on_fit_end: bool,
    schedule: str,
    start_epoch: int | None,
    end_epoch: int | None,
    frequency: int,
    min_layer_density: float,
    calibration_samples: int | None,
) -> None:
    """Raise a ``ValueError`` naming the first argument that is out of range, what is allowed and what was given."""
    if reference is not None and not (
        isinstance(reference, (int, float)) and not isinstance(reference, bool) and math.isfinite(reference)
    ):
        raise ValueError(f"`reference` must be a finite number or None, got {reference!r}.")
    if reference is not None and target_sparsity is not None:
        raise ValueError(
            f"`reference`={reference} is the automatic mode's dense reference, but `target_sparsity`="
            f"{target_sparsity} asks for a fixed target, which has none. HINT: drop one of them."
        )
    if target_sparsity is not None and not (isinstance(target_sparsity, (int, float)) and 0.0 <= target_sparsity < 1.0):
        raise ValueError(f"`target_sparsity` must be in [0, 1) or None, got {target_sparsity!r}.")
    if not (isinstance(max_metric_drop, (int, float)) and max_metric_drop >= 0 and math.isfinite(max_metric_drop)):
        raise ValueError(f"`max_metric_drop` must be a finite number >= 0, got {max_metric_drop!r}.")
    if mode is not None and mode not in _MODES:
        raise ValueError(f"`mode` must be one of 'max', 'min' or None, got {mode!r}.")
    if granularity not in _GRANULARITIES:
        raise ValueError(f"`granularity` must be one of 'unstructured', 'structured', got {granularity!r}.")
    if granularity == "structured" and importance not in UNIT_SCORERS:
        allowed = ", ".join(repr(s) for s in UNIT_SCORERS)
        raise ValueError(f"With granularity='structured', `importance` must be one of {allowed}, got {importance!r}.")
    if target_unit not in _TARGET_UNITS:
        raise ValueError(f"`target_unit` must be one of 'params', 'flops', got {target_unit!r}.")
    if target_unit == "flops" and granularity != "structured":
        raise ValueError(
            "`target_unit`='flops' needs granularity='structured' (zeroed single weights save no FLOPs in dense "
            f"kernels), got granularity={granularity!r}."
        )
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"`round_to` must be an integer >= 1, got {round_to!r}.")
    if round_to > 1 and granularity != "structured":
        raise ValueError(
            f"`round_to`={round_to} rounds the widths of structured pruning and needs granularity='structured', "
            f"got granularity={granularity!r}."
        )
    if not isinstance(compact_on_fit_end, bool):
        raise ValueError(f"`compact_on_fit_end` must be True or False, got {compact_on_fit_end!r}.")
    if compact_on_fit_end and granularity != "structured":
        raise ValueError(
            "`compact_on_fit_end`=True needs granularity='structured' (unstructured sparsity removes no whole "
            f"unit; save it with lightning_autoprune.save_sparse instead), got granularity={granularity!r}."
        )
    if schedule not in schedules.SCHEDULES:
        allowed = ", ".join(repr(s) for s in schedules.SCHEDULES)
        raise ValueError(f"`schedule` must be one of {allowed}, got {schedule!r}.")
    for name, value in (("start_epoch", start_epoch), ("end_epoch", end_epoch)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"`{name}` must be an integer >= 0 or None, got {value!r}.")
    if start_epoch is not None and end_epoch is not None and end_epoch < start_epoch:
        raise ValueError(
            f"`end_epoch` must be >= `start_epoch`, got end_epoch={end_epoch} < start_epoch={start_epoch}."
        )
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"`frequency` must be an integer >= 1, got {frequency!r}.")
    if not (isinstance(min_layer_density, (int, float)) and 0.0 <= min_layer_density <= 1.0):
        raise ValueError(f"`min_layer_density` must be in [0, 1], got {min_layer_density!r}.")
    if target_sparsity is not None and min_layer_density > 1.0 - target_sparsity:
        raise ValueError(
            f"`min_layer_density`={min_layer_density} keeps more weights than `target_sparsity`={target_sparsity} "
            f"allows ({1.0 - target_sparsity:.4f} of them). Lower `min_layer_density`."
        )
    if calibration_samples is not None and (not isinstance(calibration_samples, int) or calibration_samples < 1):
        raise ValueError(f"`calibration_samples` must be an integer >= 1 or None, got {calibration_samples!r}.")


_VALIDATED = (
    "reference",
    "target_sparsity",
    "max_metric_drop",
    "mode",
    "granularity",
    "importance",
    "target_unit",
    "round_to",
    "compact_on_fit_end",
    "schedule",
    "start_epoch",
    "end_epoch",
    "frequency",
    "min_layer_density",
    "calibration_samples",
)


def resolve_window(config: AutoPruneConfig, max_epochs: int | None) -> tuple[int, int]:
    """The ``(start, end)`` epochs of pruning for a Trainer of ``max_epochs`` epochs.

    Defaults come from the fixed schedule or the automatic search. An ``end_epoch`` beyond this
    Trainer's last epoch is a warning, not an error (a run trained in chunks resumes with a larger
    ``max_epochs``), and so is pruning at epoch 0 (before any training).

    Example:
        >>> resolve_window(make_config(target_sparsity=0.9), 30), resolve_window(make_config(), 30)
        ((3, 20), (6, 23))
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     resolve_window(make_config(target_sparsity=0.9, start_epoch=2, end_epoch=40), 30)
        (2, 40)
        >>> "beyond this Trainer's last epoch 29" in str(caught[0].message)
        True
    """
    if max_epochs is None or max_epochs < 1:
        if config.end_epoch is None:
            raise ValueError(
                f"`end_epoch` must be set when the Trainer has no finite `max_epochs` (got max_epochs={max_epochs})."
            )
        start = config.start_epoch if config.start_epoch is not None else min(1, config.end_epoch)
        return start, config.end_epoch
    window_fn = search.default_window if config.automatic else schedules.default_window
    default_start, default_end = window_fn(max_epochs)
    end = config.end_epoch if config.end_epoch is not None else max(default_end, config.start_epoch or 0)
    start = config.start_epoch if config.start_epoch is not None else min(default_start, end)
    if end > max_epochs - 1:
        warnings.warn(
            f"AutoPrune's `end_epoch`={end} is beyond this Trainer's last epoch {max_epochs - 1} "
            f"(max_epochs={max_epochs}): this fit follows the schedule as far as it goes, and a fit resumed "
            "from its checkpoint with a larger `max_epochs` continues it exactly. HINT: if you do not mean to "
            "resume, lower `end_epoch` or raise `max_epochs`.",
            UserWarning,
            stacklevel=2,
        )
    if end < start:
        raise ValueError(f"`end_epoch` must be >= `start_epoch`, got end_epoch={end} < start_epoch={start}.")
    if start == 0:
        warnings.warn(
            f"AutoPrune prunes at the start of epoch 0, before any training (max_epochs={max_epochs}). "
            "Scores of untrained weights are mostly noise. HINT: set `start_epoch` >= 1 or train longer.",
            UserWarning,
            stacklevel=2,
        )
    return start, end


def check_search_budget(window: tuple[int, int], frequency: int) -> None:
    """Warn when the automatic search has no dense epoch for its reference, or too few epochs to step.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     check_search_budget((1, 3), 1)
        >>> "only 3 pruning epoch(s)" in str(caught[0].message)
        True
    """
    start, end = window
    events = len(range(start, end + 1, frequency))
    if start < 1:
        warnings.warn(
            "AutoPrune's automatic mode needs at least one validated dense epoch before pruning for its "
            f"reference, but pruning starts at epoch {start}. HINT: set `start_epoch` >= 1 or raise "
            "`max_epochs`.",
            UserWarning,
            stacklevel=2,
        )
    if events < 8:
        warnings.warn(
            f"AutoPrune's automatic search has only {events} pruning epoch(s) (epochs {start}..{end}); each "
            "step needs one, and reaching 90%+ sparsity usually takes about 8-10 with rollbacks. "
            f"HINT: use max_epochs >= {search.suggested_max_epochs(10)} or widen `start_epoch`..`end_epoch`.",
            UserWarning,
            stacklevel=2,
        )
