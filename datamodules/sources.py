"""Readers that turn a data source into decoded uint8 arrays.

Sources: the official CIFAR python pickles, and ``<split>/<class>/<image>`` trees, either as a folder or
inside a ``.tar``/``.tar.gz`` (an optional single top-level folder is allowed in both). Unlabelled folders are
read by ``datamodules/folder.py``.
"""
from __future__ import annotations

import logging
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from datamodules.errors import CorruptImageError, DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class DecodedSplit:
    images: np.ndarray  # (N, 3, H, W) uint8
    fine: np.ndarray  # (N,) int64
    class_names: list[str]
    coarse: np.ndarray | None = None  # native superclass labels (CIFAR-100), else None
    superclass_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # corrupt files skipped
    names: list[str] | None = None  # unlabelled folders: the relative path of each row (its instance id's file)


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


def _not_cifar(path: Path, problem: str) -> DataError:
    return DataError(
        f"{path} is not an official CIFAR python pickle ({problem}). Download the data set again, or point "
        "data.path at another source (a pickle folder, an image folder or a .tar.gz)"
    )


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            loaded = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, ImportError) as err:
        raise _not_cifar(path, f"{type(err).__name__}: {err}") from None
    if not isinstance(loaded, dict):
        raise _not_cifar(path, f"it holds a {type(loaded).__name__}, not a dict")
    return loaded


def _batch_arrays(batch: dict, path: Path, label_keys: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The (N, 3, 32, 32) images and the label arrays of one batch file, checked against each other."""
    try:
        data = np.asarray(_decode_key(batch, "data"), dtype=np.uint8)
        labels = [np.asarray(_decode_key(batch, key), dtype=np.int64).reshape(-1) for key in label_keys]
    except (KeyError, ValueError, TypeError) as err:
        raise _not_cifar(path, f"no usable `data` and {'/'.join(label_keys)} entries: {type(err).__name__}: {err}") from None
    if data.size % (3 * 32 * 32) or (data.ndim == 2 and data.shape[1] != 3 * 32 * 32):
        raise _not_cifar(path, f"its `data` array has shape {data.shape}; CIFAR holds N x 3072 bytes")
    images = data.reshape(-1, 3, 32, 32)
    if any(len(label) != len(images) for label in labels):
        raise _not_cifar(path, f"{len(images)} images but {[len(label) for label in labels]} labels")
    return images, labels


def _decode_key(d: dict, key: str):
    return d[key.encode()] if key.encode() in d else d[key]


def _is_pickle_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "batches.meta").is_file() or (path / "meta").is_file() and (path / "train").is_file())


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
        label_keys = ("labels",) if num_classes == 10 else ("fine_labels", "coarse_labels")
        batch_images, batch_labels = _batch_arrays(_load_pickle(folder / name), folder / name, label_keys)
        images.append(batch_images)
        fine.append(batch_labels[0])
        if num_classes == 100:
            coarse.append(batch_labels[1])
    out = DecodedSplit(np.concatenate(images), np.concatenate(fine), names)
    if num_classes == 100:
        out.coarse, out.superclass_names = np.concatenate(coarse), coarse_names
    return out


def is_image_name(relpath: str) -> bool:
    """An image by its suffix; hidden files (``.DS_Store``, macOS ``._x.jpg`` resource forks) never are."""
    name = relpath.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _split_parts(relpath: str, split: str) -> tuple[str, str] | None:
    """``[top/]split/class/file`` -> (class, file), else None."""
    parts = relpath.strip("/").split("/")
    if len(parts) >= 3 and parts[-3] == split and len(parts) <= 4 and is_image_name(relpath):
        return parts[-2], parts[-1]
    return None


def _class_folder(relpath: str, split: str) -> str | None:
    """``[top/]split/class`` (a directory) -> class, else None."""
    parts = relpath.strip("/").split("/")
    return parts[-1] if 2 <= len(parts) <= 3 and parts[-2] == split else None


def iter_image_files(path: Path, split: str) -> Iterator[tuple[str, str, bytes | None]]:
    """Yield (class name, relative path, encoded bytes) for one split of a folder or .tar.gz tree, and
    (class name, relative path, None) for each class folder (so an empty one can be named)."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path).as_posix()
            parts = _split_parts(rel, split)
            if parts and file.is_file():
                yield parts[0], rel, file.read_bytes()
            elif file.is_dir() and _class_folder(rel, split):
                yield _class_folder(rel, split), rel, None
        return
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            parts = _split_parts(member.name, split) if member.isfile() else None
            if parts:
                yield parts[0], member.name, tar.extractfile(member).read()
            elif member.isdir() and _class_folder(member.name, split):
                yield _class_folder(member.name, split), member.name, None


def _list_tree(path: Path, split: str) -> tuple[list[tuple[str, str, bytes]], set[str]]:
    """(image entries sorted by path, class folder names) of one split; an unreadable archive is a DataError."""
    try:
        listed = list(iter_image_files(path, split))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(
            f"cannot read {path} as an image folder or a .tar/.tar.gz archive ({type(err).__name__}: {err}). "
            "Point data.path at a CIFAR pickle folder, a folder or a .tar.gz of <split>/<class>/*.jpg|png"
        ) from None
    entries = sorted((e for e in listed if e[2] is not None), key=lambda e: e[1])
    return entries, {cls for cls, _, data in listed if data is None}


DECODE_ERRORS = (RuntimeError, ValueError, OSError)


def _decode_with_pil(data: bytes) -> torch.Tensor:
    """Formats torchvision does not read (BMP, TIFF, PPM), and EXIF-rotated photos of them."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def decode_rgb(data: bytes, image_size: int = 0) -> torch.Tensor:
    """Decode to (3, H, W) uint8 (torchvision, else PIL); resize the shorter side and centre-crop when
    ``image_size`` > 0. Raises one of ``DECODE_ERRORS`` for a file neither can read."""
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        image = _decode_with_pil(data)
    if image_size:
        image = TF.center_crop(TF.resize(image, image_size, antialias=True), [image_size, image_size])
    return image


def read_image_tree(path: Path, split: str, skip_corrupt: bool = False, image_size: int = 0) -> DecodedSplit:
    images, labels, skipped = [], [], []
    class_index: dict[str, int] = {}
    entries, folders = _list_tree(path, split)
    if not entries:
        raise DataError(
            f"no images for split `{split}` in {path}; expected a layout <{split}>/<class>/*.jpg|png "
            "(optionally under one top-level folder)"
        )
    empty = sorted(folders - {cls for cls, _, _ in entries})
    if empty and split == "train":
        raise DataError(
            f"class folder(s) {empty[:10]} of split `train` in {path} hold no images. A class needs training images: "
            "add images to these folders or remove them"
        )
    class_names = sorted({cls for cls, _, _ in entries} | set(empty))  # an empty test class stays, to be named
    class_index = {name: i for i, name in enumerate(class_names)}
    for cls, rel, data in entries:
        try:
            image = decode_rgb(data, image_size)
        except DECODE_ERRORS as err:
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
