"""Train the pretrained importance model that ``AutoPrune(importance="learned")`` starts from.

The zoo, six architecture families on sklearn digits and MNIST-1D: MLPs and 1D CNNs at several
widths and depths (not the ``256-256`` MLPs of the benchmark protocol, and with other seeds, so the
benchmark never scores a model the importance model was trained on), a 1D ResNet with BatchNorm,
a GRU, a transformer encoder (``nn.TransformerEncoderLayer``) and a GPT-2 (``transformers``'
``GPT2Model`` from a config, whose projections are ``Conv1D`` weights stored ``[in, out]``). Each
zoo member trains from scratch with ``AutoPrune(target_sparsity=0.98, importance="learned",
estimator=<collector>, label_budget=None)`` on a cubic schedule, so its pruning events cover many
points of training and sparsities from about 0.2 to 0.98. Every event's labelled rows
(group-ablation features and rank labels, see :mod:`lightning_autoprune.scoring.learned`) are
collected.

Candidate estimators are then compared by leave-one-architecture-out cross-validation: each family
in turn is held out, the candidate is fitted on the other families' rows, and scored by the
Spearman correlation between its predictions and the labels of every held-out event (the labels
are ranks within an event, so this is the held-out fidelity), next to the same number for the
Taylor prior's formula ``log|w| + log(F)/2`` computed from the feature columns. A candidate's score
is the mean over families of its mean event correlation, so every family weighs the same. Among
the candidates fast enough to predict ``MIN_PREDICT_RATE`` rows per second, the best by that score
is refitted on every row and written to ``lightning_autoprune/data/importance_default.skops``
(or ``--model-out``); the comparison, per family, goes to ``benchmarks/results/importance_model.json``.

Usage::

    python scripts/train_importance_model.py            # about 20 minutes on 2 CPU cores
    python scripts/train_importance_model.py --quick    # 2 zoo members, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from lightning_autoprune import AutoPrune
from lightning_autoprune.examples import (
    CNN1DClassifier,
    DigitsDataModule,
    MLPClassifier,
    MNIST1DDataModule,
    RecurrentClassifier,
    TransformerClassifier,
    quiet_trainer,
)
from lightning_autoprune.examples.models import ClassifierModule
from lightning_autoprune.scoring.learned import DEFAULT_MODEL_PATH, save_importance_model
from lightning_autoprune.scoring.learned.features import FEATURE_NAMES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks.realistic_workloads: the tier's 1D ResNet
from benchmarks.realistic_workloads import ResNet1D  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "importance_model.json"
#: The architecture family of each model kind: the unit left out by the cross-validation.
FAMILIES = {"mlp": "mlp", "cnn": "cnn", "resnet": "resnet", "gru": "gru", "transformer": "transformer", "gpt2": "gpt2"}
#: (name, dataset, model kind, widths, epochs, seed)
ZOO: tuple[tuple[str, str, str, list[int], int, int], ...] = (
    ("digits-mlp-64", "digits", "mlp", [64], 20, 101),
    ("digits-mlp-128x2", "digits", "mlp", [128, 128], 20, 102),
    ("digits-mlp-512", "digits", "mlp", [512], 20, 103),
    ("digits-mlp-96x3", "digits", "mlp", [96, 96, 96], 20, 104),
    ("mnist1d-mlp-128", "mnist1d", "mlp", [128], 24, 105),
    ("mnist1d-mlp-128x2", "mnist1d", "mlp", [128, 128], 24, 106),
    ("mnist1d-mlp-512x2", "mnist1d", "mlp", [512, 512], 24, 107),
    ("mnist1d-cnn-16x3", "mnist1d", "cnn", [16, 16, 16], 24, 108),
    ("mnist1d-cnn-32x2", "mnist1d", "cnn", [32, 32], 24, 109),
    ("mnist1d-resnet-16x32", "mnist1d", "resnet", [16, 32], 24, 110),
    ("mnist1d-resnet-24x48", "mnist1d", "resnet", [24, 48], 24, 111),
    ("mnist1d-gru-48", "mnist1d", "gru", [48], 24, 112),
    ("mnist1d-gru-32x2", "mnist1d", "gru", [32, 32], 24, 113),
    ("mnist1d-transformer-32x2", "mnist1d", "transformer", [32, 32], 24, 114),
    ("mnist1d-transformer-48x1", "mnist1d", "transformer", [48], 24, 115),
    ("mnist1d-gpt2-32x2", "mnist1d", "gpt2", [32, 32], 24, 116),
    ("mnist1d-gpt2-48x1", "mnist1d", "gpt2", [48], 24, 117),
)


class GPT2Classifier(ClassifierModule):
    """``transformers``' ``GPT2Model`` (from a config, no weights) over MNIST-1D's 40 steps, mean-pooled.

    Each step is embedded by ``Linear(1, width)``; the GPT-2 blocks' attention and MLP
    projections are ``Conv1D`` weights stored ``[in, out]``, the layout the zoo must cover.

    Args:
        width: the embedding width (``n_embd``).
        layers: the number of GPT-2 blocks.
        lr: the Adam learning rate.
    """

    def __init__(self, width: int = 32, layers: int = 2, lr: float = 1e-3) -> None:
        super().__init__(lr=lr)
        from transformers import GPT2Config, GPT2Model

        config = GPT2Config(
            vocab_size=1, n_positions=40, n_embd=width, n_layer=layers, n_head=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        self.embed = nn.Linear(1, width)
        self.gpt2 = GPT2Model(config)
        self.head = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``(batch, 40)`` signals."""
        hidden = self.gpt2(inputs_embeds=self.embed(x.unsqueeze(-1))).last_hidden_state
        logits: Tensor = self.head(hidden.mean(dim=1))
        return logits


#: What the zoo prunes of a GPT-2: its blocks' Conv1D projections (as the realistic tier does).
GPT2_INCLUDE = ["*.c_attn.weight", "*.c_proj.weight", "*.c_fc.weight"]


def build(kind: str, widths: list[int], in_features: int) -> pl.LightningModule:
    """The zoo member's model."""
    if kind == "mlp":
        return MLPClassifier(in_features=in_features, hidden=widths, lr=1e-3)
    if kind == "cnn":
        return CNN1DClassifier(channels=widths)
    if kind == "resnet":
        return ResNet1D(widths=widths, lr=2e-3)
    if kind == "gru":
        return RecurrentClassifier(cell="gru", hidden_size=widths[0], num_layers=len(widths), lr=3e-3)
    if kind == "transformer":
        return TransformerClassifier(d_model=widths[0], nhead=2, num_layers=len(widths), dim_feedforward=2 * widths[0])
    if kind == "gpt2":
        return GPT2Classifier(width=widths[0], layers=len(widths))
    raise ValueError(f"Unknown zoo model kind {kind!r}; expected one of {', '.join(FAMILIES)}.")


#: The default must predict at least this many rows per second on 2 cores: an event predicts up to
#: ``MAX_PREDICTED_ROWS`` (1M) rows, which must fit (in about 4 s) in the 10 s budget of a 25M-weight event.
MIN_PREDICT_RATE = 250_000
#: Candidate estimators: import path and constructor arguments.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "ridge": ("sklearn.linear_model.Ridge", {"alpha": 1.0}),
    "hgb_small": (
        "sklearn.ensemble.HistGradientBoostingRegressor",
        {"max_iter": 60, "max_leaf_nodes": 8, "learning_rate": 0.1, "early_stopping": False, "random_state": 0},
    ),
    "hgb": (
        "sklearn.ensemble.HistGradientBoostingRegressor",
        {"max_iter": 200, "max_leaf_nodes": 15, "learning_rate": 0.05, "early_stopping": False, "random_state": 0},
    ),
    "random_forest": (
        "sklearn.ensemble.RandomForestRegressor",
        {
            "n_estimators": 30,
            "max_depth": 8,
            "min_samples_leaf": 20,
            "max_samples": 0.2,
            "n_jobs": 2,
            "random_state": 0,
        },
    ),
}


def collect(name: str, dataset: str, kind: str, widths: list[int], epochs: int, seed: int) -> dict[str, Any]:
    """Train one zoo member with the learned scorer and return its labelled rows, one block per event."""
    pl.seed_everything(seed, workers=True)
    if dataset == "digits":
        dm: pl.LightningDataModule = DigitsDataModule(batch_size=64)
        in_features = 64
    else:
        dm = MNIST1DDataModule(batch_size=128)
        in_features = 40
    model = build(kind, widths, in_features)
    callback = AutoPrune(
        target_sparsity=0.98,
        importance="learned",
        estimator="sklearn.linear_model.Ridge",
        label_budget=None,  # labels at every event: the rows are what the zoo is for
        include=GPT2_INCLUDE if kind == "gpt2" else None,
        start_epoch=2,
        end_epoch=epochs - 4,
        seed=seed,
        verbose=False,
        report=False,
    )
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback],
        accelerator="auto",  # as the shipped model was trained: the accelerator Lightning picks
        deterministic=True,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, dm)
        test = trainer.test(model, dm, verbose=False)[0]
    scorer: Any = callback.scorer
    return {
        "name": name,
        "family": FAMILIES[kind],
        "x": scorer.online.rows_x,
        "y": scorer.online.rows_y,
        "events": len(scorer.online.rows_x),
        "rows": int(sum(len(y) for y in scorer.online.rows_y)),
        "test_acc": float(test["test_acc"]),
        "sparsity": callback.sparsity,
        "seconds": time.perf_counter() - start,
    }


def make(candidate: str) -> Any:
    """A fresh estimator of a candidate."""
    import importlib

    path, kwargs = CANDIDATES[candidate]
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)(**kwargs)


def taylor_formula(x: np.ndarray) -> np.ndarray:
    """First-order Taylor, ``|w| sqrt(F)``, on the log scale from the feature columns."""
    return x[:, FEATURE_NAMES.index("log_abs_weight")] + 0.5 * x[:, FEATURE_NAMES.index("log_fisher")]


def event_spearman(predictions: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation within one event; 0 where it is undefined."""
    from scipy.stats import spearmanr

    if np.ptp(predictions) == 0 or np.ptp(y) == 0:
        return 0.0
    value = float(spearmanr(predictions, y).statistic)
    return 0.0 if np.isnan(value) else value


def cross_validate(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Leave-one-architecture-out fidelity of every candidate and of the Taylor formula, per held-out family."""
    families = sorted({m["family"] for m in members})
    names = [*CANDIDATES, "taylor_formula"]
    per_family: dict[str, dict[str, list[float]]] = {f: {c: [] for c in names} for f in families}
    fit_seconds: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    for family in families:
        held = [m for m in members if m["family"] == family]
        train_x = np.concatenate([x for m in members if m["family"] != family for x in m["x"]])
        train_y = np.concatenate([y for m in members if m["family"] != family for y in m["y"]])
        events = [(x, y) for m in held for x, y in zip(m["x"], m["y"], strict=True)]
        for candidate in CANDIDATES:
            start = time.perf_counter()
            estimator = make(candidate).fit(train_x, train_y)
            fit_seconds[candidate].append(time.perf_counter() - start)
            per_family[family][candidate] = [event_spearman(estimator.predict(x), y) for x, y in events]
        per_family[family]["taylor_formula"] = [event_spearman(taylor_formula(x), y) for x, y in events]
        print(
            f"[AutoPrune] held out {family} ({len(events)} events): "
            + ", ".join(f"{c} {np.mean(v):.3f}" for c, v in per_family[family].items()),
            flush=True,
        )
    summary: dict[str, Any] = {}
    for name in names:
        means = {f: float(np.mean(per_family[f][name])) for f in families}
        summary[name] = {
            "mean_spearman": float(np.mean(list(means.values()))),  # every family weighs the same
            "per_family": means,
            "events": sum(len(per_family[f][name]) for f in families),
            **({"fit_seconds_median": float(np.median(fit_seconds[name]))} if name in fit_seconds else {}),
        }
    return summary


def predict_rate(estimator: Any, rows: int = 200_000) -> float:
    """Rows per second the estimator predicts (median of 3), on random feature rows."""
    x = np.random.default_rng(0).normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        estimator.predict(x)
        times.append(time.perf_counter() - start)
    return rows / float(np.median(times))


def main() -> None:
    """Build the zoo, choose the estimator by cross-validation, and write the shipped model and results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two zoo members, nothing written to the package")
    parser.add_argument("--model-out", type=Path, default=DEFAULT_MODEL_PATH, help="where the chosen model goes")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the comparison goes")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    zoo = (ZOO[0], ZOO[-1]) if args.quick else ZOO
    members = []
    for entry in zoo:
        member = collect(*entry)
        print(
            f"[AutoPrune] {member['name']}: {member['events']} events, {member['rows']} rows, "
            f"test acc {member['test_acc']:.4f} "
            f"at sparsity {member['sparsity']:.3f}, {member['seconds']:.0f} s",
            flush=True,
        )
        members.append(member)
    cv = cross_validate(members)
    for name, numbers in cv.items():
        print(f"[AutoPrune] {name}: held-out mean Spearman {numbers['mean_spearman']:.4f}", flush=True)
    all_x = np.concatenate([x for m in members for x in m["x"]])
    all_y = np.concatenate([y for m in members for y in m["y"]])
    rates = {c: predict_rate(make(c).fit(all_x, all_y)) for c in CANDIDATES}
    fast = [c for c in CANDIDATES if rates[c] >= MIN_PREDICT_RATE] or list(CANDIDATES)
    chosen = max(fast, key=lambda c: cv[c]["mean_spearman"])
    final = make(chosen).fit(all_x, all_y)
    print(
        f"[AutoPrune] chosen: {chosen}; predict rows/s: " + ", ".join(f"{c} {r:,.0f}" for c, r in rates.items()),
        flush=True,
    )
    if args.quick:
        return
    save_importance_model(final, args.model_out)
    record = {
        "script": "scripts/train_importance_model.py",
        "chosen": chosen,
        "choice_rule": "best leave-one-architecture-out mean Spearman (mean over families) among candidates "
        f"predicting >= {MIN_PREDICT_RATE} rows/s",
        "chosen_estimator": {"path": CANDIDATES[chosen][0], "params": CANDIDATES[chosen][1]},
        "feature_names": list(FEATURE_NAMES),
        "rows": len(all_y),
        "zoo": [{k: v for k, v in m.items() if k not in ("x", "y")} for m in members],
        "cross_validation": cv,
        "predict_rows_per_second": rates,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": __import__("sklearn").__version__,
            "threads": torch.get_num_threads(),
        },
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[AutoPrune] wrote {args.model_out} and {args.results}")


if __name__ == "__main__":
    main()
