"""The Trainer adapter's pure helpers: the progress line, monitor detection and the sample count."""

from __future__ import annotations

import io

import torch

from lightning_autoprune.trainer import ProgressLine, SampleCount, detect_monitor, infer_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    screen = Terminal()
    line = ProgressLine(screen)
    for done in (32, 64, 128):
        line(f"measured {done}/128 group ablations", done == 128)
    text = screen.getvalue()
    assert text.count("\n") == 1, "one line, ended once"
    assert text.count("\r") == 3
    assert text.endswith("measured 128/128 group ablations\x1b[K\n")


def test_a_log_gets_only_the_final_state() -> None:
    log = io.StringIO()
    line = ProgressLine(log)
    line("measured 64/128", False)
    assert log.getvalue() == ""
    line("measured 128/128", True)
    assert log.getvalue() == "measured 128/128\n"


def test_monitor_detection_prefers_validation_accuracy() -> None:
    assert detect_monitor({"val_loss": 1.0, "val_accuracy": 0.5, "train_acc": 0.9}) == "val_accuracy"
    assert infer_mode("val_perplexity") == "min"


def test_the_sample_count_counts_only_when_asked_and_drops_opaque_batches() -> None:
    count = SampleCount()
    count.add((torch.zeros(5, 3), torch.zeros(5)))
    assert count.take() is None  # not asked
    count.start(True)
    count.add((torch.zeros(5, 3), torch.zeros(5)))
    count.add({"x": torch.zeros(2, 3)})
    assert count.take() == 7
    assert count.take() is None  # taken once
    count.start(True)
    count.add(object())  # no size to read: the count is dropped
    count.add(torch.zeros(4, 3))
    assert count.take() is None
    count.start(False)
    count.add(torch.zeros(4, 3))
    assert count.take() is None
