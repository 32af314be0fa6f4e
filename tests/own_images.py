"""Folders of "your own images" for the data tests, made of the real CIFAR-10 JPEGs of the shared tar."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tiny_data import tiny_tree


def labelled_tree(cifar10_tar: Path, cache_dir: Path, dest: Path) -> Path:
    """``dest/{train,test}/<class>/*.jpg``: 8 train and 3 test real images per class."""
    return tiny_tree(cifar10_tar, cache_dir, dest)


def real_jpegs(cifar10_tar: Path, cache_dir: Path, scratch: Path) -> list[bytes]:
    """The 80 train JPEGs of the tiny tree, in class order (8 per class)."""
    tree = labelled_tree(cifar10_tar, cache_dir, scratch)
    return [f.read_bytes() for f in sorted((tree / "train").rglob("*.jpg"))]


def flat_folder(jpegs: list[bytes], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for i, data in enumerate(jpegs):
        (dest / f"photo_{i:03d}.jpg").write_bytes(data)
    return dest


def nested_folder(jpegs: list[bytes], dest: Path) -> Path:
    """Photos in uneven sub-folders (holidays/2023/..., a top-level file, a deep one), written in reverse order."""
    for i, data in reversed(list(enumerate(jpegs))):
        sub = ["holidays/2023", "holidays/2024/beach", "", "phone/DCIM/100APPLE/deep"][i % 4]
        path = dest / sub / f"IMG_{i:04d}.JPG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


def tar_of(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith(".gz") else "w") as tar:
        for path in sorted(folder.rglob("*"), reverse=True):  # archive order differs from sorted order
            if path.is_file():
                tar.add(path, arcname=f"my_photos/{path.relative_to(folder).as_posix()}")
    return dest


def reencoded(data: bytes, fmt: str, size: tuple[int, int] | None = None) -> bytes:
    """A real image in another format (and size): how a phone or scanner folder differs from CIFAR's JPEGs."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if size:
        image = image.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
