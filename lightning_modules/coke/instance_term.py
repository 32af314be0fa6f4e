"""An instance-level term next to the cluster targets (config section `method.instance_term`)."""
from __future__ import annotations

import torch

from lightning_modules.coke.parts import Log
from ops.contrastive import moco_v3_loss


class InstanceTerm:
    """instance_term.weight > 0: weight × MoCo v3's InfoNCE between the view's predictor output and the clean images'
    projections (the clean forward the assignment already ran, no grad; the batch's other images are the negatives).
    Changes vs the paper: a second, instance-level target (ledger: "clean_contrast_weight"; its `cluster_weight`
    scales the cluster targets, 0 being the ablation that keeps this term alone)."""

    def __init__(self, weight: float, temperature: float):
        self.weight, self.temperature = weight, temperature

    def __call__(self, h: list[torch.Tensor], z: list[torch.Tensor], clean: torch.Tensor, batch: dict,
                 log: Log) -> torch.Tensor:
        contrast = moco_v3_loss(h[0], clean, self.temperature)
        log("train/clean_contrast", contrast)
        return self.weight * contrast
