"""What the clustering assigns (config section `method.clean_view`).

The paper clusters the view the loss trains on. Clustering the un-augmented image instead is a departure measured
at short budgets (benchmarks/RESULTS.md ledger rows "assign_on=clean" and "assign_momentum")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.momentum import MomentumEncoder


class ViewAssignment:
    """The paper: the clustering takes x of the view itself (two views: the mean of the large views' x)."""

    def encode(self, module, x: torch.Tensor, batch: dict) -> torch.Tensor:
        return x

    @torch.no_grad()
    def no_grad_input(self, module, batch: dict) -> torch.Tensor:
        """The clustering's input for a batch outside training (the k-means start's pass)."""
        views = batch["views"][:module.cfg.augment.num_large_crops]
        return module.views.cluster_input([module.projection(f) for f in module.encode_views(views)])


class CleanImageAssignment(ViewAssignment):
    """clean_view.assign_on=clean: the clustering takes the un-augmented image (`batch["clean_view"]`) through the
    online backbone and projection, without grad; the loss still trains the view. Changes vs the paper: the labels
    come from one extra forward of the clean image, so they move less with the augmentation (ledger:
    "assign_on=clean")."""

    @torch.no_grad()
    def encode(self, module, x: torch.Tensor | None, batch: dict) -> torch.Tensor:
        return F.normalize(module.projection(module(batch["clean_view"])), dim=1)

    def no_grad_input(self, module, batch: dict) -> torch.Tensor:
        return self.encode(module, None, batch)


class EmaCleanImageAssignment(MomentumEncoder):
    """clean_view.momentum > 0: the clean image goes through an EMA copy of backbone + projection (this momentum,
    updated every step before it encodes), so the features that make the labels move more slowly than the online
    network (ledger: "assign_momentum"). Registered as the module's `assign_encoder`, its checkpoint key."""

    def __init__(self, backbone: torch.nn.Module, projection: torch.nn.Module, momentum: float):
        super().__init__(backbone, projection)
        self.momentum = momentum

    @torch.no_grad()
    def encode(self, module, x: torch.Tensor | None, batch: dict) -> torch.Tensor:
        self.update([module.backbone, module.projection], self.momentum)
        clean = self.encode_views([batch["clean_view"]], module.cfg.model.channels_last)[0]
        return F.normalize(clean, dim=1)

    def no_grad_input(self, module, batch: dict) -> torch.Tensor:
        return self.encode(module, None, batch)
