"""Which third-party models AutoPrune handles out of the box: the compatibility table in README.md.

Every model is built offline from a small config (no weights are downloaded) and wrapped in a
LightningModule that trains on random inputs, so each check runs in seconds on a CPU. Per model:

- **unstructured**: ``AutoPrune(target_sparsity=0.8, importance="magnitude")`` with the default
  targets; the share of the model's parameters that ends exactly zero, and which tensors were
  targets (so embeddings pruned in place of the real layers would show).
- **structured + compact**: ``AutoPrune(granularity="structured", target_sparsity=0.5)``, then
  :func:`lightning_autoprune.compact`; the parameter ratio and the CPU latency ratio (median of
  alternating dense and compacted forward passes), or the error a user would see.
- **checkpoint round-trip**: the Trainer checkpoint of the pruned run loads into a freshly built,
  unmodified model, which gives the same outputs.
- **resume exact**: a run stopped after 2 of 4 epochs and resumed from its checkpoint ends with the
  same masks as an uninterrupted run.

timm and torchvision rows are measured where those packages import; on the project's machines the
only torchvision wheels are CUDA builds whose C ops do not load against the CPU torch, so those rows
say so instead of a number.

    python -m benchmarks.compatibility            # writes benchmarks/results/compatibility.json, README table
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_autoprune import AutoPrune, compact, count_parameters
from lightning_autoprune.core.files import atomic_write_text
from lightning_autoprune.examples import quiet_trainer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "compatibility.json"
README = ROOT / "README.md"
START, END = "<!-- compatibility:start -->", "<!-- compatibility:end -->"
SAMPLES, BATCH = 64, 16


# ---------------------------------------------------------------------------------------------- models
def _transformers() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def gpt2() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return t.GPT2LMHeadModel(config), "lm"


def gpt_neox() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.GPTNeoXConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        vocab_size=64,
        max_position_embeddings=32,
    )
    return t.GPTNeoXForCausalLM(config), "lm"


def llama() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
        max_position_embeddings=32,
    )
    return t.LlamaForCausalLM(config), "lm"


def bert() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64, num_labels=3
    )
    return t.BertForSequenceClassification(config), "text"


def hf_resnet() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    return t.ResNetForImageClassification(config), "image"


def hf_convnext() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, num_stages=2)
    return t.ConvNextForImageClassification(config), "image"


def hf_mobilenet_v2() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.MobileNetV2Config(depth_multiplier=0.25, num_labels=3, image_size=32)
    return t.MobileNetV2ForImageClassification(config), "image"


def hf_vit() -> tuple[nn.Module, str]:
    t = _transformers()
    config = t.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    return t.ViTForImageClassification(config), "image"


def _timm(name: str, **kwargs: Any) -> Callable[[], tuple[nn.Module, str]]:
    def build() -> tuple[nn.Module, str]:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=3, **kwargs), "image"

    return build


def _torchvision(name: str) -> Callable[[], tuple[nn.Module, str]]:
    def build() -> tuple[nn.Module, str]:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=3), "image"

    return build


MODELS: dict[str, Callable[[], tuple[nn.Module, str]]] = {
    "transformers GPT-2": gpt2,
    "transformers GPT-NeoX": gpt_neox,
    "transformers LLaMA": llama,
    "transformers BERT": bert,
    "transformers ResNet": hf_resnet,
    "transformers ConvNeXt": hf_convnext,
    "transformers MobileNetV2": hf_mobilenet_v2,
    "transformers ViT": hf_vit,
    "timm resnet18": _timm("resnet18"),
    "timm mobilenetv3_small_100": _timm("mobilenetv3_small_100"),
    "timm convnext_atto": _timm("convnext_atto"),
    "timm vit_tiny_patch16_224": _timm("vit_tiny_patch16_224", img_size=32, patch_size=8),
    "torchvision resnet18": _torchvision("resnet18"),
    "torchvision mobilenet_v3_small": _torchvision("mobilenet_v3_small"),
}


# ---------------------------------------------------------------------------------------------- training
class Wrapped(LightningModule):
    """A LightningModule around a third-party model: the task's loss on its batches, ``val_loss`` logged."""

    def __init__(self, build: Callable[[], tuple[nn.Module, str]]) -> None:
        super().__init__()
        self.model, self.kind = build()

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the wrapped model for token ids or images."""
        if self.kind in ("lm", "text"):
            return self.model(input_ids=x).logits
        if hasattr(self.model, "config"):  # transformers vision models
            return self.model(pixel_values=x).logits
        return self.model(x)

    def _loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        logits = self(x)
        if self.kind == "lm":
            return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return nn.functional.cross_entropy(logits, y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The task's loss, logged as ``train_loss``."""
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """``val_loss``."""
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam at 1e-3."""
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _inputs(kind: str, samples: int, generator: torch.Generator) -> Tensor:
    if kind in ("lm", "text"):
        return torch.randint(0, 64, (samples, 16), generator=generator)
    return torch.randn(samples, 3, 32, 32, generator=generator)


def loader(kind: str, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = _inputs(kind, SAMPLES, generator)
    y = torch.randint(0, 3, (SAMPLES,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


class _StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _fit(
    build: Callable[[], tuple[nn.Module, str]],
    callback: AutoPrune,
    epochs: int,
    root: Path,
    extra: list[Callback] | None = None,
    ckpt_path: Path | None = None,
) -> Wrapped:
    seed_everything(0, verbose=False)
    model = Wrapped(build)
    data = loader(model.kind)
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in extra or [])
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback, *(extra or [])],
        default_root_dir=str(root),
        enable_checkpointing=checkpointing,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, train_dataloaders=data, val_dataloaders=loader(model.kind, seed=1), ckpt_path=ckpt_path)
    return model


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


# ---------------------------------------------------------------------------------------------- checks
def check_unstructured(build: Callable[[], tuple[nn.Module, str]], root: Path) -> dict[str, Any]:
    callback = AutoPrune(
        target_sparsity=0.8, importance="magnitude", start_epoch=1, end_epoch=2, report=False, verbose=False
    )
    model = _fit(build, callback, 3, root / "unstructured")
    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(p.numel() for p in params)
    zeros = sum(int((p == 0).sum()) for p in params)
    return {
        "pruned_share": zeros / total,
        "target_share": sum(t.param.numel() for t in callback.targets) / total,
        "sparsity": callback.sparsity,
        "targets": len(callback.targets),
        "embeddings_pruned": [t.name for t in callback.targets if isinstance(t.module, nn.Embedding)],
    }


def _latency(model: nn.Module, other: nn.Module, x: Tensor, rounds: int = 15) -> tuple[float, float]:
    """Medians of alternating forward passes of two models on the same input, in seconds."""
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        for m in (model, other):
            m(x)  # warm-up
        for _ in range(rounds):
            for i, m in enumerate((model, other)):
                start = time.perf_counter()
                m(x)
                times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def check_structured(build: Callable[[], tuple[nn.Module, str]], root: Path) -> dict[str, Any]:
    callback = AutoPrune(
        target_sparsity=0.5, granularity="structured", start_epoch=1, end_epoch=2, report=False, verbose=False
    )
    try:
        model = _fit(build, callback, 3, root / "structured")
    except Exception as err:  # the error a user sees is the result
        return {"ok": False, "stage": "pruning", "error": _error(err)}
    model.eval()
    x = _inputs(model.kind, 8, torch.Generator().manual_seed(2))
    try:
        small = compact(model, (x,))
    except Exception as err:
        return {"ok": False, "stage": "compact", "error": _error(err), "sparsity": callback.sparsity}
    dense_s, small_s = _latency(model, small, x)
    return {
        "ok": True,
        "sparsity": callback.sparsity,
        "params_before": count_parameters(model),
        "params_after": count_parameters(small),
        "latency_ratio": dense_s / small_s,
        "max_output_difference": float((model(x) - small(x)).abs().max()),
    }


def check_checkpoint(build: Callable[[], tuple[nn.Module, str]], root: Path) -> dict[str, Any]:
    callback = AutoPrune(
        target_sparsity=0.8, importance="magnitude", start_epoch=1, end_epoch=2, report=False, verbose=False
    )
    model = _fit(build, callback, 3, root / "checkpoint")
    path = root / "pruned.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    fresh = Wrapped(build)
    fresh.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    x = _inputs(model.kind, 4, torch.Generator().manual_seed(3))
    model.eval()
    fresh.eval()
    with torch.inference_mode():
        same = torch.equal(model(x), fresh(x))
    return {"ok": bool(same)}


def check_resume(build: Callable[[], tuple[nn.Module, str]], root: Path) -> dict[str, Any]:
    def make() -> AutoPrune:
        return AutoPrune(
            target_sparsity=0.8, importance="magnitude", start_epoch=1, end_epoch=3, report=False, verbose=False
        )

    straight = make()
    _fit(build, straight, 4, root / "straight")
    first = make()
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
    _fit(build, first, 4, root / "first", extra=[checkpoint, _StopAfter(1)])
    resumed = make()
    _fit(build, resumed, 4, root / "resumed", ckpt_path=root / "ckpt" / "last.ckpt")
    same = set(straight.masks) == set(resumed.masks) and all(
        torch.equal(straight.masks[n], resumed.masks[n]) for n in straight.masks
    )
    return {"ok": bool(same)}


CHECKS = {
    "unstructured": check_unstructured,
    "structured": check_structured,
    "checkpoint": check_checkpoint,
    "resume": check_resume,
}


def run_model(name: str, build: Callable[[], tuple[nn.Module, str]], log: Callable[[str], None]) -> dict[str, Any]:
    """Every check on one model; an import failure or a crash is recorded, not raised."""
    row: dict[str, Any] = {"model": name}
    try:
        build()
    except Exception as err:
        row["unavailable"] = _error(err)
        log(f"[AutoPrune] {name}: not importable here ({row['unavailable']})")
        return row
    for check, fn in CHECKS.items():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                row[check] = fn(build, Path(tmp))
            except Exception as err:
                row[check] = {"ok": False, "error": _error(err), "trace": traceback.format_exc(limit=3)}
        log(f"[AutoPrune] {name}: {check} done in {time.perf_counter() - start:.1f} s")
    return row


# ---------------------------------------------------------------------------------------------- table
def _cell(row: dict[str, Any], check: str) -> str:
    result = row.get(check) or {}
    if check == "unstructured":
        if "pruned_share" not in result:
            return f"error: {result.get('error', '?')}"
        embeddings = result["embeddings_pruned"]
        note = f"; embeddings pruned: {', '.join(embeddings)}" if embeddings else ""
        return f"{result['pruned_share']:.0%} of all parameters{note}"
    if check == "structured":
        if not result.get("ok"):
            return f"no ({result.get('stage', 'error')}: {result.get('error', '?')})"
        ratio = result["params_before"] / result["params_after"]
        return f"yes: {ratio:.2f}x fewer parameters, {result['latency_ratio']:.2f}x faster"
    return "yes" if result.get("ok") else f"no{': ' + result['error'] if result.get('error') else ''}"


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ["model", "unstructured (80% target, defaults)", "structured + compact (50%)", "checkpoint", "resume"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"| {row['model']} | not importable here: {row['unavailable']} | | | |")
            continue
        cells = [_cell(row, check) for check in CHECKS]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_readme(table: str, readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block for the compatibility table.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{START}\n{table}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="which rows (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md's table")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = [run_model(name, MODELS[name], print) for name in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    table = render_table(rows)
    print(table)
    if not args.no_readme:
        update_readme(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
