"""Data sets (``registry.py``: one file each), label hierarchies and device-side (Kornia) augmentation."""
from datamodules.augment import EvalTransform, ViewAugmenter
from datamodules.datamodule import DataInfo, PretrainDataModule
from datamodules.datasets import ImageDataset, LabeledImages
from datamodules.discovery import load_split
from datamodules.errors import CorruptImageError, DataError, MissingDataError, NoLabelsError

__all__ = [
    "CorruptImageError", "DataError", "DataInfo", "EvalTransform", "ImageDataset", "LabeledImages",
    "MissingDataError", "NoLabelsError", "PretrainDataModule", "ViewAugmenter", "load_split",
]
