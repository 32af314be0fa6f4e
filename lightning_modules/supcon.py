"""SupCon on superclass labels: every view of an instance with the same superclass is a positive."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from lightning_modules.supervised import require_superclasses
from ops.supervised import supcon_loss


@dataclass
class SupConConfig(MethodConfig):
    name: str = "supcon"
    temperature: float = 0.1


class SupCon(PretrainModule):
    Config = SupConConfig
    labels_used = staticmethod(lambda method_cfg: "coarse")  # lightning_modules/run/label_use.py

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        require_superclasses(data_info, "supcon")
        self.projection = self.projector()

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        z = torch.stack([self.projection(f) for f in feats], dim=1)  # (B, V, D)
        # supcon_loss gathers the projections (with grad) and the labels of every rank.
        return supcon_loss(z, batch["coarse"], self.method_cfg.temperature)
