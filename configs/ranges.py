"""Valid ranges of the numeric config keys, checked when a config loads (so ``--print-config`` refuses too).

A key absent from a schema (the eval schema has no ``trainer``) is skipped. A method's own keys are checked by its
rules (``validate``, configs/method_hooks.py), which may pass their own table to ``range_errors``.
"""
from __future__ import annotations

import math
from typing import Any

INF = math.inf
# key: (lowest, highest, what the value means). Both ends are allowed values.
RANGES: dict[str, tuple[float, float, str]] = {
    "data.batch_size": (1, INF, "images per device and step"),
    "data.eval_batch_size": (1, INF, "images per evaluation batch"),
    "data.num_workers": (0, INF, "loader processes (0: load in the main process)"),
    "data.subset": (0, INF, "0 for all, a fraction in (0, 1) or a count >= 1 per class"),
    "data.eval_subset": (0, INF, "0 for all, a fraction in (0, 1) or a count >= 1 per class"),
    "data.val_fraction": (0, 0.99, "the fraction of train held out"),
    "data.image_size": (0, INF, "pixels (0 keeps the native size)"),
    "augment.crop_size": (1, INF, "pixels"),
    "augment.small_crop_size": (1, INF, "pixels"),
    "augment.view_size": (0, INF, "pixels (0: crop_size)"),
    "augment.num_large_crops": (1, INF, "views per image"),
    "augment.num_small_crops": (0, INF, "views per image"),
    "augment.min_scale": (1e-6, 1, "a fraction of the image area"),
    "augment.max_scale": (1e-6, 1, "a fraction of the image area"),
    "augment.small_min_scale": (1e-6, 1, "a fraction of the image area"),
    "augment.small_max_scale": (1e-6, 1, "a fraction of the image area"),
    "augment.eval_resize": (1, INF, "pixels"),
    "optim.lr": (0, INF, "a non-negative learning rate (0 keeps the backbone at its initialisation)"),
    "optim.probe_lr": (1e-12, INF, "a positive learning rate"),
    "optim.weight_decay": (0, INF, "a non-negative decay"),
    "optim.momentum": (0, 1, "a momentum in [0, 1]"),
    "optim.warmup_epochs": (0, INF, "epochs"),
    "optim.min_lr_ratio": (0, 1, "a fraction of the lr"),
    "logger.log_every_n_steps": (1, INF, "steps"),
    "logger.view_grid_every_n_epochs": (0, INF, "epochs (0: never)"),
    "checkpoint.every_n_epochs": (0, INF, "epochs (0: only last.ckpt)"),
    "max_time_minutes": (0, INF, "minutes (0: no budget)"),
    "trainer.max_epochs": (-1, INF, "epochs (-1: no limit)"),
    "trainer.min_epochs": (0, INF, "epochs"),
    "trainer.max_steps": (-1, INF, "steps (-1: no limit)"),
    "trainer.num_nodes": (1, INF, "nodes"),
    "trainer.accumulate_grad_batches": (1, INF, "batches per optimizer step"),
    "trainer.check_val_every_n_epoch": (1, INF, "epochs"),
    "trainer.log_every_n_steps": (1, INF, "steps"),
    "linear.epochs": (1, INF, "epochs"),
    "linear.batch_size": (0, INF, "features per batch (0: full batch)"),
    "linear.lrs": (1e-12, INF, "positive learning rates"),
    "linear.weight_decays": (0, INF, "non-negative decays"),
    "linear.momentum": (0, 1, "a momentum in [0, 1]"),
    "knn.ks": (1, INF, "neighbour counts"),
    "knn.temperature": (1e-12, INF, "a positive temperature"),
    "retrieval.ks": (1, INF, "neighbour counts"),
    "clustering.num_clusters": (0, INF, "clusters (0: the number of classes)"),
    "clustering.iterations": (1, INF, "k-means iterations"),
    "sea.epochs": (1, INF, "epochs"),
    "sea.batch_size": (2, INF, "features per batch (SeA mixes the others of a batch)"),
    "sea.lrs": (1e-12, INF, "positive learning rates"),
    "sea.etas": (0, INF, "non-negative step norms"),
    "sea.alpha": (1e-12, INF, "a positive temperature"),
    "sea.temperature": (1e-12, INF, "a positive temperature"),
    "sea.weight_decay": (0, INF, "a non-negative decay"),
    "sea.momentum": (0, 1, "a momentum in [0, 1]"),
    "fewshot.shots": (0, INF, "labelled images per class (0: all)"),
    "fewshot.lr": (1e-12, INF, "a positive learning rate"),
    "fewshot.weight_decay": (0, INF, "a non-negative decay"),
    "fewshot.epochs": (1, INF, "epochs"),
    "fewshot.batch_size": (0, INF, "features per batch (0: full batch)"),
    "diagnostics.max_points": (0, INF, "rows (0: all)"),
    "diagnostics.map_points": (10, INF, "rows in the map"),
    "diagnostics.perplexity": (1, INF, "t-SNE perplexity"),
    "logger.diagnostics_every_n_epochs": (0, INF, "epochs (0: never)"),
    "logger.diagnostics_images": (10, INF, "held-out images"),
}


def _numbers(value: Any) -> list[float] | None:
    """The number(s) a value holds: one for a scalar, each item of a list; None when not numeric."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        return None
    return [float(v) for v in items]


def _bound(x: float) -> str:
    return "no limit" if math.isinf(x) else f"{x:g}"


def range_errors(plain_cfg: dict, ranges: dict[str, tuple[float, float, str]] = RANGES) -> list[str]:
    """One sentence per key whose value lies outside its range."""
    errors = []
    for key, (low, high, meaning) in ranges.items():
        node: Any = plain_cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        numbers = _numbers(node) if node is not None else None
        if numbers and any(not (low <= x <= high) or math.isnan(x) for x in numbers):
            errors.append(f"`{key}={node}` is out of range: it is {meaning}, from {_bound(low)} to {_bound(high)}")
    return errors
