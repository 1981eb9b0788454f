"""The rows every view of the record shares: totals, the metric line, fidelity, and number formats.

:mod:`~lightning_autoprune.reporting.console`, :mod:`~lightning_autoprune.reporting.markdown` and
:mod:`~lightning_autoprune.reporting.plots` draw the same numbers; they take them from here, so the
terminal, ``report.md`` and the figures cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

#: Prefixes of fidelity entries in ``importance_diagnostics`` (``<metric>_<scorer>``), longest first.
FIDELITY_METRICS = (
    "precision_at_k",
    "precision@k",
    "spearman",
    "kendall",
    "pearson",
    "precision",
    "recall",
    "r2",
    "auc",
)


def fidelity_table(
    diagnostics: Any,
) -> tuple[list[str], list[str], dict[tuple[str, str], float], Any] | None:
    """Fidelity numbers of the last diagnostics entry as ``(metrics, scorers, values, epoch)``.

    Entries named ``<metric>_<scorer>`` (``spearman_learned``, ``precision_at_k_lamp``...) or nested
    as ``{"fidelity": {scorer: {metric: value}}}`` are understood; other numbers are ignored.
    ``None`` when there is nothing to show. The learned scorer comes first.

    Example:
        >>> fidelity_table([{"epoch": 3, "spearman_learned": 0.8, "spearman_lamp": 0.6}])
        (['spearman'], ['learned', 'lamp'], {('spearman', 'learned'): 0.8, ('spearman', 'lamp'): 0.6}, 3)
        >>> fidelity_table(None) is None
        True
    """
    entries = diagnostics_list(diagnostics)
    if not entries:
        return None
    last = entries[-1]
    values: dict[tuple[str, str], float] = {}
    nested = last.get("fidelity")
    if isinstance(nested, Mapping):
        for scorer, numbers in nested.items():
            if isinstance(numbers, Mapping):
                for metric, value in numbers.items():
                    if is_number(value):
                        values[(str(metric), str(scorer))] = float(value)
    for key, value in last.items():
        if not is_number(value):
            continue
        for metric in FIDELITY_METRICS:
            if key.startswith(metric + "_") and len(key) > len(metric) + 1:
                values[(metric, key[len(metric) + 1 :])] = float(value)
                break
    if not values:
        return None
    metrics = list(dict.fromkeys(m for m, _ in values))
    scorers = list(dict.fromkeys(s for _, s in values))
    scorers.sort(key=lambda s: s != "learned")
    return metrics, scorers, values, last.get("epoch")


def reference_label(record: Mapping[str, Any]) -> str:
    """What the record's ``reference`` is: the automatic mode's dense reference, or the value before pruning.

    Example:
        >>> reference_label({"reference_label": "before pruning (epoch 3)"}), reference_label({})
        ('before pruning (epoch 3)', 'reference')
    """
    return str(record.get("reference_label") or "reference")


def metric_line(record: Mapping[str, Any]) -> str | None:
    """``val_acc: dense reference 0.9000 -> final 0.8950 (-0.0050)``; ``None`` without a monitor or values."""
    reference, final = record.get("reference"), record.get("final_metric")
    if not record.get("monitor") or (reference is None and final is None):
        return None
    change = f" ({final - reference:+.4f})" if is_number(reference) and is_number(final) else ""
    return f"{record['monitor']}: {reference_label(record)} {fmt(reference)} -> final {fmt(final)}{change}"


def total_rows(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(label, before, after)`` for parameters and MACs (multiply-accumulates per sample), where present."""
    totals = record.get("totals") or {}
    rows = []
    if totals.get("params_model") is not None and totals.get("params_model_nonzero") is not None:
        rows.append(("parameters", f"{totals['params_model']:,}", f"{totals['params_model_nonzero']:,} nonzero"))
    if totals.get("macs_before") is not None and totals.get("macs_after") is not None:
        rows.append(("MACs per sample", big(totals["macs_before"]), big(totals["macs_after"])))
    return rows


def total_table_rows(record: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(label, before, after, change)`` rows of the totals table: parameters, MACs, the metric."""
    totals = record.get("totals") or {}
    rows = []
    pairs = [
        ("prunable weights", "params_prunable", "params_kept"),
        ("all parameters (nonzero)", "params_model", "params_model_nonzero"),
        ("MACs per sample", "macs_before", "macs_after"),
    ]
    for label, before_key, after_key in pairs:
        before, after = totals.get(before_key), totals.get(after_key)
        if is_number(before) and is_number(after):
            change = f"{after / before - 1:+.1%}" if before else ""
            rows.append((label, big(before), big(after), change))
    reference, final = record.get("reference"), record.get("final_metric")
    if record.get("monitor") and (reference is not None or final is not None):
        change = f"{final - reference:+.4f}" if is_number(reference) and is_number(final) else ""
        rows.append((f"{record['monitor']} ({reference_label(record)} -> final)", fmt(reference), fmt(final), change))
    return rows


def shape(layer: Mapping[str, Any]) -> str:
    """``[4, 2]`` -> ``'4x2'``: a tensor's shape as the tables show it."""
    return "x".join(str(s) for s in layer["shape"])


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; ``'n/a'`` for anything that is not a finite number."""
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def big(value: float) -> str:
    """``1234567`` -> ``'1.23M'``; small integers stay exact.

    Example:
        >>> big(1234567), big(8832), big(400000), big(2.5e9)
        ('1.23M', '8,832', '400.0k', '2.50G')
    """
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e5, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}" if scale > 1e5 else f"{value / 1e3:.1f}k"
    return f"{value:,.0f}"


def is_number(value: Any) -> TypeGuard[float]:
    """A finite ``int`` or ``float``, not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def diagnostics_list(value: Any) -> list[Mapping[str, Any]]:
    """The mappings of ``importance_diagnostics`` as a list (one mapping becomes a list of one)."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, Mapping)]


#: What every summary of an unstructured run says about speed.
UNSTRUCTURED_NOTE = (
    "unstructured sparsity stores zeros that dense kernels still multiply: it saves no CPU time "
    "(save_sparse() shrinks the file; granularity='structured' with compact() makes the model faster)"
)


def speed_note(record: Mapping[str, Any]) -> str | None:
    """The note on compute that an unstructured run's summary carries, ``None`` for structured runs.

    Example:
        >>> speed_note({"granularity": "unstructured"})[:40]
        'unstructured sparsity stores zeros that '
        >>> speed_note({"granularity": "structured"}) is None
        True
    """
    return UNSTRUCTURED_NOTE if record.get("granularity", "unstructured") == "unstructured" else None
