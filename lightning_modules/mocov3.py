"""MoCo v3: a predictor on the online branch, a momentum encoder for keys, negatives from the batch of every rank.

No queue: each query's negatives are the other keys of the global batch (keys are all-gathered in
ops.contrastive.moco_v3_loss). The projector is model.proj_layers deep and ends with BatchNorm, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from lightning_modules.momentum import MomentumEncoder, MomentumKeys
from ops.contrastive import moco_v3_loss


@dataclass
class MoCoV3Config(MethodConfig):
    name: str = "mocov3"
    temperature: float = 0.2  # the paper uses 1.0 for ResNet-50 on ImageNet, 0.2 for ViTs
    base_momentum: float = 0.99  # EMA momentum at step 0, raised to final_momentum by a cosine
    final_momentum: float = 1.0


class MoCoV3(MomentumKeys, PretrainModule):
    Config = MoCoV3Config

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        self.projection = self.projector(last_bn=True)
        self.prediction = self.predictor()
        self.key_encoder = MomentumEncoder(self.backbone, self.projection)

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        q1, q2 = (self.prediction(self.projection(f)) for f in feats[:2])
        k1, k2 = self.momentum_keys(batch["views"][:2])
        temperature = self.method_cfg.temperature
        return moco_v3_loss(q1, k2, temperature) + moco_v3_loss(q2, k1, temperature)
