"""CoKe: online constrained k-means (Qian et al., "Unsupervised Visual Representation Learning by Online Constrained
K-Means", CVPR 2022; official code idstcv/CoKe). Read with docs/algorithm.md §1-2.

"Each instance is assigned to a cluster under a lower bound on every cluster's size, and the network learns to
predict the cluster it got in the previous epoch." Per step: encode the views, cluster the gathered batch (no grad),
read each instance's previous-epoch label, and take the CE of normalize(h)·C_prev / T against it; per epoch: freeze
the centres for the next epoch's loss. Departures from the paper are objects that compose.py builds from the config
(one file each in this package); this file has no branch on any of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.base import PretrainModule
from lightning_modules.coke import compose, dashboard
from lightning_modules.coke.config import CoKeConfig, upgrade
from ops.distributed import gather_no_grad, rank
from ops.precision import upcast


class CoKe(PretrainModule):
    Config = CoKeConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(upgrade(cfg), data_info)
        m = self.method_cfg
        self.zero_lr_epochs = m.init_epochs  # the paper's initialisation epochs: clustering only, at lr 0
        self.two_views = self.cfg.augment.num_large_crops == 2
        self.temperature = m.temperature or (0.05 if self.two_views else 0.1)
        dim = self.cfg.model.proj_output_dim
        self.projection = self.projector(dim, last_bn=m.proj_last_bn)
        self.prediction = self.predictor(dim) if self.cfg.model.pred_hidden_dim else nn.Identity()
        self.views = compose.views(self, m)
        self.clustering = compose.clustering(self, m, data_info, dim)
        parts = compose.departures(self, m, data_info, dim)
        self.coarse_head = parts.coarse_head
        self.assign_encoder = parts.assignment  # what the clustering sees: the view, or the clean image
        self.target, self.soft_target = parts.target, parts.soft_target  # which label, and the CE's target
        self.terms, self.start = parts.terms, parts.start  # extra loss terms; how the clusters start
        self.cluster_weight = m.instance_term.cluster_weight
        # Labels of every training instance, filled as batches pass: for the NMI dashboard only.
        self.register_buffer("instance_labels", torch.full((data_info["num_train"], 2), -1), persistent=False)

    # ---- the clustering, docs/algorithm.md §1.1-1.5 ------------------------------------------------------------
    def cluster_step(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cluster the batch of all ranks (no grad); return this rank's previous-epoch labels (B, H)."""
        ids = gather_no_grad(batch["index"])
        classes = gather_no_grad(torch.stack([batch["fine"], batch["coarse"]], 1))
        self.instance_labels[ids] = classes
        # The coarse labels only restrict the assignment when the clusters are partitioned (coarse_weight > 0).
        prev = self.clustering.step(gather_no_grad(upcast(x.detach())), ids, classes[:, 1])
        local = x.shape[0]
        return prev[rank() * local:(rank() + 1) * local]

    def head_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Per head, normalize(h)·C / T against the loss centres (the previous epoch's, in the paper)."""
        centers = self.target.centers(self.clustering).to(h.dtype)
        return [F.normalize(h, dim=1) @ c.T / self.temperature for c in self.clustering.split_heads(centers)]

    def in_stage2(self) -> bool:
        """The official one-view last stage: its final `stage2_epochs` train on labels averaged over epochs."""
        m = self.method_cfg
        return bool(m.stage2_epochs) and not self.two_views and \
            self.current_epoch >= self.trainer.max_epochs - m.stage2_epochs

    def stage2_targets(self, index: torch.Tensor) -> list[torch.Tensor] | None:
        """Stage-2 soft targets of the earlier stage-2 epochs: call BEFORE the step writes this epoch's labels."""
        if not self.in_stage2():
            return None
        return [self.clustering.dense_soft_targets(index, head) for head in range(len(self.clustering.num_clusters))]

    # ---- the step ----------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        z = [self.projection(f) for f in feats]
        h = [self.prediction(zi) for zi in z]
        stage2 = self.stage2_targets(batch["index"])  # read before cluster_step writes this step's labels
        x = self.assign_encoder.encode(self, self.views.cluster_input(z), batch)  # what the clustering assigns
        labels = self.target.labels(self, self.cluster_step(x, batch), batch)  # the previous epoch's label
        ce = self.soft_target.bind(self, labels, stage2, x)  # CE of per-head logits against this batch's targets
        loss = self.cluster_weight * self.views(self, h, z, labels, ce)
        for term in self.terms:  # the extra terms the config names
            loss = loss + term(self, h, z, x, batch)
        return loss

    # ---- epochs ------------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        self.start(self)  # the paper: nothing (its init epochs run at lr 0); or a k-means start

    def on_train_epoch_start(self) -> None:
        # On a resume inside the first stage-2 epoch the state has begun stage 2 already: do not restart it.
        if self.in_stage2() and not self.clustering.stage2_started:
            self.clustering.begin_stage2()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # a non-finite loss stops the run before the epoch's checkpoint
        sizes = self.clustering.cluster_sizes()
        summary = self.clustering.end_epoch()  # the epoch boundary: freeze the centres, reset the counters
        dashboard.assert_ranks_agree(self.clustering)
        dashboard.log_clustering_dashboard(self, summary, sizes)
