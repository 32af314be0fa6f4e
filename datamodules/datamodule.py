"""The pretraining DataModule: CPU side decodes and stacks; views are made on the device."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.augment import EvalTransform, ViewAugmenter
from datamodules.datasets import ImageDataset, LabeledImages, collate_batched, per_class_rows, split_off_validation
from datamodules.device_loader import DeviceBatches, fits_on_device
from datamodules.discovery import load_split
from datamodules.jpeg_stream import BatchDecoder, JpegDataset, load_jpeg_split
from datamodules.labelled import load_labelled_sets
from datamodules.sampling import EpochSeededSampler

log = logging.getLogger(__name__)


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or a SLURM task's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class DataInfo:
    """What a model needs to know about the data to build its heads and memories."""

    num_train: int
    num_fine: int
    num_coarse: int  # 0 when there is no hierarchy
    class_names: list[str]
    superclass_names: list[str]
    fine_to_coarse: list[int]  # per fine class, its superclass id (empty without hierarchy)
    superclass_sizes: list[int]  # training instances per superclass (empty without hierarchy)


class PretrainDataModule(pl.LightningDataModule):
    def __init__(self, data_cfg, augment_cfg):
        super().__init__()
        self.cfg, self.augment_cfg = data_cfg, augment_cfg
        self.train_set = self.val_set = self.test_set = self.labelled_sets = None
        self._device_loaders: dict[tuple, DeviceBatches] = {}
        self._told_worker_cap = False
        self.augment = ViewAugmenter(augment_cfg)
        self.eval_transform = EvalTransform(augment_cfg)
        if data_cfg.format not in ("decoded", "jpeg"):
            raise ValueError(f"unknown data.format `{data_cfg.format}`; use decoded (cached arrays) or jpeg (GPU decode)")
        if data_cfg.loader not in ("auto", "device", "workers"):
            raise ValueError(f"unknown data.loader `{data_cfg.loader}`; use auto, device (the data set on the training "
                             "device) or workers (a DataLoader with data.num_workers)")
        self.decoder = BatchDecoder(data_cfg.image_size, data_cfg.decode_device, data_cfg.skip_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cfg = self.cfg
        load, dataset = (load_jpeg_split, JpegDataset) if cfg.format == "jpeg" else (load_split, ImageDataset)
        train, val = split_off_validation(load(cfg, "pretrain"), cfg.val_fraction, cfg.seed)
        # An unlabelled pretraining set has no class list and no test split: its online probes are off.
        test = load(cfg, "test", train_classes=train.class_names) if train.class_names else None
        train = train.take(per_class_rows(train.fine, cfg.subset, cfg.seed))
        if cfg.eval_subset:
            test = test.take(per_class_rows(test.fine, cfg.eval_subset, cfg.seed)) if test is not None else None
            val = val.take(per_class_rows(val.fine, cfg.eval_subset, cfg.seed)) if val is not None else None
        self.train_set = dataset(train)
        self.test_set = dataset(test) if test is not None else None
        self.val_set = dataset(val) if val is not None else None
        self.labelled_sets = load_labelled_sets(cfg, has_labels=bool(train.class_names))
        log.info("data: %d train, %s val, %d test images", len(train), len(val) if val is not None else 0,
                 len(test) if test is not None else 0)

    def fewer_than_a_batch(self) -> str:
        """One paragraph when the training set is smaller than one batch (batches are full: no step would run)."""
        n, batch = len(self.train_set), self.cfg.batch_size
        if n >= batch:
            return ""
        return (f"{n} training images are fewer than one batch (data.batch_size={batch}), so no step would train. "
                f"Set data.batch_size to at most {n}, or add images")

    @property
    def info(self) -> DataInfo:
        train: LabeledImages = self.train_set.data
        table = np.full(len(train.class_names), -1)
        known = train.coarse >= 0
        table[train.fine[known]] = train.coarse[known]
        return DataInfo(
            num_train=len(train), num_fine=len(train.class_names), num_coarse=len(train.superclass_names),
            class_names=train.class_names, superclass_names=train.superclass_names,
            fine_to_coarse=table.tolist() if train.superclass_names else [],
            superclass_sizes=np.bincount(train.coarse[known], minlength=len(train.superclass_names)).tolist(),
        )

    def loader_workers(self) -> int:
        """``data.num_workers``, capped at the available cores (more workers than cores only contend)."""
        cores = available_cores()
        if self.cfg.num_workers > cores and not self._told_worker_cap:
            log.info("data.num_workers=%d -> %d: the cores available to this process", self.cfg.num_workers, cores)
            self._told_worker_cap = True
        return min(self.cfg.num_workers, cores)

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        workers = self.loader_workers()
        sampler = EpochSeededSampler(len(dataset), self.cfg.seed) if train else None
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=workers,
            # pinned memory only helps a copy to a GPU; without one torch warns about it
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.cfg.persistent_workers and workers > 0,
            collate_fn=collate_batched,
        )

    def device_resident(self, dataset) -> torch.device | None:
        """The device to keep ``dataset`` on, or None for the worker path (``data.loader``)."""
        trainer = getattr(self, "trainer", None)
        if self.cfg.loader == "workers" or trainer is None or not isinstance(dataset, ImageDataset):
            return None
        device = trainer.strategy.root_device
        if self.cfg.loader == "auto" and not fits_on_device(dataset, device):
            log.info("data.loader=auto: %d MB of images do not fit the device; loader workers instead",
                     dataset.images.nbytes >> 20)
            return None
        return device

    def _batches(self, dataset, batch_size: int, train: bool):
        device = self.device_resident(dataset)
        if device is None:
            return self._loader(dataset, batch_size, train)
        # Lightning asks for a loader more than once (to count the steps, then to train): one device copy serves all.
        key = (id(dataset), batch_size, train, str(device))
        if key not in self._device_loaders:
            trainer = self.trainer
            self._device_loaders[key] = DeviceBatches(dataset, batch_size, device, shuffle=train, seed=self.cfg.seed,
                                                      rank=trainer.global_rank, world_size=trainer.world_size)
        return self._device_loaders[key]

    def train_dataloader(self):
        return self._batches(self.train_set, self.cfg.batch_size, train=True)

    def val_dataloader(self):
        """Online-probe evaluation: the held-out validation split when there is one, else test."""
        evaluation = self.val_set or self.test_set
        return self._batches(evaluation, self.cfg.eval_batch_size, train=False) if evaluation is not None else []

    def test_dataloader(self):
        return self._batches(self.test_set, self.cfg.eval_batch_size, train=False) if self.test_set is not None else []

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int = 0) -> dict:
        if "jpeg" in batch:
            batch = self.decoder(batch)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            # Seeded by (seed, step, rank): a resumed run draws exactly the views it would have drawn.
            seed = (self.cfg.seed * 1_000_003 + trainer.global_step * 1009 + trainer.global_rank) % 2**63
            devices = [batch["image"].device] if batch["image"].is_cuda else []
            with torch.random.fork_rng(devices=devices, device_type=batch["image"].device.type):
                torch.manual_seed(seed)
                batch["views"] = self.augment(batch["image"])
            if self.augment_cfg.clean_view:  # the un-augmented image, for methods that assign clusters on it
                batch["clean_view"] = self.eval_transform(batch["image"])
        else:
            batch["eval_view"] = self.eval_transform(batch["image"])
        return batch
