"""The report's record and the automatic mode's logged metrics: plain data, no Trainer."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lightning_autoprune.control.search import SearchState, end_dense_phase, reference_at
from lightning_autoprune.core.targets import resolve_targets
from lightning_autoprune.reporting.record import build_record, search_metrics

# A loss still falling when the search had to start (the realistic character GPT-2's seed 0).
FALLING = tuple(enumerate((2.71755, 2.641112, 2.60034, 2.569324, 2.548707, 2.524155, 2.50672)))


def trend_state() -> SearchState:
    state = SearchState(dense_values=FALLING)
    return end_dense_phase(state, 6, monitor="val_loss", mode="min", max_drop=0.02, samples=None, still_improving=True)


def test_the_logged_reference_is_the_one_of_this_epoch() -> None:
    state = trend_state()
    now = reference_at(state, 10)
    assert now is not None
    assert state.reference is not None
    assert now < state.reference
    rows = {name: value for name, value, _ in search_metrics(state.to_dict(), [], now)}
    assert rows["autoprune/reference"] == now
    rows = {name: value for name, value, _ in search_metrics(state.to_dict(), [])}
    assert rows["autoprune/reference"] == state.reference, "without one, the state's"


def test_a_trend_reference_is_labelled_and_shown_at_the_last_validation() -> None:
    state = trend_state()
    final = reference_at(state, 15)
    state = replace(state, final_reference=final)
    model = nn.Sequential(nn.Linear(4, 2))
    settings = {
        "mode": "automatic",
        "importance": "magnitude",
        "granularity": "unstructured",
        "schedule": "cubic",
        "max_metric_drop": 0.02,
        "target_sparsity": None,
    }
    timeline = [{"epoch": 15, "metric": 2.40}]
    with torch.no_grad():
        record = build_record(
            settings=settings,
            targets=resolve_targets(model, None, None),
            per_weight=None,
            model_params=None,
            monitor=("val_loss", "min"),
            timeline=timeline,
            events=[],
            search=state.to_dict(),
            diagnostics=None,
            overhead={},
        )
    assert record["reference_label"] == "dense reference (trend of epochs 3-6, at the last validation)"
    assert record["reference"] == final
