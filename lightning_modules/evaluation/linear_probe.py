"""Offline linear probe on cached, frozen features (a LightningModule over feature tensors).

Features are standardised with the fitting split's mean and std. Every (lr, weight decay) pair of the grid is a
separate linear head trained in the same pass over the data (their gradients do not interact), the pair with
the best top-1 on a validation split held out from train is retrained on the whole train split, and only that
probe is scored on test. Test never takes part in any choice.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from itertools import product
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.rows import score_rows


class LinearProbe(pl.LightningModule):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int, settings: list[dict],
                 optimizer: str = "sgd", momentum: float = 0.9):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(1e-6))
        self.heads = nn.ModuleList(nn.Linear(mean.shape[0], num_classes) for _ in settings)
        self.settings, self.optimizer_name, self.momentum = settings, optimizer, momentum

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (heads, B, C)."""
        z = (features - self.mean) / self.std
        return torch.stack([head(z) for head in self.heads])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, labels = batch
        logits = self(features)
        # The sum over heads of each head's mean loss: every head gets exactly its own gradient.
        return F.cross_entropy(logits.flatten(0, 1), labels.repeat(len(self.heads)), reduction="sum") / labels.shape[0]

    def configure_optimizers(self):
        groups = [{"params": head.parameters(), "lr": s["lr"], "weight_decay": s["weight_decay"]}
                  for head, s in zip(self.heads, self.settings)]
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, momentum=self.momentum, nesterov=self.momentum > 0)
        elif self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(groups)
        else:
            raise ValueError(f"unknown linear.optimizer `{self.optimizer_name}`; use sgd or adamw")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        cosine = LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Whole batches by one fancy-index (no per-sample calls); batch_size 0 is the full set."""
    dataset = TensorDataset(features, labels)
    order = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size or len(dataset), drop_last=False), batch_size=None)


@contextmanager
def _quiet_lightning():
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: list[dict], cfg: Any,
              seed: int = 0, accelerator: str = "auto") -> LinearProbe:
    torch.manual_seed(seed)
    probe = LinearProbe(features.mean(0), features.std(0), num_classes, settings, cfg.optimizer, cfg.momentum)
    return train_probe(probe, features, labels, cfg.epochs, cfg.batch_size, seed, accelerator)


def train_probe(probe: pl.LightningModule, features: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int,
                seed: int = 0, accelerator: str = "auto") -> pl.LightningModule:
    """Fit any probe module on feature tensors (shuffled batches, quiet trainer); returns it on the CPU, in eval mode."""
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=epochs, accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )
        trainer.fit(probe, feature_loader(features, labels, batch_size, shuffle=True, seed=seed))
    return probe.cpu().eval()


@torch.no_grad()
def probe_scores(probe: LinearProbe, features: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """Logits (heads, N, C)."""
    return torch.cat([probe(chunk) for chunk in features.split(batch_size)], dim=1)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, validation rows): ``fraction`` of every class held out, at least one row per class."""
    generator = torch.Generator().manual_seed(seed)
    held_out = []
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        count = max(1, round(fraction * len(rows)))
        held_out.append(rows[torch.randperm(len(rows), generator=generator)[:count]])
    val = torch.cat(held_out).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def best_on_validation(grid: list[dict], fit: Callable, features: torch.Tensor, labels: torch.Tensor,
                       val_fraction: float, seed: int, no_split_message: str) -> tuple[dict, Optional[float]]:
    """The grid setting whose probe (``fit(features, labels, grid)``: one probe per setting) has the best top-1 on a
    stratified validation split of train, and that top-1 (None when the grid has one setting: no search)."""
    if len(grid) == 1:
        return grid[0], None
    if val_fraction <= 0:
        raise ValueError(no_split_message)
    fit_rows, val_rows = stratified_split(labels, val_fraction, seed)
    probe = fit(features[fit_rows], labels[fit_rows], grid)
    val_top1 = (probe_scores(probe, features[val_rows]).argmax(-1) == labels[val_rows]).float().mean(dim=1)
    best = int(val_top1.argmax())
    return grid[best], float(val_top1[best])


def probe_rows(protocol: str, train: FeatureSet, test: FeatureSet, levels: list[str], num_classes: dict[str, int],
               fine_to_coarse: Optional[torch.Tensor], grid: list[dict], fit: Callable, val_fraction: float, seed: int,
               hint: str, **params: Any) -> list[dict]:
    """Per level: pick a setting of `grid` on a validation split of train, refit on all of train with it, score on
    test. `fit(features, labels, num_classes, settings)` trains one probe per setting."""
    rows = []
    for level in levels:
        known_train, known_test = train.labels(level) >= 0, test.labels(level) >= 0
        features, labels = train.features[known_train], train.labels(level)[known_train]
        fit_level = lambda x, y, settings: fit(x, y, num_classes[level], settings)  # noqa: E731
        setting, val_top1 = best_on_validation(grid, fit_level, features, labels, val_fraction, seed, hint)
        scores = probe_scores(fit_level(features, labels, [setting]), test.features[known_test])[0]
        rows += score_rows(protocol, level, scores, test.labels(level)[known_test], fine_to_coarse,
                           val_fraction=val_fraction, val_top1=val_top1, train_images=int(labels.numel()),
                           **params, **setting)
    return rows


def run_linear(train: FeatureSet, test: FeatureSet, levels: list[str], num_classes: dict[str, int],
               fine_to_coarse: Optional[torch.Tensor], cfg: Any, val_fraction: float, seed: int = 0,
               accelerator: str = "auto") -> list[dict]:
    """Result rows: top-1 (and top-5) per level on test, plus fine accuracy within the true superclass."""
    grid = [{"lr": lr, "weight_decay": wd} for lr, wd in product(cfg.lrs, cfg.weight_decays)]
    return probe_rows(
        "offline-linear", train, test, levels, num_classes, fine_to_coarse, grid,
        lambda x, y, k, settings: fit_probe(x, y, k, settings, cfg, seed, accelerator), val_fraction, seed,
        "the linear probe picks lr and weight decay on a validation split of train: set data.val_fraction > 0, "
        "or give a single linear.lrs and linear.weight_decays",
        optimizer=cfg.optimizer, epochs=cfg.epochs, batch_size=cfg.batch_size, standardized=True)
