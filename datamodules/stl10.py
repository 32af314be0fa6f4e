"""``data.name=stl10``: STL-10 from its official binary files (``stl10_binary/``).

Files: ``{train,test}_X.bin`` (N x 3 x 96 x 96 uint8, each channel stored column-major), ``{train,test}_y.bin``
(uint8 labels 1..10), ``unlabeled_X.bin`` (100,000 images) and ``class_names.txt``. Pretraining uses unlabeled +
train (the unlabelled rows carry label -1), the probes and ``evaluate.py`` train and test.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from datamodules.errors import DataError, MissingDataError
from datamodules.sources import DecodedSplit
from datamodules.spec import DataSetSpec

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE


def is_stl10_dir(path: Path) -> bool:
    return path.is_dir() and (path / "train_X.bin").is_file()


def _not_stl10(path: Path, problem: str) -> DataError:
    return DataError(f"{path} is not an official STL-10 binary file ({problem}). Download stl10_binary.tar.gz again, "
                     "or point data.path at the stl10_binary folder that holds train_X.bin")


def _file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise MissingDataError(f"{path} is missing; an STL-10 folder holds train_X.bin, train_y.bin, test_X.bin, "
                               "test_y.bin, class_names.txt and (for pretraining) unlabeled_X.bin")
    return path


def _images(path: Path, image_size: int) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise _not_stl10(path, f"{size} bytes is not a whole number of {IMAGE_BYTES}-byte 96x96 images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)
    if not image_size or image_size == SIDE:
        return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))  # column-major -> (N, 3, H, W)
    out = np.empty((len(raw), 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, len(raw), 4096):  # resized in chunks: the unlabelled split is 2.8 GB at full size
        chunk = torch.from_numpy(np.ascontiguousarray(raw[start : start + 4096].transpose(0, 1, 3, 2)))
        out[start : start + len(chunk)] = TF.resize(chunk, [image_size, image_size], antialias=True).numpy()
    return out


def _labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != count:
        raise _not_stl10(path, f"{len(labels)} labels for {count} images")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise _not_stl10(path, f"labels run {labels.min()}..{labels.max()}, not 1..{num_classes}")
    return labels - 1


def read_stl10(cfg, path: Path, split: str) -> DecodedSplit:
    """``pretrain`` (unlabeled + train), ``train`` or ``test``."""
    if not is_stl10_dir(path) and is_stl10_dir(path / "stl10_binary"):
        path = path / "stl10_binary"
    names = [line.strip() for line in _file(path, "class_names.txt").read_text().splitlines() if line.strip()]
    part = "train" if split == "pretrain" else split
    images = _images(_file(path, f"{part}_X.bin"), cfg.image_size)
    labelled = DecodedSplit(images, _labels(_file(path, f"{part}_y.bin"), len(images), len(names)), names)
    if split != "pretrain":
        return labelled
    extra = _images(_file(path, "unlabeled_X.bin"), cfg.image_size)
    return DecodedSplit(np.concatenate([labelled.images, extra]),
                        np.concatenate([labelled.fine, np.full(len(extra), -1, dtype=np.int64)]), names)


DATASET = DataSetSpec(
    read_stl10, "STL-10's official binaries: data.path=<stl10_binary folder> (train_X.bin, unlabeled_X.bin, ...)",
    root_names=("stl10_binary", "stl10"), cache=False,
)
