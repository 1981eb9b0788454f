"""The run's record: everything the report and the summary show, as JSON-ready primitives.

The record is built here and drawn by :mod:`~lightning_autoprune.reporting.console`,
:mod:`~lightning_autoprune.reporting.markdown` and :mod:`~lightning_autoprune.reporting.plots`.

:func:`build_record` assembles it from the callback's parts (what ``summary.json`` holds), and
:func:`event_lines` and :func:`importance_line` write the one-line messages printed at pruning events.
Pure functions: no Trainer, no files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_autoprune.core.targets import PruneTarget

PREFIX = "[AutoPrune]"
#: How each decision of the automatic search is logged as ``autoprune/decision``.
DECISION_CODES = {"accept": 1.0, "rollback": -1.0, "stop": 0.0}

#: One logged value: name, value and whether it shows in the progress bar.
Metric = tuple[str, float, bool]


def layer_rows(targets: Sequence[PruneTarget]) -> list[dict[str, Any]]:
    """Per pruned tensor: name, shape, size, weights kept (non-zero) and density."""
    layers: list[dict[str, Any]] = []
    for target in targets:
        param = target.param.detach()
        kept = int((param != 0).sum())
        layers.append(
            {
                "name": target.name,
                "shape": list(param.shape),
                "numel": param.numel(),
                "kept": kept,
                "density": kept / param.numel() if param.numel() else 0.0,
            }
        )
    return layers


def build_record(
    *,
    settings: Mapping[str, Any],
    targets: Sequence[PruneTarget],
    per_weight: Mapping[str, float] | None,
    model_params: int | None,
    monitor: tuple[str | None, str | None],
    timeline: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    search: Mapping[str, Any],
    diagnostics: Any,
    overhead: Mapping[str, float],
) -> dict[str, Any]:
    """Everything the report shows (what ``summary.json`` holds).

    Args:
        settings: ``mode``, ``importance``, ``granularity``, ``schedule``, ``max_metric_drop``,
            ``target_sparsity`` and ``reference_given`` (a dense reference passed by the user) of the run.
        targets: the pruned tensors (read now).
        per_weight: MACs per sample of one entry of each Linear/Conv weight, if known.
        model_params: parameters of the whole model, if known.
        monitor: the monitored metric's name and mode.
        timeline: one entry per trained epoch.
        events: one entry per pruning event.
        search: the automatic search's state (``SearchState.to_dict()``).
        diagnostics: the learned scorer's per-event diagnostics (JSON-ready), or ``None``.
        overhead: seconds spent pruning and enforcing.
    """
    layers = layer_rows(targets)
    prunable = sum(layer["numel"] for layer in layers)
    kept_total = sum(layer["kept"] for layer in layers)
    totals: dict[str, Any] = {"params_prunable": prunable, "params_kept": kept_total}
    # Compute is reported for structured runs only (their biases and BatchNorm affines cost no MACs):
    # zeroed single weights are still multiplied by dense kernels, so unstructured sparsity saves none.
    if per_weight is not None and settings["granularity"] == "structured":
        totals["macs_before"] = int(
            sum(per_weight[layer["name"]] * layer["numel"] for layer in layers if layer["name"] in per_weight)
        )
        totals["macs_after"] = int(
            sum(per_weight[layer["name"]] * layer["kept"] for layer in layers if layer["name"] in per_weight)
        )
    if model_params is not None:
        totals["params_model"] = model_params
        totals["params_model_nonzero"] = model_params - (prunable - kept_total)
    final = next((e["metric"] for e in reversed(timeline) if e["metric"] is not None), None)
    epochs = search.get("reference_epochs")
    measured = "given reference" if settings.get("reference_given") else "dense reference"
    reference = search["reference"]
    if epochs and not settings.get("reference_given"):
        how = "best" if search.get("reference_rule") == "best" else "mean"
        measured = f"dense reference (plateau {how}, epochs {epochs[0]}-{epochs[1]})"
        if search.get("reference_rule") == "trend":
            measured = f"dense reference (trend of epochs {epochs[0]}-{epochs[1]}, at the last validation)"
            final_reference = search.get("final_reference")
            reference = final_reference if final_reference is not None else reference
    reference_label = measured if reference is not None else None
    if reference is None and events:  # a fixed target measures no dense reference: say what the value is
        reference, reference_label = events[0]["metric_before"], f"before pruning (epoch {events[0]['epoch']})"
    return {
        "version": 1,
        "mode": settings["mode"],
        "importance": settings["importance"],
        "granularity": settings["granularity"],
        "schedule": settings["schedule"],
        "monitor": monitor[0],
        "monitor_mode": monitor[1],
        "max_metric_drop": settings["max_metric_drop"],
        "target_sparsity": settings["target_sparsity"],
        "reference": reference,
        "reference_label": reference_label,
        "final_metric": final,
        "sparsity": 1.0 - kept_total / prunable if prunable else 0.0,
        "stop_reason": search["stop_reason"],
        "timeline": [dict(entry) for entry in timeline],
        "events": [dict(event) for event in events],
        "decisions": [dict(d) for d in search["decisions"]],
        "layers": layers,
        "totals": totals,
        "importance_diagnostics": diagnostics,
        "overhead_seconds": dict(overhead),
    }


def jsonable(value: Any) -> Any:
    """``value`` with tensors as lists and every mapping key a string.

    Example:
        >>> import torch
        >>> jsonable({1: torch.tensor([0.5]), "b": (1, None)})
        {'1': [0.5], 'b': [1, None]}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def event_lines(
    epoch: int,
    event: Mapping[str, Any] | None,
    decisions: list[dict[str, Any]],
    monitor: str,
    importance: str,
    automatic: bool,
) -> list[str]:
    """One line per pruning event (sparsity and metric before -> after, and the verdict), plus search lines.

    Example:
        >>> event = {"sparsity_before": 0.0, "sparsity": 0.5, "metric_before": 0.9, "metric_after": 0.89}
        >>> event_lines(3, event, [], "val_acc", "lamp", automatic=False)
        ['[AutoPrune] epoch 3 | sparsity 0.0000 -> 0.5000 (lamp) | val_acc 0.9000 -> 0.8900 | on schedule']
    """
    lines = []
    verdicts = {"accept": "accepted", "rollback": "rolled back"}
    if event is not None:
        before, after = event.get("metric_before"), event.get("metric_after")
        metric = ""
        if before is not None or after is not None:
            fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
            metric = f" | {monitor} {fmt(before)} -> {fmt(after)}"
        same = [d for d in decisions if d["decision"] != "stop" and d["epoch"] == epoch]
        if same:
            verdict = verdicts[same[0]["decision"]]
        else:
            verdict = "out of tolerance, one more recovery epoch" if automatic else "on schedule"
        lines.append(
            f"{PREFIX} epoch {epoch} | sparsity {event.get('sparsity_before', 0.0):.4f} -> {event['sparsity']:.4f}"
            f" ({importance}){metric} | {verdict}"
        )
        decisions = [d for d in decisions if d not in same]
    lines.extend(describe_decision(d, monitor) for d in decisions)
    return lines


def describe_decision(record: Mapping[str, Any], monitor: str) -> str:
    """One line for one decision of the automatic search.

    Example:
        >>> describe_decision({"epoch": 5, "decision": "stop", "accepted": 0.9, "reason": "training ended"}, "val_acc")
        '[AutoPrune] epoch 5: search stopped at sparsity 0.9000 (training ended)'
    """
    if record["decision"] == "stop":
        accepted, reason = record["accepted"], record["reason"]
        return f"{PREFIX} epoch {record['epoch']}: search stopped at sparsity {accepted:.4f} ({reason})"
    value = "nan" if record["value"] is None else f"{record['value']:.4f}"
    verdict = "accepted" if record["decision"] == "accept" else "rolled back, step halved"
    margin = f", margin {record['margin']:.4f}" if record.get("margin") else ""
    return (
        f"{PREFIX} epoch {record['epoch']}: sparsity {record['proposed']:.4f} {verdict} "
        f"({monitor} {value} vs reference {record['reference']:.4f}{margin}, step {record['step']:.3f})"
    )


def importance_line(epoch: int, entry: Mapping[str, Any]) -> str:
    """The learned scorer's held-out fidelity at an event, next to the prior's, and which step it applied.

    Example:
        >>> entry = {"fidelity": {"learned": {"spearman": 0.9}, "taylor": {"spearman": 0.8}}, "best_prior": "taylor",
        ...          "fell_back": True, "blend_weight": 0.0, "held_out": 32, "used": "lamp",
        ...          "step_losses": {"learned": 0.31, "taylor": 0.3, "lamp": 0.29}}
        >>> importance_line(3, entry).split("; ")[1]
        'step by lamp (lowest calibration loss: learned 0.31, taylor 0.3, lamp 0.29)'
    """
    learned = entry["fidelity"]["learned"]["spearman"]
    partner = "taylor" if "taylor" in entry["fidelity"] else entry["best_prior"]
    prior = entry["fidelity"][partner]["spearman"]
    used = entry.get("used", entry["best_prior"] if entry["fell_back"] else "learned")
    if used == "learned":
        verdict = f"step by blend {entry['blend_weight']:.2f} learned + {1 - entry['blend_weight']:.2f} {partner}"
    elif "step_losses" in entry:
        verdict = f"step by {used}"
    else:
        verdict = f"fell back to {used}"
    if "step_losses" in entry:
        losses = ", ".join(f"{name} {value:.4g}" for name, value in entry["step_losses"].items())
        verdict += f" (lowest calibration loss: {losses})"
    if entry.get("collapsing"):
        verdict += _passed_over(entry["collapsing"])
    return (
        f"{PREFIX} epoch {epoch}: learned importance held-out Spearman {learned:.3f} vs "
        f"{partner} {prior:.3f} on {entry['held_out']} group ablations; {verdict}"
    )


def step_line(epoch: int, step: Mapping[str, Any]) -> str:
    """The step a learned event without labels applied, and every candidate's loss on the measured samples.

    Example:
        >>> step_line(2, {"used": "lamp", "samples": 83, "losses": {"learned": 0.71, "lamp": 0.16}}).split("; ")[1]
        'step by lamp (lowest calibration loss on 83 samples: learned 0.71, lamp 0.16)'
        >>> step_line(3, {"used": "lamp", "samples": 0, "losses": {}, "collapsing": ["magnitude"]}).split("; ", 1)[1]
        "step by lamp (the last event's choice; passed over magnitude: that step would take a layer down to its floor)"
    """
    losses = ", ".join(f"{name} {value:.4g}" for name, value in step["losses"].items())
    why = f"lowest calibration loss on {step['samples']} samples: {losses}" if losses else "the last event's choice"
    if step.get("collapsing"):
        why += _passed_over(step["collapsing"])
    return f"{PREFIX} epoch {epoch}: no labels this event (label budget); step by {step['used']} ({why})"


def _passed_over(names: Sequence[str]) -> str:
    """The clause naming the candidates a step choice passed over because their step collapses a layer."""
    return f"; passed over {', '.join(names)}: that step would take a layer down to its floor"


def step_metrics(step: Mapping[str, Any]) -> list[Metric]:
    """Every candidate step's measured loss at an event without labels (the names :func:`importance_metrics` uses).

    Example:
        >>> step_metrics({"used": "lamp", "samples": 83, "losses": {"lamp": 0.16}})
        [('autoprune/importance/step_loss_lamp', 0.16, False)]
    """
    return [(f"autoprune/importance/step_loss_{name}", loss, False) for name, loss in step["losses"].items()]


def sparsity_metrics(
    sparsity: float,
    flops: float | None,
    scheduled: float,
    target: float,
    per_tensor: Mapping[str, float],
) -> list[Metric]:
    """What is logged at every epoch start: overall, FLOPs (if counted), scheduled, target and per-tensor sparsity.

    Example:
        >>> [name for name, _, _ in sparsity_metrics(0.5, None, 0.5, 0.9, {"w": 0.5})]
        ['autoprune/sparsity', 'autoprune/scheduled_sparsity', 'autoprune/target_sparsity', 'autoprune/sparsity/w']
    """
    rows: list[Metric] = [("autoprune/sparsity", sparsity, True)]
    if flops is not None:
        rows.append(("autoprune/flops_sparsity", flops, True))
    rows += [("autoprune/scheduled_sparsity", scheduled, False), ("autoprune/target_sparsity", target, True)]
    rows += [(f"autoprune/sparsity/{name}", value, False) for name, value in per_tensor.items()]
    return rows


def search_metrics(
    state: Mapping[str, Any], decisions: Sequence[Mapping[str, Any]], reference: float | None = None
) -> list[Metric]:
    """What the automatic mode logs at an epoch end: its new decisions, the reference, accepted sparsity and step.

    Args:
        state: the search's state (``SearchState.to_dict()``).
        decisions: the decisions taken since the last call.
        reference: the reference at this epoch, where it moves with a dense trend (default: ``state``'s).

    Example:
        >>> state = {"reference": 0.97, "accepted": 0.5, "step": 0.5}
        >>> [name for name, _, _ in search_metrics(state, [{"decision": "accept"}])]
        ['autoprune/decision', 'autoprune/reference', 'autoprune/accepted_sparsity', 'autoprune/step']
    """
    rows: list[Metric] = [("autoprune/decision", DECISION_CODES[d["decision"]], False) for d in decisions]
    reference = reference if reference is not None else state["reference"]
    if reference is not None:
        rows.append(("autoprune/reference", reference, False))
    rows += [("autoprune/accepted_sparsity", state["accepted"], False), ("autoprune/step", state["step"], False)]
    return rows


def importance_metrics(entry: Mapping[str, Any]) -> list[Metric]:
    """The learned scorer's held-out fidelity per method at one event, its blend weight and whether it fell back."""
    rows: list[Metric] = []
    for method, numbers in entry["fidelity"].items():
        rows.append((f"autoprune/fidelity/spearman_{method}", numbers["spearman"], False))
        rows.append((f"autoprune/fidelity/precision_at_k_{method}", numbers["precision_at_k"], False))
    rows.append(("autoprune/importance/blend_weight", entry["blend_weight"], False))
    rows.append(("autoprune/importance/fell_back", float(entry["fell_back"]), False))
    for method, loss in entry.get("step_losses", {}).items():
        rows.append((f"autoprune/importance/step_loss_{method}", loss, False))
    return rows


def finish_lines(
    *, label: str, value: float, reference: float, drop: float, restored_epoch: int | None, broken: bool
) -> tuple[str | None, str | None]:
    """What the automatic mode says when fit ends out of tolerance: ``(info, warning)``, either may be ``None``."""
    if not broken:
        return None, None
    if restored_epoch is not None:
        return (
            f"the last validation ({value:.4f}) broke the tolerance; restored the weights of epoch "
            f"{restored_epoch}, the latest state within it.",
            None,
        )
    return None, (
        f"AutoPrune's final {label} ({value:.4f}) is more than {drop} worse than the dense reference "
        f"({reference:.4f}), and no state within tolerance was kept at this sparsity."
    )


def finished_line(*, label: str, sparsity: float, reference: float, drop: float, stop_reason: str | None) -> str:
    """What the automatic mode says last: where it ended and why.

    Example:
        >>> print(finished_line(label="val_acc", sparsity=0.9, reference=0.97, drop=0.01, stop_reason="it ended"))
        automatic mode finished at sparsity 0.9000: the most-pruned state whose val_acc stayed within 0.01 of ...
    """
    return (
        f"automatic mode finished at sparsity {sparsity:.4f}: the most-pruned state whose {label} stayed within "
        f"{drop} of the dense reference {reference:.4f} on validation. Stopped because {stop_reason}."
    )
