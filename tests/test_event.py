"""One pruning event without a Trainer: a plain module, a DataLoader and a loss closure."""

from __future__ import annotations

import warnings
from typing import cast

import pytest
import torch
from torch import nn

from lightning_autoprune.config import make_config
from lightning_autoprune.control.controller import ToleranceSearch
from lightning_autoprune.core.calibration import batch_size
from lightning_autoprune.core.engine import PruningEngine, WeightSelector
from lightning_autoprune.core.replay import LayerReplay
from lightning_autoprune.core.targets import resolve_targets
from lightning_autoprune.event import HALF_ABLATIONS_ABOVE, EventPipeline, TrainingAccess, ablation_samples
from lightning_autoprune.scoring import ScoreInputs, make_scorer
from lightning_autoprune.scoring.formulas import MagnitudeScorer
from tests.conftest import plain_access


def setup(importance: str) -> tuple[nn.Sequential, EventPipeline, TrainingAccess]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    access = plain_access(model, inputs=8, classes=3)
    config = make_config(target_sparsity=0.5, importance=importance, calibration_samples=64)
    engine = PruningEngine(resolve_targets(model, None, None), WeightSelector(config.min_layer_density))
    pipeline = EventPipeline(config, engine, make_scorer(importance), {})
    return model, pipeline, access


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "random"])
def test_an_event_on_a_plain_module_reaches_the_target(importance: str) -> None:
    _, pipeline, access = setup(importance)
    masks = pipeline.compute_masks(access, epoch=1, target=0.5, generator=torch.Generator().manual_seed(0))
    assert masks is not None
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert kept == total - total // 2


def test_the_same_generator_state_gives_the_same_masks() -> None:
    _, pipeline, access = setup("taylor")
    first = pipeline.compute_masks(access, 1, 0.5, torch.Generator().manual_seed(3))
    second = pipeline.compute_masks(access, 1, 0.5, torch.Generator().manual_seed(3))
    assert first is not None
    assert second is not None
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_non_finite_weights_skip_the_event_with_a_warning() -> None:
    model, pipeline, access = setup("magnitude")
    with torch.no_grad():
        cast(nn.Linear, model[0]).weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match=r"skipped the pruning event of epoch 4: tensor '0\.weight' holds NaN"):
        assert pipeline.compute_masks(access, 4, 0.5, torch.Generator()) is None


def test_after_a_rollback_the_scores_of_the_restored_state_are_reused() -> None:
    _, pipeline, access = setup("random")
    search = ToleranceSearch((1, 5), 1, 0.01, snapshot=lambda with_optimizers: {})
    first = pipeline.compute_masks(access, 1, 0.5, torch.Generator().manual_seed(1), search)
    assert search.scores is not None
    search.reuse_scores = True  # what a rollback sets
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pipeline.compute_masks(access, 2, 0.5, torch.Generator().manual_seed(99), search)
    assert first is not None
    assert again is not None
    assert all(torch.equal(first[n], again[n]) for n in first), "another seed would draw other random scores"
    assert not search.reuse_scores


class _Watching(MagnitudeScorer):
    """Magnitude scores, given the learned scorer's context (held-out loss, ablation passes) to look at."""

    needs_context = True

    def score(self, inputs: ScoreInputs) -> dict[str, torch.Tensor]:
        self.seen = inputs
        return super().score(inputs)


@pytest.mark.parametrize("width", [64, 1100])
def test_a_large_models_ablations_run_on_half_the_held_out_samples(width: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    access = plain_access(model, inputs=8, classes=3)  # 128 samples: 64 for gradients, 64 held out
    config = make_config(target_sparsity=0.5, importance="magnitude", calibration_samples=64)
    engine = PruningEngine(resolve_targets(model, None, None), WeightSelector(config.min_layer_density))
    scorer = _Watching()
    pipeline = EventPipeline(config, engine, scorer, {})
    assert pipeline.compute_masks(access, 1, 0.5, torch.Generator().manual_seed(0)) is not None
    seen = scorer.seen
    replay = seen.ablation_loss
    assert isinstance(replay, LayerReplay)
    large = weights > HALF_ABLATIONS_ABOVE
    assert large is (width == 1100)
    assert seen.loss_samples == 64
    assert seen.ablation_samples == ablation_samples(64, weights) == (32 if large else 64)
    assert sum(batch_size(b) or 0 for b in replay.batches) == seen.ablation_samples
    # The ablations' base loss is the held-out loss on those samples: all of them on a small model.
    assert seen.loss_fn is not None
    assert (replay.record() == seen.loss_fn()) is not large
