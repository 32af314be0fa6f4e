"""SeCu: stable cluster discrimination (Qian, ICCV 2023), the CoKe authors' successor.

Two asymmetric views; per head, the batch is assigned on the mean of the two views' projections under a
minimum-size constraint (duals, as in CoKe). Unlike CoKe the centres are parameters learned by SGD, with their
own constant lr and the hardness-aware centre loss; each view predicts, against the centres frozen at the epoch
start, (1 − τ)·the other view's softmax + τ·the instance's previous-epoch label (rules: ops/secu.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.clustering import normalized_mutual_info_score

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from ops.assign import assign, label_histogram
from ops.coke_state import first_occurrence_rows
from ops.distributed import gather_no_grad
from ops.precision import upcast
from ops.secu import center_loss, head_slices, representation_loss, size_dual_step, size_dual_targets

STATE = ("epoch_centers", "duals", "counts", "label_memory", "changed")
DASHBOARD = ("instance_classes",)


@dataclass
class SeCuConfig(MethodConfig):
    name: str = "secu"
    num_clusters: List[int] = field(default_factory=lambda: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    temperature: float = 0.05  # representation logits against the epoch's frozen centres
    center_temperature: float = 0.05  # centre loss
    tau: float = 0.2  # weight of the previous-epoch one-hot in the targets
    ratio: float = 0.9  # lower bound r·N/K instances per cluster; 1.0 = balanced (no clamp)
    dual_lr: float = 0.1
    center_lr: float = 1.2  # constant (never scheduled), as the official code
    # center_lr and dual_lr are per step at this global batch (the official 128) and scale by global batch / it:
    # constant rates per image, so a larger batch makes fewer, longer steps. 0: per step at any batch.
    rates_at_batch: int = 128
    init_epochs: int = 1  # epochs at lr 0 for the network (the centres still learn)
    # init_epochs and optim.warmup_epochs count epochs of this many images, the official epoch (CIFAR-10's 50,000:
    # 390 steps at batch 128), whatever the subset, batch or run length; 0: the run's own epochs.
    schedule_epoch_images: int = 50000
    kernel: str = "auto"  # assignment: auto | triton | torch
    # What the clustering assigns. views: the mean of the two views' projections (the official code). clean: a
    # departure, the un-augmented image through the network without grad (needs augment.clean_view=true), as
    # CoKe's method.clean_view.assign_on=clean; the losses still train the two views on its labels.
    assign_on: str = "views"
    # The official code runs each view through the network alone, so BatchNorm normalises each view with its own
    # batch statistics; false: both views in one batch (this project's other two-view methods).
    separate_view_batches: bool = True


class SeCu(PretrainModule):
    Config = SeCuConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        m = self.method_cfg
        if self.cfg.augment.num_large_crops != 2 or self.cfg.augment.num_small_crops:
            raise ValueError("secu needs exactly two views: augment.num_large_crops=2, augment.num_small_crops=0")
        if m.assign_on not in ("views", "clean"):
            raise ValueError(f"method.assign_on must be views or clean, got {m.assign_on!r}")
        if m.assign_on == "clean" and not self.cfg.augment.clean_view:
            raise ValueError("method.assign_on=clean needs the un-augmented image: set augment.clean_view=true")
        self.zero_lr_epochs = m.init_epochs
        self.schedule_epoch_images = m.schedule_epoch_images
        dim = self.cfg.model.proj_output_dim
        sizes = list(m.num_clusters)
        self.projection = self.projector(dim)
        self.centers = nn.Parameter(F.normalize(torch.randn(sum(sizes), dim), dim=1))  # all heads stacked
        self.offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()  # for the losses, without host syncs
        self.register_buffer("head_offsets", torch.tensor(self.offsets), persistent=False)  # for the kernel
        self.register_buffer("dual_targets", size_dual_targets(sizes, m.ratio), persistent=False)
        self.register_buffer("epoch_centers", self.centers.detach().clone())  # frozen at each epoch start
        self.register_buffer("duals", torch.zeros(sum(sizes)))
        self.register_buffer("counts", torch.zeros(sum(sizes), dtype=torch.int64))  # this epoch's cluster sizes
        self.register_buffer("label_memory", torch.full((data_info["num_train"], len(sizes)), -1))
        self.register_buffer("changed", torch.zeros(len(sizes), dtype=torch.int64))  # labels changed this epoch
        # Each instance's class, filled as batches pass: for the dashboard's NMI only.
        self.register_buffer("instance_classes", torch.full((data_info["num_train"],), -1), persistent=False)
        # Every rank applies the same update to the same gathered labels: nothing to broadcast.
        self._ddp_params_and_buffers_to_ignore = list(STATE + DASHBOARD)

    def rate_scale(self, batch: int) -> float:
        """centre and dual lr multiplier for a step over `batch` images (all ranks)."""
        return batch / self.method_cfg.rates_at_batch if self.method_cfg.rates_at_batch else 1.0

    def encode_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.method_cfg.separate_view_batches:
            return [self(view) for view in views]
        return super().encode_views(views)

    def own_param_groups(self) -> list[dict]:
        # Plain SGD under any optim.name=lars too ("lars": False), as the official optimiser (idstcv/SeCu main.py).
        lr = self.method_cfg.center_lr * self.rate_scale(self.global_batch_size())
        return [{"params": [self.centers], "lr": lr, "scheduled": False, "lars": False,
                 "weight_decay": self.cfg.optim.weight_decay, "name": "centers"}]

    def on_train_epoch_start(self) -> None:
        with torch.no_grad():
            self.epoch_centers.copy_(F.normalize(self.centers, dim=1))

    @torch.no_grad()
    def cluster_step(self, x_mean: torch.Tensor, centers: torch.Tensor, index: torch.Tensor,
                     classes: torch.Tensor | None = None):
        """Assign this rank's rows; update the duals, sizes and label memory from every rank's labels (and the
        dashboard's classes, when given).

        Returns (B, H) global labels: this step's, and the targets' (the previous epoch's; this step's in epoch 0).
        """
        m = self.method_cfg
        labels, _ = assign(upcast(x_mean), upcast(centers), self.duals, self.offsets, kernel=m.kernel)
        all_labels, ids = gather_no_grad(labels), gather_no_grad(index)
        dual_lr = m.dual_lr * self.rate_scale(all_labels.shape[0])
        self.duals.copy_(size_dual_step(self.duals, all_labels, self.dual_targets, dual_lr, clamp=m.ratio < 1))
        self.counts += label_histogram(all_labels, self.counts.shape[0])
        previous, before = self.label_memory[index], self.label_memory[ids]
        self.changed += ((before >= 0) & (before != all_labels)).sum(0)
        self.label_memory[ids] = all_labels[first_occurrence_rows(ids)]  # padded duplicates all write one value
        if classes is not None:
            self.instance_classes[ids] = gather_no_grad(classes)
        # No previous epoch: the targets use this step's labels (idstcv/SeCu builder.py, `epoch == 0`). A frozen
        # phase longer than an epoch (a subset) targets the previous epoch's labels from its second epoch on.
        if self.current_epoch == 0:
            previous = self.label_memory[index]
        return labels, previous

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        m = self.method_cfg
        z1, z2 = (self.projection(f) for f in feats)
        if m.assign_on == "clean":
            with torch.no_grad():
                clean = self.projection(self(batch["clean_view"]))
        with torch.autocast(z1.device.type, enabled=False):  # logits over T = 0.05: bf16 would blur them
            x1, x2 = (F.normalize(upcast(z), dim=1) for z in (z1, z2))
            assigned = F.normalize(upcast(clean), dim=1) if m.assign_on == "clean" else (x1 + x2) / 2
            centers = F.normalize(self.centers, dim=1)
            labels, targets = self.cluster_step(assigned, centers, batch["index"], batch.get("fine"))
            loss_c = (center_loss(x1, centers, labels, self.offsets, m.center_temperature)
                      + center_loss(x2, centers, labels, self.offsets, m.center_temperature)) / 2
            loss_x = representation_loss(x1 @ self.epoch_centers.T / m.temperature,
                                         x2 @ self.epoch_centers.T / m.temperature, targets, self.offsets, m.tau)
        self.log_step("train/center_loss", loss_c)
        self.log_step("train/representation_loss", loss_x)
        return loss_x + loss_c

    def on_train_epoch_end(self) -> None:
        """Per head: the smallest cluster over the mean size (the bound is r). The duals' max; label churn; the
        mean raw centre norm (the centres' effective lr falls as its square grows); the first head's NMI with the
        classes."""
        super().on_train_epoch_end()
        logs = {}
        for head, s in enumerate(head_slices(self.offsets)):
            sizes = self.counts[s].float()
            logs[f"secu/h{head}_min_over_mean_size"] = sizes.min() / sizes.mean().clamp_min(1e-12)
        seen = self.counts[: self.offsets[1]].sum().clamp_min(1)
        logs["secu/changed"] = self.changed.float().mean() / seen
        logs["secu/dual_max"] = self.duals.max()
        logs["secu/center_norm"] = self.centers.detach().norm(dim=1).mean()
        known = (self.instance_classes >= 0) & (self.label_memory[:, 0] >= 0)
        if known.any():
            logs["secu/h0_nmi_fine"] = normalized_mutual_info_score(self.label_memory[known, 0],
                                                                    self.instance_classes[known]).float()
        self.log_dict(logs, rank_zero_only=True)
        self.counts.zero_()
        self.changed.zero_()
