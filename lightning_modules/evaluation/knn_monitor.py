"""The kNN monitor: how the features of a run do on the labelled set beside its pretraining set (``data.labelled``).

After each validation interval (``trainer.check_val_every_n_epoch``) and at the last epoch, the backbone embeds the
labelled set's train images (the bank) and test images (the queries) with the evaluation transform, and logs
``online/knn_fine_acc1``: the accuracy of the weighted cosine kNN-20 vote (ops/knn.py), as ``evaluate.py`` scores it.
This is the online probe of an unlabelled pretraining set, whose batches carry no labels to train a linear one.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from datamodules.augment import EvalTransform
from datamodules.datasets import LabeledImages
from ops.knn import weighted_knn_scores

K, TEMPERATURE = 20, 0.07


@torch.no_grad()
def embed(module: pl.LightningModule, images: torch.Tensor, transform: EvalTransform, batch_size: int) -> torch.Tensor:
    was_training = module.training
    module.eval()
    try:
        chunks = [module(transform(images[i : i + batch_size].to(module.device))).float()
                  for i in range(0, len(images), batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(chunks)


class KnnMonitor(pl.Callback):
    def __init__(self, bank: LabeledImages, queries: LabeledImages, augment_cfg, batch_size: int):
        self.bank, self.queries = bank, queries
        self.bank_images, self.query_images = torch.from_numpy(bank.images), torch.from_numpy(queries.images)
        self.num_classes = len(bank.class_names)
        self.transform, self.batch_size = EvalTransform(augment_cfg), batch_size

    def accuracy(self, module: pl.LightningModule) -> float:
        transform = self.transform.to(module.device)
        bank = embed(module, self.bank_images, transform, self.batch_size)
        queries = embed(module, self.query_images, transform, self.batch_size)
        k = min(K, len(bank))
        bank_labels = torch.from_numpy(self.bank.fine)
        scores = weighted_knn_scores(queries, bank, bank_labels, self.num_classes, [k], TEMPERATURE)[k]
        labels = torch.from_numpy(self.queries.fine).to(scores.device)
        return (scores.argmax(1) == labels).float().mean().item()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch, every = trainer.current_epoch + 1, trainer.check_val_every_n_epoch or 1
        if epoch % every and epoch != trainer.max_epochs:
            return
        pl_module.log("online/knn_fine_acc1", self.accuracy(pl_module), prog_bar=True, sync_dist=False)


def knn_monitor(datamodule, augment_cfg) -> KnnMonitor | None:
    """The monitor of ``datamodule``'s ``data.labelled`` set, or None without one."""
    sets = getattr(datamodule, "labelled_sets", None)
    return KnnMonitor(*sets, augment_cfg, datamodule.cfg.eval_batch_size) if sets else None
