"""The target of the one-view CE (config section `method.soft_target`)."""
from __future__ import annotations

import torch

from lightning_modules.coke.parts import HeadLoss
from ops.coke_losses import label_ce, soft_cross_entropy
from ops.coke_state import CokeState
from ops.sinkhorn import sinkhorn


class HardTarget:
    """The paper: CE against the previous-epoch label (in stage 2, the averaged soft label where there is one)."""

    def bind(self, labels: torch.Tensor, stage2: list[torch.Tensor] | None, clean: torch.Tensor,
             state: CokeState) -> HeadLoss:
        return lambda logits: label_ce(logits, labels, stage2)


class CleanSoftTarget(HardTarget):
    """soft_target.weight w > 0: the loss becomes (1 − w)·CE(hard label) + w·CE(q), with q per head the clean
    image's softmax over the loss centres at `temperature` (no grad), balanced over the batch by `iterations` of
    Sinkhorn-Knopp when > 0 (SwAV's codes). Changes vs the paper: the view also learns the clean image's distribution
    over the clusters, not only its hard label (ledger: "clean_target_weight")."""

    def __init__(self, weight: float, temperature: float, iterations: int):
        self.weight, self.temperature, self.iterations = weight, temperature, iterations

    def bind(self, labels: torch.Tensor, stage2: list[torch.Tensor] | None, clean: torch.Tensor,
             state: CokeState) -> HeadLoss:
        hard = super().bind(labels, stage2, clean, state)
        centers = state.loss_centers().to(clean.dtype)
        teacher = [sinkhorn(clean @ c.T, self.temperature, self.iterations) for c in state.split_heads(centers)]

        def loss(logits: list[torch.Tensor]) -> torch.Tensor:
            soft = torch.stack([soft_cross_entropy(h, t) for t, h in zip(teacher, logits)])
            return (1 - self.weight) * hard(logits) + self.weight * soft.mean()
        return loss
