"""Run the chosen protocols (lightning_modules/evaluation/registry.py) on cached train/test features and collect
their result rows and timings."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.registry import PROTOCOLS


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


def protocol_inputs(protocols: list[str], source: Any, cfg: Any, labelled_beside: bool) -> dict[str, Any]:
    """The EvalInputs fields the chosen protocols take from the checkpoint (their registry ``inputs`` hooks)."""
    found = {}
    for name in protocols:
        if PROTOCOLS[name].inputs is not None:
            found.update(PROTOCOLS[name].inputs(source, cfg, labelled_beside))
    return found


def run_protocols(protocols: list[str], inputs: EvalInputs, cfg: Any, device: torch.device) -> tuple[list[dict], dict, dict]:
    """(result rows, seconds per protocol, artifacts for the report's figures, e.g. the diagnostics map)."""
    rows, timings, artifacts = [], {}, {}
    for name in protocols:
        start = time.perf_counter()
        found, made = PROTOCOLS[name].run(inputs, cfg, device)
        rows += found
        artifacts.update(made)
        timings[name] = time.perf_counter() - start
    return rows, timings, artifacts
