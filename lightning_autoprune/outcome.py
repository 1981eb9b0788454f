"""What a run shows, without a Trainer: its record; at the end of fit, the summary, report and compacted model.

:func:`run_record` is everything the report shows (what ``summary.json`` holds). :func:`close_run`
does what ``AutoPrune.on_fit_end`` asks on global rank 0, in the order that loses nothing: the
report is written before compacting, and a :class:`CompactionError` only warns (the masked model
stays, and the report records the failure). :func:`compact_run` is the compaction step alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lightning_autoprune import reporting, structured
from lightning_autoprune.core.files import atomic_torch_save
from lightning_autoprune.core.flops import macs_per_weight
from lightning_autoprune.event import TrainingAccess
from lightning_autoprune.reporting import record as report_record
from lightning_autoprune.run import PruningRun
from lightning_autoprune.structured import CompactionError


def run_record(run: PruningRun, model: nn.Module | None, monitor: tuple[str | None, str | None]) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready primitives (what ``summary.json`` holds).

    Args:
        run: the run, at any point of the fit.
        model: the whole model (its parameter count is recorded), or ``None``.
        monitor: the monitored metric's ``(name, mode)``, either ``None`` while unknown.
    """
    engine = run.engine
    return report_record.build_record(
        settings=run.config.settings(),
        targets=engine.targets,
        per_weight=macs_per_weight(engine.targets, run.positions.positions),
        model_params=sum(p.numel() for p in model.parameters()) if model is not None else None,
        monitor=monitor,
        timeline=run.timeline,
        events=run.history,
        search=run.search_state.to_dict(),
        diagnostics=_importance_diagnostics(run.scorer),
        overhead={"pruning": run.seconds_pruning, "enforcing": engine.seconds_enforcing},
    )


def _importance_diagnostics(scorer: Any) -> Any:
    """Per-event diagnostics of the learned scorer, the last with its feature importances."""
    diagnostics = scorer.diagnostics
    if not diagnostics:
        return None
    entries = [dict(entry) for entry in diagnostics]
    importances = scorer.feature_importances()
    if importances is not None:
        entries[-1]["feature_importances"] = importances
    return report_record.jsonable(entries)


def close_run(
    run: PruningRun,
    *,
    record: Callable[[], dict[str, Any]],
    access: Callable[[], TrainingAccess],
    directory: Path | None,
    say: Callable[[str], None],
) -> nn.Module | None:
    """Print the summary, write the report, then compact, as ``run.config`` asks.

    Args:
        run: the finished run.
        record: builds the report record (called only when something shows it).
        access: the training state (compaction traces the model with its example inputs).
        directory: where the report and the compacted model go (``None``: neither is asked for).
        say: prints a line.

    Returns:
        The compacted model with ``compact_on_fit_end``, ``None`` otherwise or when compaction failed.
    """
    config = run.config
    # Nothing else shows the record; its feature importances alone cost a third of a second.
    shown = record() if config.verbose or config.report else None
    if shown is not None and config.verbose:
        reporting.print_summary(shown)
    written = shown if config.report and directory is not None else None
    if written is not None:
        assert directory is not None
        reporting.write_report(written, directory)
    compacted = None
    if config.compact_on_fit_end:
        if directory is None:
            raise ValueError("compact_on_fit_end needs a directory to save the compacted model to.")
        compacted, compaction = compact_run(run, access(), directory, say)
        if written is not None:
            written["compaction"] = compaction
            reporting.rewrite_text(written, directory)
    if written is not None and config.verbose:
        assert directory is not None
        say(f"report written to {directory / 'report.md'}")
    return compacted


def compact_run(
    run: PruningRun, access: TrainingAccess, directory: Path, say: Callable[[str], None]
) -> tuple[nn.Module | None, dict[str, Any]]:
    """Remove the pruned units physically and save the smaller model (eval mode) as ``compacted_model.pt``.

    Returns:
        The compacted model (``None`` when compaction failed: a warning names the blocking
        layers) and what the report records: the parameter counts and path, or the error and
        the blocking layers.

    Raises:
        ValueError: if the model is called with keyword arguments (only positional inputs are traced).
    """
    args, kwargs = run.events.example_inputs(access)
    if kwargs:
        raise ValueError(
            "compact_on_fit_end traces positional inputs only, but the model was called with keyword "
            f"arguments {sorted(kwargs)}. HINT: call compact(model, example_inputs) yourself."
        )
    try:
        small = structured.compact(access.module, args).eval()  # a deployment artifact: .train() to train it
    except CompactionError as err:
        warnings.warn(compaction_failure(err), UserWarning, stacklevel=4)
        return None, {"error": str(err), "blocking_layers": list(err.layers)}
    directory.mkdir(parents=True, exist_ok=True)
    path = atomic_torch_save(small, directory / "compacted_model.pt")
    before, after = structured.count_parameters(access.module), structured.count_parameters(small)
    compaction = {"params_before": before, "params_after": after, "path": str(path)}
    if run.config.verbose:
        say(compaction_line(compaction))
    return small, compaction


def compaction_failure(err: CompactionError) -> str:
    """The warning when compaction fails at fit end: the cause, the blocking layers and how to keep them.

    Example:
        >>> message = compaction_failure(CompactionError("It differs.", layers=["net.0"]))
        >>> print(message.split("failure. ")[1])  # doctest: +NORMALIZE_WHITESPACE
        It differs. Blocking layers: 'net.0'. To compact while keeping them whole:
        `lightning_autoprune.compact(model, example_inputs, ignored_layers=[model.get_submodule('net.0')])`.
    """
    text = (
        "compact_on_fit_end could not compact the model, so the masked model is kept (pruned units stay exact "
        f"zeros) and the report records the failure. {err}"
    )
    if not err.layers:
        return text
    names = ", ".join(f"'{name}'" for name in err.layers)
    ignored = ", ".join(f"model.get_submodule('{name}')" for name in err.layers)
    return (
        f"{text} Blocking layers: {names}. To compact while keeping them whole: "
        f"`lightning_autoprune.compact(model, example_inputs, ignored_layers=[{ignored}])`."
    )


def compaction_line(compaction: dict[str, Any]) -> str:
    """What the callback says after compacting the model.

    Example:
        >>> compaction_line({"params_before": 1000, "params_after": 250, "path": "out/compacted_model.pt"})[:50]
        'compacted model: 1,000 -> 250 parameters (25.0%), '
    """
    before, after = compaction["params_before"], compaction["params_after"]
    return (
        f"compacted model: {before:,} -> {after:,} parameters ({after / before:.1%}), saved to "
        f"{compaction['path']} (load with torch.load(path, weights_only=False))"
    )
