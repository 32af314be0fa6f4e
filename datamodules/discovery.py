"""Find a data set on disk (or download it), decode it through the cache, attach its hierarchy."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from datamodules.cache import cached_decode
from datamodules.class_lists import align_to_train
from datamodules.datasets import LabeledImages
from datamodules.errors import MissingDataError
from datamodules.hierarchy import coarse_labels, load_hierarchy_json
from datamodules.registry import dataset_spec
from datamodules.sources import DecodedSplit, _is_pickle_dir
from datamodules.spec import SPLITS

log = logging.getLogger(__name__)


def locate_source(cfg) -> Path:
    """The source path for ``cfg.data`` (``data.path``, else a known name under ``data.root``)."""
    spec = dataset_spec(cfg.name)
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise MissingDataError(f"data.path={cfg.path} does not exist. Point data.path at the data set: "
                                   f"{spec.about}")
        return path
    if not spec.root_names:
        raise MissingDataError(f"data.name={cfg.name} needs data.path: {spec.about}")
    root = Path(cfg.root).expanduser()
    tried = [root / n for n in spec.root_names]
    for path in tried:
        if path.exists():
            return path
    if cfg.download and spec.download is not None:
        path = spec.download(root)
        if path is not None and path.exists():
            return path
    raise MissingDataError(
        f"{cfg.name} not found. Tried: {', '.join(str(p) for p in tried)}"
        f"{' and a download (no network?)' if cfg.download and spec.download else ''}. "
        "Set data.root=<dir> (or the COKE_DATA_ROOT environment variable) to the folder holding it, "
        f"or data.path=<source>: {spec.about}."
    )


def _with_hierarchy(cfg, split: DecodedSplit) -> LabeledImages:
    """Superclass labels from data.hierarchy, the source's own (CIFAR-100) or the data set's built-in table;
    -1 for rows without a fine label."""
    table = load_hierarchy_json(cfg.hierarchy) if cfg.hierarchy else dataset_spec(cfg.name).hierarchy
    coarse, supers = np.full_like(split.fine, -1), []
    if split.coarse is not None and not cfg.hierarchy:
        coarse, supers = split.coarse, list(split.superclass_names)
    elif table and split.class_names:
        known = split.fine >= 0
        labels, supers, _ = coarse_labels(split.fine[known], split.class_names, table)
        coarse[known] = labels
    return LabeledImages(split.images, split.fine, coarse.astype(np.int64), list(split.class_names), supers)


def load_split(cfg, split: str, train_classes: list[str] | None = None) -> LabeledImages:
    """Decoded ``split`` (pretrain, train or test) of the data set that ``cfg`` (the ``data`` section) names.

    A split other than train is labelled by train's class list (``train_classes``, else read from train).
    Raises ``NoLabelsError`` for train or test of a source without labels.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not `{split}`")
    spec, path = dataset_spec(cfg.name), locate_source(cfg)
    split = "train" if split == "pretrain" and spec.pretrain_is_train else split
    tag = f"{cfg.name}-{split}"
    decoded = cached_decode(
        cfg.cache_dir, tag, path, lambda: spec.read(cfg, path, split),
        split=split, skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size,
    ) if spec.cache else spec.read(cfg, path, split)
    if decoded.skipped:
        log.warning("%s: %d corrupt images were skipped", tag, len(decoded.skipped))
    if split == "test" and not _is_pickle_dir(path):  # the pickles' class list is fixed by their meta file
        decoded = align_to_train(decoded, train_classes or load_split(cfg, "train").class_names, split, path)
    return _with_hierarchy(cfg, decoded)




