"""Two-level label hierarchies: fine class -> superclass."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from datamodules.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The vehicles/animals split used by coarse-to-fine papers on CIFAR-10.
CIFAR10_SUPERCLASSES = {
    "airplane": "vehicles", "automobile": "vehicles", "ship": "vehicles", "truck": "vehicles",
    "bird": "animals", "cat": "animals", "deer": "animals", "dog": "animals", "frog": "animals", "horse": "animals",
}


def load_hierarchy_json(path: str | Path) -> dict[str, str]:
    """Read ``{fine class: superclass}``; also accepts ``{"fine_to_coarse_names": {...}}`` or
    ``{superclass: [fine, ...]}`` forms."""
    with open(path) as f:
        raw = json.load(f)
    if isinstance(raw, dict) and "fine_to_coarse_names" in raw:
        raw = raw["fine_to_coarse_names"]
    if isinstance(raw, dict) and "superclass_to_fine" in raw:
        raw = raw["superclass_to_fine"]
    if isinstance(raw, dict) and raw and all(isinstance(v, list) for v in raw.values()):
        return {fine: coarse for coarse, fines in raw.items() for fine in fines}
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return dict(raw)
    raise DataError(f"hierarchy file {path} must map fine class names to superclass names (JSON object of strings)")


def coarse_labels(
    fine: np.ndarray, class_names: Sequence[str], fine_to_coarse: Mapping[str, str]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Map fine labels to superclass ids. Returns (coarse labels, superclass names, fine->coarse id table)."""
    missing = [c for c in class_names if c not in fine_to_coarse]
    if missing:
        raise DataError(
            f"the hierarchy has no superclass for {len(missing)} classes, e.g. {missing[:5]}; "
            "add them to the JSON given as data.hierarchy"
        )
    superclasses = sorted({fine_to_coarse[c] for c in class_names})
    table = np.array([superclasses.index(fine_to_coarse[c]) for c in class_names], dtype=np.int64)
    return table[fine], superclasses, table
