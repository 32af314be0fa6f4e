"""Label efficiency: the linear probe trained on n labelled images per class (n = 1, 5, 10, 100, all), several seeds.

Each (level, n, seed) draws exactly n train rows of every class (all of a class's rows when it has fewer), trains
one linear probe with fixed settings (no validation split exists at one label per class, so nothing is tuned), and
scores it on the whole test split. The features are standardised with the statistics of the *whole* train split:
its images are there, only their labels are scarce (and the std of a handful of rows is not usable). The row's
value is the mean top-1 over seeds; its params hold the std and every seed's number.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.linear_probe import LinearProbe, probe_scores, train_probe
from lightning_modules.evaluation.rows import result_row


def sample_per_class(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Sorted row ids: ``shots`` rows of every class drawn with ``seed`` (every row when shots is 0)."""
    if shots <= 0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique():
        rows = torch.nonzero(labels == label).flatten()
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:shots]])
    return torch.cat(chosen).sort().values


def fewshot_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, shots: int, seed: int, cfg: Any,
                 accelerator: str = "auto") -> tuple[float, int]:
    """(test top-1, labelled train images used) of one probe on ``shots`` labels per class."""
    rows = sample_per_class(train_labels, shots, seed)
    torch.manual_seed(seed)
    probe = LinearProbe(train_features.mean(0), train_features.std(0), num_classes,
                        [{"lr": cfg.lr, "weight_decay": cfg.weight_decay}], cfg.optimizer, cfg.momentum)
    probe = train_probe(probe, train_features[rows], train_labels[rows], cfg.epochs, cfg.batch_size, seed, accelerator)
    top1 = (probe_scores(probe, test_features)[0].argmax(-1) == test_labels).float().mean().item()
    return top1, len(rows)


def run_fewshot(train: FeatureSet, test: FeatureSet, levels: list[str], num_classes: dict[str, int], cfg: Any,
                accelerator: str = "auto") -> list[dict]:
    """One row per (level, labels per class): mean top-1 over ``cfg.seeds``, with std and per-seed values."""
    rows = []
    for level in levels:
        known_train, known_test = train.labels(level) >= 0, test.labels(level) >= 0
        if not known_train.any() or not known_test.any():
            continue
        features, labels = train.features[known_train], train.labels(level)[known_train]
        test_features, test_labels = test.features[known_test], test.labels(level)[known_test]
        for shots in sorted({int(s) for s in cfg.shots}, key=lambda s: (s <= 0, s)):  # "all" (0) last
            runs = [fewshot_top1(features, labels, test_features, test_labels, num_classes[level], shots, int(seed),
                                 cfg, accelerator) for seed in cfg.seeds]
            values = [top1 for top1, _ in runs]
            rows.append(result_row(
                "fewshot", level, "top1", statistics.fmean(values), "test",
                shots=shots if shots > 0 else "all", std=statistics.stdev(values) if len(values) > 1 else 0.0,
                per_seed=values, seeds=[int(s) for s in cfg.seeds], train_images=runs[0][1],
                classes=int(labels.unique().numel()),
                lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, optimizer=cfg.optimizer,
                standardized="whole train split",
            ))
    return rows
