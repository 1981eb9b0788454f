"""AutoPrune on models the user did not write: transformers models built from configs, frozen backbones, custom layers.

Real Trainers on tiny models and random token data; nothing is downloaded. The transformers tests
are skipped when transformers is not installed (it is a test-only dependency, in the ``dev`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoprune import AutoPrune
from lightning_autoprune.core.masks import count_zeros
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier

VOCAB, LENGTH = 64, 16
GPT2_PROJECTIONS = [
    f"model.transformer.h.{i}.{p}.weight"
    for i in (0, 1)
    for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


def _transformers() -> Any:
    return pytest.importorskip("transformers", reason="tests of transformers models need transformers (the dev extra)")


def _gpt2() -> nn.Module:
    transformers = _transformers()
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    transformers = _transformers()
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
    )
    return transformers.LlamaForCausalLM(config)


def _bert() -> nn.Module:
    transformers = _transformers()
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB
    )
    return transformers.BertForSequenceClassification(config)


class HFModule(LightningModule):
    """A transformers model trained on its own loss: next tokens for a causal LM, ``labels`` for a classifier."""

    def __init__(self, model: nn.Module, classify: bool = False) -> None:
        super().__init__()
        self.model = model
        self.classify = classify

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, labels = batch
        loss: Tensor = self.model(input_ids=tokens, labels=labels if self.classify else tokens).loss
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), batch_size=len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class Loaders(TypedDict):
    train_dataloaders: DataLoader
    val_dataloaders: DataLoader


def _loaders(samples: int = 64) -> Loaders:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (samples, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (samples,), generator=generator)
    data = TensorDataset(tokens, labels)
    return {
        "train_dataloaders": DataLoader(data, batch_size=16, shuffle=True),
        "val_dataloaders": DataLoader(data, batch_size=32),
    }


def _share_pruned(callback: AutoPrune) -> float:
    zeros, total = count_zeros(t.param.detach() for t in callback.targets)
    return zeros / total


def _fit(module: LightningModule, callback: AutoPrune, trainer_kwargs: dict) -> Trainer:
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    trainer.fit(module, **_loaders())
    return trainer


# ----------------------------------------------------------------------------- GPT-2


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One default AutoPrune fit of a tiny GPT-2, checkpointed: several tests read it."""
    _transformers()
    root = tmp_path_factory.mktemp("gpt2")
    seed_everything(0)
    module = HFModule(_gpt2())
    callback = AutoPrune(target_sparsity=0.6, start_epoch=1, end_epoch=1, report=False, verbose=False)
    trainer = Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[callback],
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
    )
    trainer.fit(module, **_loaders())
    path = root / "pruned.ckpt"
    trainer.save_checkpoint(path)
    return {"module": module, "callback": callback, "path": path}


def test_gpt2_default_targets_are_the_conv1d_projections_pruned_to_the_target(gpt2_run: dict[str, Any]) -> None:
    callback = gpt2_run["callback"]
    assert [t.name for t in callback.targets] == GPT2_PROJECTIONS
    assert all(t.transposed for t in callback.targets)
    assert _share_pruned(callback) == pytest.approx(0.6, abs=0.005)


def test_gpt2_embeddings_and_tied_head_stay_dense_and_are_named(gpt2_run: dict[str, Any]) -> None:
    model = gpt2_run["module"].model
    assert model.lm_head.weight is model.transformer.wte.weight
    for param in (model.transformer.wte.weight, model.transformer.wpe.weight):
        assert torch.count_nonzero(param) == param.numel()
    skipped = gpt2_run["callback"].skipped
    assert set(skipped) == {"model.transformer.wte.weight", "model.transformer.wpe.weight"}
    assert "model.lm_head.weight" in skipped["model.transformer.wte.weight"]


def test_gpt2_checkpoint_loads_into_an_unmodified_module(gpt2_run: dict[str, Any]) -> None:
    raw = torch.load(gpt2_run["path"], weights_only=True)
    fresh = HFModule(_gpt2())
    fresh.load_state_dict(raw["state_dict"])  # strict: the model's own keys, nothing added
    for name, tensor in gpt2_run["module"].state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    masks = raw["callbacks"][gpt2_run["callback"].state_key]["masks"]
    assert set(masks) == set(GPT2_PROJECTIONS)


def test_gpt2_included_tied_head_is_one_target(trainer_kwargs: dict) -> None:
    seed_everything(0)
    module = HFModule(_gpt2())
    callback = AutoPrune(
        target_sparsity=0.5,
        importance="magnitude",
        include=["model.lm_head.weight", "model.transformer.wte.weight", "*.mlp.c_fc.weight"],
        start_epoch=1,
        end_epoch=1,
        report=False,
        verbose=False,
    )
    _fit(module, callback, trainer_kwargs)
    names = [t.name for t in callback.targets]
    assert names == [f"model.transformer.{n}.weight" for n in ("wte", "h.0.mlp.c_fc", "h.1.mlp.c_fc")]
    assert callback.targets[0].aliases == ("model.lm_head.weight",)
    assert sum(m.numel() for m in callback.masks.values()) == VOCAB * 32 + 2 * 32 * 128  # the tied tensor once
    assert _share_pruned(callback) == pytest.approx(0.5, abs=0.005)


def test_gpt2_resume_gives_the_masks_of_an_uninterrupted_run(
    trainer_kwargs: dict, tmp_path: Path, stop_after: Callable[[int], Callback]
) -> None:
    def make_callback() -> AutoPrune:
        return AutoPrune(target_sparsity=0.7, start_epoch=1, end_epoch=3, report=False, verbose=False)

    common = {**trainer_kwargs, "max_epochs": 4, "limit_train_batches": 2, "limit_val_batches": 1}

    seed_everything(0)
    uninterrupted = make_callback()
    module_a = HFModule(_gpt2())
    Trainer(callbacks=[uninterrupted], **common).fit(module_a, **_loaders())

    seed_everything(0)
    first = make_callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    interrupted = Trainer(callbacks=[first, checkpoint, stop_after(1)], **{**common, "enable_checkpointing": True})
    interrupted.fit(HFModule(_gpt2()), **_loaders())
    assert interrupted.current_epoch == 2  # stopped after epochs 0..1, mid-schedule

    seed_everything(1234)
    resumed = make_callback()
    module_b = HFModule(_gpt2())
    Trainer(callbacks=[resumed], **common).fit(module_b, **_loaders(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert set(resumed.masks) == set(uninterrupted.masks) == set(GPT2_PROJECTIONS)
    for name, mask in uninterrupted.masks.items():
        assert torch.equal(resumed.masks[name], mask), name


# ----------------------------------------------------------------------------- LLaMA and BERT


def test_llama_default_targets_are_every_projection(trainer_kwargs: dict) -> None:
    seed_everything(0)
    callback = AutoPrune(target_sparsity=0.5, start_epoch=1, end_epoch=1, report=False, verbose=False)
    _fit(HFModule(_llama()), callback, trainer_kwargs)
    layer = "model.model.layers.0"
    assert [t.name for t in callback.targets] == [
        *(f"{layer}.self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
        "model.lm_head.weight",  # not tied to the embedding in LlamaConfig's default: an ordinary Linear head
    ]
    assert set(callback.skipped) == {"model.model.embed_tokens.weight"}
    assert _share_pruned(callback) == pytest.approx(0.5, abs=0.005)


def test_bert_default_targets_are_every_projection(trainer_kwargs: dict) -> None:
    seed_everything(0)
    callback = AutoPrune(target_sparsity=0.5, start_epoch=1, end_epoch=1, report=False, verbose=False)
    _fit(HFModule(_bert(), classify=True), callback, trainer_kwargs)
    layer = "model.bert.encoder.layer.0"
    assert [t.name for t in callback.targets] == [
        *(f"{layer}.attention.self.{p}.weight" for p in ("query", "key", "value")),
        f"{layer}.attention.output.dense.weight",
        f"{layer}.intermediate.dense.weight",
        f"{layer}.output.dense.weight",
        "model.bert.pooler.dense.weight",
        "model.classifier.weight",
    ]
    assert set(callback.skipped) == {
        f"model.bert.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")
    }
    assert _share_pruned(callback) == pytest.approx(0.5, abs=0.005)


# ----------------------------------------------------------------------------- frozen backbones


def _frozen_mlp() -> MLPClassifier:
    model = MLPClassifier(hidden=[32, 32], lr=1e-2)
    net = cast(nn.Sequential, model.net)
    net[1].requires_grad_(False)
    net[3].requires_grad_(False)
    return model


@pytest.mark.parametrize("importance", [None, "taylor"], ids=["default", "taylor"])
def test_frozen_backbone_is_skipped_named_and_untouched(
    importance: str | None, digits: DigitsDataModule, trainer_kwargs: dict, caplog: pytest.LogCaptureFixture
) -> None:
    seed_everything(0)
    model = _frozen_mlp()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    callback = AutoPrune(target_sparsity=0.5, importance=importance, start_epoch=1, end_epoch=1, report=False)
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule=digits)
    assert [t.name for t in callback.targets] == ["net.5.weight"]
    assert _share_pruned(callback) == pytest.approx(0.5, abs=0.01)
    for name, before in frozen.items():
        assert torch.equal(dict(model.named_parameters())[name], before), name
    assert callback.skipped == {
        "net.1.weight": "frozen (requires_grad=False)",
        "net.3.weight": "frozen (requires_grad=False)",
    }
    said = [r.getMessage() for r in caplog.records if "dense by default" in r.getMessage()]
    assert len(said) == 1
    assert "net.1.weight, net.3.weight" in said[0]


@pytest.mark.parametrize("importance", ["taylor", None], ids=["taylor", "default"])
def test_included_frozen_weights_are_scored_by_gradient_scorers(
    importance: str | None, digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    model = _frozen_mlp()
    callback = AutoPrune(
        target_sparsity=0.5,
        importance=importance,
        include=["net.3.weight", "net.5.weight"],
        start_epoch=1,
        end_epoch=1,
        report=False,
        verbose=False,
    )
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    trainer.fit(model, datamodule=digits)
    assert [t.name for t in callback.targets] == ["net.3.weight", "net.5.weight"]
    assert _share_pruned(callback) == pytest.approx(0.5, abs=0.01)
    net = cast(nn.Sequential, model.net)
    assert not net[3].weight.requires_grad  # frozen again after calibration
    assert net[3].weight.grad is None


# ----------------------------------------------------------------------------- layers no rule knows


class MatmulClassifier(MLPClassifier):
    """A classifier whose hidden layer is a bare 2-D parameter used in a matmul: no rule knows it."""

    def __init__(self) -> None:
        super().__init__(hidden=[16])
        self.proj = nn.Parameter(torch.randn(64, 64) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(x.flatten(1) @ self.proj)
        return logits


def test_weights_no_rule_covers_are_warned_about_with_the_include_that_adds_them(
    digits: DigitsDataModule, trainer_kwargs: dict
) -> None:
    seed_everything(0)
    callback = AutoPrune(
        target_sparsity=0.5, importance="magnitude", start_epoch=1, end_epoch=1, report=False, verbose=False
    )
    trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], **trainer_kwargs)
    with pytest.warns(UserWarning, match=r"no rule covers: proj\..*include=\['net\.\*\.weight', 'proj'\]"):
        trainer.fit(MatmulClassifier(), datamodule=digits)
    assert torch.count_nonzero(cast(MatmulClassifier, trainer.lightning_module).proj) == 64 * 64
