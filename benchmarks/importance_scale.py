"""Scale of one learned-importance pruning event on models of about 1M, 5M and 25M prunable weights.

A stack of five ``Linear(d, d)`` layers (d = 448, 1000, 2240: 1.0M, 5.0M and 25.1M weights; 100 MB
in float32 at the largest), with trained-like weights (Kaiming-scaled normal), calibration
gradient statistics and activation norms of plausible size, and a calibration loss on a batch of
512 random inputs. Four events are timed per size on 2 CPU threads, each from the masks of the
previous step: 0 -> 0.5 (the first, largest step), 0.8 -> 0.9, 0.95 -> 0.98 and 0.97 -> 0.99 (at
5M and 25M weights fewer than a million are kept there: it checks that a large model at high
sparsity stays on the sampled paths, :func:`~lightning_autoprune.scoring.learned.priors.exact_cuts`).
For each: wall time of the whole event (features + labels + fit + scoring + selection), the part
of it spent in the model's forward passes (ablations and candidate steps), the rest (the scorer's
own work), and the peak extra resident memory over the process before the event (the kernel's
``VmHWM``, reset just before the event through ``/proc/self/clear_refs``).

Each event runs ``REPEATS`` times for its time and ``REPEATS`` times for its memory, each time in
a fresh process that first runs three forward and backward passes of the model, as the training
before any event would (:func:`_as_after_training`). The two need different allocators. Time is
read with glibc's default, whose threshold for serving a block with its own ``mmap`` rises to the
largest block freed, as it does in a training process. Memory is read with that threshold fixed
at 128 KB (``MALLOC_MMAP_THRESHOLD_``), so that every large tensor's pages return to the system
when it is freed and the resident high-water mark is the most the event held at once; under the
default, freed blocks stay cached in the heap and the mark also counts what the allocator kept.
The table gives the median of each figure and the results file every reading.

Before the event every readable file-backed mapping of the process (library code and data) is
faulted in (:func:`_page_in_libraries`). An event runs library code that the training steps did
not, and the high-water mark would otherwise count those code pages as the event's memory: at 5M
weights about 9 MB at the first step (6.5 MB of ``libtorch_cpu.so``), a fixed cost that does not
grow with the model. They are clean pages shared with every process that maps the library, which
the kernel drops under memory pressure; the peak then counts what the event allocates.

The event measures ``label_groups=128`` ablations plus one pass per candidate step
(``label_budget=None``), the steps on 512 held-out samples and the ablations on as many of them as
an event's ablations use at that size (:func:`lightning_autoprune.event.ablation_samples`: all 512
at 1M weights, the first 256 at 5M and 25M). That is what the default 5% budget pays for once a
fit has seen about 1.4M training samples at 1M weights (134 passes of 512 samples) and 0.7M at 5M
and 25M (129 of 256 and 5 of 512): less than one epoch of an ImageNet-sized dataset, the kind of
data a 25M-weight model trains on. The ablation passes go through
:class:`lightning_autoprune.core.replay.LayerReplay`, as an event's do: the layers before the
ablated one are not run again, and the ablated layer itself (every layer here has at least
:data:`~lightning_autoprune.core.replay.DELTA_MIN_INPUTS` inputs) returns its recorded output
less the zeroed entries' share (``corrected_layer_calls``; that product is counted in the rest of
the event, not in the forward passes). The same events are also timed with every ablation pass
running every layer on the same samples (``*_full_passes``), side by side in one run. The forward
passes are the synthetic model's; the rest of the event is the scorer's own cost.

Usage::

    python -m benchmarks.importance_scale            # writes benchmarks/results/importance_scale.json
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_autoprune.core import calibration, selection
from lightning_autoprune.core.replay import REPLAY_BYTES, LayerReplay
from lightning_autoprune.event import ablation_samples
from lightning_autoprune.scoring import ScoreInputs
from lightning_autoprune.scoring.learned import LearnedScorer

RESULTS = Path(__file__).resolve().parent / "results" / "importance_scale.json"
WIDTHS = (448, 1000, 2240)
LAYERS = 5
EVENTS = ((0.0, 0.5), (0.8, 0.9), (0.95, 0.98), (0.97, 0.99))
#: Fresh-process readings per event; the table gives their medians.
REPEATS = 3
#: The times of a reading whose median the table gives.
TIMES = ("event_seconds", "score_seconds", "label_forward_seconds", "event_seconds_without_labels")
#: glibc's tunable of the size above which a block gets its own ``mmap`` (set: no longer adjusted).
MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


#: ``madvise`` advice that faults a mapping's pages in for reading (Linux 5.14 and later).
MADV_POPULATE_READ = 22


def _page_in_libraries() -> int:
    """Fault in every readable file-backed mapping of the process (library code and data); the bytes advised.

    An event runs library code the process has not run before (at 5M weights its first event
    paged in 6.5 MB of ``libtorch_cpu.so``, 1.1 MB of scipy's OpenBLAS and about 1.5 MB of other
    libraries, read from ``/proc/self/smaps`` before and after it). Those pages are clean, shared
    with every process that maps the library, and dropped under memory pressure, but the resident
    high-water mark counts them. Paging them in before the event keeps them out of its peak, which
    then counts the memory the event allocates.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/") or not fields[1].startswith("r"):
                continue
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if libc.madvise(start, end - start, MADV_POPULATE_READ) == 0:
                advised += end - start
    return advised


def _as_after_training(net: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
    """Leave the process as a fit leaves it before an event: its allocator used to tensors of the model's sizes.

    A pruning event runs inside a fit, after training steps have allocated and freed activations
    and gradients of the model's sizes. A fresh process has not: there glibc serves every
    temporary above its initial 128 KB threshold with a new ``mmap`` and faults its pages in
    again, which is a cost of the process's first large tensors, not of the event (a feature
    pass at 25M weights took 4.1 s first and 0.4 s on a second call in one process). Three
    forward and backward passes (no optimizer step: the weights stay as drawn) raise that
    threshold as training does. The memory they leave cached in the heap is then returned to the
    system (``malloc_trim``), so that the event's peak extra memory is all its own.
    """
    for batch in batches * 3:
        nn.functional.mse_loss(net(batch[0]), batch[1]).backward()
    net.zero_grad(set_to_none=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> None:
    """Start the resident high-water mark (``VmHWM``) again from the current resident size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _event(width: int, before: float, after: float, queue: Any, replay_layers: bool = True) -> None:
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
    batches = [(torch.randn(512, width), torch.randn(512, width))]
    label_seconds = [0.0]
    calls = [0]

    def batch_loss(batch: tuple[Tensor, Tensor], idx: int) -> Tensor:
        start = time.perf_counter()
        value = nn.functional.mse_loss(net(batch[0]), batch[1])
        label_seconds[0] += time.perf_counter() - start
        calls[0] += 1
        return value

    def loss() -> float:
        return calibration.mean_loss(batch_loss, batches)

    weights = sum(p.numel() for p in params.values())
    ablated = ablation_samples(512, weights)  # what an event's ablations run on at this size
    # Without replay every ablation pass runs every layer, on the same samples (nothing recorded).
    kept_bytes = REPLAY_BYTES if replay_layers else 0
    replay = LayerReplay(net, batch_loss, calibration.first_samples(batches, ablated), params, max_bytes=kept_bytes)

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
        ablation_loss=replay,
        ablation_samples=ablated,
    )
    scorer = LearnedScorer(label_budget=None)  # 128 ablations: what a large fit's 5% budget pays for (docstring)
    weights_mb = weights * 4 / 2**20
    _as_after_training(net, batches)
    paged_in = _page_in_libraries()
    if not paged_in:
        print(
            "[AutoPrune] could not page the libraries in (madvise MADV_POPULATE_READ needs Linux 5.14 or later): "
            "this event's peak extra memory also counts the library code it runs for the first time.",
            flush=True,
        )
    _reset_peak()
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    scores = scorer.score(inputs)
    scored = time.perf_counter() - start
    new_masks = selection.select_masks(scores, masks, after, min_density=0.002)
    total = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    kept = sum(int(m.sum()) for m in new_masks.values())
    queue.put(
        {
            "width": width,
            "sparsity_before": before,
            "sparsity_after": after,
            "reached": 1 - kept / sum(m.numel() for m in new_masks.values()),
            "prunable_weights": weights,
            "weights_mb": weights_mb,
            "event_seconds": total,
            "score_seconds": scored,
            "label_forward_seconds": label_seconds[0],
            "forward_passes": calls[0],
            "replayed_layer_calls": replay.replayed_calls,
            "corrected_layer_calls": replay.corrected_calls,
            "event_seconds_without_labels": total - label_seconds[0],
            "peak_extra_mb": peak - baseline,
            "peak_extra_over_weights": (peak - baseline) / weights_mb,
            "libraries_paged_in_mb": paged_in / 2**20,
            "diagnostics": scorer.diagnostics[-1],
        }
    )


def _reading(
    context: Any, width: int, before: float, after: float, *, memory: bool, replay: bool = True
) -> dict[str, Any]:
    """One event in a fresh process.

    ``memory``: with the allocator that makes resident memory the memory held; ``replay``: whether
    ablation passes replay the layers before the ablated one (else every pass runs every layer).
    """
    saved = os.environ.get(MMAP_THRESHOLD)
    if memory:
        os.environ[MMAP_THRESHOLD] = str(128 * 1024)  # the child inherits the environment at start
    try:
        queue = context.Queue()
        process = context.Process(target=_event, args=(width, before, after, queue, replay))
        process.start()
    finally:
        if saved is None:
            os.environ.pop(MMAP_THRESHOLD, None)
        else:
            os.environ[MMAP_THRESHOLD] = saved
    result: dict[str, Any] = queue.get()
    process.join()
    return result


def summarise(
    timed: list[dict[str, Any]], held: list[dict[str, Any]], full: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One event's row: the medians of :data:`TIMES` over ``timed`` and of the peak extra memory over ``held``.

    ``full``: readings whose ablation passes ran every layer; their median times are added with
    the suffix ``_full_passes``. The row keeps the last timed reading's description and every
    reading.

    Example:
        >>> timed = [{"width": 4, "weights_mb": 2.0, "event_seconds": s, "score_seconds": s,
        ...           "label_forward_seconds": 1.0, "event_seconds_without_labels": s - 1, "peak_extra_mb": 50.0}
        ...          for s in (3.0, 5.0, 4.0)]
        >>> held = [{**timed[0], "peak_extra_mb": m} for m in (4.0, 2.0, 9.0)]
        >>> row = summarise(timed, held)
        >>> row["event_seconds"], row["peak_extra_mb"], row["peak_extra_over_weights"], len(row["readings"]["time"])
        (4.0, 4.0, 2.0, 3)
    """
    row = dict(timed[-1])
    for key in TIMES:
        row[key] = statistics.median(r[key] for r in timed)
    row["peak_extra_mb"] = statistics.median(r["peak_extra_mb"] for r in held)
    row["peak_extra_over_weights"] = row["peak_extra_mb"] / row["weights_mb"]
    row["readings"] = {"time": _figures(timed), "memory": _figures(held)}
    if full:
        for key in TIMES:
            row[f"{key}_full_passes"] = statistics.median(r[key] for r in full)
        row["readings"]["full_passes"] = _figures(full)
    return row


def _figures(readings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The times and peak extra memory of each reading, as the results file keeps them."""
    return [{key: r[key] for key in (*TIMES, "peak_extra_mb")} for r in readings]


def main() -> None:
    context = mp.get_context("spawn")
    results = []
    for width in WIDTHS:
        for before, after in EVENTS:
            timed = [_reading(context, width, before, after, memory=False) for _ in range(REPEATS)]
            held = [_reading(context, width, before, after, memory=True) for _ in range(REPEATS)]
            full = [_reading(context, width, before, after, memory=False, replay=False) for _ in range(REPEATS)]
            result = summarise(timed, held, full)
            results.append(result)
            print(
                f"[AutoPrune] {result['prunable_weights'] / 1e6:.1f}M weights, {before:.2f} -> {after:.2f}, medians of "
                f"{REPEATS}: event {result['event_seconds']:.1f} s ({result['forward_passes']} calibration forwards "
                f"{result['label_forward_seconds']:.1f} s, rest {result['event_seconds_without_labels']:.1f} s), "
                f"peak extra {result['peak_extra_mb']:.0f} MB = {result['peak_extra_over_weights']:.2f}x the weights; "
                f"without replay: event {result['event_seconds_full_passes']:.1f} s, forwards "
                f"{result['label_forward_seconds_full_passes']:.1f} s",
                flush=True,
            )
    from benchmarks import protocol  # here, not at the top: the event's child processes need none of it

    record = {
        "script": "benchmarks/importance_scale.py",
        "model": f"{LAYERS} x Linear(d, d), d in {list(WIDTHS)}",
        "threads": 2,
        "repeats": REPEATS,
        "environment": protocol.environment(),
        "events": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(f"[AutoPrune] wrote {RESULTS}")


if __name__ == "__main__":
    main()
