"""The labelled set beside a pretraining set (``data.labelled``): a data set name or a path.

It serves the kNN monitor during pretraining and ``evaluate.py``; a pretraining set without labels (an
unlabelled folder) needs it for both.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from datamodules.datasets import LabeledImages, per_class_rows
from datamodules.discovery import load_split
from datamodules.errors import DataError, MissingDataError, NoLabelsError
from datamodules.registry import DATASETS
from datamodules.sources import _is_pickle_dir
from datamodules.stl10 import is_stl10_dir

log = logging.getLogger(__name__)

LABELLED_HELP = (
    "data.labelled=<a labelled folder or .tar.gz of train/<class>/<image> and test/<class>/<image>, a CIFAR or "
    f"STL-10 folder, or a data set name under data.root: {', '.join(n for n in DATASETS if n != 'folder')}>"
)


def _name_of(path: Path) -> str:
    if _is_pickle_dir(path):
        return "cifar10" if (path / "batches.meta").is_file() else "cifar100"
    if is_stl10_dir(path) or is_stl10_dir(path / "stl10_binary"):
        return "stl10"
    return "folder"


def labelled_cfg(cfg):
    """The ``data`` config of ``data.labelled`` (its own name and path, the other keys kept), or None."""
    value = str(cfg.labelled or "")
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists():
        name, source = _name_of(path), str(path)
    elif value in DATASETS and value != "folder":
        name, source = value, ""
    else:
        raise MissingDataError(f"data.labelled={value} is neither an existing path nor a data set name. Give "
                               f"{LABELLED_HELP}")
    return OmegaConf.merge(cfg, {"name": name, "path": source, "labelled": ""})


def no_labels_message(cfg, what: str) -> str:
    """One paragraph for a command that needs labels when the data set has none."""
    source = cfg.path or cfg.name
    return (f"{what} needs labelled images, but {source} (data.name={cfg.name}) holds images without labels. "
            f"Name a labelled set: {LABELLED_HELP}")


def load_labelled_sets(cfg, has_labels: bool) -> tuple[LabeledImages, LabeledImages] | None:
    """(train, test) of ``data.labelled`` with ``data.eval_subset`` applied to both, or None. Without either
    labels or ``data.labelled``, says once that the online probe is off."""
    lcfg = labelled_cfg(cfg)
    if lcfg is None:
        if not has_labels:
            log.warning("online probe off: %s has no labels. To follow the features while pretraining (and to "
                        "evaluate them), name a labelled set: %s", cfg.path or cfg.name, LABELLED_HELP)
        return None
    try:
        train = load_split(lcfg, "train")
        test = load_split(lcfg, "test", train_classes=train.class_names)
    except NoLabelsError as err:
        raise DataError(f"data.labelled={cfg.labelled}: {err}. It must be a labelled set: {LABELLED_HELP}") from None
    if cfg.eval_subset:
        train = train.take(per_class_rows(train.fine, cfg.eval_subset, cfg.seed))
        test = test.take(per_class_rows(test.fine, cfg.eval_subset, cfg.seed))
    log.info("data: kNN monitor on data.labelled=%s: %d train images as the bank, %d test images as queries",
             cfg.labelled, len(train), len(test))
    return train, test
