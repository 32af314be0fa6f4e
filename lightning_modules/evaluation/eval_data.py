"""The images ``evaluate.py`` scores and their frozen features: the labelled train and test splits (``data.subset`` /
``data.eval_subset`` applied, ``data.labelled``'s set when named), each split's features from the cache or from the
backbone, and what the report says about them."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs.loader import to_plain
from lightning_modules.evaluation.features import FeatureSet, cached_features, extract_features, rows_digest

TRANSFORM_KEYS = ("crop_size", "eval_resize", "mean", "std")


@dataclass
class EvalData:
    splits: dict[str, tuple[Any, np.ndarray]]  # split -> (LabeledImages, their row ids in the split)
    source_path: Path
    labelled_beside: bool  # data.labelled: another set than the pretraining images
    started: float  # perf_counter when the loading began (the report's features timing counts from here)

    @property
    def train(self):
        return self.splits["train"][0]


def load_splits(cfg) -> tuple[dict[str, tuple[Any, np.ndarray]], Path]:
    """(train, test) LabeledImages with data.subset / data.eval_subset applied, their row ids, the source path."""
    from datamodules import load_split
    from datamodules.datasets import per_class_rows
    from datamodules.discovery import locate_source

    train = load_split(cfg.data, "train")
    test = load_split(cfg.data, "test", train_classes=train.class_names)  # labels numbered as in train
    train_rows = per_class_rows(train.fine, cfg.data.subset, cfg.data.seed)
    test_rows = per_class_rows(test.fine, cfg.data.eval_subset, cfg.data.seed)
    return {"train": (train.take(train_rows), np.asarray(train_rows)), "test": (test.take(test_rows), np.asarray(test_rows))}, locate_source(cfg.data)


def load_eval_data(cfg) -> EvalData:
    """The splits to score; ``cfg.data`` becomes ``data.labelled``'s set when one is named. Raises DataError (a
    NoLabelsError says what to name instead)."""
    from datamodules.errors import NoLabelsError
    from datamodules.labelled import labelled_cfg, no_labels_message

    started = time.perf_counter()
    try:
        beside = labelled_cfg(cfg.data)  # data.labelled: the labelled set beside the pretraining set
        if beside is not None:
            cfg.data = beside
        splits, source_path = load_splits(cfg)
    except NoLabelsError:
        raise NoLabelsError(no_labels_message(cfg.data, "evaluate.py")) from None
    return EvalData(splits, source_path, beside is not None, started)


def split_features(split, images, rows, source_path, source, backbone, cfg, device):
    """(FeatureSet, cache file or None, cache hit) of one split, keyed by everything that changes the features."""
    from datamodules import EvalTransform
    from datamodules.cache import source_fingerprint

    data = to_plain(cfg.data)
    parts = {
        "weights": source.content_hash, "init_seed": cfg.seed if source.kind == "random" else None,
        "model": {k: to_plain(cfg.model)[k] for k in ("backbone", "cifar_stem", "kwargs")},
        "data": {"source": source_fingerprint(source_path), "split": split, "rows": rows_digest(torch.from_numpy(rows)),
                 **{k: data[k] for k in ("name", "hierarchy", "image_size", "skip_corrupt")}},
        "transform": {k: to_plain(cfg.augment)[k] for k in TRANSFORM_KEYS},
    }

    def compute() -> FeatureSet:
        feats = extract_features(backbone, torch.from_numpy(images.images), EvalTransform(cfg.augment),
                                 cfg.data.eval_batch_size, device, cfg.model.channels_last, f"{split} features")
        return FeatureSet(feats, torch.from_numpy(images.fine), torch.from_numpy(images.coarse))

    return cached_features(cfg.data.cache_dir if cfg.feature_cache else None, parts, compute)


def frozen_features(data: EvalData, source, backbone, cfg, device) -> tuple[dict[str, FeatureSet], dict[str, dict]]:
    """Each split's features, and where each came from ({"file", "hit"})."""
    features, cache = {}, {}
    for split, (images, rows) in data.splits.items():
        features[split], path, hit = split_features(split, images, rows, data.source_path, source, backbone, cfg, device)
        cache[split] = {"file": str(path) if path else None, "hit": hit}
    return features, cache


def fine_to_coarse_table(train) -> torch.Tensor:
    """(num_fine,) superclass id per fine class of the train split, -1 for a class without one."""
    table = torch.full((len(train.class_names),), -1, dtype=torch.int64)
    table[torch.from_numpy(train.fine)] = torch.from_numpy(train.coarse)
    return table


def data_block(cfg, data: EvalData, fine_to_coarse: torch.Tensor, has_hierarchy: bool) -> dict:
    """The report's ``data`` block."""
    plain, train = to_plain(cfg.data), data.train
    return {"name": plain["name"], "source": str(data.source_path), "val_fraction": plain["val_fraction"],
            "seed": plain["seed"],
            "splits": {s: {"images": len(data.splits[s][0]), "subset": plain["subset" if s == "train" else "eval_subset"]}
                       for s in data.splits},
            "num_fine": len(train.class_names), "num_coarse": len(train.superclass_names),
            "class_names": train.class_names, "superclass_names": train.superclass_names,
            "fine_to_coarse": fine_to_coarse.tolist() if has_hierarchy else []}


def features_block(cfg, feat_dim: int, cache: dict[str, dict]) -> dict:
    """The report's ``features`` block."""
    return {"dim": feat_dim, "transform": {k: to_plain(cfg.augment)[k] for k in TRANSFORM_KEYS},
            "cache": {s: c["file"] for s, c in cache.items()}, "cache_hit": {s: c["hit"] for s, c in cache.items()}}
