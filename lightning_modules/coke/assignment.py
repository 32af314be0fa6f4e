"""What the clustering assigns (config section `method.clean_view`).

The paper clusters the view the loss trains on. Clustering the un-augmented image instead is a departure measured
at short budgets (benchmarks/RESULTS.md ledger rows "assign_on=clean" and "assign_momentum")."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lightning_modules.coke.parts import OnlineNetwork
from lightning_modules.momentum import MomentumEncoder


class ViewAssignment:
    """The paper: the clustering takes x of the view itself (two views: the mean of the large views' x)."""

    def __init__(self, cluster_input: Callable[[list[torch.Tensor]], torch.Tensor], num_views: int):
        self.cluster_input, self.num_views = cluster_input, num_views  # Views.cluster_input; the large views

    def encode(self, online: OnlineNetwork, x: torch.Tensor, batch: dict) -> torch.Tensor:
        return x

    @torch.no_grad()
    def no_grad_input(self, online: OnlineNetwork, batch: dict) -> torch.Tensor:
        """The clustering's input for a batch outside training (the k-means start's pass)."""
        views = batch["views"][:self.num_views]
        return self.cluster_input([online.projection(f) for f in online.encode_views(views)])


class CleanImageAssignment:
    """clean_view.assign_on=clean: the clustering takes the un-augmented image (`batch["clean_view"]`) through the
    online backbone and projection, without grad; the loss still trains the view. Changes vs the paper: the labels
    come from one extra forward of the clean image, so they move less with the augmentation (ledger:
    "assign_on=clean")."""

    @torch.no_grad()
    def encode(self, online: OnlineNetwork, x: torch.Tensor | None, batch: dict) -> torch.Tensor:
        return F.normalize(online.projection(online(batch["clean_view"])), dim=1)

    def no_grad_input(self, online: OnlineNetwork, batch: dict) -> torch.Tensor:
        return self.encode(online, None, batch)


class EmaCleanImageAssignment(MomentumEncoder):
    """clean_view.momentum > 0: the clean image goes through an EMA copy of backbone + projection (this momentum,
    updated every step before it encodes), so the features that make the labels move more slowly than the online
    network (ledger: "assign_momentum"). Registered as the module's `assign_encoder`, its checkpoint key."""

    def __init__(self, backbone: torch.nn.Module, projection: torch.nn.Module, momentum: float, channels_last: bool):
        super().__init__(backbone, projection)
        self.momentum, self.channels_last = momentum, channels_last

    @torch.no_grad()
    def encode(self, online: OnlineNetwork, x: torch.Tensor | None, batch: dict) -> torch.Tensor:
        self.update([online.backbone, online.projection], self.momentum)
        clean = self.encode_views([batch["clean_view"]], self.channels_last)[0]
        return F.normalize(clean, dim=1)

    def no_grad_input(self, online: OnlineNetwork, batch: dict) -> torch.Tensor:
        return self.encode(online, None, batch)
