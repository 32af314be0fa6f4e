"""Callbacks: throughput (images/s) and a grid of augmented views once per epoch."""
from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid, save_image

from lightning_modules.run.host_reads import took_logging_step


class Throughput(pl.Callback):
    """Images/s from one logging step to the next (wall clock; the device is synchronised on logging steps only)."""

    def __init__(self):
        self._start, self._images = None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._start is None:
            self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._images += batch["image"].shape[0] * trainer.world_size
        if took_logging_step(trainer):  # the only steps that may wait
            self._log(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._images:
            self._log(pl_module)
        self._start = None

    def _log(self, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._start
        pl_module.log("perf/images_per_sec", self._images / elapsed, rank_zero_only=True)
        self._start, self._images = None, 0


class ViewGrid(pl.Callback):
    """Saves the first batch's augmented views (rows: samples, columns: views) as a PNG and logs it."""

    def __init__(self, out_dir: str | Path, every_n_epochs: int = 1, samples: int = 8):
        self.out_dir, self.every, self.samples = Path(out_dir), every_n_epochs, samples
        self._tiles: tuple[torch.Tensor, int] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx != 0 or not self.every or trainer.current_epoch % self.every or trainer.global_rank != 0:
            return
        size = batch["views"][0].shape[-1]
        views = [
            torch.nn.functional.interpolate(v[: self.samples].float(), size=size, mode="nearest")
            for v in batch["views"]
        ]
        tiles = torch.stack(views, dim=1).flatten(0, 1)  # sample-major: one row per sample
        self._tiles = (tiles.detach(), len(views))  # drawn at the epoch's end: no host read inside a step

    def on_train_epoch_end(self, trainer, pl_module):
        if self._tiles is None:
            return
        from datamodules.augment import denormalize

        (tiles, columns), self._tiles = self._tiles, None
        cfg = pl_module.cfg.augment
        grid = make_grid(denormalize(tiles, cfg.mean, cfg.std).cpu(), nrow=columns, padding=1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"views_epoch{trainer.current_epoch:03d}.png"
        save_image(grid, path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image("augment/views", [str(path)], step=trainer.global_step)
