"""The Trainer adapter's pure helpers: the progress line, monitor detection and the validation tally."""

from __future__ import annotations

import io

import torch

from lightning_autoprune.trainer import ProgressLine, ValidationTally, batch_labels, detect_monitor, infer_mode


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


def test_the_tally_counts_samples_and_labels_only_when_asked() -> None:
    tally = ValidationTally()
    tally.add((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)))
    assert tally.take() == (None, None)  # not asked
    tally.start(True)
    tally.add((torch.zeros(5, 3), torch.tensor([0, 1, 1, 2, 2])))
    tally.add({"x": torch.zeros(2, 3), "labels": torch.tensor([2, 2])})
    assert tally.take() == (7, {0: 1, 1: 2, 2: 4})
    assert tally.take() == (None, None)  # taken once


def test_the_tally_drops_what_it_cannot_read() -> None:
    tally = ValidationTally()
    tally.start(True)
    tally.add((torch.zeros(4, 3), torch.randn(4)))  # regression targets: samples known, labels not
    assert tally.take() == (4, None)
    tally.start(True)
    tally.add(object())  # no size to read: nothing is known
    tally.add((torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])))
    assert tally.take() == (None, None)
    tally.start(False)
    tally.add((torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])))
    assert tally.take() == (None, None)


def labels_of(batch: object) -> list[int]:
    labels = batch_labels(batch)
    assert labels is not None
    return labels.tolist()


def test_labels_come_from_the_second_entry_or_a_labels_key() -> None:
    assert labels_of((torch.zeros(2, 3), torch.tensor([1, 0]))) == [1, 0]
    assert labels_of({"input_ids": torch.zeros(2, 3), "label": torch.tensor([3, 3])}) == [3, 3]
    assert batch_labels(torch.zeros(2, 3)) is None
    assert batch_labels((torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long))) is None  # token labels
