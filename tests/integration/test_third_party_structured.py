"""Structured pruning and compaction on transformers models built from tiny configs (no downloads)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoprune import AutoPrune
from lightning_autoprune.structured import count_parameters

transformers = pytest.importorskip("transformers")

CLASSES = 3


class HFClassifier(LightningModule):
    """A transformers classification model behind a LightningModule: ``forward`` returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # a transformers model: mypy sees the module as Any, and the tests read its submodules by name
        self.model: Any = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _images(size: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, 1, size, size, generator=generator), torch.arange(32) % CLASSES)


def _tokens() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(1, 50, (32, 8), generator=generator), torch.arange(32) % CLASSES)


def _resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=CLASSES
    )
    return transformers.ResNetForImageClassification(config)


def _convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        num_channels=1, patch_size=2, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=CLASSES
    )
    return transformers.ConvNextForImageClassification(config)


def _mobilenet() -> nn.Module:
    config = transformers.MobileNetV2Config(num_channels=1, image_size=16, depth_multiplier=0.25, num_labels=CLASSES)
    return transformers.MobileNetV2ForImageClassification(config)


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=CLASSES,
    )
    return transformers.BertForSequenceClassification(config)


def _fit(
    model: LightningModule, data: TensorDataset, autoprune: AutoPrune, trainer_kwargs: dict[str, Any], epochs: int = 2
) -> Trainer:
    loader = DataLoader(data, batch_size=16)
    trainer = Trainer(max_epochs=epochs, callbacks=[autoprune], **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the units kept; tests that read them catch them
        trainer.fit(model, loader, loader)
    return trainer


def _autoprune(tmp_path: Path, **kwargs: Any) -> AutoPrune:
    settings: dict[str, Any] = {
        "target_sparsity": 0.5,
        "granularity": "structured",
        "schedule": "one_shot",
        "start_epoch": 1,
        "end_epoch": 1,
        "report_dir": str(tmp_path / "report"),
        "verbose": False,
    }
    return AutoPrune(**{**settings, **kwargs})


@pytest.mark.parametrize(("build", "size"), [(_resnet, 16), (_convnext, 16), (_mobilenet, 16)])
def test_vision_cnn_compacts_to_equal_outputs(
    build: Callable[[], nn.Module], size: int, trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    seed_everything(0)
    model = HFClassifier(build())
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True)
    _fit(model, _images(size), autoprune, trainer_kwargs)

    assert autoprune.sparsity > 0.1
    small = autoprune.compacted_model
    assert small is not None
    assert count_parameters(small) < count_parameters(model)
    x = _images(size).tensors[0][:8]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_bert_prunes_ffn_units_and_keeps_attention(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    seed_everything(0)
    model = HFClassifier(_bert())
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True)
    trainer = Trainer(max_epochs=2, callbacks=[autoprune], **trainer_kwargs)
    loader = DataLoader(_tokens(), batch_size=16)
    with pytest.warns(UserWarning, match=r"keeps every unit of: .*attention\.self\.query.*attention projections"):
        trainer.fit(model, loader, loader)

    layer = model.model.bert.encoder.layer[0]
    dead = (layer.intermediate.dense.weight == 0).all(dim=1)
    assert dead.any(), "FFN hidden units were pruned"
    assert (layer.output.dense.weight[:, dead] == 0).all(), "with the input columns that read them"
    for projection in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
        assert (projection.weight != 0).any(dim=1).all(), "attention heads stay whole"
    small = autoprune.compacted_model
    assert small is not None
    assert isinstance(small, HFClassifier)
    assert small.model.bert.encoder.layer[0].intermediate.dense.out_features == int((~dead).sum())
    x = _tokens().tensors[0][:8]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


@pytest.mark.parametrize("family", ["llama", "vit"])
def test_ffn_units_compact_and_attention_stays(family: str, trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    seed_everything(0)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=16,
            num_labels=CLASSES,
            pad_token_id=0,
        )
        model = HFClassifier(transformers.LlamaForSequenceClassification(config))
        data, block = _tokens(), model.model.model.layers[0]
        ffn, attention = [block.mlp.gate_proj, block.mlp.up_proj], block.self_attn
    else:
        config = transformers.ViTConfig(
            num_channels=1,
            image_size=8,
            patch_size=4,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=CLASSES,
        )
        model = HFClassifier(transformers.ViTForImageClassification(config))
        data, block = _images(8), model.model.vit.layers[0]
        ffn, attention = [block.mlp.fc1], block.attention
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True)
    _fit(model, data, autoprune, trainer_kwargs)

    dead = torch.stack([(layer.weight == 0).all(dim=1) for layer in ffn]).all(dim=0)
    assert dead.any(), "FFN hidden units were pruned, in every coupled projection together"
    for layer in attention.modules():
        if isinstance(layer, nn.Linear):
            assert (layer.weight != 0).any(dim=1).all(), "attention heads stay whole"
    small = autoprune.compacted_model
    assert small is not None
    assert count_parameters(small) < count_parameters(model)
    x = data.tensors[0][:8]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_gpt2_prunes_and_compacts_its_conv1d_ffn(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    """GPT-2's projections are transformers' Conv1D (weights stored [in, out]): its MLP units prune and compact."""
    seed_everything(0)
    config = transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16, num_labels=CLASSES, pad_token_id=0
    )
    model = HFClassifier(transformers.GPT2ForSequenceClassification(config))
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True)
    trainer = Trainer(max_epochs=2, callbacks=[autoprune], **trainer_kwargs)
    loader = DataLoader(_tokens(), batch_size=16)
    with pytest.warns(UserWarning, match=r"keeps every unit of: .*attn\.c_attn.*attention projections"):
        trainer.fit(model, loader, loader)

    mlp = model.model.transformer.h[0].mlp
    dead = (mlp.c_fc.weight == 0).all(dim=0)  # Conv1D: output units along dim 1
    assert dead.any(), "FFN hidden units were pruned"
    assert (mlp.c_fc.bias[dead] == 0).all()
    assert (mlp.c_proj.weight[dead] == 0).all(), "with the input rows that read them"
    attention = model.model.transformer.h[0].attn
    assert (attention.c_attn.weight != 0).any(dim=0).all(), "attention heads stay whole"
    small = autoprune.compacted_model
    assert isinstance(small, HFClassifier)
    compacted = small.model.transformer.h[0].mlp
    assert compacted.c_fc.weight.shape == (16, int((~dead).sum()))
    assert compacted.c_fc.nf == compacted.c_proj.weight.shape[0] == int((~dead).sum())
    assert count_parameters(small) < count_parameters(model)
    x = _tokens().tensors[0][:8]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


class TokenMixer(nn.Module):
    """Multi-head self-attention under a name that hides it: Torch-Pruning traces its heads as plain channels."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape

        def split(h: Tensor) -> Tensor:
            return h.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return mixed.transpose(1, 2).reshape(b, t, d)


class MixerClassifier(HFClassifier):
    """Embedding, a :class:`TokenMixer`, a hidden layer and a classifier; compaction cannot shrink the mixer."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.embed = nn.Embedding(50, 16)
        self.mixer = TokenMixer(16, heads=2)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mixer(self.embed(x)).mean(dim=1)
        return self.head(torch.relu(self.hidden(h)))


def test_failed_compaction_at_fit_end_keeps_the_masked_model_and_the_report(
    trainer_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    seed_everything(0)
    model = MixerClassifier()
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True, target_sparsity=0.6)
    loader = DataLoader(_tokens(), batch_size=16)
    trainer = Trainer(max_epochs=2, callbacks=[autoprune], **trainer_kwargs)
    with pytest.warns(UserWarning, match=r"could not compact") as caught:
        trainer.fit(model, loader, loader)

    assert trainer.current_epoch == 2, "training finished"
    message = next(str(w.message) for w in caught if "could not compact" in str(w.message))
    assert "Blocking layers: " in message
    assert "'mixer.query'" in message.split("Blocking layers: ")[1]
    assert "lightning_autoprune.compact(model, example_inputs, ignored_layers=[model.get_submodule(" in message
    assert "model.get_submodule('mixer.query')" in message
    assert autoprune.compacted_model is None
    report = tmp_path / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["compaction"]["error"]
    assert any(name.startswith("mixer.") for name in summary["compaction"]["blocking_layers"])
    assert "compaction failed" in (report / "report.md").read_text()
    assert autoprune.sparsity > 0.1
    with torch.no_grad():
        assert torch.isfinite(model(_tokens().tensors[0][:4])).all(), "the masked model still runs"


def test_a_decoder_that_caches_keys_is_pruned_and_compacted(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    """GPT-NeoX (Pythia's architecture) concatenates keys onto its cache: traced with the cache off."""
    seed_everything(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        num_labels=CLASSES,
        pad_token_id=0,
    )
    model = HFClassifier(transformers.GPTNeoXForSequenceClassification(config))
    assert model.model.config.use_cache is True
    autoprune = _autoprune(tmp_path, compact_on_fit_end=True)
    _fit(model, _tokens(), autoprune, trainer_kwargs)

    mlp = model.model.gpt_neox.layers[0].mlp
    dead = (mlp.dense_h_to_4h.weight == 0).all(dim=1)
    assert dead.any(), "FFN hidden units were pruned"
    assert (mlp.dense_4h_to_h.weight[:, dead] == 0).all(), "with the input columns that read them"
    assert model.model.config.use_cache is True  # the cache setting is the model's again
    small = autoprune.compacted_model
    assert isinstance(small, HFClassifier)
    assert small.model.gpt_neox.layers[0].mlp.dense_h_to_4h.out_features == int((~dead).sum())
    x = _tokens().tensors[0][:8]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))
