"""Milliseconds per training step and images/s per method, with ratios to a reference method.

    python benchmarks/step.py [--methods simclr,mocov2,mocov3,swav,deepclusterv2,coke] [--backbone resnet18]
        [--batch-size 256] [--steps 20] [--warmup 5] [--device cpu|cuda] [--data cifar10] [--reference coke]
        [--precision 32] [--threads N] [--set key=value ...]

Each method runs from its own config, configs/pretrain/<method>_<data>.yaml (heads, views, optimiser), with
the backbone and the batch size replaced, through a real pl.Trainer on synthetic uint8 images. The timed
region runs from on_train_batch_start to on_train_batch_end: training_step (every view's forward, momentum
encoders, queues, clustering, loss, online probes, logging) + backward + optimizer step. The batch transfer
and the Kornia views come before it and are not timed. Median over --steps after --warmup steps; CUDA
events on a GPU, perf_counter on the CPU. images/s counts images, not views. For CoKe the table also gives
the share of the step spent in its clustering (assignment + dual, centre and label-memory updates).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.loader import load_config, to_plain  # noqa: E402
from datamodules import ImageDataset, LabeledImages, PretrainDataModule  # noqa: E402
from lightning_modules.registry import METHODS, method_class, method_schemas  # noqa: E402

BASELINES = ["simclr", "mocov2", "mocov3", "swav", "deepclusterv2", "coke"]


def mark(cuda: bool):
    """A point in time: a recorded CUDA event on a GPU (no sync), perf_counter on the CPU."""
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def elapsed_ms(marks: list[tuple], cuda: bool) -> list[float]:
    if cuda:
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in marks]
    return [(end - start) * 1e3 for start, end in marks]


class StepTimer(pl.Callback):
    def __init__(self, warmup: int, cuda: bool):
        self.warmup, self.cuda, self.marks = warmup, cuda, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start = mark(self.cuda)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.marks.append((self.start, mark(self.cuda)))

    def step_ms(self) -> list[float]:
        return elapsed_ms(self.marks[self.warmup :], self.cuda)


class ClusteringTimer:
    """Wraps a CoKe module's `clustering.step` to time the clustering share of the step."""

    def __init__(self, clustering, cuda: bool):
        self.original, self.cuda, self.marks = clustering.step, cuda, []
        clustering.step = self

    def __call__(self, *args, **kwargs):
        start = mark(self.cuda)
        out = self.original(*args, **kwargs)
        self.marks.append((start, mark(self.cuda)))
        return out

    def ms(self, warmup: int) -> list[float]:
        return elapsed_ms(self.marks[warmup:], self.cuda)


def synthetic_datamodule(cfg, num_images: int) -> PretrainDataModule:
    size = max(cfg.augment.crop_size, cfg.augment.eval_resize)
    rng = np.random.default_rng(0)
    data = LabeledImages(
        images=rng.integers(0, 256, (num_images, 3, size, size), dtype=np.uint8),
        fine=np.arange(num_images) % 10, coarse=(np.arange(num_images) % 10) // 5,
        class_names=[f"class{i}" for i in range(10)], superclass_names=["low", "high"],
    )
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.train_set = datamodule.test_set = ImageDataset(data)  # setup() then keeps them
    return datamodule


def time_method(method: str, args) -> tuple[list[float], list[float]]:
    """Per-step milliseconds, and for CoKe the milliseconds of its clustering step (else empty)."""
    config = REPO / "configs" / "pretrain" / f"{method}_{args.data}.yaml"
    overrides = [
        f"method.name={method}", f"model.backbone={args.backbone}", f"data.batch_size={args.batch_size}",
        "data.num_workers=0", "data.pin_memory=false", *args.set,
    ]
    cfg = load_config(config if config.is_file() else None, overrides, method_schemas())
    steps = args.warmup + args.steps
    datamodule = synthetic_datamodule(cfg, max(steps * args.batch_size, args.num_images))
    pl.seed_everything(0)
    model = method_class(method)(to_plain(cfg), asdict(datamodule.info))
    precision = args.precision or (cfg.trainer.get("precision", "bf16-mixed") if args.device == "cuda" else "32")
    cuda = args.device == "cuda"
    timer = StepTimer(args.warmup, cuda)
    clustering = ClusteringTimer(model.clustering, cuda) if hasattr(model, "clustering") else None
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, max_epochs=1, max_steps=steps, precision=precision, logger=False,
        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.step_ms(), clustering.ms(args.warmup) if clustering else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(m for m in BASELINES if m in METHODS))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default="cifar10", help="config suffix: configs/pretrain/<method>_<data>.yaml")
    parser.add_argument("--reference", default="", help="method the ratios are relative to (default: coke, else simclr)")
    parser.add_argument("--precision", default="", help="Trainer precision (default: 32 on CPU, the config's on CUDA)")
    parser.add_argument("--num-images", type=int, default=4096, help="synthetic set size (k-means needs N >= K)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on the CPU (0: default)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for every method")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reference = args.reference or ("coke" if "coke" in METHODS else "simclr")
    methods = [m for m in args.methods.split(",") if m]
    if reference not in methods:
        methods.append(reference)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(sorted(METHODS))}")

    results, clustering_ms = {}, {}
    for method in methods:
        step_ms, cluster_ms = time_method(method, args)
        results[method] = statistics.median(step_ms)
        if cluster_ms:
            clustering_ms[method] = statistics.median(cluster_ms)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{args.backbone}, batch {args.batch_size}, configs *_{args.data}.yaml, {device}, "
          f"median of {args.steps} steps after {args.warmup} warm-up\n")
    print(f"| method | ms/step | images/s | time vs {reference} | clustering share |")
    print("|---|---:|---:|---:|---:|")
    for method, ms in results.items():
        share = f"{clustering_ms[method] / ms:.1%}" if method in clustering_ms else "-"
        print(f"| {method} | {ms:.1f} | {args.batch_size / ms * 1e3:.0f} | {ms / results[reference]:.2f}x | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
