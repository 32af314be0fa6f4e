"""In-memory labelled image sets that honour the batch contract: image, index, fine, coarse."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class LabeledImages:
    images: np.ndarray  # (N, 3, H, W) uint8
    fine: np.ndarray  # (N,) int64
    coarse: np.ndarray  # (N,) int64, -1 where unknown
    class_names: list[str]
    superclass_names: list[str]

    def __len__(self) -> int:
        return len(self.fine)

    def take(self, rows: np.ndarray) -> "LabeledImages":
        return replace(self, images=self.images[rows], fine=self.fine[rows], coarse=self.coarse[rows])


def per_class_rows(fine: np.ndarray, amount: float, seed: int) -> np.ndarray:
    """Deterministic per-class selection: ``amount`` >= 1 is a count per class, (0, 1) a fraction. Rows without
    a label (-1) count as one more class."""
    if amount <= 0:
        return np.arange(len(fine))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(fine):
        rows = np.flatnonzero(fine == label)
        n = int(amount) if amount >= 1 else max(1, int(round(amount * len(rows))))
        chosen.append(rng.permutation(rows)[:n])
    return np.sort(np.concatenate(chosen))


def split_off_validation(data: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages | None]:
    """Hold out ``fraction`` of each class of ``data`` as a validation set (disjoint from the rest); rows
    without a label (-1) always stay in training."""
    labelled = np.flatnonzero(data.fine >= 0)
    if fraction <= 0 or not len(labelled):
        return data, None
    val_rows = labelled[per_class_rows(data.fine[labelled], fraction, seed + 1)]
    train_rows = np.setdiff1d(np.arange(len(data)), val_rows)
    return data.take(train_rows), data.take(val_rows)


class ImageDataset(Dataset):
    """Serves whole batches through ``__getitems__`` so loading a batch is one fancy-index, not B calls."""

    def __init__(self, data: LabeledImages):
        self.data = data
        self.images = torch.from_numpy(np.ascontiguousarray(data.images))
        self.fine = torch.from_numpy(data.fine)
        self.coarse = torch.from_numpy(data.coarse)

    def __len__(self) -> int:
        return len(self.fine)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": torch.tensor(i), "fine": self.fine[i], "coarse": self.coarse[i]}

    def __getitems__(self, rows: list[int]) -> dict:
        idx = torch.as_tensor(rows, dtype=torch.int64)
        return {"image": self.images[idx], "index": idx, "fine": self.fine[idx], "coarse": self.coarse[idx]}


def collate_batched(batch):
    """``__getitems__`` already built the batch; fall back to stacking for single-item access."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([torch.as_tensor(b[k]) for b in batch]) for k in batch[0]}
