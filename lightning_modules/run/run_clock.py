"""Whole-run time arithmetic for the progress bar and the CPU notice: the run's batches, their rate, durations."""
from __future__ import annotations

import math
import time
from collections import deque


def run_batches(trainer) -> int | None:
    """Training batches of the whole run (every epoch, or up to ``max_steps``); None when it has no end."""
    per_epoch = trainer.num_training_batches
    epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    total = per_epoch * epochs
    if trainer.max_steps is not None and trainer.max_steps > 0:
        total = min(total, trainer.max_steps * trainer.accumulate_grad_batches)
    return int(total) if math.isfinite(total) else None


def batches_done(trainer, batch_idx: int) -> int:
    """Training batches done by the end of ``batch_idx`` of the current epoch (a resumed run counts its past)."""
    return trainer.current_epoch * trainer.num_training_batches + batch_idx + 1


def clock(seconds: float) -> str:
    """``H:MM:SS``, hours unbounded (``33:04:10``)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def in_words(seconds: float) -> str:
    """A rough duration for a sentence: ``45 s``, ``12 min``, ``3.5 h``, ``33 h``, ``4.2 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 10:
        return f"{hours:.1f} h"
    if hours < 48:
        return f"{hours:.0f} h"
    return f"{hours / 24:.1f} days"


class BatchRate:
    """Seconds per training batch and images/s, from the end times of this process's batches.

    The run's pace counts every second after the first batch (validation and checkpoints included, so an ETA built
    on it covers them); the first batch is left out because it pays for warm-up. Images/s is over the last
    ``window`` batches of the current epoch only.
    """

    def __init__(self, window: int = 20, now=time.perf_counter):
        self.now = now
        self.started = self.first_end = self.last_end = None
        self.after_first = 0
        self.recent: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def start(self) -> None:
        self.started = self.now()

    def new_epoch(self) -> None:
        self.recent.clear()

    def batch_done(self, images: int) -> None:
        end = self.now()
        if self.started is None:
            self.started = end
        if self.first_end is None:
            self.first_end = end
        else:
            self.after_first += 1
        self.last_end = end
        self.recent.append((end, images))

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.now() - self.started

    @property
    def measured(self) -> int:
        """Batches timed so far (all but the first)."""
        return self.after_first

    @property
    def seconds_per_batch(self) -> float | None:
        if not self.after_first:
            return None
        return (self.last_end - self.first_end) / self.after_first

    def eta(self, batches_left: int) -> float | None:
        pace = self.seconds_per_batch
        return None if pace is None else pace * max(0, batches_left)

    @property
    def images_per_sec(self) -> float | None:
        if len(self.recent) < 2:
            return None
        span = self.recent[-1][0] - self.recent[0][0]
        images = sum(n for _, n in list(self.recent)[1:])  # the first entry only marks where the window starts
        return images / span if span > 0 else None
