"""Real-data helpers shared by several test files."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np


def write_cifar100_pickles(fragment: Path, folder: Path) -> Path:
    """An official-format cifar-100-python folder holding the real fragment's images and labels."""
    sample = np.load(fragment / "cifar100_prefix_sample.npz")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(fragment / "meta", folder / "meta")
    for split in ("train", "test"):
        x = sample[f"{split}_x"]
        blob = {b"data": x.reshape(len(x), -1), b"fine_labels": sample[f"{split}_fine"].tolist(),
                b"coarse_labels": sample[f"{split}_coarse"].tolist()}
        with open(folder / split, "wb") as f:
            pickle.dump(blob, f)
    return folder
