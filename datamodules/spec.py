"""What a data set is to the rest of the code: a reader of three splits, where to look, its hierarchy.

Splits: ``pretrain`` (what a method trains on; rows without a label carry -1), and the labelled ``train`` and
``test`` that the online probes and ``evaluate.py`` use. A source without labels raises ``NoLabelsError`` for
``train`` and ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from datamodules.sources import DecodedSplit

SPLITS = ("pretrain", "train", "test")


@dataclass(frozen=True)
class DataSetSpec:
    read: Callable[[object, Path, str], DecodedSplit]  # (data cfg, source path, split)
    about: str  # one line: what it is and the layout data.path may point at
    root_names: tuple[str, ...] = ()  # looked for under data.root, in order; empty: data.path is needed
    hierarchy: Optional[Mapping[str, str]] = None  # built-in fine class -> superclass
    pretrain_is_train: bool = False  # every image is labelled: pretrain reads (and caches) the train split
    cache: bool = True  # decode through the on-disk cache; False for sources that already hold uint8 arrays
    download: Optional[Callable[[Path], Optional[Path]]] = None  # (data.root) -> the source, or None
