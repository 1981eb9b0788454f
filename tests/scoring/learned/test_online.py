from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from lightning_autoprune.scoring.learned.features import FEATURE_NAMES
from lightning_autoprune.scoring.learned.online import OnlineModel
from lightning_autoprune.scoring.learned.persistence import load_importance_model
from lightning_autoprune.scoring.learned.weights import DEFAULT_MODEL_PATH


def block(seed: int, rows: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] - 0.5 * x[:, 3] + 0.1 * rng.normal(size=rows)).astype(np.float32)
    return x, y, rng.random(rows) < 0.75


@pytest.mark.parametrize("pretrained", [False, True])
def test_each_block_fits_on_earlier_blocks_and_its_training_rows_and_a_resume_refits_the_same_model(
    pretrained: bool,
) -> None:
    online = OnlineModel(None, load_importance_model(DEFAULT_MODEL_PATH)) if pretrained else OnlineModel(Ridge(), None)
    assert not online.fitted
    assert online.feature_importances() == {}
    (x1, y1, t1), (x2, y2, t2) = block(1), block(2)
    assert online.add(x1, y1, t1, seed=3) == int(t1.sum())
    assert online.add(x2, y2, t2, seed=4) == len(y1) + int(t2.sum())  # block 1 whole, block 2 training rows
    assert online.fitted
    probe = block(5)[0]
    before = np.asarray(online.model.predict(probe))

    resumed = OnlineModel(None, online.pretrained) if pretrained else OnlineModel(Ridge(), None)
    resumed.load_state_dict(online.state_dict())
    assert resumed.model is None
    assert resumed.refit()
    np.testing.assert_array_equal(np.asarray(resumed.model.predict(probe)), before)


def test_feature_importances_find_the_features_the_labels_depend_on() -> None:
    online = OnlineModel(Ridge(), None)
    x, y, train = block(0, rows=400)
    online.add(x, y, train, seed=0)
    importances = online.feature_importances(repeats=2)
    assert set(importances) == set(FEATURE_NAMES)
    top_two = sorted(importances, key=importances.__getitem__)[-2:]
    assert set(top_two) == {FEATURE_NAMES[0], FEATURE_NAMES[3]}


def test_rows_of_another_feature_count_are_refused() -> None:
    with pytest.raises(ValueError, match="rows have 5 features; this version computes"):
        OnlineModel(Ridge(), None).load_state_dict({"rows_x": [torch.zeros(3, 5)], "rows_y": [torch.zeros(3)]})
