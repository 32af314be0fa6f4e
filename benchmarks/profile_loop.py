"""Where the time of the real training loop goes: train.py's own loop under torch.profiler, one table per config.

    python benchmarks/profile_loop.py --config configs/pretrain/coke_cifar10.yaml [--config ...] [--steps 50]
        [--warmup 10] [--device cuda|cpu] [--set key=value ...]

Each config trains through ``train.main`` (its data loader, views, callbacks, loggers and checkpoints) for
warmup + steps steps; the last ``--steps`` are profiled. Every Lightning action (data fetch, transfer, the views,
training_step, backward, optimizer step, callbacks) is a ``record_function`` range, so the table gives each
one's host milliseconds per step. On CUDA it also gives the GPU busy fraction (kernel time over the window's
wall time), the longest gaps between kernels, and every device-to-host synchronisation with its source line
(``torch.cuda.set_sync_debug_mode``); on the CPU the host reads are found by wrapping the tensor methods
(lightning_modules/run/host_reads.py). ``loop / step`` is the loop's images/s over the step's alone
(on_train_batch_start to on_train_batch_end, CUDA events); the goal is a ratio >= 0.9.
"""
from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.profilers import Profiler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning_modules.run.runs as runs  # noqa: E402
import train  # noqa: E402
from benchmarks.step import elapsed_ms, mark  # noqa: E402
from configs.schema import default_data_root  # noqa: E402
from lightning_modules.run.host_reads import CudaSyncs, HostReads  # noqa: E402

class RecordFunctions(Profiler):
    """Lightning's profiler interface, each action a torch.profiler ``record_function`` range."""

    def __init__(self):
        super().__init__()
        self.open: dict[str, list] = collections.defaultdict(list)

    def start(self, action_name: str) -> None:
        scope = torch.profiler.record_function(action_name)
        scope.__enter__()
        self.open[action_name].append(scope)

    def stop(self, action_name: str) -> None:
        if self.open[action_name]:
            self.open[action_name].pop().__exit__(None, None, None)

    def summary(self) -> str:
        return ""


class Window(pl.Callback):
    """Profiles steps [warmup, warmup + steps); CUDA events around each step's own hooks, as benchmarks/step.py."""

    def __init__(self, warmup: int, steps: int, cuda: bool):
        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.profiler = None
        self.syncs = CudaSyncs() if cuda else HostReads()
        self.step_marks: list[tuple] = []
        self.wall = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            if self.cuda:
                torch.cuda.synchronize()
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.syncs.__enter__()
            self.wall = time.perf_counter()
        if self.profiler is not None:
            self._start = mark(self.cuda)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.profiler is None:
            return
        self.step_marks.append((self._start, mark(self.cuda)))
        self.images += batch["image"].shape[0]
        if trainer.global_step == self.warmup + self.steps:  # the last profiled step has been taken
            self.syncs.__exit__(None, None, None)
            if self.cuda:
                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.wall
            self.profiler.__exit__(None, None, None)
            self.result = self.profiler
            self.profiler = None
            trainer.should_stop = True

    def step_ms(self) -> list[float]:
        return elapsed_ms(self.step_marks, self.cuda)


def action_rows(profile, steps: int, top: int = 14) -> list[tuple[str, float]]:
    """Host ms per step of each Lightning action ("[Loop]...", "[Strategy]...", "[Callback]...")."""
    rows = [(re.sub(r"\{.*\}", "", e.key), e.cpu_time_total / 1e3 / steps) for e in profile.key_averages()
            if e.key.startswith("[")]
    return sorted(rows, key=lambda kv: -kv[1])[:top]


def kernel_gaps(profile, top: int = 5) -> tuple[float, list[float]]:
    """The sum of kernel time and the longest idle gaps between kernels on the device (ms)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in profile.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, gaps, end = 0.0, [], None
    for start, stop in spans:
        if end is not None and start > end:
            gaps.append((start - end) / 1e3)
        busy += (stop - max(start, end or start)) / 1e3 if end is None or stop > end else 0.0
        end = stop if end is None else max(end, stop)
    return busy, sorted(gaps, reverse=True)[:top]


def profile_config(config: str, args) -> str:
    cuda = args.device == "cuda"
    window = Window(args.warmup, args.steps, cuda)
    build = runs.build_trainer

    def build_profiled(*a, **kw):
        trainer = build(*a, **kw)
        trainer.callbacks.insert(0, window)
        trainer.profiler = RecordFunctions()
        return trainer

    runs.build_trainer = build_profiled
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [f"data.path={args.data}", f"run_dir={run_dir}", "run_name=profile", "logger.kind=csv",
                     "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=1000", "allow_slow_cpu=true",
                     f"trainer.max_steps={args.warmup + args.steps + 1}", "trainer.max_epochs=1000",
                     f"trainer.accelerator={'gpu' if cuda else 'cpu'}", *args.set]
        try:
            code = train.main([config, *overrides])
        finally:
            runs.build_trainer = build
    if code != 0 or not hasattr(window, "result"):
        return f"## {config}\n\ntrain.py ended with exit {code} before the profiled window closed\n"
    step_ms = window.step_ms()
    loop_ips = window.images / window.wall
    step_ips = window.images / (sum(step_ms) / 1e3)
    lines = [f"## {config}", "", f"{args.steps} steps after {args.warmup} warm-up steps, {args.device}; "
             f"batch {window.images // args.steps}", "",
             "| measure | value |", "|---|---|",
             f"| loop images/s | {loop_ips:,.0f} |",
             f"| step images/s (on_train_batch_start to _end, median {statistics.median(step_ms):.2f} ms) | "
             f"{step_ips:,.0f} |",
             f"| loop / step | {loop_ips / step_ips:.2f} |",
             f"| loop ms/step | {window.wall * 1e3 / args.steps:.2f} |"]
    if cuda:
        busy, gaps = kernel_gaps(window.result)
        lines.append(f"| GPU busy (kernel time / wall) | {busy / (window.wall * 1e3):.0%} |")
        lines.append(f"| longest gaps between kernels (ms) | {', '.join(f'{g:.2f}' for g in gaps)} |")
    else:
        lines.append("| GPU busy | - (CPU run) |")
    lines += ["", "Host time of Lightning's actions; they nest: optimizer_step holds the closure (training_step, "
              "backward), batch_to_device holds on_after_batch_transfer (the views).", "",
              "| Lightning action | host ms/step |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in action_rows(window.result, args.steps)]
    lines += ["", "| device-to-host sync (source) | in the window | per step |", "|---|---|---|"]
    syncs = collections.Counter(f"{r.what} at {r.where}" for r in window.syncs.reads).most_common()
    lines += [f"| {where} | {n} | {n / args.steps:.2f} |" for where, n in syncs] or ["| none | 0 | 0 |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default=str(Path(default_data_root()) / "cifar10-jpeg.tar.gz"))
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every config")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("profile_loop.py --device cuda needs a CUDA device", file=sys.stderr)
        return 2
    for config in args.config:
        print(profile_config(config, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
