"""Feature diagnostics during pretraining, beside the CoKe dashboard: every N epochs, RankMe, alignment,
uniformity and within-superclass collapse of a fixed set of held-out images, logged as ``diag/*``.

A collapsing run shows itself here early: its effective rank and uniformity fall long before the online probe
stalls. The same numbers are evaluate.py's ``protocol=diagnostics`` (lightning_modules/evaluation/diagnostics.py).
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from lightning_modules.evaluation.diagnostics import feature_diagnostics, spread_rows

log = logging.getLogger(__name__)


class FeatureDiagnostics(pl.Callback):
    """``images`` held-out images (validation split, else test; spread over the classes), every ``every_n_epochs``."""

    def __init__(self, every_n_epochs: int = 5, images: int = 1024):
        self.every, self.images = every_n_epochs, images
        self._rows = None

    def _held_out(self, trainer):
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "val_set", None) or getattr(datamodule, "test_set", None)
        if dataset is None or not hasattr(dataset, "images"):  # e.g. data.format=jpeg keeps no decoded images
            if self.every:
                log.info("feature diagnostics off: the held-out split keeps no decoded images (data.format=jpeg?)")
                self.every = 0
            return None
        if self._rows is None:
            self._rows = spread_rows(dataset.fine, self.images, seed=0)
        return datamodule, dataset

    @torch.no_grad()
    def measure(self, trainer, pl_module) -> dict[str, float]:
        found = self._held_out(trainer)
        if found is None:
            return {}
        datamodule, dataset = found
        batch_size = datamodule.cfg.eval_batch_size
        was_training = pl_module.training
        pl_module.eval()
        try:
            feats = torch.cat([
                pl_module(datamodule.eval_transform(dataset.images[chunk].to(pl_module.device))).float().cpu()
                for chunk in self._rows.split(batch_size)
            ])
        finally:
            pl_module.train(was_training)
        fine, coarse = dataset.fine[self._rows], dataset.coarse[self._rows]
        table = datamodule.info.fine_to_coarse
        has_coarse = bool(table) and bool((coarse >= 0).all())
        return feature_diagnostics(feats, fine, coarse if has_coarse else None,
                                   torch.tensor(table) if has_coarse else None, len(datamodule.info.class_names))

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.every or (trainer.current_epoch + 1) % self.every or trainer.global_rank != 0:
            return
        values = self.measure(trainer, pl_module)
        if values:
            pl_module.log_dict({f"diag/{k}": torch.tensor(v, dtype=torch.float32) for k, v in values.items()},
                               rank_zero_only=True)
