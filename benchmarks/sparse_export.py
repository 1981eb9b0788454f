"""Size on disk of the sparse export (``save_sparse``) against ``torch.save(state_dict)``.

For each seed, the digits MLP (64-256-256-10) is trained with ``AutoPrune(target_sparsity=s)``
(default importance, 24 epochs, pruning on the default schedule) for ``s`` in 0.9, 0.95 and 0.98,
then saved twice: ``torch.save(model.state_dict())`` and :func:`lightning_autoprune.save_sparse`.
The file sizes, their ratio and a bit-exact round trip are recorded in
``benchmarks/results/sparse_export.json``. Run with ``python -m benchmarks.sparse_export``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import seed_everything

from lightning_autoprune import AutoPrune, load_sparse, save_sparse
from lightning_autoprune.examples import DigitsDataModule, MLPClassifier, quiet_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "sparse_export.json"
SPARSITIES = (0.9, 0.95, 0.98)
SEEDS = (0, 1, 2)
EPOCHS = 24


def measure(sparsity: float, seed: int, workdir: Path) -> dict[str, float | int | bool]:
    """Train, prune and save one model; return the two file sizes and whether the round trip is exact."""
    seed_everything(seed)
    model = MLPClassifier(in_features=64)
    callback = AutoPrune(target_sparsity=sparsity, verbose=False, report=False, seed=seed)
    trainer = quiet_trainer(
        max_epochs=EPOCHS,
        callbacks=[callback],
        accelerator="auto",  # as the recorded results were measured: the accelerator Lightning picks
        default_root_dir=str(workdir),
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    state = model.state_dict()
    dense, sparse = workdir / f"dense_{sparsity}_{seed}.pt", workdir / f"sparse_{sparsity}_{seed}.pt"
    torch.save(state, dense)
    save_sparse(model, sparse)
    loaded = load_sparse(sparse)
    exact = all(torch.equal(loaded[k], v) for k, v in state.items())
    return {
        "sparsity": callback.sparsity,
        "seed": seed,
        "dense_file_bytes": dense.stat().st_size,
        "sparse_file_bytes": sparse.stat().st_size,
        "ratio": sparse.stat().st_size / dense.stat().st_size,
        "round_trip_exact": exact,
    }


def main() -> int:
    torch.set_num_threads(2)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                run = measure(sparsity, seed, Path(tmp))
                print(
                    f"[AutoPrune] sparsity {run['sparsity']:.4f} seed {seed}: "
                    f"sparse file {run['ratio']:.4f} of torch.save"
                )
                runs.append({"target": sparsity, **run})
    summary = {f"{s:.2f}": statistics.median(r["ratio"] for r in runs if r["target"] == s) for s in SPARSITIES}
    RESULTS.write_text(
        json.dumps(
            {"model": "digits MLP 64-256-256-10", "epochs": EPOCHS, "runs": runs, "median_ratio": summary}, indent=2
        )
        + "\n"
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
