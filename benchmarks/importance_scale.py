"""Scale of one learned-importance pruning event on models of about 1M, 5M and 25M prunable weights.

A stack of five ``Linear(d, d)`` layers (d = 448, 1000, 2240: 1.0M, 5.0M and 25.1M weights; 100 MB
in float32 at the largest), with trained-like weights (Kaiming-scaled normal), calibration
gradient statistics and activation norms of plausible size, and a calibration loss on a batch of
512 random inputs. Three events are timed per size on 2 CPU threads, each from the masks of the
previous step: 0 -> 0.5 (the first, largest step), 0.8 -> 0.9 and 0.95 -> 0.98. For each: wall
time of the whole event (features + labels + fit + scoring + selection), the part of it spent in
the model's forward passes (ablations and candidate steps), the rest (the scorer's own work), and
the peak extra resident memory over the process before the event (``ru_maxrss`` high-water mark;
each event runs in a fresh process so the mark is its own).

The event measures ``label_groups=128`` ablations plus one pass per candidate step
(``label_budget=None``). That is what the default 5% budget pays for once a fit has seen about
1.4M training samples (128 + 7 passes of 512 samples): one epoch of an ImageNet-sized dataset, the
kind of data a 25M-weight model trains on. The forward passes are the synthetic model's; the rest
of the event is the scorer's own cost, which is what this benchmark tracks.

Usage::

    python -m benchmarks.importance_scale            # writes benchmarks/results/importance_scale.json
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_autoprune.core import selection
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned import LearnedScorer

RESULTS = Path(__file__).resolve().parent / "results" / "importance_scale.json"
WIDTHS = (448, 1000, 2240)
LAYERS = 5
EVENTS = ((0.0, 0.5), (0.8, 0.9), (0.95, 0.98))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _event(width: int, before: float, after: float, queue: Any) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(LAYERS)])
    params: dict[str, Tensor] = {
        f"{i}.weight": layer.weight for i, layer in enumerate(net) if isinstance(layer, nn.Linear)
    }
    generator = torch.Generator().manual_seed(0)
    masks = {}
    with torch.no_grad():
        for name, p in params.items():
            p.normal_(0.0, (2.0 / width) ** 0.5)
            mask = (
                p.abs() >= torch.quantile(p.abs().view(-1)[::97], before)
                if before > 0
                else torch.ones_like(p, dtype=torch.bool)
            )
            p.mul_(mask)
            masks[name] = mask
    x = torch.randn(512, width)
    target = torch.randn(512, width)
    label_seconds = [0.0]
    calls = [0]

    def loss() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            value = float(nn.functional.mse_loss(net(x), target).double())
        label_seconds[0] += time.perf_counter() - start
        calls[0] += 1
        return value

    grads = {n: torch.randn_like(p) * 1e-3 for n, p in params.items()}
    inputs = ScoreInputs(
        weights={n: p.detach() for n, p in params.items()},
        masks=masks,
        grad_mean=grads,
        grad_sq_mean={n: g.pow(2) * 4 for n, g in grads.items()},
        generator=generator,
        target_sparsity=after,
        progress=0.5,
        input_norms={n: torch.rand(width) + 0.5 for n in params},
        output_norms={n: torch.rand(width) + 0.5 for n in params},
        params={n: p.data for n, p in params.items()},
        loss_fn=loss,
    )
    scorer = LearnedScorer(label_budget=None)  # 128 ablations: what a large fit's 5% budget pays for (docstring)
    weights_mb = sum(p.numel() for p in params.values()) * 4 / 2**20
    baseline = _rss_mb()
    start = time.perf_counter()
    scores = scorer.score(inputs)
    scored = time.perf_counter() - start
    new_masks = selection.select_masks(scores, masks, after, min_density=0.002)
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kept = sum(int(m.sum()) for m in new_masks.values())
    queue.put(
        {
            "width": width,
            "sparsity_before": before,
            "sparsity_after": after,
            "reached": 1 - kept / sum(m.numel() for m in new_masks.values()),
            "prunable_weights": sum(p.numel() for p in params.values()),
            "weights_mb": weights_mb,
            "event_seconds": total,
            "score_seconds": scored,
            "label_forward_seconds": label_seconds[0],
            "forward_passes": calls[0],
            "event_seconds_without_labels": total - label_seconds[0],
            "peak_extra_mb": peak - baseline,
            "peak_extra_over_weights": (peak - baseline) / weights_mb,
            "diagnostics": scorer.diagnostics[-1],
        }
    )


def main() -> None:
    context = mp.get_context("spawn")
    results = []
    for width in WIDTHS:
        for before, after in EVENTS:
            queue = context.Queue()
            process = context.Process(target=_event, args=(width, before, after, queue))
            process.start()
            result = queue.get()
            process.join()
            results.append(result)
            print(
                f"[AutoPrune] {result['prunable_weights'] / 1e6:.1f}M weights, {before:.2f} -> {after:.2f}: "
                f"event {result['event_seconds']:.1f} s ({result['forward_passes']} calibration forwards "
                f"{result['label_forward_seconds']:.1f} s, rest {result['event_seconds_without_labels']:.1f} s), "
                f"peak extra {result['peak_extra_mb']:.0f} MB = {result['peak_extra_over_weights']:.2f}x the weights",
                flush=True,
            )
    record = {
        "script": "benchmarks/importance_scale.py",
        "model": f"{LAYERS} x Linear(d, d), d in {list(WIDTHS)}",
        "threads": 2,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine()},
        "events": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"[AutoPrune] wrote {RESULTS}")


if __name__ == "__main__":
    main()
