"""kNN top-1 against training minutes: CoKe (one view) pretrained on CIFAR-10 for a wall-clock budget.

    python benchmarks/time_to_accuracy.py [--minutes 10] [--backbone resnet18] [--epochs 0] [--batch-size 512]
        [--subset 0] [--eval-subset 0] [--eval-every 0] [--device cuda|cpu] [--precision bf16-mixed]
        [--workers N] [--config configs/pretrain/coke_cifar10.yaml] [--set key=value ...] [--threads N]

Goal on one H100: >= 85% kNN top-1 within 10 minutes of training.

- Training runs through a real pl.Trainer with the config's model, views, optimiser and data pipeline.
- The budget counts training time only; the kNN evaluations pause the clock (the wall column includes them).
- --epochs 0 fits the schedule to the budget: epoch 0 (CoKe's clustering initialisation at lr 0, a full
  forward/backward epoch) is timed, and the warm-up + cosine schedule is stretched over the epochs that fit.
- kNN: before training (row "init": the random-init backbone, the reference) and during it. Frozen backbone
  features of the training images (bank) and the test images (queries), centre view,
  cosine, weighted vote with T = 0.07, k = 20 and 200 (ops/knn.py); fine labels.
- images/s: training images over training seconds (all epochs, and the last full epoch alone).
- fraction of bf16 peak: backbone FLOPs per image (forward + backward, torch.utils.flop_counter) x images/s over
  the whole step, divided by a measured bf16 matmul rate on the same device. The step also runs the heads, the
  clustering and the views, so this is a lower bound on the backbone's own efficiency.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs.loader import load_config, to_plain  # noqa: E402
from datamodules import PretrainDataModule  # noqa: E402
from lightning_modules.optim import constant_lr, warmup_cosine  # noqa: E402
from lightning_modules.registry import method_class, method_schemas  # noqa: E402
from ops.knn import weighted_knn_scores  # noqa: E402

KS = (20, 200)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_bf16_peak(device: torch.device, size: int = 0) -> float:
    """Best bf16 matmul rate (FLOP/s) over a few square GEMMs of ``size`` (0: 8192 on CUDA, 1024 on the CPU)."""
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start))
    return best


def backbone_flops_per_image(model, crop: int, device: torch.device) -> float:
    """Forward + backward FLOPs of the backbone for one image (counted on a batch of 2, train mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, crop, crop, device=device)
    backbone = model.backbone
    counter = FlopCounterMode(display=False)
    with counter:
        backbone(x).float().sum().backward()
    backbone.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


@torch.no_grad()
def extract(model, datamodule, dataset, device, precision: str, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    for start in range(0, len(dataset), batch):
        rows = list(range(start, min(start + batch, len(dataset))))
        item = dataset.__getitems__(rows)
        if "jpeg" in item:  # data.format=jpeg: decode as the training batches are
            item = datamodule.decoder(item)
        with autocast:
            feats.append(model(datamodule.eval_transform(item["image"].to(device))).float())
        labels.append(item["fine"].to(device))
    return torch.cat(feats), torch.cat(labels)


def knn_top1(model, datamodule, device, precision: str) -> dict[int, float]:
    was_training = model.training
    model.eval()
    bank, bank_labels = extract(model, datamodule, datamodule.train_set, device, precision)
    queries, query_labels = extract(model, datamodule, datamodule.test_set, device, precision)
    model.train(was_training)
    ks = tuple(k for k in KS if k <= len(bank)) or (len(bank),)
    scores = weighted_knn_scores(queries, bank, bank_labels, datamodule.info.num_fine, ks=ks, temperature=0.07)
    return {k: (s.argmax(1) == query_labels).float().mean().item() for k, s in scores.items()}


class Budget(pl.Callback):
    """Stops training after ``minutes`` of training time; evaluates kNN every ``eval_every`` minutes with the
    clock paused; with ``fit_schedule`` stretches the lr schedule over the epochs that fit after epoch 0."""

    def __init__(self, minutes: float, eval_every: float, fit_schedule: bool, datamodule, precision: str):
        self.budget, self.eval_every, self.fit_schedule = minutes * 60, eval_every * 60, fit_schedule
        self.dm, self.precision = datamodule, precision
        self.rows: list[dict] = []
        self.paused = 0.0
        self.images = 0
        self.last_eval = -math.inf
        self.epoch_start = self.epoch_images = 0
        self.epoch_rates: list[float] = []  # images/s of each full epoch after epoch 0
        self.epoch_seconds: list[float] = []
        self.warmup = None
        # The budget's clock: wall time; benchmarks/budget.py may count this process's CPU time instead.
        self.clock = time.perf_counter

    def train_seconds(self) -> float:
        return self.clock() - self.start - self.paused

    def on_train_start(self, trainer, pl_module):
        self.device = pl_module.device
        sync(self.device)
        self.start = self.clock()
        self.wall_start = time.perf_counter()
        self.evaluate(trainer, pl_module, epoch="init")  # the random-init backbone: the reference every row needs

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start, self.epoch_images = self.train_seconds(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = batch["image"].shape[0]
        self.images += n
        self.epoch_images += n
        if self.train_seconds() >= self.budget:
            sync(self.device)
            if self.train_seconds() >= self.budget:
                trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        sync(self.device)
        now = self.train_seconds()
        full = self.epoch_images == trainer.num_training_batches * trainer.datamodule.cfg.batch_size
        if full:
            self.epoch_seconds.append(now - self.epoch_start)
            if trainer.current_epoch > 0:
                self.epoch_rates.append(self.epoch_images / max(1e-9, now - self.epoch_start))
        if self.fit_schedule and full and not trainer.should_stop:
            self.stretch_schedule(trainer, pl_module, now)
        if trainer.should_stop or now - self.last_eval >= self.eval_every:
            self.evaluate(trainer, pl_module)

    def stretch_schedule(self, trainer, pl_module, now: float) -> None:
        """Set the schedule's length to the epochs done + those the remaining budget fits at the mean epoch time
        (after epoch 0, whose first steps carry start-up costs, the later epochs alone). Re-estimated every epoch."""
        done = trainer.current_epoch + 1
        times = self.epoch_seconds[1:] or self.epoch_seconds
        epochs = max(done + 1, done + int((self.budget - now) // max(sum(times) / len(times), 1e-9)))
        current = trainer.fit_loop.max_epochs
        if self.warmup is not None and abs(epochs - current) <= max(1, 0.05 * current):
            return  # within 5%: keep the schedule steady rather than chase timing noise
        optim_cfg = pl_module.cfg.optim
        steps = trainer.num_training_batches
        schedule_epoch = pl_module.schedule_steps_per_epoch(steps)
        if self.warmup is None:
            # A method that counts its schedule in images (SeCu) keeps its warm-up; the others' is cut to a tenth.
            own = bool(pl_module.schedule_epoch_images)
            self.warmup = optim_cfg.warmup_epochs if own else min(optim_cfg.warmup_epochs, max(1, epochs // 10))
        schedule = partial(warmup_cosine, total_steps=epochs * steps, warmup_steps=int(self.warmup * schedule_epoch),
                           zero_steps=pl_module.zero_lr_epochs * schedule_epoch, min_ratio=optim_cfg.min_lr_ratio)
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        # Groups that keep their lr (SeCu's centres: constant_lr) keep it; the others follow the fitted schedule.
        scheduler.lr_lambdas = [f if f is constant_lr else schedule for f in scheduler.lr_lambdas]
        trainer.fit_loop.max_epochs = epochs
        print(f"after epoch {done - 1} ({now:.1f} s): schedule fitted to {epochs} epochs ({self.warmup} warm-up)",
              flush=True)

    def evaluate(self, trainer, pl_module, epoch: int | str | None = None) -> None:
        paused_at = self.clock()
        train_s = self.train_seconds()
        acc = knn_top1(pl_module, self.dm, self.device, self.precision)
        sync(self.device)
        self.paused += self.clock() - paused_at
        self.last_eval = train_s
        self.rows.append({
            "epoch": trainer.current_epoch if epoch is None else epoch, "step": trainer.global_step,
            "train_min": train_s / 60,
            "wall_min": (time.perf_counter() - self.wall_start) / 60, "images_per_s": self.images / max(train_s, 1e-9),
            "epoch_images_per_s": self.epoch_rates[-1] if self.epoch_rates else float("nan"),
            **{f"knn{k}": v for k, v in acc.items()},
        })
        r = self.rows[-1]
        print(f"epoch {r['epoch']} ({r['train_min']:.2f} train min): kNN top-1 "
              + ", ".join(f"k={k} {v:.4f}" for k, v in acc.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=0, help="schedule length; 0: fitted to the budget after epoch 0")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the config's")
    parser.add_argument("--subset", type=float, default=0, help="training images per class (0: all 5,000)")
    parser.add_argument("--eval-subset", type=float, default=0, help="test images per class for kNN (0: all 1,000)")
    parser.add_argument("--eval-every", type=float, default=0, help="minutes of training between kNN (0: budget/5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="", help="Trainer precision (default: the config's on CUDA, 32 on CPU)")
    parser.add_argument("--workers", type=int, default=-1, help="loader workers (-1: the config's)")
    parser.add_argument("--config", default=str(REPO / "configs" / "pretrain" / "coke_cifar10.yaml"))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on the CPU (0: default)")
    parser.add_argument("--peak-size", type=int, default=0, help="bf16 peak matmul size (0: 8192 CUDA, 1024 CPU)")
    parser.add_argument("--set", nargs="*", default=[], help="extra key=value config overrides")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = [f"model.backbone={args.backbone}", f"data.subset={args.subset}", f"data.eval_subset={args.eval_subset}",
                 "logger.kind=none"]
    if args.backbone.startswith("test_"):
        overrides.append("model.cifar_stem=false")
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.workers >= 0:
        overrides += [f"data.num_workers={args.workers}"]
    if args.device == "cpu":
        overrides.append("data.pin_memory=false")
    cfg = load_config(args.config, overrides + args.set, method_schemas())
    if cfg.method.name != "coke" or cfg.augment.num_large_crops != 1:
        print(f"note: this benchmark is defined for one-view CoKe; running method {cfg.method.name} with "
              f"{cfg.augment.num_large_crops} view(s)", file=sys.stderr)
    precision = args.precision or (str(cfg.trainer.get("precision", "bf16-mixed")) if args.device == "cuda" else "32")

    pl.seed_everything(cfg.seed)
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    if datamodule.info.num_train < cfg.data.batch_size:
        parser.error(f"{datamodule.info.num_train} training images make no full batch of {cfg.data.batch_size}; "
                     "lower --batch-size or raise --subset")
    model = method_class(cfg.method.name)(to_plain(cfg), asdict(datamodule.info))
    device = torch.device(args.device)
    flops = backbone_flops_per_image(model.to(device), cfg.augment.crop_size, device)
    peak = measured_bf16_peak(device, args.peak_size)
    budget = Budget(args.minutes, args.eval_every or args.minutes / 5, args.epochs == 0, datamodule, precision)
    trainer = pl.Trainer(
        accelerator=args.device, devices=1, precision=precision, max_epochs=args.epochs or 10**4, logger=False,
        callbacks=[budget], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
    )
    trainer.fit(model, datamodule=datamodule)
    if not budget.rows or budget.rows[-1]["step"] != trainer.global_step:
        budget.evaluate(trainer, model.to(device))  # Lightning hands the module back on the CPU after fit

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    rate = budget.images / max(budget.rows[-1]["train_min"] * 60, 1e-9)
    print(f"\n{cfg.method.name} ({cfg.augment.num_large_crops} view) {args.backbone}, "
          f"{datamodule.info.num_train} train / {len(datamodule.test_set)} test images, batch {cfg.data.batch_size}, "
          f"precision {precision}, {name}, "
          f"budget {args.minutes} training min\n")
    ks = [k for k in budget.rows[-1] if k.startswith("knn")]
    print("| epoch | train min | wall min | images/s so far | images/s this epoch | "
          + " | ".join(f"kNN top-1 k={k[3:]}" for k in ks) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|" * len(ks))
    for r in budget.rows:
        print(f"| {r['epoch']} | {r['train_min']:.2f} | {r['wall_min']:.2f} | {r['images_per_s']:.0f} | "
              f"{r['epoch_images_per_s']:.0f} | " + " | ".join(f"{100 * r[k]:.2f}%" for k in ks) + " |")
    steady = statistics.median(budget.epoch_rates) if budget.epoch_rates else float("nan")
    print(f"\nimages/s: {rate:.0f} over all training ({budget.images} images), {steady:.0f} median of the full "
          f"epochs after epoch 0 ({len(budget.epoch_rates)})")
    print(f"backbone: {flops / 1e9:.3f} GFLOP per image (forward + backward, {cfg.augment.crop_size}px)")
    print(f"measured bf16 matmul peak: {peak / 1e12:.2f} TFLOP/s")
    best_rate = steady if steady == steady else rate
    print(f"backbone FLOP/s over the whole step: {flops * best_rate / 1e12:.3f} TFLOP/s = "
          f"{100 * flops * best_rate / peak:.1f}% of the measured bf16 peak")
    best = max(r[ks[-1]] for r in budget.rows if r["epoch"] != "init")
    print(f"goal (one H100): >= 85% kNN top-1 within 10 training minutes; this run: {100 * best:.2f}% "
          f"(k={ks[-1][3:]}) within {budget.rows[-1]['train_min']:.2f} min on {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
