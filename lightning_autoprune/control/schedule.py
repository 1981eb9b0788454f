"""When to prune and how much: sparsity schedules as pure functions of the epoch.

Targets are absolute (the fraction of prunable weights that must be zero after an event), never
amounts that compound. Pruning events happen at the start of an epoch, that is after the previous
epoch has trained and been validated, so a checkpoint saved at an epoch's end resumes straight into
the next event.
"""

from __future__ import annotations

from typing import Literal

ScheduleKind = Literal["cubic", "linear", "one_shot"]
SCHEDULES: tuple[ScheduleKind, ...] = ("cubic", "linear", "one_shot")


def default_window(max_epochs: int) -> tuple[int, int]:
    """Default ``(start_epoch, end_epoch)`` for a run of ``max_epochs`` epochs.

    Pruning starts after about a tenth of the run (at least one dense epoch when there is room)
    and reaches the target at about two thirds, leaving the last third to fine-tune.

    Example:
        >>> default_window(30)
        (3, 20)
        >>> default_window(3)
        (1, 2)
        >>> default_window(1)
        (0, 0)
    """
    if max_epochs < 1:
        raise ValueError(f"`max_epochs` must be at least 1 to prune, got {max_epochs}.")
    end = min(max_epochs - 1, max(0, round(2 * max_epochs / 3)))
    start = min(end, max(1, round(max_epochs / 10)))
    return start, end


def event_epochs(start: int, end: int, frequency: int, kind: ScheduleKind) -> list[int]:
    """Epochs whose start holds a pruning event.

    Every ``frequency`` epochs from ``start``, and always ``end``; a one-shot schedule has a single
    event at ``end``.

    Example:
        >>> event_epochs(2, 9, 3, "cubic")
        [2, 5, 8, 9]
        >>> event_epochs(2, 9, 3, "one_shot")
        [9]
    """
    _check_window(start, end, frequency)
    if kind == "one_shot":
        return [end]
    epochs = list(range(start, end + 1, frequency))
    if epochs[-1] != end:
        epochs.append(end)
    return epochs


def scheduled_sparsity(
    epoch: int,
    final: float,
    *,
    start: int,
    end: int,
    frequency: int = 1,
    kind: ScheduleKind = "cubic",
) -> float:
    """Target sparsity in force during ``epoch`` (after that epoch's event, if it has one).

    With ``p`` the progress of the latest event at or before ``epoch`` (``p = 1`` at ``end``):

    - ``cubic`` (Zhu & Gupta, 2017): ``final * (1 - (1 - p) ** 3)``, fast early, gentle late;
    - ``linear``: ``final * p``;
    - ``one_shot``: ``0`` before ``end``, ``final`` from ``end`` on.

    The result never decreases with ``epoch`` and never exceeds ``final``.

    Example:
        >>> [round(scheduled_sparsity(e, 0.9, start=1, end=4), 4) for e in range(6)]
        [0.0, 0.5203, 0.7875, 0.8859, 0.9, 0.9]
        >>> [scheduled_sparsity(e, 0.9, start=1, end=4, kind="linear") for e in (1, 4)]
        [0.225, 0.9]
    """
    events = [e for e in event_epochs(start, end, frequency, kind) if e <= epoch]
    if not events:
        return 0.0
    last = events[-1]
    if kind == "one_shot" or last == end:
        return final
    progress = (last - start + frequency) / (end - start + frequency)
    if kind == "linear":
        return final * progress
    return final * (1.0 - (1.0 - progress) ** 3)


def _check_window(start: int, end: int, frequency: int) -> None:
    if start < 0:
        raise ValueError(f"`start_epoch` must be >= 0, got {start}.")
    if end < start:
        raise ValueError(f"`end_epoch` must be >= `start_epoch`, got end_epoch={end} < start_epoch={start}.")
    if frequency < 1:
        raise ValueError(f"`frequency` must be >= 1, got {frequency}.")
