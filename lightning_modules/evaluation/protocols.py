"""Run the chosen protocols on cached train/test features and collect their result rows and timings."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lightning_modules.evaluation.clustering import run_coke_assignments, run_kmeans
from lightning_modules.evaluation.diagnostics import run_diagnostics
from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.fewshot import run_fewshot
from lightning_modules.evaluation.knn import run_knn, run_retrieval
from lightning_modules.evaluation.linear_probe import run_linear
from lightning_modules.evaluation.sea import run_sea


@dataclass
class EvalInputs:
    train: FeatureSet
    test: FeatureSet
    levels: list[str]
    num_classes: dict[str, int]
    fine_to_coarse: Optional[torch.Tensor]  # (num_fine,) superclass id per fine class; None without hierarchy
    cluster_labels: Optional[torch.Tensor] = None  # CoKe's label memory of the pretraining train set
    cluster_targets: Optional[FeatureSet] = None  # that train set's labels, row for row
    clusters_per_head: Optional[list[int]] = None


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def run_protocols(protocols: list[str], inputs: EvalInputs, cfg: Any, device: torch.device) -> tuple[list[dict], dict, dict]:
    """(result rows, seconds per protocol, artifacts for the report's figures, e.g. the diagnostics map)."""
    rows, timings, artifacts = [], {}, {}
    splits = {"train": inputs.train, "test": inputs.test}
    for protocol in protocols:
        start = time.perf_counter()
        if protocol == "linear":
            rows += run_linear(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse,
                               cfg.linear, cfg.data.val_fraction, cfg.seed, _accelerator(device))
        elif protocol == "knn":
            rows += run_knn(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse, cfg.knn, device)
        elif protocol == "retrieval":
            split = cfg.retrieval.split
            rows += run_retrieval(splits[split], split, inputs.levels, cfg.retrieval, device)
        elif protocol == "clustering":
            rows += _clustering(inputs, cfg, device, splits)
        elif protocol == "sea":
            rows += run_sea(inputs.train, inputs.test, inputs.levels, inputs.num_classes, inputs.fine_to_coarse,
                            cfg.sea, cfg.data.val_fraction, cfg.seed, _accelerator(device))
        elif protocol == "fewshot":
            rows += run_fewshot(inputs.train, inputs.test, inputs.levels, inputs.num_classes, cfg.fewshot,
                                _accelerator(device))
        elif protocol == "diagnostics":
            split = cfg.diagnostics.split
            if split not in splits:
                raise ValueError(f"unknown diagnostics.split `{split}`; use train or test")
            found, made = run_diagnostics(splits[split], split, inputs.levels, inputs.fine_to_coarse,
                                          inputs.num_classes["fine"], cfg.diagnostics, cfg.seed)
            rows += found
            artifacts.update(made)
        timings[protocol] = time.perf_counter() - start
    return rows, timings, artifacts


def _clustering(inputs: EvalInputs, cfg: Any, device: torch.device, splits: dict) -> list[dict]:
    source = cfg.clustering.source
    if source not in ("auto", "kmeans", "coke"):
        raise ValueError(f"unknown clustering.source `{source}`; use auto, kmeans or coke")
    rows = []
    if source in ("auto", "coke") and inputs.cluster_labels is not None:
        rows += run_coke_assignments(inputs.cluster_labels, inputs.cluster_targets, inputs.levels, inputs.clusters_per_head)
    elif source == "coke":
        raise ValueError("clustering.source=coke, but the checkpoint holds no CoKe label memory (clustering.labels)")
    if source in ("auto", "kmeans"):
        split = cfg.clustering.split
        rows += run_kmeans(splits[split], split, inputs.levels, inputs.num_classes, cfg.clustering, cfg.seed, device)
    return rows
