from __future__ import annotations

import pytest
from torch import nn

from lightning_autoprune.core.targets import default_targets, resolve_targets


def names(model: nn.Module, **kwargs: list[str]) -> list[str]:
    return [t.name for t in resolve_targets(model, **kwargs)]


def test_transformer_layer_prunes_attention_and_feedforward_not_norms() -> None:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    assert names(layer) == ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"]


def test_separate_qkv_projections() -> None:
    attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    assert names(attention) == ["q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"]


def test_recurrent_layers_prune_input_and_hidden_weights() -> None:
    model = nn.ModuleDict({"lstm": nn.LSTM(3, 4, num_layers=2), "gru": nn.GRU(3, 4)})
    assert names(model) == [
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.weight_ih_l1",
        "lstm.weight_hh_l1",
        "gru.weight_ih_l0",
        "gru.weight_hh_l0",
    ]


def test_conv_batchnorm_embedding() -> None:
    model = nn.Sequential(
        nn.Embedding(5, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv3d(4, 2, 1), nn.Conv1d(2, 2, 1)
    )
    assert names(model) == ["0.weight", "1.weight", "3.weight", "4.weight"]


def test_shared_parameters_are_counted_once() -> None:
    linear = nn.Linear(4, 4)
    model = nn.Sequential(linear, nn.ReLU(), linear)
    assert len(default_targets(model)) == 1


def test_include_opts_into_non_default_parameters_and_exclude_removes() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert names(model, include=["*.bias"]) == ["0.bias", "1.bias"]
    assert names(model, exclude=["1.*"]) == ["0.weight"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"include": ["head.*"]}, r"`include` pattern 'head\.\*' matches no parameter\. Available: 0\.weight, 0\.bias"),
        ({"exclude": ["*.bias"]}, r"`exclude` pattern '\*\.bias' matches no selected parameter\. Selected: 0\.weight"),
        ({"exclude": ["*"]}, r"No prunable tensor is left.*HINT"),
    ],
)
def test_bad_patterns(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_targets(nn.Sequential(nn.Linear(4, 2)), **kwargs)


def test_model_without_weights() -> None:
    with pytest.raises(ValueError, match=r"No prunable tensor is left.*Available parameters: 0\.weight, 0\.bias"):
        resolve_targets(nn.Sequential(nn.LayerNorm(3)))
