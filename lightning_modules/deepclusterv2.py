"""DeepCluster-v2: predict last epoch's spherical k-means clusters of the projected features.

State (registered buffers, so checkpoints and resume carry it):
  memory       (N, D)  the L2-normalised projection of each instance's first large crop, written every step;
  prototypes   (sum K, D)  the centroids of every head, set by k-means at each epoch start (never trained);
  assignments  (H, N)  each instance's cluster per head from that k-means (-1: never seen, ignored by the loss);
  clustered_epoch      the epoch the centroids and assignments belong to (a resume inside it skips k-means).
Under DDP the indices and features of all ranks are gathered before the memory is written, so the memory is
replicated; k-means runs on every rank and rank 0's result is broadcast once per epoch, because scatter-add
on a GPU does not sum in a fixed order.

Initialisation: before epoch 0 trains, one pass over the training loader (same device-side views, no
gradient) fills the memory, as the official code does, so epoch 0 already trains against real clusters and
costs about a third of an epoch rather than a full epoch at lr 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.distributed as dist
import torch.nn.functional as F

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from ops.distributed import gather_no_grad, is_distributed
from ops.kmeans import spherical_kmeans

UNASSIGNED = -1


@dataclass
class DeepClusterV2Config(MethodConfig):
    name: str = "deepclusterv2"
    num_prototypes: List[int] = field(default_factory=lambda: [3000, 3000, 3000])  # one k-means head each
    temperature: float = 0.1
    kmeans_iterations: int = 10


class DeepClusterV2(PretrainModule):
    Config = DeepClusterV2Config

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        self.projection = self.projector()
        num_train, dim = data_info["num_train"], self.cfg.model.proj_output_dim
        self.head_sizes = list(self.method_cfg.num_prototypes)
        self.register_buffer("memory", torch.zeros(num_train, dim))
        self.register_buffer("prototypes", torch.zeros(sum(self.head_sizes), dim))
        self.register_buffer("assignments", torch.full((len(self.head_sizes), num_train), UNASSIGNED))
        self.register_buffer("clustered_epoch", torch.tensor(-1))
        self._ddp_params_and_buffers_to_ignore = ["memory", "prototypes", "assignments", "clustered_epoch"]

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(feats), dim=1)

    @torch.no_grad()
    def remember(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        self.memory[gather_no_grad(index)] = gather_no_grad(embeddings).to(self.memory.dtype)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.clustered_epoch.item() < 0:  # a fresh run; a resumed one has its memory in the checkpoint
            self.fill_memory()

    def fill_memory(self) -> None:
        for batch in self.training_batches():
            self.remember(batch["index"], self.embed(self(batch["views"][0])))

    def on_train_epoch_start(self) -> None:
        if self.clustered_epoch.item() != self.current_epoch:
            self.cluster()

    @torch.no_grad()
    def cluster(self) -> None:
        seen = (self.memory.norm(dim=1) > 0).nonzero().squeeze(1)
        features = self.memory[seen].float()
        self.assignments.fill_(UNASSIGNED)
        for head, centroids in enumerate(self.prototypes.split(self.head_sizes)):
            seed = (self.cfg.seed * 1000 + self.current_epoch) * len(self.head_sizes) + head
            generator = torch.Generator().manual_seed(seed)
            new_centroids, labels = spherical_kmeans(
                features, centroids.shape[0], self.method_cfg.kmeans_iterations, generator=generator
            )
            centroids.copy_(new_centroids)
            self.assignments[head, seen] = labels
            empty = (torch.bincount(labels, minlength=centroids.shape[0]) == 0).float().mean()
            self.log(f"cluster/empty_fraction_head{head}", empty)
        if is_distributed():
            dist.broadcast(self.prototypes, src=0)
            dist.broadcast(self.assignments, src=0)
        self.clustered_epoch.fill_(self.current_epoch)

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        embeddings = [self.embed(f) for f in feats]
        logits = (torch.cat(embeddings) @ self.prototypes.T).float() / self.method_cfg.temperature
        targets = self.assignments[:, batch["index"]].repeat(1, len(embeddings))  # (H, views * B)
        loss = torch.stack([
            F.cross_entropy(head_logits, head_targets, ignore_index=UNASSIGNED)
            for head_logits, head_targets in zip(logits.split(self.head_sizes, dim=1), targets)
        ]).mean()
        self.remember(batch["index"], embeddings[0].detach())
        return loss
