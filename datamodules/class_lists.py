"""One class list for every split of a data set: the train split's.

Each split of an image folder lists its own class folders; numbered on their own, a class missing from one
split shifts every label after it, and train and test labels silently disagree. Every other split is renumbered
to the train split's class list: a class train lacks is refused, a class the split lacks is named in a warning.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.errors import DataError
from datamodules.sources import DecodedSplit

log = logging.getLogger(__name__)


def align_to_train(decoded: DecodedSplit, train_classes: Sequence[str], split: str, source: Path) -> DecodedSplit:
    train_classes = list(train_classes)
    unknown = [name for name in decoded.class_names if name not in train_classes]
    if unknown:
        raise DataError(
            f"split `{split}` of {source} has class folder(s) that train does not have: {unknown[:10]}. Labels "
            f"follow train's class list, so every class needs training images: add train/<class>/ folders for "
            f"them, or remove them from {split}/"
        )
    index = {name: i for i, name in enumerate(train_classes)}
    remap = np.array([index[name] for name in decoded.class_names], dtype=np.int64)
    fine = remap[decoded.fine] if len(decoded.fine) else decoded.fine
    present = set(np.unique(fine).tolist())
    missing = [name for i, name in enumerate(train_classes) if i not in present]
    if missing:
        log.warning(
            "split `%s` of %s has no images of %d of train's %d classes (a missing or empty class folder): %s. "
            "Its labels follow train's class list; scores on this split cover the other classes only",
            split, source, len(missing), len(train_classes), missing[:10],
        )
    return replace(decoded, fine=fine, class_names=train_classes)
