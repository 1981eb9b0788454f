"""The validated configuration and the schedule window, without a Trainer."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from lightning_autoprune.config import AutoPruneConfig, check_search_budget, make_config, resolve_window


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"target_sparsity": 1.0}, r"`target_sparsity` must be in \[0, 1\) or None, got 1.0"),
        ({"max_metric_drop": -1}, r"`max_metric_drop` must be a finite number >= 0, got -1"),
        ({"mode": "up"}, r"`mode` must be one of 'max', 'min' or None, got 'up'"),
        ({"granularity": "channel"}, r"`granularity` must be one of 'unstructured', 'structured', got 'channel'"),
        ({"target_unit": "flops"}, r"`target_unit`='flops' needs granularity='structured'"),
        ({"round_to": 0, "granularity": "structured"}, r"`round_to` must be an integer >= 1, got 0"),
        ({"schedule": "exp"}, r"`schedule` must be one of"),
        ({"frequency": 0}, r"`frequency` must be an integer >= 1, got 0"),
        ({"start_epoch": 5, "end_epoch": 2}, r"`end_epoch` must be >= `start_epoch`"),
        ({"calibration_samples": 0}, r"`calibration_samples` must be an integer >= 1 or None, got 0"),
        ({"target_sparsity": 0.9, "min_layer_density": 0.2}, r"`min_layer_density`=0.2 keeps more weights"),
        ({"reference": float("nan")}, r"`reference` must be a finite number or None, got nan"),
        ({"reference": 0.97, "target_sparsity": 0.9}, r"`reference`=0.97 is the automatic mode's dense reference"),
    ],
)
def test_bad_arguments_name_the_argument_what_is_allowed_and_what_was_given(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(**arguments)


def test_unknown_argument_lists_the_allowed_ones() -> None:
    with pytest.raises(TypeError, match=r"Unknown AutoPrune argument.*sparsity_target.*Allowed"):
        make_config(sparsity_target=0.9)


def test_config_is_frozen_and_lists_become_tuples() -> None:
    config = make_config(include=["net.*"])
    assert config.include == ("net.*",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]


def test_every_constructor_argument_is_a_config_field() -> None:
    import inspect

    from lightning_autoprune import AutoPrune

    arguments = set(inspect.signature(AutoPrune.__init__).parameters) - {"self"}
    assert arguments == {f.name for f in dataclasses.fields(AutoPruneConfig)}


def test_window_defaults_differ_between_fixed_and_automatic_modes() -> None:
    assert resolve_window(make_config(target_sparsity=0.5), 10) == (1, 7)
    assert resolve_window(make_config(), 10) == (6, 7)  # the earliest start a plateau allows


def test_window_without_max_epochs_needs_end_epoch() -> None:
    with pytest.raises(ValueError, match="`end_epoch` must be set"):
        resolve_window(make_config(target_sparsity=0.5), None)
    assert resolve_window(make_config(target_sparsity=0.5, end_epoch=4), -1) == (1, 4)


def test_pruning_at_epoch_zero_warns() -> None:
    with pytest.warns(UserWarning, match="prunes at the start of epoch 0"):
        resolve_window(make_config(target_sparsity=0.5, start_epoch=0, end_epoch=2), 5)


def test_short_search_warns_with_a_suggested_max_epochs() -> None:
    with pytest.warns(UserWarning, match=r"only 3 pruning epoch\(s\).*max_epochs >= 20"):
        check_search_budget((1, 3), 1)
