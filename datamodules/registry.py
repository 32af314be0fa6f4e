"""``data.name`` -> data set. A new data set is one file in datamodules/ defining a ``DataSetSpec`` named
``DATASET``, plus one line here."""
from __future__ import annotations

import importlib

from datamodules.errors import MissingDataError
from datamodules.spec import DataSetSpec

DATASETS = {
    "cifar10": "datamodules.cifar:CIFAR10",
    "cifar100": "datamodules.cifar:CIFAR100",
    "stl10": "datamodules.stl10:DATASET",
    "folder": "datamodules.folder:DATASET",
}


def dataset_spec(name: str) -> DataSetSpec:
    if name not in DATASETS:
        raise MissingDataError(f"unknown data.name `{name}`. Use one of {', '.join(DATASETS)} "
                               "(folder: your own images, labelled or not, given as data.path)")
    module, attr = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), attr)
