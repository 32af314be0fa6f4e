"""Find a data set on disk (or download it), decode it through the cache, attach its hierarchy."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from datamodules.cache import cached_decode
from datamodules.class_lists import align_to_train
from datamodules.errors import MissingDataError
from datamodules.datasets import LabeledImages
from datamodules.hierarchy import CIFAR10_SUPERCLASSES, coarse_labels, load_hierarchy_json
from datamodules.sources import DecodedSplit, read_cifar_pickles, read_image_tree

log = logging.getLogger(__name__)

# Names looked for under data.root, in order.
KNOWN_SOURCES = {
    "cifar10": ["cifar-10-batches-py", "cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10"],
    "cifar100": ["cifar-100-python", "cifar100-jpeg.tar.gz", "cifar100-jpeg", "cifar100"],
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


def _is_pickle_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "batches.meta").is_file() or (path / "meta").is_file() and (path / "train").is_file())


def _download(name: str, root: Path) -> Path | None:
    import socket

    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # never hang on a dead network
    try:
        cls(str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not available offline"
        log.warning("download of %s into %s failed: %s", name, root, err)
        return None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return root / KNOWN_SOURCES[name][0]


def locate_source(cfg) -> Path:
    """The source path for ``cfg.data`` (``data.path``, else a known name under ``data.root``)."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise MissingDataError(f"data.path={cfg.path} does not exist. Point data.path at a pickle folder, an image folder or a .tar.gz")
        return path
    if cfg.name == "folder":
        raise MissingDataError("data.name=folder needs data.path=<folder or .tar.gz with <split>/<class>/*.jpg>")
    if cfg.name not in KNOWN_SOURCES:
        raise MissingDataError(f"unknown data.name `{cfg.name}`; use cifar10, cifar100 or folder")
    root = Path(cfg.root).expanduser()
    tried = [root / n for n in KNOWN_SOURCES[cfg.name]]
    for path in tried:
        if path.exists():
            return path
    if cfg.download:
        path = _download(cfg.name, root)
        if path is not None and path.exists():
            return path
    raise MissingDataError(
        f"{cfg.name} not found. Tried: {', '.join(str(p) for p in tried)}"
        f"{' and a download (no network?)' if cfg.download else ''}. "
        "Set data.root=<dir> (or the COKE_DATA_ROOT environment variable) to the folder holding it, "
        "or data.path=<pickle folder | image folder | .tar.gz>."
    )


def _read_split(cfg, path: Path, split: str) -> DecodedSplit:
    if _is_pickle_dir(path):
        return read_cifar_pickles(path, split, NUM_CLASSES.get(cfg.name, 100 if (path / "meta").is_file() else 10))
    return read_image_tree(path, split, skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size)


def _with_hierarchy(cfg, split: DecodedSplit) -> LabeledImages:
    if cfg.hierarchy:
        coarse, supers, _ = coarse_labels(split.fine, split.class_names, load_hierarchy_json(cfg.hierarchy))
    elif split.coarse is not None:
        coarse, supers = split.coarse, list(split.superclass_names)
    elif cfg.name == "cifar10":
        coarse, supers, _ = coarse_labels(split.fine, split.class_names, CIFAR10_SUPERCLASSES)
    else:
        coarse, supers = np.full_like(split.fine, -1), []
    return LabeledImages(split.images, split.fine, coarse.astype(np.int64), list(split.class_names), supers)


def load_split(cfg, split: str, train_classes: list[str] | None = None) -> LabeledImages:
    """Decoded ``split`` ("train" or "test") of the data set that ``cfg`` (the ``data`` section) names.

    A split other than train is labelled by train's class list (``train_classes``, else read from train).
    """
    path = locate_source(cfg)
    tag = f"{cfg.name}-{split}"
    decoded = cached_decode(
        cfg.cache_dir, tag, path, lambda: _read_split(cfg, path, split),
        split=split, skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size,
    )
    if decoded.skipped:
        log.warning("%s: %d corrupt images were skipped", tag, len(decoded.skipped))
    if split != "train" and not _is_pickle_dir(path):  # the pickles' class list is fixed by their meta file
        decoded = align_to_train(decoded, train_classes or load_split(cfg, "train").class_names, split, path)
    return _with_hierarchy(cfg, decoded)
