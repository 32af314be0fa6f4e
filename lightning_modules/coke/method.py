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
from lightning_modules.coke.config import CoKeConfig, typed, upgrade
from ops.distributed import gather_no_grad, rank
from ops.precision import upcast


class CoKe(PretrainModule):
    Config = CoKeConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(upgrade(cfg), data_info)
        m, model = typed(self.cfg.method), self.cfg.model  # from here on the config's choices are Enums
        self.zero_lr_epochs = m.init_epochs  # the paper's initialisation epochs: clustering only, at lr 0
        self.two_views = self.cfg.augment.num_large_crops == 2
        self.temperature = m.temperature or (0.05 if self.two_views else 0.1)
        self.projection = self.projector(model.proj_output_dim, last_bn=m.proj_last_bn)
        self.prediction = self.predictor(model.proj_output_dim) if model.pred_hidden_dim else nn.Identity()
        run = compose.Run(self.cfg.augment.num_large_crops, bool(model.pred_hidden_dim), model.channels_last,
                          self.cfg.seed, model.proj_output_dim)
        parts = compose.build(m, run, data_info, self)
        self.views, self.clustering, self.coarse_head = parts.views, parts.clustering, parts.coarse_head
        self.assign_encoder = parts.assignment  # what the clustering sees: the view, or the clean image
        self.target, self.soft_target = parts.target, parts.soft_target  # which label, and the CE's target
        self.terms, self.start, self.last_stage = parts.terms, parts.start, parts.last_stage
        self.cluster_weight = parts.cluster_weight
        # Labels of every training instance, filled as batches pass: for the NMI dashboard only.
        self.register_buffer("instance_labels", torch.full((data_info["num_train"], 2), -1), persistent=False)

    # ---- the clustering, docs/algorithm.md §1.1-1.4 ------------------------------------------------------------
    def cluster_step(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """One step of the paper's clustering on the batch of all ranks, no grad (`CokeState.step`): assign under
        the size bound, y_i = argmax_k x_i·c_k + ρ_k (§1.1); dual step, ρ_k ← max(0, ρ_k + η(r/K − n_k/B)) (§1.2);
        centre update, c_k ← normalize(m_k c_k + Σ_{y_i=k} x_i) (§1.3). Returns this rank's y^{t-1} (B, H)."""
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
        """Whether the one-view last stage (docs/algorithm.md §2) runs in this epoch."""
        return self.last_stage.runs(self.current_epoch, lambda: self.trainer.max_epochs)

    # ---- the step (§1.5) ---------------------------------------------------------------------------------------
    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        z = [self.projection(f) for f in feats]
        h = [self.prediction(zi) for zi in z]
        soft = self.last_stage.targets(self.clustering, batch["index"], self.in_stage2())  # before y^t is written
        x = self.assign_encoder.encode(self, self.views.cluster_input(z), batch)  # what the clustering assigns
        y = self.target.labels(self.cluster_step(x, batch), batch["index"], self.clustering)  # y^{t-1}
        ce = self.soft_target.bind(y, soft, x, self.clustering)  # CE of per-head logits against this batch's targets
        loss = self.cluster_weight * self.views(h, z, y, ce, self.head_logits)
        for term in self.terms:  # the extra terms the config names
            loss = loss + term(h, z, x, batch, self.log)
        return loss

    # ---- epochs (§1.4) -----------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        embed = lambda batch: self.assign_encoder.no_grad_input(self, batch)  # noqa: E731
        self.start(self.clustering, self.training_batches, embed)  # the paper: nothing; or a k-means start

    def on_train_epoch_start(self) -> None:
        self.last_stage.epoch_start(self.clustering, self.in_stage2())

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # a non-finite loss stops the run before the epoch's checkpoint
        sizes = self.clustering.cluster_sizes()
        summary = self.clustering.end_epoch()  # the epoch boundary: freeze the centres, reset the counters
        dashboard.assert_ranks_agree(self.clustering)
        self.log_dict(dashboard.epoch_logs(self.clustering, self.instance_labels, summary, sizes), rank_zero_only=True)
        dashboard.log_size_histograms(self.loggers, sizes, self.global_step, self.global_rank)
