"""Batches drawn from a data set that lives on the device: no loader workers, no pinning, no copies.

The decoded uint8 images and their labels are moved to the device once; a batch is an index draw there
(``images[idx]``). The order is the one :class:`EpochSeededSampler` gives the worker path, so on one device switching
paths changes no batch. The loader is stateful in Lightning's sense (``state_dict`` /
``load_state_dict``): a checkpoint saved at a step boundary records the epoch and the batches served, and a resumed
run continues mid-epoch with the next batch.
"""
from __future__ import annotations

import math

import torch

from datamodules.datasets import ImageDataset
from datamodules.sampling import EpochSeededSampler

# The share of the device's free memory the data may take before the worker path is used instead.
DEVICE_SHARE = 0.5


def fits_on_device(dataset: ImageDataset, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # on the CPU the decoded set is already in memory
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.images.nbytes < DEVICE_SHARE * free


class DeviceBatches:
    batch_sampler = None  # read by Lightning's loader checks, as on a DataLoader
    """An iterable of batch dicts (``image``, ``index``, ``fine``, ``coarse``) drawn on ``device``.

    ``shuffle`` draws each epoch's order from ``sampler`` (Lightning calls its ``set_epoch``); the training loader
    drops the last partial batch, the evaluation loaders keep it. Under DDP rank r takes every world-th index of the
    order, padded like ``DistributedSampler`` so every rank has as many batches.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: torch.device, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.tensors = {"image": dataset.images.to(device), "fine": dataset.fine.to(device),
                        "coarse": dataset.coarse.to(device)}
        self.size, self.batch_size, self.device = len(dataset), batch_size, device
        self.shuffle, self.drop_last = shuffle, shuffle
        self.rank, self.world_size = rank, world_size
        self.order_source = EpochSeededSampler(self.size, seed)
        self.sampler = self.order_source if shuffle else None  # Lightning calls sampler.set_epoch each epoch
        self.served = 0  # batches of the current epoch handed out
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint

    def shard_size(self) -> int:
        return math.ceil(self.size / self.world_size) if self.world_size > 1 else self.size

    def __len__(self) -> int:
        rows = self.shard_size()
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def order(self) -> torch.Tensor:
        """This rank's indices for the current epoch, on the device (one host-to-device copy per epoch)."""
        order = self.order_source.permutation() if self.shuffle else torch.arange(self.size)
        if self.world_size > 1:
            padded = self.shard_size() * self.world_size
            order = torch.cat([order, order[: padded - self.size]])[self.rank::self.world_size]
        return order.to(self.device, non_blocking=True)

    def __iter__(self):
        # A generator: the epoch and the resume position are read at the first batch, after Lightning's set_epoch.
        start = 0
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            self._resume_at = None
            if epoch == self.order_source.epoch and batches < len(self):
                start = batches
        order = self.order()
        self.served = start
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            self.served = b + 1
            yield {"image": self.tensors["image"].index_select(0, idx), "index": idx,
                   "fine": self.tensors["fine"].index_select(0, idx),
                   "coarse": self.tensors["coarse"].index_select(0, idx)}

    def state_dict(self) -> dict:
        source = self.order_source
        return {"epoch": source.epoch, "batches": self.served, "size": self.size, "seed": source.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size") == self.size and state.get("seed") == self.order_source.seed:
            self._resume_at = (int(state["epoch"]), int(state["batches"]))
