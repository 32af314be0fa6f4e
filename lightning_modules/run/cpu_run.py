"""A run without a GPU: what it is told at start (the whole run's cost, the quick config) and what it changes.

The default experiment is a GPU job (more than a day on 2 CPU cores). On the CPU, :class:`CpuCostNotice` times the first
training batches, prints the whole run's estimate and the quick config's command, and stops a run estimated over
``SLOW_CPU_MINUTES`` unless ``allow_slow_cpu=true`` (or a ``max_time_minutes`` budget bounds it).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

from datamodules.datamodule import available_cores
from lightning_modules.run.run_clock import BatchRate, batches_done, in_words, run_batches

log = logging.getLogger(__name__)

SLOW_CPU_MINUTES = 60
QUICK_CONFIG = "configs/pretrain/quick.yaml"
# benchmarks/cpu_precision.py on cpu2 (no AVX-512 bf16): a resnet10t step at batch 128 is many times slower in bf16.
CPU_SLOW_PRECISIONS = ("bf16-mixed", "bf16")


class SlowCpuRun(RuntimeError):
    """Stops a CPU run estimated over the budget (``allow_slow_cpu=false``), after the notice was printed."""


def gpu_found() -> bool:
    return CUDAAccelerator.is_available() or MPSAccelerator.is_available()


def fit_precision_to_cpu(trainer_kwargs: dict) -> dict:
    """A GPU config's bf16 on a machine without a GPU: train in 32, since bf16 autocast on a CPU without bf16 units
    is many times slower (benchmarks/RESULTS.md). An explicit ``trainer.accelerator=cpu`` keeps the precision asked."""
    precision = str(trainer_kwargs.get("precision", "32"))
    if precision in CPU_SLOW_PRECISIONS and trainer_kwargs.get("accelerator", "auto") == "auto" and not gpu_found():
        log.warning("trainer.precision=%s -> 32: no GPU, and bf16 autocast on this CPU is slower than fp32 "
                    "(benchmarks/RESULTS.md)", precision)
        return {**trainer_kwargs, "precision": "32"}
    return trainer_kwargs


def quick_command() -> str:
    python = Path(sys.executable)
    try:
        python = python.relative_to(Path.cwd())
    except ValueError:
        python = Path(python.name)
    return f"{python} train.py {QUICK_CONFIG}"


class CpuCostNotice(pl.Callback):
    """On the CPU: a notice at the start, then the whole run's estimate, and a stop (:class:`SlowCpuRun`) if it is
    over the budget and not allowed.

    The estimate comes from ``measure_batches`` batches after a warm-up batch, or from fewer once ``measure_seconds``
    have passed (from the first batch alone if it took that long), so a slow machine hears it within a minute or two.
    """

    def __init__(self, allow_slow: bool = False, budget_minutes: float = SLOW_CPU_MINUTES,
                 max_time_minutes: float = 0.0, measure_batches: int = 5, measure_seconds: float = 30.0):
        self.allow_slow, self.budget_minutes = allow_slow, budget_minutes
        self.max_time_minutes = max_time_minutes
        self.measure_batches, self.measure_seconds = measure_batches, measure_seconds
        self.rate = BatchRate()
        self.active = False
        self.first_start: float | None = None

    def on_train_start(self, trainer, pl_module):
        self.active = isinstance(trainer.accelerator, CPUAccelerator)
        if self.active and trainer.is_global_zero:
            log.warning("no GPU in use: training on the CPU (%d cores). Timing the first batches to estimate the "
                        "whole run...", available_cores())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.active and self.first_start is None:
            self.first_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.active:
            return
        self.rate.batch_done(0)
        ready = (self.rate.measured >= self.measure_batches or batch_idx + 1 >= trainer.num_training_batches
                 or time.perf_counter() - self.first_start >= self.measure_seconds)
        if not trainer.strategy.broadcast(ready, src=0):  # rank 0's clock decides for every rank
            return
        self.active = False
        total = run_batches(trainer)
        pace = self.rate.seconds_per_batch or time.perf_counter() - self.first_start  # else the first batch alone
        whole = None if total is None else pace * total
        left = None if total is None else pace * (total - batches_done(trainer, batch_idx))
        if self.max_time_minutes:
            left = min(left if left is not None else float("inf"), self.max_time_minutes * 60)
        over = left is None or left > self.budget_minutes * 60
        stop = trainer.strategy.broadcast(over and not self.allow_slow, src=0)
        if trainer.is_global_zero:
            log.warning(self.notice(trainer, pace, whole, over, stop))
        if stop:
            raise SlowCpuRun(f"stopped: on the CPU this run is over {in_words(self.budget_minutes * 60)} "
                             "and allow_slow_cpu is false")

    def notice(self, trainer, pace: float, estimate: float | None, over: bool, stop: bool) -> str:
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else "unbounded"
        whole = ("has no end (no max_epochs or max_steps)" if estimate is None
                 else f"would take about {in_words(estimate)}")
        lines = [f"On the CPU a training batch takes {pace:.2f} s, so this run ({epochs} epochs x "
                 f"{trainer.num_training_batches} batches) {whole}."]
        if over:
            lines.append(f"For a run of a few minutes on a CPU: {quick_command()}")
        if stop:
            lines.append(f"Stopping, because that is over {in_words(self.budget_minutes * 60)}. To train anyway, add "
                         "allow_slow_cpu=true (or max_time_minutes=N to stop after N minutes).")
        elif over and self.allow_slow:
            lines.append("Continuing, because allow_slow_cpu=true.")
        elif self.max_time_minutes:
            lines.append(f"Continuing: max_time_minutes={self.max_time_minutes:g} bounds it.")
        return "\n".join(lines)
