"""Momentum (EMA) encoders for MoCo v2/v3: a frozen copy of online modules and BYOL's cosine momentum schedule."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """``base`` at step 0, rising to ``final`` at ``total_steps`` along a half cosine (BYOL, MoCo v3)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumEncoder(nn.Module):
    """The online modules, copied and chained, kept as their exponential moving average.

    Its parameters never get gradients and are not in the optimiser. Its BatchNorm layers run in
    train mode with the online model, so keys are normalised with their own batch statistics.
    """

    def __init__(self, *online: nn.Module):
        super().__init__()
        self.net = nn.Sequential(*(copy.deepcopy(m) for m in online)).requires_grad_(False)

    @torch.no_grad()
    def update(self, online: Sequence[nn.Module], momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, for every parameter (same order as built)."""
        target = list(self.net.parameters())
        source = [p.detach() for module in online for p in module.parameters()]
        if len(target) != len(source):
            raise ValueError(f"momentum encoder has {len(target)} parameters, the online modules {len(source)}")
        torch._foreach_lerp_(target, source, 1.0 - momentum)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def encode_views(self, views: list[torch.Tensor], channels_last: bool = False) -> list[torch.Tensor]:
        """Outputs per view from one forward over the views stacked (they must share a resolution)."""
        images = torch.cat(views)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return list(self(images).chunk(len(views)))


class MomentumKeys:
    """Mixin for a PretrainModule with ``key_encoder`` = MomentumEncoder(backbone, projection) and a method
    config with ``base_momentum`` and ``final_momentum``: the EMA step and the keys of the views."""

    def momentum(self) -> float:
        cfg = self.method_cfg
        return cosine_momentum(self.global_step, self.trainer.estimated_stepping_batches, cfg.base_momentum,
                               cfg.final_momentum)

    @torch.no_grad()
    def momentum_keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        momentum = self.momentum()
        self.log("train/momentum", momentum)
        self.key_encoder.update([self.backbone, self.projection], momentum)
        return self.key_encoder.encode_views(views, self.cfg.model.channels_last)
