"""CoKe with coarse labels: the coarse cross-entropy (config key `method.coarse_weight`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.coke.parts import Log
from ops.precision import upcast


class CoarseCE(torch.nn.Linear):
    """coarse_weight λ > 0: a linear superclass classifier on the normalised projection, λ·CE added to the loss
    (docs/algorithm.md §5; the clusters are partitioned by superclass in ops/coke_state.py). It is
    the module's `coarse_head`, its checkpoint key."""

    def __init__(self, dim: int, num_coarse: int, weight: float):
        super().__init__(dim, num_coarse)
        self.weight_of_term = weight

    def __call__(self, h: list[torch.Tensor], z: list[torch.Tensor], clean: torch.Tensor, batch: dict,
                 log: Log) -> torch.Tensor:
        coarse_ce = F.cross_entropy(upcast(self.forward(F.normalize(z[0], dim=1))), batch["coarse"], ignore_index=-1)
        log("train/coarse_ce", coarse_ce)
        return self.weight_of_term * coarse_ce
