from __future__ import annotations

from typing import Any

import pytest

from benchmarks import importance_scale
from benchmarks.report import render_scale


class _Queue:
    def put(self, item: dict[str, Any]) -> None:
        self.item = item


@pytest.mark.parametrize("replay", [True, False])
def test_one_small_event_labels_replays_and_reaches_its_target(replay: bool) -> None:
    queue = _Queue()
    importance_scale._event(48, 0.0, 0.5, queue, replay_layers=replay)
    row = queue.item
    assert row["reached"] == pytest.approx(0.5, abs=1e-3)
    assert row["forward_passes"] == 128 + 1 + 5  # the groups, the base pass, the candidate steps
    assert row["diagnostics"]["groups"] == 128
    assert (row["replayed_layer_calls"] > 0) is replay
    assert row["event_seconds"] >= row["label_forward_seconds"] > 0
    assert row["peak_extra_mb"] >= 0
    assert row["libraries_paged_in_mb"] > 0  # torch's libraries, at least


def test_an_event_whose_libraries_could_not_be_paged_in_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importance_scale, "_page_in_libraries", lambda: 0)  # as on a kernel before 5.14
    queue = _Queue()
    importance_scale._event(48, 0.0, 0.5, queue)
    assert queue.item["libraries_paged_in_mb"] == 0
    assert "could not page the libraries in" in capsys.readouterr().out


def test_paging_in_the_libraries_leaves_nothing_of_theirs_for_an_event_to_fault_in() -> None:
    importance_scale._page_in_libraries()
    before = importance_scale._status_mb("RssFile")
    assert importance_scale._page_in_libraries() > 0
    assert importance_scale._status_mb("RssFile") == pytest.approx(before, abs=1.0)  # already resident


def reading(seconds: float, peak: float) -> dict[str, Any]:
    return {
        "width": 4,
        "sparsity_before": 0.8,
        "sparsity_after": 0.9,
        "prunable_weights": 2_000_000,
        "weights_mb": 8.0,
        "event_seconds": seconds,
        "score_seconds": seconds,
        "label_forward_seconds": seconds / 2,
        "event_seconds_without_labels": seconds / 2,
        "forward_passes": 134,
        "peak_extra_mb": peak,
        "diagnostics": {"used": "learned"},
    }


def test_a_row_takes_times_from_timed_readings_and_memory_from_held_ones() -> None:
    timed = [reading(s, 99.0) for s in (3.0, 9.0, 4.0)]
    held = [reading(50.0, m) for m in (16.0, 12.0, 40.0)]
    full = [reading(s, 99.0) for s in (6.0, 8.0, 7.0)]
    row = importance_scale.summarise(timed, held, full)
    assert (row["event_seconds"], row["label_forward_seconds"]) == (4.0, 2.0)
    assert (row["peak_extra_mb"], row["peak_extra_over_weights"]) == (16.0, 2.0)
    assert (row["event_seconds_full_passes"], row["label_forward_seconds_full_passes"]) == (7.0, 3.5)
    assert [len(row["readings"][k]) for k in ("time", "memory", "full_passes")] == [3, 3, 3]
    lines = "\n".join(render_scale({"model": "m", "threads": 2, "repeats": 3, "events": [row]}))
    assert "| 2.0M | 0.80 -> 0.90 | 4.0 | 134 in 2.0 | 7.0 (3.5) | 2.0 | 16 (2.00x) | learned |" in lines
    assert "median of 3 readings" in lines
    assert "paged in" not in lines  # a results file from before the libraries were paged in
    paged = "\n".join(render_scale({"model": "m", "threads": 2, "events": [{**row, "libraries_paged_in_mb": 500.0}]}))
    assert "library mappings are paged in (`madvise(MADV_POPULATE_READ)`)" in paged
    unpaged = "\n".join(render_scale({"model": "m", "threads": 2, "events": [{**row, "libraries_paged_in_mb": 0.0}]}))
    assert "paged in" not in unpaged  # a kernel without MADV_POPULATE_READ advised nothing
    older = importance_scale.summarise(timed, held)  # a results file without the full-pass readings
    assert "| 4.0 | 134 in 2.0 | n/a |" in "\n".join(render_scale({"model": "m", "threads": 2, "events": [older]}))


def test_the_largest_size_reports_its_single_readings_against_the_goal_and_the_machine() -> None:
    timed = [reading(s, 99.0) for s in (9.5, 10.0, 10.2)]
    held = [reading(50.0, m) for m in (16.0, 12.0, 40.0)]
    row = importance_scale.summarise(timed, held)
    environment = {"cpu_model": "Xeon (family 6, model 167)", "cpu_capability": "AVX512", "git_commit": "abcdef123"}
    lines = "\n".join(render_scale({"model": "m", "threads": 2, "events": [row], "environment": environment}))
    assert "at 2.0M weights: 9.50-10.20 s (3 readings, 2 at or above the goal's 10 s)" in lines
    assert "Machine: Xeon (family 6, model 167), torch kernels AVX512; commit abcdef1." in lines
    assert "Machine:" not in "\n".join(render_scale({"model": "m", "threads": 2, "events": [row]}))
