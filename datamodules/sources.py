"""Readers that turn a data source into decoded uint8 arrays.

Sources: the official CIFAR python pickles, and ``<split>/<class>/*.{jpg,png}`` trees, either as a
folder or inside a ``.tar.gz`` (an optional single top-level folder is allowed in both).
"""
from __future__ import annotations

import logging
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from datamodules.errors import CorruptImageError, DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class DecodedSplit:
    images: np.ndarray  # (N, 3, H, W) uint8
    fine: np.ndarray  # (N,) int64
    class_names: list[str]
    coarse: np.ndarray | None = None  # native superclass labels (CIFAR-100), else None
    superclass_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # corrupt files skipped


class _ArrayUnpickler(pickle.Unpickler):
    """Only numpy arrays and plain containers: a CIFAR pickle never needs more."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="bytes").load()


def _decode_key(d: dict, key: str):
    return d[key.encode()] if key.encode() in d else d[key]


def read_cifar_pickles(folder: Path, split: str, num_classes: int) -> DecodedSplit:
    """Official ``cifar-10-batches-py`` or ``cifar-100-python`` folder."""
    if num_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta = _load_pickle(folder / "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in _decode_key(meta, "label_names")]
    else:
        files = [split]
        meta = _load_pickle(folder / "meta")
        names = [n.decode() if isinstance(n, bytes) else n for n in _decode_key(meta, "fine_label_names")]
        coarse_names = [n.decode() if isinstance(n, bytes) else n for n in _decode_key(meta, "coarse_label_names")]
    images, fine, coarse = [], [], []
    for name in files:
        batch = _load_pickle(folder / name)
        images.append(np.asarray(_decode_key(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32))
        fine.append(np.asarray(_decode_key(batch, "labels" if num_classes == 10 else "fine_labels"), dtype=np.int64))
        if num_classes == 100:
            coarse.append(np.asarray(_decode_key(batch, "coarse_labels"), dtype=np.int64))
    out = DecodedSplit(np.concatenate(images), np.concatenate(fine), names)
    if num_classes == 100:
        out.coarse, out.superclass_names = np.concatenate(coarse), coarse_names
    return out


def _split_parts(relpath: str, split: str) -> tuple[str, str] | None:
    """``[top/]split/class/file`` -> (class, file), else None."""
    parts = relpath.strip("/").split("/")
    if len(parts) >= 3 and parts[-3] == split and len(parts) <= 4 and parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return parts[-2], parts[-1]
    return None


def iter_image_files(path: Path, split: str) -> Iterator[tuple[str, str, bytes]]:
    """Yield (class name, relative path, encoded bytes) for one split of a folder or .tar.gz tree."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path).as_posix()
            parts = _split_parts(rel, split)
            if parts and file.is_file():
                yield parts[0], rel, file.read_bytes()
        return
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = _split_parts(member.name, split) if member.isfile() else None
            if parts:
                yield parts[0], member.name, tar.extractfile(member).read()


def decode_rgb(data: bytes, image_size: int = 0) -> torch.Tensor:
    """Decode to (3, H, W) uint8; resize the shorter side and centre-crop when ``image_size`` > 0."""
    image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    if image_size:
        image = TF.center_crop(TF.resize(image, image_size, antialias=True), [image_size, image_size])
    return image


def read_image_tree(path: Path, split: str, skip_corrupt: bool = False, image_size: int = 0) -> DecodedSplit:
    images, labels, skipped = [], [], []
    class_index: dict[str, int] = {}
    entries = sorted(iter_image_files(path, split), key=lambda e: e[1])
    if not entries:
        raise DataError(
            f"no images for split `{split}` in {path}; expected a layout <{split}>/<class>/*.jpg|png "
            "(optionally under one top-level folder)"
        )
    class_names = sorted({cls for cls, _, _ in entries})
    class_index = {name: i for i, name in enumerate(class_names)}
    for cls, rel, data in entries:
        try:
            image = decode_rgb(data, image_size)
        except (RuntimeError, ValueError) as err:
            if not skip_corrupt:
                raise CorruptImageError(
                    f"cannot decode image {path}:{rel} ({err}). Fix or remove the file, "
                    "or set data.skip_corrupt=true to skip undecodable images"
                ) from None
            skipped.append(rel)
            continue
        images.append(image)
        labels.append(class_index[cls])
    if skipped:
        log.warning("skipped %d corrupt images in %s (%s): %s", len(skipped), path, split, skipped[:5])
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"images in {path} ({split}) have different sizes {sorted(shapes)[:4]}...; "
            "set data.image_size to resize them to one size"
        )
    return DecodedSplit(torch.stack(images).numpy(), np.asarray(labels, dtype=np.int64), class_names, skipped=skipped)
