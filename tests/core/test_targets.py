from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_autoprune.core.targets import (
    default_targets,
    resolve_targets,
    select_targets,
    skipped_message,
    structured_targets,
    targets_for_run,
    uncovered_warning,
)


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


def test_conv_and_batchnorm_not_embedding() -> None:
    model = nn.Sequential(
        nn.Embedding(5, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv3d(4, 2, 1), nn.Conv1d(2, 2, 1)
    )
    assert names(model) == ["1.weight", "3.weight", "4.weight"]
    assert names(model, include=["*.weight"]) == ["0.weight", "1.weight", "2.weight", "3.weight", "4.weight"]


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


# ----------------------------------------------------------------------------- models the user did not write


class Conv1D(nn.Module):
    """transformers' ``Conv1D`` (GPT-2), copied to run without transformers: ``x @ W + b``, W ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Dense(nn.Module):
    """A linear layer that is not an ``nn.Linear`` but carries its attribute contract."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class LoraLinear(nn.Module):
    """PEFT's layout: the frozen base layer, and adapters in ``lora_A``/``lora_B`` module dicts."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, rank, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(rank, base.out_features, bias=False)})
        self.lora_embedding_A = nn.ParameterDict({"default": nn.Parameter(torch.zeros(rank, 4))})


class Matmul(nn.Module):
    """A custom block whose prunable weight is a bare 2-D parameter used in a matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(16, 16))
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x @ self.proj)


def test_conv1d_is_a_transposed_target_and_linear_like_layers_are_targets() -> None:
    model = nn.Sequential(Conv1D(nf=6, nx=4), Dense(6, 3))
    targets = default_targets(model)
    assert [(t.name, t.transposed, t.out_dim, t.in_dim) for t in targets] == [
        ("0.weight", True, 1, 0),
        ("1.weight", False, 0, 1),
    ]


def test_embeddings_are_skipped_with_a_reason_and_tied_heads_counted_once() -> None:
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.ModuleDict({"wte": embedding, "body": nn.Linear(4, 4), "lm_head": head})
    selection = select_targets(model)
    assert [t.name for t in selection.targets] == ["body.weight"]
    assert selection.skipped == {"wte.weight": "embedding tied to an output head (lm_head.weight)"}
    message = skipped_message(selection)
    assert message is not None
    assert "wte.weight" in message
    assert "`include`" in message


@pytest.mark.parametrize("pattern", ["*.weight", "lm_head.weight", "wte.weight", "*"])
def test_include_selects_a_tied_tensor_once_by_any_of_its_names(pattern: str) -> None:
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.ModuleDict({"wte": embedding, "lm_head": head})
    (target,) = resolve_targets(model, include=[pattern])
    assert (target.name, target.aliases) == ("wte.weight", ("lm_head.weight",))
    with pytest.raises(ValueError, match="No prunable tensor is left"):
        resolve_targets(model, include=[pattern], exclude=["lm_head.*"])


def test_frozen_weights_are_skipped_unless_included() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    selection = select_targets(model)
    assert [t.name for t in selection.targets] == ["2.weight"]
    assert selection.skipped == {"0.weight": "frozen (requires_grad=False)"}
    assert names(model, include=["*.weight"]) == ["0.weight", "2.weight"]


def test_lora_adapters_are_never_default_targets() -> None:
    model = nn.ModuleDict({"q_proj": LoraLinear(nn.Linear(4, 4)), "out": nn.Linear(4, 2)})
    selection = select_targets(model)
    assert [t.name for t in selection.targets] == ["q_proj.base_layer.weight", "out.weight"]
    assert set(selection.skipped) == {
        "q_proj.lora_A.default.weight",
        "q_proj.lora_B.default.weight",
        "q_proj.lora_embedding_A.default",
    }
    assert all(reason.startswith("LoRA adapter") for reason in selection.skipped.values())


def test_weights_no_rule_covers_are_reported_with_the_include_that_adds_them() -> None:
    selection = select_targets(Matmul())
    assert [t.name for t in selection.targets] == ["head.weight"]
    assert selection.uncovered == ["proj"]
    assert selection.uncovered_share == pytest.approx(256 / 288)
    message = uncovered_warning(selection)
    assert message is not None
    assert "include=['head.weight', 'proj']" in message
    assert uncovered_warning(select_targets(nn.Sequential(nn.Linear(4, 4)))) is None


def test_a_small_uncovered_share_is_not_warned_about() -> None:
    model = nn.ModuleDict({"big": nn.Linear(64, 64), "scale": nn.ParameterList([nn.Parameter(torch.ones(2, 2))])})
    selection = select_targets(model)
    assert selection.uncovered == ["scale.0"]
    assert uncovered_warning(selection) is None


def test_structured_targets_take_conv1d_like_a_linear() -> None:
    model = nn.Sequential(Conv1D(nf=6, nx=4), nn.Linear(6, 3), nn.Embedding(3, 2))
    found, skipped = structured_targets(model, resolve_targets(model, include=["0.weight", "1.weight", "2.weight"]))
    assert [t.name for t in found] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert skipped == ["2.weight"]


# ----------------------------------------------------------------------------- transformers models, from configs


def test_gpt2_targets_are_the_conv1d_projections() -> None:
    transformers = pytest.importorskip("transformers", reason="the GPT-2 target test needs transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    selection = select_targets(model)
    projections = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert [t.name for t in selection.targets] == [
        f"transformer.h.{i}.{p}.weight" for i in range(2) for p in projections
    ]
    assert all(t.transposed for t in selection.targets)
    assert set(selection.skipped) == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert "lm_head.weight" in selection.skipped["transformer.wte.weight"]
    assert selection.uncovered == []
    included = resolve_targets(model, include=["lm_head.weight", "transformer.wte.weight", "*.c_fc.weight"])
    assert [t.name for t in included] == [
        "transformer.wte.weight",
        *(f"transformer.h.{i}.mlp.c_fc.weight" for i in (0, 1)),
    ]


def test_llama_targets_cover_every_projection_not_embeddings() -> None:
    transformers = pytest.importorskip("transformers", reason="the LLaMA target test needs transformers")
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    selection = select_targets(transformers.LlamaForCausalLM(config))
    layer = "model.layers.0"
    assert [t.name for t in selection.targets] == [
        *(f"{layer}.self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
        "lm_head.weight",  # LlamaConfig does not tie the head to the embedding: an ordinary Linear
    ]
    assert selection.skipped == {"model.embed_tokens.weight": "embedding (token or position lookup table)"}
    assert selection.uncovered == []


def test_bert_targets_cover_every_projection_not_embeddings() -> None:
    transformers = pytest.importorskip("transformers", reason="the BERT target test needs transformers")
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64
    )
    selection = select_targets(transformers.BertForSequenceClassification(config))
    layer = "bert.encoder.layer.0"
    assert [t.name for t in selection.targets] == [
        *(f"{layer}.attention.self.{p}.weight" for p in ("query", "key", "value")),
        f"{layer}.attention.output.dense.weight",
        f"{layer}.intermediate.dense.weight",
        f"{layer}.output.dense.weight",
        "bert.pooler.dense.weight",
        "classifier.weight",
    ]
    assert set(selection.skipped) == {
        f"bert.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")
    }
    assert selection.uncovered == []


def test_targets_for_run_warns_about_uncovered_weights_and_keeps_the_reasons() -> None:
    with pytest.warns(UserWarning, match=r"include=\['head.weight', 'proj'\]"):
        selection = targets_for_run(Matmul(), None, None)
    assert [t.name for t in selection.targets] == ["head.weight"]
    assert selection.uncovered == ["proj"]


def test_targets_for_run_narrows_to_structured_layers_and_says_what_it_leaves() -> None:
    model = nn.Sequential(Conv1D(nf=6, nx=4), nn.GRU(6, 3))
    with pytest.warns(UserWarning, match=r"leaves these selected tensors unpruned: .*1\.weight_ih_l0"):
        selection = targets_for_run(model, None, None, structured=True)
    assert [t.name for t in selection.targets] == ["0.weight", "0.bias"]


def test_targets_for_run_refuses_tensors_another_callback_prunes() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    theirs = resolve_targets(model, include=["1.weight"])
    with pytest.raises(ValueError, match=r"Two AutoPrune callbacks claim the same tensors: 1\.weight"):
        targets_for_run(model, None, None, others=[theirs])
    assert [t.name for t in targets_for_run(model, None, ["1.*"], others=[theirs]).targets] == ["0.weight"]
