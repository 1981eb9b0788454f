"""What a run shows at the end of fit, without a Trainer: the record, the report and the compacted model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_autoprune.config import make_config
from lightning_autoprune.core.targets import targets_for_run
from lightning_autoprune.outcome import close_run, compact_run, run_record
from lightning_autoprune.run import PruningRun
from lightning_autoprune.scoring import make_scorer
from tests.conftest import plain_access


def pruned_structured_run(**arguments: object) -> tuple[nn.Module, PruningRun]:
    """A structured magnitude run on an MLP, pruned once to half its hidden units' parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    config = make_config(target_sparsity=0.5, granularity="structured", start_epoch=1, end_epoch=1, **arguments)
    run = PruningRun(config, make_scorer(config.importance, granularity="structured"))
    run.start(targets_for_run(model, None, None, structured=True).targets, 4, lambda with_optimizers: {})
    access = plain_access(model, 6, 2)
    run.prepare(access)
    run.prune(access, 1, 0.5, [], metric_before=lambda: None, exchange=lambda c, s: (c(), s()))
    return model, run


def test_the_record_holds_the_settings_tensors_and_events() -> None:
    model, run = pruned_structured_run()
    record = run_record(run, model, ("val_acc", "max"))
    assert record["granularity"] == "structured"
    assert record["monitor"] == "val_acc"
    assert len(record["events"]) == 1
    assert record["sparsity"] == run.sparsity()
    assert {layer["name"] for layer in record["layers"]} == {t.name for t in run.engine.targets}
    json.dumps(record)  # JSON-ready


def test_compacting_saves_a_smaller_model_that_computes_the_same(tmp_path: Path) -> None:
    model, run = pruned_structured_run(verbose=True)
    said: list[str] = []
    small, compaction = compact_run(run, plain_access(model, 6, 2), tmp_path, said.append)
    assert compaction["params_before"] == sum(p.numel() for p in model.parameters())
    assert small is not None
    assert compaction["params_after"] < compaction["params_before"]
    assert Path(compaction["path"]) == tmp_path / "compacted_model.pt"
    x = torch.randn(5, 6)
    model.eval()
    torch.testing.assert_close(small(x), model(x))
    assert said
    assert said[0].startswith("compacted model: ")


def test_closing_writes_the_report_before_compacting_and_records_the_compaction(tmp_path: Path) -> None:
    model, run = pruned_structured_run(compact_on_fit_end=True, verbose=False)
    small = close_run(
        run,
        record=lambda: run_record(run, model, ("val_acc", "max")),
        access=lambda: plain_access(model, 6, 2),
        directory=tmp_path,
        say=print,
    )
    assert small is not None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["compaction"]["params_after"] == sum(p.numel() for p in small.parameters())
    assert (tmp_path / "report.md").exists()


def test_closing_without_a_report_or_compaction_writes_nothing(tmp_path: Path) -> None:
    model, run = pruned_structured_run(report=False, verbose=False)
    built: list[int] = []

    def record() -> dict[str, Any]:
        built.append(1)
        return {}

    small = close_run(run, record=record, access=lambda: plain_access(model, 6, 2), directory=None, say=print)
    assert small is None
    assert built == []  # nothing shows the record, so it is not built
    assert list(tmp_path.iterdir()) == []
