"""Regenerate ``BENCHMARKS.md`` and the plots in ``benchmarks/plots/`` from the committed results.

The report is a pure function of the run files under ``benchmarks/results/<track>/``: the same
results give a byte-identical ``BENCHMARKS.md`` (no clock, no host name; every time shown is one
stored in the results). ``summary.json`` is rewritten from the same run files. The structured
track (:mod:`benchmarks.structured`) gets its own section when its run files exist; the realistic tier
(:mod:`benchmarks.realistic`) always gets one, which says "Not run yet" while ``results/realistic/`` holds no run.

    python -m benchmarks.report [--results benchmarks/results] [--out BENCHMARKS.md] [--plots benchmarks/plots]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import auto_target, realistic_auto, realistic_structured
from benchmarks import realistic as realistic_tier
from benchmarks import structured as structured_track
from benchmarks.protocol import (
    METHODS,
    RESULTS,
    ROOT,
    SETUPS,
    TRACK,
    Budget,
    load_records,
    summarise,
    write_json,
)
from lightning_autoprune.control.search import accuracy_standard_error

#: The automatic mode's goals on the realistic tier (issue #20): the share of seeds whose test drop stays
#: within the tolerance, and the most wall time against a dense run of the same epochs.
AUTO_WITHIN_SHARE = 0.9
AUTO_TIME_RATIO = 1.3
#: The learned scorer's goal at scale (issue #21): one event on 25M weights in at most this long.
SCALE_GOAL_SECONDS = 10.0

#: One line per method for the report.
METHOD_NOTES: dict[str, str] = {
    "random": "`AutoPrune(importance='random')`: uniform random scores, global selection (the control).",
    "magnitude": "`AutoPrune(importance='magnitude')`: global `|w|`.",
    "lamp": "`AutoPrune(importance='lamp')`: layer-adaptive magnitude (Lee et al. 2021), global selection.",
    "taylor": "`AutoPrune(importance='taylor')`: `|w| * sqrt(E[g^2])` on 512 calibration samples.",
    "learned": "`AutoPrune(importance='learned')` with its default label budget (calibration passes at most 5% of "
    "the training samples so far): on these small datasets that pays for few or no labels, so most steps are "
    "Taylor's or the measured best of the priors' steps; see `lightning_autoprune/scoring/learned/weights.py`.",
    "learned_unbudgeted": "`AutoPrune(importance='learned', label_budget=None)`: the shipped pretrained importance "
    "model (a scikit-learn regressor on 21 per-weight features), refined on 128 group ablations per event and "
    "blended with Taylor by held-out fidelity; each step is the one with the lowest measured calibration loss among "
    "the learned ranking's and every prior's.",
    "layerwise_magnitude": "benchmark-side: `|w|`, every tensor pruned to the scheduled sparsity on its own "
    "(uniform per-layer sparsity), same schedule and mask enforcement as AutoPrune.",
    "taylor2": "benchmark-side: signed second-order Taylor `-g*w + 1/2*F*w^2` (F = mean squared per-batch "
    "gradient on 512 calibration samples), global selection with AutoPrune's per-layer floor. Squared *batch* "
    "gradients (64 samples) are close to `g^2` plus a 1/64 share of the per-sample variance, so `F` is far smaller "
    "than a per-sample Fisher or the Hessian diagonal, and near convergence the noisy signed term `-g*w` dominates.",
    "default": "`AutoPrune(target_sparsity=s)` without `importance`: the package default.",
    "modelpruning": "Lightning `ModelPruning(pruning_fn='l1_unstructured', use_global_unstructured=True, "
    "use_lottery_ticket_hypothesis=False)`, same tensors, compounding amounts that follow the cubic schedule.",
    "modelpruning_lth": "the same `ModelPruning` with its default `use_lottery_ticket_hypothesis=True`: kept weights "
    "are reset after every event to their values at the start of fitting (here: the trained dense model).",
}
COMMANDS = (
    "make bench          # protocol, structured (+ --latency), auto_target, sparse_export, importance_scale, report",
    "make bench-quick    # python -m benchmarks.protocol --quick (results-quick/, compared with these results)",
    "python -m benchmarks.protocol --setups mnist1d-cnn --resume   # one setup; --resume keeps finished runs",
)
#: How long ``make bench`` takes on the 2-core VM (measured runs, stated as such).
DURATION = (
    "- Duration of `make bench` on the 2-core VM: 1 h 39 min, measured end to end at e24da9c, when "
    "`auto_target` ran 5 seeds (about 20 min). It now runs 10 seeds: seeds 5-9 alone took 25 min, so a full "
    "`make bench` takes about 2 h 05 min (an estimate from those two runs, not a third full run)."
)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else "<0.001"


def _methods(setup: Mapping[str, Any]) -> list[str]:
    present = setup["methods"]
    return [m for m in METHODS if m in present] + sorted(m for m in present if m not in METHODS)


def _sparsity_keys(setup: Mapping[str, Any]) -> list[str]:
    keys: set[str] = set()
    for entry in setup["methods"].values():
        keys.update(entry["by_sparsity"])
    return sorted(keys, key=float)


def _partial(setup: Mapping[str, Any], method: str) -> str | None:
    """``None`` when ``method`` has every sparsity of the setup's grid, else the range it has.

    The normalised AUC of a method run on part of the grid is not comparable with the others'.
    """
    have = sorted(setup["methods"][method]["by_sparsity"], key=float)
    return None if len(have) == len(_sparsity_keys(setup)) else f"s={have[0]}-{have[-1]} only"


def _auc_ranking(setup: Mapping[str, Any]) -> str:
    """Methods ranked by normalised AUC; those run on part of the grid follow, unranked."""
    methods = _methods(setup)
    auc = {m: setup["methods"][m]["auc_mean"] for m in methods}
    full = sorted((m for m in methods if _partial(setup, m) is None), key=lambda m: (-round(auc[m], 4), m))
    text = "Ranked by normalised AUC: " + ", ".join(f"`{m}` {auc[m]:.4f}" for m in full)
    partial = [m for m in methods if _partial(setup, m) is not None]
    if partial:
        text += "; over part of the grid only, not ranked: " + ", ".join(
            f"`{m}` {auc[m]:.4f} ({_partial(setup, m)})" for m in partial
        )
    return text + "."


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _accuracy_table(setup: Mapping[str, Any]) -> list[str]:
    keys = _sparsity_keys(setup)
    methods = _methods(setup)
    best: dict[str, float] = {}
    for key in keys:
        means = [
            setup["methods"][m]["by_sparsity"][key]["test_acc_mean"]
            for m in methods
            if key in setup["methods"][m]["by_sparsity"]
        ]
        best[key] = round(max(means), 4)
    complete = [m for m in methods if _partial(setup, m) is None] or methods
    best_auc = round(max(setup["methods"][m]["auc_mean"] for m in complete), 4)
    rows = []
    for method in methods:
        entry = setup["methods"][method]
        row = [f"`{method}`" + (f" (= `{entry['reused_from']}`)" if "reused_from" in entry else "")]
        for key in keys:
            cell = entry["by_sparsity"].get(key)
            if cell is None:
                row.append("")
                continue
            text = _pm(cell["test_acc_mean"], cell["test_acc_std"])
            row.append(f"**{text}**" if round(cell["test_acc_mean"], 4) == best[key] else text)
        auc = f"{entry['auc_mean']:.4f} ± {entry['auc_std']:.4f}"
        if _partial(setup, method) is not None:
            row.append(f"{auc} ({_partial(setup, method)})")
        else:
            row.append(f"**{auc}**" if round(entry["auc_mean"], 4) == best_auc else auc)
        per_seed = ", ".join(f"{s:g}" for s in entry["max_sparsity_within_1pt_per_seed"])
        curve = entry["max_sparsity_within_1pt_of_mean_curve"]
        row.append(f"{entry['max_sparsity_within_1pt_mean']:.3f} ({per_seed}); {curve:g}")
        rows.append(row)
    header = ["method", *[f"s={k}" for k in keys], "AUC (norm.)", "max s within 1 pt: mean (per seed); mean curve"]
    return _table(header, rows)


def _effective_table(setup: Mapping[str, Any]) -> list[str]:
    keys = _sparsity_keys(setup)
    rows = []
    for method in _methods(setup):
        cells = setup["methods"][method]["by_sparsity"]
        row = [f"`{method}`"]
        for key in keys:
            cell = cells.get(key)
            row.append(
                "" if cell is None else f"{_pct(cell['sparsity_mean'])} / {_pct(cell['effective_sparsity_mean'])}"
            )
        rows.append(row)
    return _table(["method", *[f"s={k}" for k in keys]], rows)


def _losses(setup: Mapping[str, Any]) -> list[str]:
    comparisons = setup.get("comparisons", {})
    if "default" not in setup["methods"]:
        return ["No `default` runs in these results."]
    lines = []
    for key in _sparsity_keys(setup):
        for method in _methods(setup):
            test = comparisons.get(method, {}).get(key)
            if test is None or test["mean_diff"] >= 0 or test["losses"] == 0:
                continue
            verdict = "**real** (p < 0.05)" if test["real"] else "not significant"
            lines.append(
                f"- s={key}: `default` LOSES to `{method}` by {100 * -test['mean_diff']:.2f} points "
                f"(seeds won/lost/tied {test['wins']}/{test['losses']}/{test['ties']}; paired t p={_p(test['t_p'])}, "
                f"Wilcoxon p={_p(test['wilcoxon_p'])}): {verdict}."
            )
    return lines or ["- `default` loses to no method at any sparsity (mean over seeds)."]


def _comparison_table(setup: Mapping[str, Any]) -> list[str]:
    comparisons = setup.get("comparisons", {})
    keys = _sparsity_keys(setup)
    rows = []
    for method in _methods(setup):
        if method not in comparisons:
            continue
        row = [f"`{method}`"]
        for key in keys:
            test = comparisons[method].get(key)
            if test is None:
                row.append("")
                continue
            text = f"{100 * test['mean_diff']:+.2f} (p={_p(test['t_p'])})"
            row.append(f"**{text} real**" if test["real"] else text)
        rows.append(row)
    return _table(["default − method", *[f"s={k}" for k in keys]], rows)


def _fidelity_table(setup: Mapping[str, Any]) -> list[str]:
    """Held-out fidelity of the learned scorer's runs, next to the formulas' on the same ablations."""
    lines: list[str] = []
    for method in _methods(setup):
        if setup["methods"][method].get("reused_from"):
            continue
        lines += _steps_line(method, setup["methods"][method].get("importance_steps"))
        fidelity = setup["methods"][method].get("importance_fidelity")
        if not fidelity:
            continue
        scorers = list(fidelity["spearman_mean"])
        lines += [
            "",
            f"Held-out fidelity in the `{method}` runs ({fidelity['events']} pruning events; each against that "
            "event's held-out group ablations; mean over events):",
            "",
            *_table(
                ["metric", *[f"`{s}`" for s in scorers]],
                [
                    [metric, *[f"{fidelity[key][s]:.3f}" for s in scorers]]
                    for metric, key in (("Spearman", "spearman_mean"), ("precision@k", "precision_at_k_mean"))
                ],
            ),
            "",
            f"It fell back to its prior at {fidelity['fell_back_share']:.0%} of events; mean blend weight of the "
            f"learned rank {fidelity['blend_weight_mean']:.2f}.",
        ]
        if fidelity.get("used_share"):
            shares = ", ".join(f"`{name}` {share:.0%}" for name, share in fidelity["used_share"].items())
            lines.append(f"Step applied at the labelled events (lowest measured calibration loss): {shares}.")
        if fidelity.get("below_best_share") is not None:
            lines.append(
                f"The applied prior's ranking had a lower held-out Spearman than another measured prior's at "
                f"{fidelity['below_best_share']:.0%} of the {fidelity['below_best_events']} labelled events that "
                f"applied a prior's step (mean shortfall {fidelity['below_best_gap_mean']:.3f}): the step goes to the "
                "lowest measured loss, not to the best-ranking prior."
            )
    return lines


def _steps_line(method: str, steps: Mapping[str, Any] | None) -> list[str]:
    """Which step the learned scorer applied at every event (labelled or not), and on how many samples."""
    if not steps:
        return []
    shares = ", ".join(f"`{name}` {share:.0%}" for name, share in steps["used_share"].items())
    return [
        "",
        f"Steps the `{method}` runs applied ({steps['events']} pruning events): {shares}. "
        f"{steps['measured_share']:.0%} of them were chosen by measuring every candidate's calibration loss "
        f"(median {steps['samples_median']:g} samples per candidate, within the label budget); the rest repeated "
        "the previous choice."
        + (
            f" At {steps['passed_over_events']} event{'s' if steps['passed_over_events'] != 1 else ''} a candidate "
            "was passed over because its step would have "
            "taken a layer down to its floor (`min_layer_density`)."
            if steps.get("passed_over_events")
            else ""
        ),
    ]


def _overhead_table(setup: Mapping[str, Any]) -> list[str]:
    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:+.1f}%"

    dense = setup["dense"]
    rows = [
        [
            "dense fine-tune",
            "baseline",
            "baseline",
            "n/a",
            f"{dense['fit_cpu_seconds_median']:.2f} / {dense['fit_seconds_median']:.2f}",
        ]
    ]
    for method in _methods(setup):
        entry = setup["methods"][method]
        share = entry["callback_share_median"]
        rows.append(
            [
                f"`{method}`",
                ratio(entry["overhead_median"]),
                ratio(entry["overhead_wall_median"]),
                "n/a" if share is None else f"{100 * share:.1f}%",
                f"{entry['fit_cpu_seconds_median']:.2f} / {entry['fit_seconds_median']:.2f}",
            ]
        )
    header = [
        "method",
        "CPU time vs dense (median)",
        "wall time vs dense (median)",
        "callback's own time / fit (median)",
        "fit seconds, CPU / wall (median)",
    ]
    return _table(header, rows)


def render_automatic(payload: Mapping[str, Any]) -> list[str]:
    """The automatic-mode section from ``benchmarks/results/auto_target.json`` (``benchmarks.auto_target``)."""
    protocol = payload["protocol"]
    tolerance = 100 * protocol["tolerance"]
    sweep = ", ".join(f"{s:g}" for s in protocol["sweep"])
    lines = [
        "## Automatic mode",
        "",
        f"`AutoPrune()` with no arguments (tolerance {tolerance:g} point of validation accuracy), one run per seed, "
        f"against sweeps over fixed sparsities {{{sweep}}} with the same epochs: Lightning `ModelPruning` "
        f"({protocol['model_pruning_settings']}) and `{protocol['autoprune_fixed_settings']}`. "
        f"{protocol['model']}. Produced by `python -m benchmarks.auto_target`; drops are dense minus pruned, in "
        "points; a violation is a test drop above the tolerance; times are fit wall times (median over seeds).",
        "",
    ]
    sources = payload.get("merged_from") or []
    if len(sources) > 1:
        parts = []
        for source in sources:
            seeds = sorted({seed for values in source["seeds"].values() for seed in values})
            threads = source.get("versions", {}).get("threads")
            cpu = (source.get("environment") or {}).get("cpu_model")
            parts.append(f"seeds {', '.join(map(str, seeds))} ({threads} threads" + (f", {cpu})" if cpu else ")"))
        lines += [
            f"These results join {len(sources)} invocations with `--merge`: {'; '.join(parts)}.",
            "",
        ]
    header = [
        "setup",
        "epochs",
        "sparsity reached: median (min-max)",
        "val drop",
        "test drop",
        "test violations (test drop per seed)",
        "ModelPruning sweep: best s within 1 pt (test, median)",
        "AutoPrune fixed sweep: best s within 1 pt (test, median)",
        "time / dense run: median (range over seeds)",
        "time / ModelPruning sweep",
    ]
    rows = []
    verdicts = []
    for name, entry in payload["results"].items():
        summary = entry["summary"]
        times = [r["time_vs_dense"] for r in entry["seeds"]]
        drops = [f"{100 * r['auto_test_drop']:+.2f}" for r in entry["seeds"]]
        sparsity = [r["auto"]["sparsity"] for r in entry["seeds"]]
        rows.append(
            [
                name,
                str(entry["epochs"]),
                f"{statistics.median(sparsity):.3f} ({min(sparsity):.3f}-{max(sparsity):.3f})",
                f"{100 * summary['auto_val_drop_mean']:+.2f}",
                f"{100 * summary['auto_test_drop_mean']:+.2f}",
                f"{summary['test_violations']} of {summary['seeds']} ({', '.join(drops)})",
                f"{summary['sweep_best_within_test_median']:g}",
                "not run"
                if summary["fixed_best_within_test_median"] is None
                else f"{summary['fixed_best_within_test_median']:g}",
                f"{summary['time_vs_dense_median']:.2f}x ({min(times):.2f}-{max(times):.2f}x)",
                f"{summary['time_vs_sweep_median']:.2f}x",
            ]
        )
        verdicts.append(_automatic_figures(name, entry))
    noise_rows = [
        _noise_floor_row(name, entry, protocol["tolerance"], protocol["sweep"])
        for name, entry in payload["results"].items()
    ]
    noise_header = [
        "setup",
        "validation / test samples",
        "dense accuracy, validation / test (mean)",
        "standard error of one reading, validation / test",
        "decision margin (median)",
        "automatic run: test drop minus validation drop, mean ± std over seeds",
        "fixed AutoPrune targets: seeds within the tolerance on test, of the seeds measured",
        "searches that the window ended",
    ]
    return [
        *lines,
        *_table(header, rows),
        "",
        f"Noise floor. Every accuracy is read on one split of a few hundred to a thousand samples, so one "
        f"reading's binomial standard error, sqrt(p(1-p)/n), is of the order of the {tolerance:g}-point tolerance. "
        "The automatic mode decides on validation readings and keeps a margin of at most half the tolerance; the "
        "fixed sweeps' best target within the tolerance is picked per seed on test readings, so it moves with the "
        "test split's noise:",
        "",
        *_table(noise_header, noise_rows),
        "",
        "The figures the automatic mode is held to on the realistic tier (test drop within the tolerance in at "
        f"least {100 * AUTO_WITHIN_SHARE:.0f}% of seeds; sparsity at least the median of each seed's best fixed "
        f"target within the tolerance on test, either sweep; wall time at most {AUTO_TIME_RATIO:g}x a dense run), "
        "measured here on the small sets:",
        "",
        *verdicts,
        *(machine_line(payload.get("environment", {})) if len(sources) <= 1 else []),
    ]


def _best_fixed(row: Mapping[str, Any]) -> float:
    """A seed's best fixed target within the tolerance on test, over both sweeps (0 when none was)."""
    return max(row["sweep_best_within_test"], row["fixed_best_within_test"] or 0.0)


def _automatic_figures(name: str, entry: Mapping[str, Any]) -> str:
    """One setup's automatic-mode figures against the realistic tier's goals, as one line."""
    seeds, summary = entry["seeds"], entry["summary"]
    sparsity = statistics.median(row["auto"]["sparsity"] for row in seeds)
    best = statistics.median(_best_fixed(row) for row in seeds)
    within = summary["seeds"] - summary["test_violations"]
    return f"- {name}: " + _goal_checks(within, summary["seeds"], sparsity, best, summary["time_vs_dense_median"])


def _goal_checks(within: int, seeds: int, sparsity: float, best: float | None, time: float) -> str:
    """The automatic mode's figures against its goals (``AUTO_WITHIN_SHARE``, best fixed target, time ratio)."""
    share = within / seeds
    checks = [
        (
            share >= AUTO_WITHIN_SHARE - 1e-9,
            f"within the tolerance on test in {within} of {seeds} seeds ({100 * share:.0f}%)",
        ),
        (
            best is not None and sparsity >= best - 1e-9,
            f"sparsity {sparsity:.3f} (median) against the best fixed target's "
            + ("(none measured)" if best is None else f"{best:g}"),
        ),
        (time <= AUTO_TIME_RATIO + 1e-9, f"wall time {time:.2f}x a dense run (median)"),
    ]
    return "; ".join(f"{text}: {'met' if ok else '**not met**'}" for ok, text in checks) + "."


def _noise_floor_row(name: str, entry: Mapping[str, Any], tolerance: float, sweep: Sequence[float]) -> list[str]:
    """One setup's noise floor: split sizes, standard errors, the margin, and what the readings did."""
    seeds = entry["seeds"]
    val_samples, test_samples = auto_target.split_sizes(name)
    val = statistics.fmean(row["dense"]["val_acc"] for row in seeds)
    test = statistics.fmean(row["dense"]["test_acc"] for row in seeds)
    margins = [  # one per seed: a run with many decisions counts once
        statistics.median(d["margin"] for d in decided)
        for decided in ([d for d in row["auto"]["decisions"] if "margin" in d] for row in seeds)
        if decided
    ]
    gaps = [row["auto_test_drop"] - row["auto_val_drop"] for row in seeds]
    gap = f"{100 * statistics.fmean(gaps):+.2f} ± {100 * statistics.stdev(gaps):.2f} pt" if len(gaps) > 1 else "n/a"
    fixed = []
    for target in sweep:
        runs = [(row, row["autoprune_fixed"][str(target)]) for row in seeds if str(target) in row["autoprune_fixed"]]
        if runs:
            ok = sum(
                auto_target.within_tolerance(row["dense"]["test_acc"] - run["test_acc"], tolerance) for row, run in runs
            )
            fixed.append(f"{target:g}: {ok} of {len(runs)}")
    windowed = sum(
        any(d["decision"] == "stop" and "window" in d.get("reason", "") for d in row["auto"]["decisions"])
        for row in seeds
    )
    return [
        name,
        f"{val_samples} / {test_samples}",
        f"{val:.3f} / {test:.3f}",
        f"{100 * accuracy_standard_error(val, val_samples):.2f} / "
        f"{100 * accuracy_standard_error(test, test_samples):.2f} pt",
        f"{100 * statistics.median(margins):.2f} pt" if margins else "none decided",
        gap,
        ", ".join(fixed) if fixed else "not run",
        f"{windowed} of {len(seeds)}",
    ]


def render_report(
    summary: Mapping[str, Any],
    plots: str = "benchmarks/plots",
    structured_results: Path | None = RESULTS,
    automatic_results: Path | None = RESULTS / "auto_target.json",
    realistic_results: Path | None = RESULTS / realistic_tier.TIER,
    scale_results: Path | None = RESULTS / "importance_scale.json",
) -> str:
    """The text of ``BENCHMARKS.md`` for a summary (see :func:`benchmarks.protocol.summarise`).

    Args:
        summary: the unstructured track's summary.
        plots: where the plots are, relative to the repository root (for the image links).
        structured_results: results root whose ``structured/`` run files give the structured
            section (none, or ``None``: no section).
        automatic_results: the results file of ``benchmarks/auto_target.py`` (the automatic-mode
            section; a missing file, or ``None``: no section).
        realistic_results: the realistic tier's results root (its section says "Not run yet" while it
            holds no run files; ``None``: no section).
        scale_results: the results file of ``benchmarks/importance_scale.py`` (the scale section; a
            missing file, or ``None``: no section).
    """
    env = summary.get("environment", {})
    budget = Budget(**summary["budget"]) if "budget" in summary else Budget()
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.report` from the run files in `benchmarks/results/"
        f"{TRACK}/`; do not edit by hand. Protocol and metric definitions: `benchmarks/protocol.py` "
        "(module docstring).",
        "",
        "## Reproduce",
        "",
        "```",
        *COMMANDS,
        "```",
        "",
        DURATION,
        f"- Versions: Python {env.get('python')}, torch {env.get('torch')}, lightning {env.get('lightning')}, "
        f"lightning_autoprune {env.get('lightning_autoprune')}, numpy {env.get('numpy')}.",
        f"- CPU: {env.get('torch_threads')} torch thread(s) per process on {env.get('platform')} "
        f"({env.get('processor')}), a 2-core machine shared with other work, so wall times are noisy.",
        f"- Code: git commit `{env.get('git_commit')}`"
        + (" with uncommitted changes in `lightning_autoprune/`." if env.get("package_modified") else "."),
        f"- Budget: {budget.describe()}. Every method starts from the same dense model of its seed.",
        f"- Grid: seeds {', '.join(str(s) for s in _seeds(summary))}; {summary.get('runs', 0)} run files; "
        f"summed fit time (pretraining included, reused runs not counted) "
        f"{summary.get('total_run_seconds', 0.0) / 60:.1f} min wall, "
        f"{summary.get('total_run_cpu_seconds', 0.0) / 60:.1f} min CPU.",
        "",
        "## Methods",
        "",
        *[f"- `{m}`: {note}" for m, note in METHOD_NOTES.items()],
        "",
        "ModelPruning's `amount` compounds: `torch.nn.utils.prune` removes that fraction of the weights *still "
        "unpruned*, so the benchmark passes `(s_k - s_{k-1}) / (1 - s_{k-1})` at each event; the final sparsity "
        "column below counts the zeros of the effective weights (`weight_orig * weight_mask`).",
        "",
        "Torch-Pruning is not run here: it removes whole channels, so it belongs to the structured track.",
        "",
        "## Metrics",
        "",
        "- Accuracy: test accuracy in %, mean ± std over seeds; the best mean of each column is bold.",
        "- AUC (norm.): area under test accuracy / dense accuracy against log2(1 / (1 - s)), trapezoids from "
        "s = 0 (value 1) through the grid, divided by log2 of the largest compression; 1.0 = no loss anywhere.",
        "- Max s within 1 pt: largest grid sparsity with accuracy >= dense - 1 point (0 if none); the dense "
        "reference is the dense model fine-tuned for the same number of epochs, per seed.",
        "- Effective sparsity: weights on no input-to-output path of nonzero weights count as pruned.",
        "- Overhead: fit time over the dense fine-tune of the same seed, minus 1 (median over runs); process CPU "
        "time is the headline because other jobs shared the machine, which inflates wall times unevenly.",
        "- Paired comparison: `default` minus each method, in points, paired over seeds; two-sided paired "
        "t-test p (Wilcoxon in the JSON; with 5 seeds it cannot go below 0.0625). *real* only where p < 0.05; "
        "no correction for multiple comparisons.",
        "",
        "## Unstructured track",
    ]
    for name in [n for n in SETUPS if n in summary["setups"]] + sorted(n for n in summary["setups"] if n not in SETUPS):
        setup = summary["setups"][name]
        description = SETUPS[name].description if name in SETUPS else name
        dense = setup["dense"]
        lines += [
            "",
            f"### {name}: {description}",
            "",
            f"Dense: {_pm(dense['pretrained_acc_mean'], dense['pretrained_acc_std'])} after dense training, "
            f"{_pm(dense['test_acc_mean'], dense['test_acc_std'])} after the dense fine-tune (the reference).",
            "",
            *_accuracy_table(setup),
            "",
            _auc_ranking(setup),
            "",
            "Where the default loses (mean over seeds):",
            "",
            *_losses(setup),
            "",
            "Paired comparison, `default` minus method (points; paired t-test p):",
            "",
            *_comparison_table(setup),
            "",
            "Sparsity / effective sparsity reached (%, mean over seeds):",
            "",
            *_effective_table(setup),
            "",
            "Overhead:",
            "",
            *_overhead_table(setup),
            *_fidelity_table(setup),
            "",
            f"![accuracy vs sparsity, {name}]({plots}/{name}.png)",
        ]
    if automatic_results is not None and automatic_results.exists():
        lines += ["", *render_automatic(json.loads(automatic_results.read_text()))]
    structured = structured_track.load_summary(structured_results) if structured_results is not None else None
    if structured is not None:
        lines += ["", *render_structured(structured)]
    if realistic_results is not None:
        lines += ["", *render_realistic(realistic_results, plots)]
    if scale_results is not None and scale_results.exists():
        lines += ["", *render_scale(json.loads(scale_results.read_text()))]
    return "\n".join(lines) + "\n"


def _without_replay(event: Mapping[str, Any]) -> str:
    """The event's seconds when every ablation pass runs every layer (its forward passes'); ``n/a`` if not read."""
    if "event_seconds_full_passes" not in event:
        return "n/a"
    return f"{event['event_seconds_full_passes']:.1f} ({event['label_forward_seconds_full_passes']:.1f})"


def render_scale(payload: Mapping[str, Any]) -> list[str]:
    """The scale section from ``benchmarks/results/importance_scale.json`` (``benchmarks/importance_scale.py``)."""
    events = payload["events"]
    rows = [
        [
            f"{e['prunable_weights'] / 1e6:.1f}M",
            f"{e['sparsity_before']:.2f} -> {e['sparsity_after']:.2f}",
            f"{e['event_seconds']:.1f}",
            f"{e['forward_passes']} in {e['label_forward_seconds']:.1f}",
            _without_replay(e),
            f"{e['event_seconds_without_labels']:.1f}",
            f"{e['peak_extra_mb']:.0f} ({e['peak_extra_over_weights']:.2f}x)",
            str(e["diagnostics"].get("used", "")),
        ]
        for e in events
    ]
    lines = [
        "## Scale of one learned event",
        "",
        f"`python -m benchmarks.importance_scale`: {payload['model']}, {payload['threads']} CPU threads, "
        "128 group ablations and the candidate steps (`label_budget=None`), each measured with one forward pass: "
        "a candidate step on the 512 held-out calibration samples, an ablation on all of them at 1M weights and "
        "on the first 256 above 2^20 weights, as an event's ablations run (`lightning_autoprune.event."
        "ablation_samples`); an ablation pass runs only the layers after the ablated one "
        "(`LayerReplay`: the earlier layers replay their recorded outputs, and the ablated layer returns its "
        "recorded output less the zeroed entries' share, a sparse product counted in the own work). "
        "Each figure is the median of "
        f"{payload.get('repeats', 1)} readings, each event in a fresh process that has first run three forward "
        "and backward passes of the model, as training before an event would. Times are read with glibc's "
        "default allocator; peak extra memory (the resident high-water mark over the process before the event, "
        "against the prunable weights' float32 size) with large blocks always returned to the system "
        "(`MALLOC_MMAP_THRESHOLD_=131072`), so that it is the most the event held at once. "
        + (
            "Before the event the process's library mappings are paged in (`madvise(MADV_POPULATE_READ)`), so "
            "that the mark does not count the library code an event runs for the first time: clean, shared pages "
            "that do not grow with the model. "
            if events and all(e.get("libraries_paged_in_mb", 0) > 0 for e in events)
            else ""
        )
        + '"Own work" is the event without the model\'s forward passes.',
        "",
        *_table(
            [
                "weights",
                "step",
                "event s",
                "forward passes (s)",
                "without replay: event s (forward s)",
                "own work s",
                "peak extra MB",
                "step used",
            ],
            rows,
        ),
    ]
    by_size: dict[int, list[Mapping[str, Any]]] = {}
    for e in events:
        by_size.setdefault(e["prunable_weights"], []).append(e)
    sizes = sorted(by_size)
    if len(sizes) > 1:
        per_weight = {n: statistics.median(e["event_seconds_without_labels"] for e in by_size[n]) / n for n in sizes}
        smallest, largest = sizes[0], sizes[-1]
        lines += [
            "",
            "Own work per million weights (median over the events of a size): "
            + ", ".join(f"{n / 1e6:.1f}M {per_weight[n] * 1e6:.2f} s" for n in sizes)
            + f"; from {smallest / 1e6:.1f}M to {largest / 1e6:.1f}M weights ({largest / smallest:.0f}x) the own "
            f"work grows {per_weight[largest] * largest / (per_weight[smallest] * smallest):.1f}x.",
        ]
    if sizes:
        largest = sizes[-1]
        readings = [r["event_seconds"] for e in by_size[largest] for r in e.get("readings", {}).get("time", [])]
        if readings:
            over = sum(seconds >= SCALE_GOAL_SECONDS for seconds in readings)
            lines += [
                "",
                f"Single readings of the event at {largest / 1e6:.1f}M weights: {min(readings):.2f}-"
                f"{max(readings):.2f} s ({len(readings)} readings, {over} at or above the goal's "
                f"{SCALE_GOAL_SECONDS:g} s).",
            ]
    return lines + machine_line(payload.get("environment", {}))


def machine_line(env: Mapping[str, Any]) -> list[str]:
    """A blank line and the machine a results file ran on, from its ``environment``; nothing without a CPU model.

    Example:
        >>> machine_line({"cpu_model": "AMD EPYC (family 25)", "cpu_capability": "AVX512", "git_commit": "abcdef12"})
        ['', 'Machine: AMD EPYC (family 25), torch kernels AVX512; commit abcdef1.']
        >>> machine_line({})
        []
    """
    if "cpu_model" not in env:
        return []
    return [
        "",
        f"Machine: {env['cpu_model']}, torch kernels {env.get('cpu_capability')}; commit "
        f"{str(env.get('git_commit'))[:7]}" + (" with the package modified." if env.get("package_modified") else "."),
    ]


# ---------------------------------------------------------------------------------------------- realistic tier
REALISTIC_NOTES: dict[str, str] = {
    "wanda": "`AutoPrune(importance='wanda')`: `|w_ij| * ||x_j||`, the input unit's L2 norm over a forward pass "
    "on the calibration samples (Sun et al. 2024), ranked globally.",
    "default": "`AutoPrune(target_sparsity=s)` without `importance`: the learned scorer, the package default.",
}


def _loss_table(setup: Mapping[str, Any]) -> list[str]:
    keys = _sparsity_keys(setup)
    dense = setup["dense"]
    per_char = "val_chars" in setup.get("eval_sizes", {})  # bits per character only mean something for the LM
    rows = [["dense", *[f"{dense['test_loss_mean']:.4f} ± {dense['test_loss_std']:.4f}" for _ in keys]]]
    for method in _methods(setup):
        cells = setup["methods"][method]["by_sparsity"]
        rows.append(
            [
                f"`{method}`",
                *[
                    f"{cells[k]['test_loss_mean']:.4f} ± {cells[k]['test_loss_std']:.4f}"
                    + (f" ({cells[k]['test_loss_mean'] / math.log(2):.3f} bpc)" if per_char else "")
                    if k in cells
                    else ""
                    for k in keys
                ],
            ]
        )
    return _table(["method", *[f"s={k}" for k in keys]], rows)


def _loss_comparison_table(setup: Mapping[str, Any]) -> list[str]:
    keys = _sparsity_keys(setup)
    rows = []
    for method, tests in setup.get("loss_comparisons", {}).items():
        row = [f"`{method}`"]
        for key in keys:
            test = tests.get(key)
            text = "" if test is None else f"{test['mean_diff']:+.4f} (p={_p(test['t_p'])})"
            row.append(f"**{text} real**" if test is not None and test["real"] else text)
        rows.append(row)
    return _table(["loss: default − method (nats)", *[f"s={k}" for k in keys]], rows)


def _cost_table(setup: Mapping[str, Any]) -> list[str]:
    rows = []
    for method in _methods(setup):
        for key, cell in setup["methods"][method]["by_sparsity"].items():
            callback = cell["callback_seconds_median"]
            rows.append(
                [
                    f"`{method}`",
                    key,
                    f"{cell['fit_seconds_median']:.0f}",
                    "n/a" if callback is None else f"{callback:.1f}",
                    f"{cell['events_mean']:.0f}",
                    f"{cell['peak_rss_mib_max']:.0f}",
                ]
            )
    header = ["method", "sparsity", "fit s (median)", "callback s (median)", "events", "peak RSS MiB (max)"]
    return _table(header, rows)


def render_realistic(results: Path, plots: str | None = "benchmarks/plots") -> list[str]:
    """The "Realistic tier" section from the run files under ``results`` (``Not run yet`` while there are none)."""
    lines = ["## Realistic tier", ""]
    summary = realistic_tier.load_summary(results)
    if summary is None or not summary["setups"]:
        return [
            *lines,
            "Not run yet. `make bench-real` runs it (several hours; see `benchmarks/realistic.py`) and "
            "writes its run files under `benchmarks/results/realistic/`; `make bench-real-quick` checks it in "
            "under 10 minutes.",
        ]
    lines += [
        "Workloads that look like real use (issue #19): the protocol above, on larger data and models; "
        "`benchmarks/realistic.py` documents it. Accuracy cells are mean ± std over seeds; the paired tests "
        "compare `default` with each method over seeds (t-test, a difference is real at p < 0.05).",
    ]
    recorded, planned = realistic_tier.grid_progress(results)
    if recorded < planned:
        lines += [
            "",
            f"**Partial run: {recorded} of the grid's {planned} runs are recorded** (`make bench-real` resumes "
            "it). Tables show what is recorded; a cell with fewer seeds than its row's dense run has no std.",
        ]
    seconds = realistic_tier.recorded_seconds(results)
    if seconds:
        parts = ", ".join(f"{track} {value / 3600:.1f} h" for track, value in seconds.items())
        lines += [
            "",
            f"Time: the recorded fits of this tier add up to {sum(seconds.values()) / 3600:.1f} hours of wall time "
            f"({parts}), mostly at 1 torch thread on the shared 2-core VM. `make bench-real` runs the unstructured "
            "grid as two single-thread jobs (`benchmarks/parallel.py`), then the structured track alone; "
            "`make bench-real-auto` runs the automatic track the same way. The status below gives the measured "
            "time of the last run from empty results.",
        ]
    status = results / "STATUS.md"
    if status.exists():
        lines += ["", status.read_text().strip()]
    for name, setup in summary["setups"].items():
        sizes = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in setup["eval_sizes"].items())
        dense = setup["dense"]
        lines += [
            "",
            f"### {name}",
            "",
            f"{setup['description']}. Seeds: {', '.join(map(str, setup['seeds']))}. Evaluation sets: {sizes}. "
            f"Dense training took {dense['pretrain_seconds_median']:.0f} s (median); the test accuracy's binomial "
            f"standard error is {100 * dense['test_acc_se_mean']:.2f} point.",
            "",
            "Test accuracy (%):",
            "",
            *_accuracy_table(setup),
            "",
            "Paired tests of accuracy:",
            "",
            *_comparison_table(setup),
            "",
            "Test loss, nats per character (LM; bits per character in brackets) or per sample, mean ± std over seeds:",
            "",
            *_loss_table(setup),
            "",
            *_loss_comparison_table(setup),
            "",
            "Overheads:",
            "",
            *_overhead_table(setup),
            "",
            *_cost_table(setup),
        ]
        if plots is not None:
            lines += ["", f"![{name}]({plots}/realistic-{name}.png)"]
    lines += render_realistic_structured(realistic_structured.summarise(results))
    lines += render_realistic_automatic(realistic_auto.load_summary(results / "automatic"))
    notes = [f"- `{m}`: {REALISTIC_NOTES.get(m, METHOD_NOTES.get(m, ''))}" for m in realistic_tier.METHODS]
    return [*lines, "", "Methods:", "", *notes]


def render_realistic_automatic(summaries: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """The realistic tier's automatic-mode subsections, one per workload (none while there are no run files)."""
    lines: list[str] = []
    for name, summary in (summaries or {}).items():
        fixed = summary["fixed_best_within_median"]
        accuracy = summary["mode"] == "max"
        scale, unit, places = (100, "pt", 2) if accuracy else (1, "nats", 3)
        tolerance = f"{scale * summary['tolerance']:g}-{'point' if accuracy else 'nat'}"
        drops = ", ".join(f"{scale * d:+.{places}f}" for d in summary.get("test_drops", []))
        batches = summary.get("train_batches")
        if isinstance(batches, float) and batches < 1:
            epochs = f"{summary['epochs']} epochs of {batches:.0%} of the training set each"
        elif isinstance(batches, int):
            epochs = f"{summary['epochs']} epochs of {batches} training batches each"
        else:
            epochs = f"{summary['epochs']} epochs"
        lines += [
            "",
            f"### {name}, automatic mode",
            "",
            f"`benchmarks/realistic_auto.py`: {summary['configuration']} fine-tunes the tier's dense state for "
            f"{epochs}; a dense fine-tune of the same epochs is the reference for the test drop "
            f"({summary['metric']}, dense minus pruned for an accuracy, pruned minus dense for a loss) and the unit "
            f"of time. Seeds: {', '.join(map(str, summary['seeds']))}.",
            "",
            *_table(
                ["measure", "value"],
                [
                    [f"seeds within the {tolerance} tolerance on test (%)", _pct(summary["within_tolerance_share"])],
                    [
                        "test drop, mean (max)",
                        f"{scale * summary['test_drop_mean']:+.{places}f} "
                        f"({scale * summary['test_drop_max']:+.{places}f}) {unit}",
                    ],
                    *([[f"test drop per seed ({unit})", drops]] if drops else []),
                    [
                        "sparsity reached, median (min)",
                        f"{summary['sparsity_median']:.3f} ({summary['sparsity_min']:.3f})",
                    ],
                    [
                        "best fixed target within tolerance on test, median (tier runs, any method)",
                        "n/a" if fixed is None else f"{fixed:.2f}",
                    ],
                    *_matched_rows(summary),
                    [
                        "wall time vs dense, median (max)",
                        f"{summary['time_vs_dense_median']:.2f}x ({summary['time_vs_dense_max']:.2f}x)",
                    ],
                    ["CPU time vs dense, median", f"{summary['cpu_vs_dense_median']:.2f}x"],
                    ["callback's own time, share of the fit (median, %)", _pct(summary["callback_share_median"])],
                    *_reference_rows(summary, scale, unit, places),
                ],
            ),
            "",
            f"Goals (at least {100 * AUTO_WITHIN_SHARE:.0f}% of seeds within the tolerance on test; sparsity at least "
            f"the median best fixed target of the tier's runs; wall time at most {AUTO_TIME_RATIO:g}x): "
            + _goal_checks(
                summary["within_tolerance_seeds"],
                len(summary["seeds"]),
                summary["sparsity_median"],
                fixed,
                summary["time_vs_dense_median"],
            ),
        ]
    return lines


def _matched_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """The like-for-like fixed sweep (fixed targets fine-tuned for the automatic run's budget), when it ran."""
    if summary.get("matched_best_within_median") is None:
        return []
    held = "; ".join(
        f"{target:g} over epochs {start}-{end}: {ok} of {n}" for target, start, end, ok, n in summary["matched_within"]
    )
    best = ", ".join(f"{s:g}" for s in summary["matched_best_within"])
    return [
        [
            "best fixed target within tolerance on test at the same budget, median (default importance; per seed)",
            f"{summary['matched_best_within_median']:.2f} ({best})",
        ],
        ["fixed targets at the same budget: seeds within tolerance on test", held],
    ]


def _reference_rows(summary: Mapping[str, Any], scale: float, unit: str, places: int) -> list[list[str]]:
    """How far each decision's reference was from the dense fine-tune's validation at that epoch."""
    if not summary.get("decisions_checked"):
        return []
    low, high = scale * summary["reference_error_min"], scale * summary["reference_error_max"]
    digits = places + 1
    return [
        [
            "each decision's reference against the dense fine-tune's validation at its epoch: median absolute "
            "error (range; positive: more lenient than the dense model was)",
            f"{scale * summary['reference_error_abs_median']:.{digits}f} ({low:+.{digits}f} to {high:+.{digits}f}) "
            f"{unit}",
        ],
        [
            "decisions whose tolerance test, at the epoch it decided, differs against the measured dense value "
            "(later decisions of a run follow its path, which would not have happened)",
            f"{summary['decisions_flipped']} of {summary['decisions_checked']}",
        ],
    ]


def render_realistic_structured(summary: Mapping[str, Any]) -> list[str]:
    """The realistic tier's structured subsection (none while it has no run files)."""
    if not summary["levels"]:
        return []
    lines = [
        "",
        "### mnist1d-resnet, structured (FLOPs targets, compacted)",
        "",
        "`benchmarks/realistic_structured.py`: the reference is AutoPrune's structured default, then `compact()`; "
        "Torch-Pruning is steered to its FLOPs; `scratch` trains its compacted architecture from random weights. "
        "Accuracy mean ± std over seeds; `reference − method` is a paired t-test over seeds.",
    ]
    for entry in summary["levels"].values():
        rows = []
        for method, cell in entry["methods"].items():
            test = entry["comparisons"].get(method)
            compared = "" if test is None else f"{100 * test['mean_diff']:+.2f} (p={_p(test['t_p'])})"
            rows.append(
                [
                    f"`{method}`",
                    _pm(cell["test_acc_mean"], cell["test_acc_std"]),
                    f"{cell['flops_mean']:,.0f}",
                    f"{cell['params_mean']:,.0f}",
                    f"{cell['fit_seconds_median']:.0f}",
                    f"**{compared} real**" if test is not None and test["real"] else compared,
                ]
            )
        header = ["method", "test acc (%)", "FLOPs", "params", "fit s", "reference − method"]
        speedups = ", ".join(
            f"{cell['speedup_median']:.2f}x at {threads} thread(s)" for threads, cell in entry["latency"].items()
        )
        lines += ["", f"{entry['label']} fewer FLOPs:", "", *_table(header, rows)]
        if speedups:
            lines += ["", f"Compacted reference vs dense at batch 256 (median over seeds): {speedups}."]
    return lines


def write_realistic_plots(results: Path, directory: Path) -> list[Path]:
    """One PNG per workload of the realistic tier (``realistic-<name>.png``); none while it has no results."""
    summary = realistic_tier.load_summary(results)
    if summary is None:
        return []
    renamed = {"setups": {f"realistic-{k}": v for k, v in summary["setups"].items()}}
    return write_plots(renamed, directory)


# ---------------------------------------------------------------------------------------------- structured track
STRUCTURED_NOTES: dict[str, str] = {
    "dense": "the dense model fine-tuned for the same 12 epochs without pruning (the accuracy reference).",
    "autoprune_magnitude": "`AutoPrune(granularity='structured', importance='magnitude')`: the group norm (the "
    "unit's squared L2 norm in every coupled weight slice, averaged, divided by the layer's mean); then `compact()`.",
    "autoprune_magnitude_round8": "the same with `round_to=8`: every pruned conv keeps a multiple of 8 channels "
    "(each event's selection rounded per layer to the nearest multiple that does not overshoot the target, so its "
    "FLOPs can fall well short of the level: compare its FLOPs column); then `compact()`. Timed, not a reference.",
    "autoprune_taylor": "the same with `importance='taylor'` (group Taylor with a curvature term, per parameter, or "
    "FLOP with `target_unit='flops'`, removed); then `compact()`.",
    "autoprune_learned": "the same with `importance='learned'` (single-unit ablations near the pruning frontier teach "
    "a scikit-learn model, checked against Taylor on held-out units); then `compact()`.",
    "tp_magnitude": "Torch-Pruning 1.6 `BasePruner` (= `MetaPruner`), `MagnitudeImportance(p=2)`, "
    "`global_pruning=True`, head ignored, physical pruning at the same 8 epoch starts; per event the number of "
    "channels is bisected so the FLOPs follow the cubic schedule to the reference's final FLOPs; a fresh Adam "
    "after each event.",
    "tp_taylor": "the same with `TaylorImportance()` (gradients of the mean loss on 512 training samples, computed "
    "before each event).",
    "scratch": "`CNN1DClassifier(channels=<the reference's compacted widths>)` from random init, trained 32 epochs "
    "(dense + fine-tune epochs).",
}


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _below(points: float) -> str:
    """``"0.52 points below dense"`` or ``"0.10 points above dense"``."""
    return f"{abs(points):.2f} points {'below' if points >= 0 else 'above'} dense"


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def _structured_level(summary: Mapping[str, Any], key: str) -> list[str]:
    level = summary["levels"][key]
    dense = summary["dense"]
    reference = summary.get("reference", structured_track.REFERENCE)
    rows = [
        [
            "`dense`",
            _pm(dense["test_acc_mean"], dense["test_acc_std"]),
            _count(dense["params"]),
            "1.00x",
            _count(dense["flops"]),
            "1.00x",
            "",
            _comparison_cell(level["comparisons"].get("dense")),
        ]
    ]
    for method, cell in level["methods"].items():
        vs_ref = cell.get("flops_vs_reference_mean")
        rows.append(
            [
                f"`{method}`",
                _pm(cell["test_acc_mean"], cell["test_acc_std"]),
                _count(cell["params_mean"]),
                f"{cell['params_vs_dense']:.2f}x",
                _count(cell["flops_mean"]),
                f"{cell['flops_vs_dense']:.2f}x",
                "" if vs_ref is None or method == reference else f"{vs_ref:.3f}",
                "reference" if method == reference else _comparison_cell(level["comparisons"].get(method)),
            ]
        )
    header = [
        "method",
        "test acc (%)",
        "params",
        "dense / params",
        "FLOPs",
        "dense / FLOPs",
        f"FLOPs / `{reference}`",
        f"`{reference}` − method (points; p)",
    ]
    lines = [
        f"### {level['label']}: `target_sparsity={float(key):g}`",
        "",
        *_table(header, rows),
        "",
        "Channel widths of the final models (conv stages), per seed:",
        "",
    ]
    for method, cell in level["methods"].items():
        if method != "scratch":
            per_seed = "; ".join(str(w) for w in cell["widths_per_seed"])
            lines.append(f"- `{method}`: {per_seed}")
    late = [
        f"`{method}` {cell['events_after_end_epoch']} events, removing units in {cell['runs_pruning_after_end_epoch']} "
        f"of {len(cell['seeds'])} runs"
        + (
            f" (epochs {', '.join(str(e) for e in cell['epochs_pruning_after_end_epoch'])})"
            if cell["runs_pruning_after_end_epoch"]
            else ""
        )
        for method, cell in level["methods"].items()
        if cell.get("events_after_end_epoch")
    ]
    if late:
        lines += ["", "AutoPrune events after `end_epoch` (there should be none): " + "; ".join(late) + "."]
    learned = "autoprune_learned"
    fidelity = level["methods"].get(learned, {}).get("importance_fidelity")
    if fidelity:
        lines += [
            "",
            f"`{learned}` scorer, held-out fidelity over its {fidelity['events']} pruning events (mean Spearman "
            "with the measured single-unit ablations): "
            + ", ".join(f"{name} {value:.3f}" for name, value in fidelity["spearman_mean"].items())
            + f"; it fell back to a formula at {fidelity['fell_back_share']:.0%} of events.",
        ]
    latency = level.get("latency")
    if latency:
        for timed in latency.values():
            latency_rows = []
            for batch_key in sorted((k for k in timed if k.startswith("batch_")), key=lambda k: int(k.split("_")[1])):
                cell = timed[batch_key]
                latency_rows.append(
                    [
                        batch_key.split("_")[1],
                        f"{cell['dense_ms_median']:.3f}",
                        f"{cell['compact_ms_median']:.3f}",
                        f"{cell['ratio_median']:.2f}x",
                        ", ".join(f"{r:.2f}" for r in cell["ratio_per_seed"]),
                        f"{cell['ratio_min_round']:.2f} – {cell['ratio_max_round']:.2f}",
                        f"({cell['warmup']} + {cell['runs']}) x {timed['rounds']}",
                    ]
                )
            lines += [
                "",
                f"Latency, dense vs the compacted `{timed['method']}` model, {timed['threads']} torch "
                f"thread{'s' if timed['threads'] > 1 else ''} (medians over seeds "
                f"{', '.join(str(s) for s in timed['seeds'])} of each seed's median over rounds; 1-minute load "
                f"average up to {timed['loadavg_max']:.2f} during the timing):",
                "",
                *_table(
                    [
                        "batch",
                        "dense (ms)",
                        "compacted (ms)",
                        "dense / compacted",
                        "per seed",
                        "range over rounds and seeds",
                        "(warm-up + timed calls) x rounds",
                    ],
                    latency_rows,
                ),
            ]
    else:
        lines += ["", "Latency: not measured (run `python -m benchmarks.structured --latency`)."]
    return lines


def _p_is(value: float | None) -> str:
    """``p=0.012``, ``p<0.001`` or ``p=n/a``."""
    text = _p(value)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def _comparison_cell(test: Mapping[str, Any] | None) -> str:
    if test is None:
        return ""
    text = f"{100 * test['mean_diff']:+.2f} ({_p_is(test['t_p'])})"
    return f"**{text} real**" if test["real"] else text


def render_structured(summary: Mapping[str, Any]) -> list[str]:
    """The structured track's section of ``BENCHMARKS.md`` (see :func:`benchmarks.structured.summarise`)."""
    env = summary.get("environment", {})
    budget = Budget(**summary["budget"]) if "budget" in summary else Budget()
    dense = summary["dense"]
    goals = summary["goals"]
    reference = summary.get("reference", structured_track.REFERENCE)
    lines = [
        "## Structured track",
        "",
        "Whole channels removed and the model physically compacted. Generated from the run files in "
        f"`benchmarks/results/{structured_track.TRACK}/`; protocol, Torch-Pruning settings and metric definitions: "
        "`benchmarks/structured.py` (module docstring).",
        "",
        "```",
        "python -m benchmarks.structured             # training runs, then",
        "python -m benchmarks.structured --latency   # the latency step alone, on the saved models",
        "python -m benchmarks.structured --quick     # seed 0, level 2x, every method, into results-quick/",
        "```",
        "",
        f"- Setup: {SETUPS[structured_track.SETUP].description}; dense widths {dense['widths']}, "
        f"{_count(dense['params'])} parameters, {_count(dense['flops'])} FLOPs (multiply-accumulates per example, "
        "counted by Torch-Pruning).",
        f"- Budget: {budget.describe()}. Every method starts from the same dense model of its seed; "
        "the Torch-Pruning runs prune at the same epoch starts; `scratch` trains "
        f"{budget.dense_epochs + budget.finetune_epochs} epochs.",
        "- Levels: AutoPrune `target_sparsity` "
        + ", ".join(f"{float(k):g} (`{v['label']}`)" for k, v in summary["levels"].items())
        + (
            ", with `target_unit='flops'`: the fraction of the multiply-accumulates per example of the masked "
            "Conv/Linear layers removed (BatchNorm and bias operations not counted)"
            if summary.get("target_units") == ["flops"]
            else ": the fraction of the masked tensors' parameters (conv/linear weights and biases, BatchNorm "
            "affines) removed"
        )
        + "; the params and FLOPs columns give what each final model really has and costs.",
        f"- Code: git commit `{env.get('git_commit')}`"
        + (" with uncommitted changes in `lightning_autoprune/`" if env.get("package_modified") else "")
        + f"; torch {env.get('torch')}, Torch-Pruning 1.6; {env.get('torch_threads')} torch thread(s) for training. "
        f"Seeds {', '.join(str(s) for s in summary['seeds'])}; {summary['runs']} run files; summed fit time "
        f"{summary['total_run_seconds'] / 60:.1f} min wall, {summary['total_run_cpu_seconds'] / 60:.1f} min CPU.",
        "- Accuracy: test accuracy in %, mean ± std over seeds, of the model each method ends with (for AutoPrune the "
        f"compacted model; it matches the masked one). Paired comparison: `{reference}` minus the method, "
        "points, paired t-test p over seeds; *real* only where p < 0.05.",
        f"- Reference: `{reference}` (AutoPrune with the structured default importance of the code that ran). Its "
        "compacted FLOPs are the target the Torch-Pruning runs match, and its widths are `scratch`'s architecture.",
        "- Latency: the compacted models of the methods timed against the dense model, alternating call by call, at "
        + " and ".join(str(t) for t in structured_track.LATENCY_THREADS)
        + " torch threads, with nothing else running. On this shared 2-core VM, 2-thread batch-256 ratios "
        "of the same models moved by up to 1.6x between invocations, so read ratios near a threshold as "
        "undecided; single rounds moved by the range shown.",
        "",
        "Methods:",
        "",
        *[f"- `{m}`: {note}" for m, note in STRUCTURED_NOTES.items()],
        "",
        f"Dense: {_pm(dense['pretrained_acc_mean'], dense['pretrained_acc_std'])} after dense training, "
        f"{_pm(dense['test_acc_mean'], dense['test_acc_std'])} after the dense fine-tune (the reference).",
    ]
    for key in summary["levels"]:
        lines += ["", *_structured_level(summary, key)]
    lines += ["", "### Goals", ""]
    a = goals["a"]
    lines.append(
        f"- (a) ≥ 2x lower latency than dense at batch 256 with ≤ 1 point lower accuracy, at some level, for some "
        f"timed method and thread count (the verdict rests on the best of them): {_verdict(a['met'])}."
    )
    for value in a["levels"].values():
        if not value["candidates"]:
            lines.append(f"  - {value['label']}: latency not measured.")
        for candidate in value["candidates"]:
            lines.append(
                f"  - {value['label']}, `{candidate['method']}`, {candidate['threads']} thread"
                f"{'s' if candidate['threads'] > 1 else ''}: dense / compacted latency at batch 256 "
                f"{candidate['latency_ratio_batch_256']:.3f}x (needs ≥ 2); accuracy "
                f"{_below(candidate['accuracy_drop_points'])} (needs ≤ 1 point below): {_verdict(candidate['met'])}."
            )
    b = goals["b"]
    lines.append(
        f"- (b) `{reference}` accuracy ≥ `tp_magnitude`, `tp_taylor` and `scratch` at equal FLOPs, at every "
        f"level (means over seeds): {_verdict(b['met'])}."
    )
    for value in b["levels"].values():
        parts = [
            f"`{name}` {r['diff_points']:+.2f} points ({_p_is(r['t_p'])}{', real' if r['real'] else ''})"
            for name, r in value["rivals"].items()
        ]
        missing = "" if value["complete"] else " (not every rival was run)"
        lines.append(
            f"  - {value['label']}: `{reference}` minus {'; '.join(parts)}: {_verdict(value['met'])}{missing}."
        )
    return lines


def _seeds(summary: Mapping[str, Any]) -> list[int]:
    seeds: set[int] = set()
    for setup in summary["setups"].values():
        seeds.update(setup["seeds"])
    return sorted(seeds)


def write_plots(summary: Mapping[str, Any], directory: Path) -> list[Path]:
    """One PNG per setup: test accuracy against sparsity (log-compression axis), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, setup in summary["setups"].items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        keys = _sparsity_keys(setup)
        xs_all = [math.log2(1 / (1 - float(k))) for k in keys]
        dense = setup["dense"]
        ax.axhline(100 * dense["test_acc_mean"], color="black", linestyle="--", linewidth=1, label="dense")
        ax.axhspan(100 * (dense["test_acc_mean"] - 0.01), 100 * dense["test_acc_mean"], color="grey", alpha=0.15)
        for index, method in enumerate(_methods(setup)):
            cells = setup["methods"][method]["by_sparsity"]
            ks = [k for k in keys if k in cells]
            offset = (index - 4) * 0.03  # spread the error bars a little
            ax.errorbar(
                [math.log2(1 / (1 - float(k))) + offset for k in ks],
                [100 * cells[k]["test_acc_mean"] for k in ks],
                yerr=[100 * cells[k]["test_acc_std"] for k in ks],
                marker="o",
                markersize=3,
                capsize=2,
                linewidth=1.2 if method != "default" else 2.2,
                label=method,
            )
        ax.set_xticks(xs_all, keys)
        ax.set_xlabel("sparsity (axis: log2 compression)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{name}: accuracy vs sparsity (mean ± std over {len(setup['seeds'])} seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="lower left")
        fig.tight_layout()
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def build(results: Path, out: Path, plots: Path | None) -> str:
    """Summarise the run files under ``results``, rewrite ``summary.json``, write the report (and plots)."""
    summary = summarise(load_records(results))
    if not summary["setups"]:
        raise ValueError(f"No run files under {results / TRACK}. HINT: run `python -m benchmarks.protocol` first.")
    write_json(results / TRACK / "summary.json", summary)
    structured = structured_track.load_summary(results)
    if structured is not None:
        write_json(results / structured_track.TRACK / "summary.json", structured)
    realistic = results / realistic_tier.TIER
    realistic_summary = realistic_tier.load_summary(realistic)
    if realistic_summary is not None:
        write_json(realistic / "summary.json", realistic_summary)
    text = render_report(summary, structured_results=results, realistic_results=realistic)
    out.write_text(text)
    if plots is not None:
        write_plots(summary, plots)
        write_realistic_plots(realistic, plots)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plots", type=Path, default=ROOT / "benchmarks" / "plots")
    args = parser.parse_args(argv)
    build(args.results, args.out, args.plots)
    print(f"[AutoPrune] wrote {args.out} and plots in {args.plots}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
