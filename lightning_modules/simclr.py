"""SimCLR: NT-Xent between two views, negatives from every rank."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from ops.contrastive import nt_xent


@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    temperature: float = 0.2


class SimCLR(PretrainModule):
    Config = SimCLRConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        self.projection = self.projector()

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        z1, z2 = (F.normalize(self.projection(f), dim=1) for f in feats[:2])
        return nt_xent(z1, z2, temperature=self.method_cfg.temperature)
