"""``data.name=folder``: your own images, in a folder or a ``.tar``/``.tar.gz``.

Two layouts, told apart by what the source holds:

- **labelled**: ``[top/]train/<class>/<image>`` and ``[top/]test/<class>/<image>``, plus optional extra
  unlabelled images under ``[top/]unlabelled/`` (STL-10's layout). Pretraining uses train and unlabelled/
  (unlabelled rows carry label -1); the probes and ``evaluate.py`` use train and test.
- **unlabelled**: any other tree, flat or nested: every image file under it, no classes. Pretraining only.

Instance ids are the rows in sorted relative-path order, so they are the same in every run and resume.
"""
from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from datamodules.errors import CorruptImageError, DataError, NoLabelsError
from datamodules.sources import (
    DECODE_ERRORS, DecodedSplit, IMAGE_SUFFIXES, _is_pickle_dir, _split_parts, decode_rgb, is_image_name,
    read_cifar_pickles, read_image_tree,
)
from datamodules.spec import DataSetSpec

log = logging.getLogger(__name__)
UNLABELLED_DIRS = ("unlabelled", "unlabeled")
LAYOUT_HELP = ("a folder or .tar/.tar.gz of images (flat or nested; no labels), or a labelled tree "
               "train/<class>/<image> + test/<class>/<image> (optionally with extra images under unlabelled/)")


def list_files(path: Path) -> list[str]:
    """Relative paths of the regular files of a folder or tar, sorted."""
    try:
        if path.is_dir():
            return sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
        with tarfile.open(path, "r:*") as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(
            f"cannot read {path} as an image folder or a .tar/.tar.gz archive ({type(err).__name__}: {err}). "
            f"Point data.path at {LAYOUT_HELP}"
        ) from None


def is_labelled(files: list[str]) -> bool:
    return any(_split_parts(name, "train") for name in files)


def _in_unlabelled_dir(name: str) -> bool:
    parts = name.split("/")
    return any(part.lower() in UNLABELLED_DIRS for part in parts[:2]) and len(parts) >= 2


def unlabelled_names(files: list[str]) -> list[str]:
    """The images that pretraining uses without labels: all of them, or a labelled tree's unlabelled/ ones."""
    if is_labelled(files):
        return [name for name in files if is_image_name(name) and _in_unlabelled_dir(name)]
    return [name for name in files if is_image_name(name)]


def read_members(path: Path, names: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the named files; a folder in the given order, a tar in archive order."""
    if path.is_dir():
        for name in names:
            yield name, (path / name).read_bytes()
        return
    wanted = set(names)
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name in wanted:
                yield member.name, tar.extractfile(member).read()


def _no_images(path: Path, files: list[str]) -> DataError:
    if not files:
        return DataError(f"{path} holds no files. Put images in it ({', '.join(IMAGE_SUFFIXES)}), or point data.path "
                         f"at another folder: {LAYOUT_HELP}")
    others = sorted({Path(name).suffix.lower() or Path(name).name for name in files})
    return DataError(
        f"{path} holds {len(files)} file(s) but no images: none ends in {', '.join(IMAGE_SUFFIXES)} (found "
        f"{', '.join(others[:8])}). Convert the images to one of these formats, or point data.path at the folder "
        "that holds them"
    )


def read_unlabelled(path: Path, names: list[str], skip_corrupt: bool, image_size: int) -> DecodedSplit:
    """Decode ``names`` (sorted relative paths) into rows with label -1, in that order."""
    decoded: dict[str, torch.Tensor] = {}
    skipped = []
    for name, data in read_members(path, names):
        try:
            decoded[name] = decode_rgb(data, image_size)
        except DECODE_ERRORS as err:
            if not skip_corrupt:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise CorruptImageError(
                    f"cannot decode image {path}:{name} ({reason}). "
                    "Fix or remove the file, or set data.skip_corrupt=true to skip undecodable images"
                ) from None
            skipped.append(name)
    if skipped:
        log.warning("skipped %d corrupt image(s) in %s: %s", len(skipped), path, skipped[:5])
    order = sorted(decoded)
    if not order:
        raise DataError(f"none of the {len(names)} image(s) in {path} could be decoded (e.g. {skipped[:3]}). "
                        "Check that the files are images, or point data.path at another folder")
    sizes: dict[tuple, str] = {}
    for name in order:
        sizes.setdefault(tuple(decoded[name].shape[1:]), name)
    if len(sizes) > 1:
        examples = ", ".join(f"{name} is {h}x{w}" for (h, w), name in list(sizes.items())[:3])
        raise DataError(
            f"the images in {path} have {len(sizes)} different sizes ({examples}). Set data.image_size=N to resize "
            "each (shorter side to N, then a centre crop) to N x N, e.g. data.image_size=32 for the CIFAR configs"
        )
    images = torch.stack([decoded[name] for name in order]).numpy()
    return DecodedSplit(images, np.full(len(order), -1, dtype=np.int64), [], skipped=sorted(skipped), names=order)


def _concat(labelled: DecodedSplit, extra: DecodedSplit) -> DecodedSplit:
    if labelled.images.shape[1:] != extra.images.shape[1:]:
        raise DataError(f"the unlabelled/ images are {extra.images.shape[2:]} but train's are "
                        f"{labelled.images.shape[2:]}; set data.image_size=N to resize both to N x N")
    return DecodedSplit(
        np.concatenate([labelled.images, extra.images]), np.concatenate([labelled.fine, extra.fine]),
        labelled.class_names, skipped=labelled.skipped + extra.skipped,
    )


def read_folder(cfg, path: Path, split: str) -> DecodedSplit:
    """One split of a folder source: ``pretrain`` (what trains), or the labelled ``train`` / ``test``."""
    if _is_pickle_dir(path):  # data.name=folder pointed at CIFAR pickles still reads them
        classes = 100 if (path / "meta").is_file() else 10
        return read_cifar_pickles(path, "train" if split == "pretrain" else split, classes)
    files = list_files(path)
    labelled = is_labelled(files)
    if split != "pretrain" and not labelled:
        raise NoLabelsError(f"{path} holds unlabelled images (no train/<class>/ folders)")
    if split != "pretrain":
        return read_image_tree(path, split, skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size)
    names = unlabelled_names(files)
    if not labelled:
        if not names:
            raise _no_images(path, files)
        log.info("data: %s has no train/<class>/ folders: pretraining on its %d images without labels",
                 path, len(names))
        return read_unlabelled(path, names, cfg.skip_corrupt, cfg.image_size)
    train = read_image_tree(path, "train", skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size)
    if not names:
        return train
    log.info("data: pretraining on %s's train split and its %d unlabelled/ images", path, len(names))
    return _concat(train, read_unlabelled(path, names, cfg.skip_corrupt, cfg.image_size))


DATASET = DataSetSpec(read_folder, f"your own images: data.path=<{LAYOUT_HELP}>")
