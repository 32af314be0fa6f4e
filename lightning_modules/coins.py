"""CoIns: MoCo v2's instance loss plus λ·coarse CE of a cosine classifier on the normalised embedding,
both at one shared temperature. Everything else (queue, momentum encoder) is MoCo v2's."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lightning_modules.mocov2 import MoCoV2, MoCoV2Config
from lightning_modules.supervised import require_superclasses
from ops.supervised import coins_loss


@dataclass
class CoInsConfig(MoCoV2Config):
    name: str = "coins"
    coarse_weight: float = 0.5  # λ


class CoIns(MoCoV2):
    Config = CoInsConfig

    def __init__(self, cfg: dict, data_info: dict):
        require_superclasses(data_info, "coins")
        super().__init__(cfg, data_info)
        self.classifier = nn.Parameter(torch.randn(data_info["num_coarse"], self.cfg.model.proj_output_dim) * 0.01)

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        q1, q2 = (self.projection(f) for f in feats[:2])
        k1, k2 = self.momentum_keys(batch["views"][:2])
        queue = self.queue.clone()  # enqueueing below writes into the buffer that backward still needs
        m = self.method_cfg
        loss = sum(
            coins_loss(q, k, queue, self.classifier, batch["coarse"], m.temperature, m.coarse_weight)
            for q, k in ((q1, k2), (q2, k1))
        ) / 2
        self.enqueue(torch.cat([k1, k2]))
        return loss
