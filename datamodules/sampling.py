"""The training order: a shuffle that depends only on (seed, epoch)."""
from __future__ import annotations

import torch
from torch.utils.data import RandomSampler


class EpochSeededSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order.

    Under DDP Lightning swaps this (a RandomSampler) for a DistributedSampler seeded the same way.
    """

    def __init__(self, size: int, seed: int):
        super().__init__(range(size))
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        return iter(self.permutation().tolist())
