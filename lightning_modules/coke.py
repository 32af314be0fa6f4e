"""CoKe: online constrained k-means (design §5). Each step clusters the gathered batch under a minimum
cluster size; the network predicts the cluster each instance got in the previous epoch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from lightning_modules.coke_dashboard import log_clustering_dashboard
from lightning_modules.coke_init import kmeans_initialise
from lightning_modules.momentum import MomentumEncoder
from ops.coke_losses import coke_view_loss, soft_cross_entropy
from ops.coke_state import CokeState
from ops.contrastive import moco_v3_loss
from ops.distributed import gather_no_grad, rank
from ops.sinkhorn import sinkhorn


@dataclass
class CoKeConfig(MethodConfig):
    name: str = "coke"
    num_clusters: List[int] = field(default_factory=lambda: [300, 400, 500])  # one head per entry
    ratio: float = 0.4  # lower bound r·N/K instances per cluster; 1.0 = balanced (no clamp)
    dual_lr: float = 20.0
    temperature: float = 0.0  # 0: 0.1 for one view, 0.05 for two views
    alpha: float = 0.2  # two views: weight of the one-hot CE against the swapped soft CE
    beta: float = 0.0  # weight of the projection CE added to the predictor CE
    init_epochs: int = 1  # clustering initialisation at lr 0
    # online (the paper): the clusters start from the init_epochs at lr 0. kmeans: spherical k-means of one no-grad
    # pass over the training set before epoch 0 (lightning_modules/coke_init.py); with init_epochs=0 epoch 0 trains.
    cluster_init: str = "online"
    kmeans_iterations: int = 10
    stage2_epochs: int = 0  # one view: last epochs train on soft targets averaged over epochs
    stage2_slots: int = 5
    stage2_temperature: float = 0.5
    # faithful: the official stage 2 (assign against the averaged centres, fixed within the epoch; exact running
    # means; C_avg moving average with f = 1/epochs; slot weights renormalised on eviction). legacy: the earlier rule.
    stage2_rule: str = "faithful"
    # Two views (+ small crops). faithful: the official loss, predictor AND projection logits, teachers from the
    # projection softmax, 0.5/(2H) scale, small crops weighted 1 − large_crop_weight. legacy: predictor logits only,
    # teachers from the predictor softmax, every view weighted equally. legacy is the default because it did clearly
    # better than faithful at the budgets measured (benchmarks/RESULTS.md); faithful is the one checked against
    # the official code.
    view_loss: str = "legacy"
    large_crop_weight: float = 0.5  # view_loss=faithful with small crops: β of the large crops' loss
    kernel: str = "auto"  # auto | triton | torch
    max_scores: int = 4194304  # torch path: most B×K scores held at once
    coarse_weight: float = 0.0  # > 0: clusters partitioned by superclass, plus λ·coarse CE
    # Departures from the paper for short budgets (each an ablation row in benchmarks/RESULTS.md):
    assign_on: str = "view"  # view (the paper) | clean: cluster the un-augmented image (no-grad forward)
    target: str = "previous_epoch"  # previous_epoch (the paper) | current: this step's label, current centres
    center_carry: float = 0.0  # fraction of each cluster's members kept across epochs (0: the paper's reset)
    # assign_on=clean: > 0 clusters the clean image with an EMA copy of backbone + projection (this momentum), so
    # the features that make the labels move more slowly than the online network. 0: the online network.
    assign_momentum: float = 0.0
    proj_last_bn: bool = True  # the paper's BatchNorm at the end of the projection
    # assign_on=clean: weight w of a soft target from the clean image. The loss becomes (1 − w)·CE(previous-epoch
    # label) + w·CE(softmax of the clean image's similarities to the centres at clean_target_temperature), so the
    # view also learns the clean image's distribution over clusters, not only its hard label. 0: the paper's loss.
    clean_target_weight: float = 0.0
    clean_target_temperature: float = 0.05
    # > 0: that many Sinkhorn-Knopp iterations balance the soft target over the batch's clusters (SwAV's codes, with
    # clean_target_temperature as epsilon), so it cannot put the whole batch in a few clusters. 0: a plain softmax.
    clean_target_sinkhorn: int = 0
    # assign_on=clean: weight of an instance-level term next to the cluster targets, MoCo v3's InfoNCE between the
    # view's predictor output and the clean images' projections (no grad; the other images of the batch are the
    # negatives). It uses the clean forward the assignment already paid for. 0: the paper's loss.
    clean_contrast_weight: float = 0.0
    clean_contrast_temperature: float = 0.2
    # The cluster targets' weight in the one-view loss (1: the paper's). 0 with clean_contrast_weight > 0 is the
    # ablation that keeps only the instance-level term, to measure what the clustering adds to it.
    cluster_loss_weight: float = 1.0


# The options that name a rule, and their values (the first is the default).
CHOICES = {"stage2_rule": ("faithful", "legacy"), "view_loss": ("legacy", "faithful"),
           "assign_on": ("view", "clean"), "target": ("previous_epoch", "current"),
           "cluster_init": ("online", "kmeans")}


class CoKe(PretrainModule):
    Config = CoKeConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        m = self.method_cfg
        self.zero_lr_epochs = m.init_epochs
        self.two_views = self.cfg.augment.num_large_crops == 2
        self.temperature = m.temperature or (0.05 if self.two_views else 0.1)
        dim = self.cfg.model.proj_output_dim
        self.projection = self.projector(dim, last_bn=m.proj_last_bn)
        self.prediction = self.predictor(dim) if self.cfg.model.pred_hidden_dim else None
        for option, choices in CHOICES.items():
            if getattr(m, option) not in choices:
                raise ValueError(f"method.{option} must be one of {', '.join(choices)}, got {getattr(m, option)!r}")
        coarse = m.coarse_weight > 0
        if coarse and not data_info["num_coarse"]:
            raise ValueError("method.coarse_weight > 0 needs superclass labels: use a data set with a hierarchy")
        self.clustering = CokeState(
            data_info["num_train"], list(m.num_clusters), dim, ratio=m.ratio, dual_lr=m.dual_lr, kernel=m.kernel,
            max_scores=m.max_scores, seed=self.cfg.seed, stage2_slots=m.stage2_slots if m.stage2_epochs else 0,
            stage2_temperature=m.stage2_temperature, stage2_rule=m.stage2_rule,
            superclass_sizes=data_info.get("superclass_sizes") if coarse else None, center_carry=m.center_carry,
        )
        self.coarse_head = torch.nn.Linear(dim, data_info["num_coarse"]) if coarse else None
        if m.assign_on == "clean" and not self.cfg.augment.clean_view:
            raise ValueError("method.assign_on=clean needs the un-augmented image: set augment.clean_view=true")
        if m.assign_on == "clean" and self.two_views:
            raise ValueError("method.assign_on=clean is a one-view option (two views cluster the mean of the two "
                             "views): set augment.num_large_crops=1 or method.assign_on=view")
        if not 0.0 <= m.assign_momentum < 1.0:
            raise ValueError(f"method.assign_momentum must be in [0, 1), got {m.assign_momentum}")
        if m.assign_momentum and m.assign_on != "clean":
            raise ValueError("method.assign_momentum is the momentum of the encoder that clusters the clean image: "
                             "set method.assign_on=clean (and augment.clean_view=true), or assign_momentum=0")
        if m.clean_target_weight and m.assign_on != "clean":
            raise ValueError("method.clean_target_weight is a soft target from the clean image: set "
                             "method.assign_on=clean (and augment.clean_view=true), or clean_target_weight=0")
        if m.clean_contrast_weight and m.assign_on != "clean":
            raise ValueError("method.clean_contrast_weight contrasts the view with the clean image: set "
                             "method.assign_on=clean (and augment.clean_view=true), or clean_contrast_weight=0")
        # Built after the projection, so it copies both.
        self.assign_encoder = MomentumEncoder(self.backbone, self.projection) if m.assign_momentum else None
        # Labels of every training instance, filled as batches pass: for the NMI dashboard only.
        self.register_buffer("instance_labels", torch.full((data_info["num_train"], 2), -1), persistent=False)

    def in_stage2(self) -> bool:
        m = self.method_cfg
        return bool(m.stage2_epochs) and not self.two_views and self.current_epoch >= self.trainer.max_epochs - m.stage2_epochs

    def on_train_start(self) -> None:
        super().on_train_start()
        fresh = not bool((self.clustering.label_memory >= 0).any())  # a resumed run has its clusters
        if self.method_cfg.cluster_init == "kmeans" and fresh:
            kmeans_initialise(self, self.method_cfg.kmeans_iterations)

    def on_train_epoch_start(self) -> None:
        # On a resume inside the first stage-2 epoch the state has begun stage 2 already: do not restart it.
        if self.in_stage2() and not self.clustering.stage2_started:
            self.clustering.begin_stage2()

    def cluster_step(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """Cluster the batch of all ranks (no grad); return this rank's previous-epoch labels (B, H)."""
        ids = gather_no_grad(batch["index"])
        coarse = gather_no_grad(batch["coarse"]) if self.coarse_head is not None else None
        self.instance_labels[ids] = gather_no_grad(torch.stack([batch["fine"], batch["coarse"]], 1))
        prev = self.clustering.step(gather_no_grad(x.detach().float()), ids, coarse)
        local = x.shape[0]
        return prev[rank() * local:(rank() + 1) * local]

    def assignment_input(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """What the clustering sees: the view's x, or (assign_on=clean) the un-augmented image's, without grad."""
        if self.method_cfg.assign_on == "view":
            return x
        with torch.no_grad():
            if self.assign_encoder is None:
                return F.normalize(self.projection(self(batch["clean_view"])), dim=1)
            self.assign_encoder.update([self.backbone, self.projection], self.method_cfg.assign_momentum)
            clean = self.assign_encoder.encode_views([batch["clean_view"]], self.cfg.model.channels_last)[0]
            return F.normalize(clean, dim=1)

    def clustering_input(self, batch: dict) -> torch.Tensor:
        """No grad: the unit-norm input the clustering takes for this batch (for the k-means initialisation)."""
        if self.method_cfg.assign_on == "clean":
            return self.assignment_input(None, batch)
        large = 2 if self.two_views else 1
        return self.mean_large_view([self.projection(f) for f in self.encode_views(batch["views"][:large])])

    def mean_large_view(self, z: list[torch.Tensor]) -> torch.Tensor:
        """The clustering's input from the projections: the large view's unit vector, or the two large views' mean."""
        if not self.two_views:
            return F.normalize(z[0], dim=1)
        return (F.normalize(z[0], dim=1) + F.normalize(z[1], dim=1)) / 2

    def head_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        current = self.method_cfg.target == "current"
        centers = (self.clustering.centers if current else self.clustering.loss_centers()).to(h.dtype)
        return [F.normalize(h, dim=1) @ c.T / self.temperature for c in self.clustering.split_heads(centers)]

    def stage2_targets(self, index: torch.Tensor) -> list[torch.Tensor] | None:
        """Stage-2 soft targets of the earlier stage-2 epochs: call BEFORE the step writes this epoch's labels."""
        if not self.in_stage2():
            return None
        return [self.clustering.dense_soft_targets(index, head) for head in range(len(self.clustering.num_clusters))]

    def hard_ce(self, logits: list[torch.Tensor], labels: torch.Tensor, batch: dict,
                soft: list[torch.Tensor] | None = None) -> torch.Tensor:
        losses = []
        for head, head_logits in enumerate(logits):
            if soft is not None:
                # No stage-2 label yet (the first stage-2 epoch): the previous epoch's hard label, as the reference.
                known = labels[:, head:head + 1] >= 0
                hard = F.one_hot(labels[:, head].clamp_min(0), head_logits.shape[1]).to(soft[head].dtype) * known
                target = torch.where(soft[head].sum(1, keepdim=True) > 0, soft[head], hard)
                rows = (target.sum(1) > 0).sum().clamp_min(1)
                losses.append(-(target * F.log_softmax(head_logits.float(), 1)).sum() / rows)
            else:
                valid = labels[:, head] >= 0  # -1: no label yet (first epoch)
                ce = F.cross_entropy(head_logits[valid].float(), labels[valid, head]) if valid.any() else head_logits.sum() * 0
                losses.append(ce)
        return torch.stack(losses).mean()

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        m = self.method_cfg
        z = [self.projection(f) for f in feats]
        outputs = [self.prediction(zi) for zi in z] if self.prediction is not None else z
        num_large = 2 if self.two_views else 1
        x = self.mean_large_view(z)
        soft = self.stage2_targets(batch["index"])  # read before cluster_step writes this step's labels
        assigned = self.assignment_input(x, batch) if num_large == 1 else x
        labels = self.cluster_step(assigned, batch)
        if m.target == "current":  # the label this step just wrote (first copy of a duplicated id)
            labels = self.clustering.label_memory[batch["index"].to(labels.device)]
        logits = [self.head_logits(h) for h in outputs]
        if num_large == 1:
            teacher = self.clean_targets(assigned) if m.clean_target_weight else None
            loss = sum(self.one_view_ce(lg, labels, batch, soft, teacher) for lg in logits) / len(logits)
            if m.beta and self.prediction is not None:
                loss = loss + m.beta * self.one_view_ce(self.head_logits(z[0]), labels, batch, soft, teacher)
            loss = m.cluster_loss_weight * loss
            if m.clean_contrast_weight:
                contrast = moco_v3_loss(outputs[0], assigned, m.clean_contrast_temperature)
                self.log("train/clean_contrast", contrast)
                loss = loss + m.clean_contrast_weight * contrast
        elif m.view_loss == "faithful":
            proj_logits = [self.head_logits(zi) for zi in z]
            loss = coke_view_loss(logits, proj_logits, labels, alpha=m.alpha, large_weight=m.large_crop_weight)
        else:
            loss = self.two_view_loss(logits, labels, batch)
        if self.coarse_head is not None:
            coarse_ce = F.cross_entropy(self.coarse_head(F.normalize(z[0], dim=1)).float(), batch["coarse"], ignore_index=-1)
            self.log("train/coarse_ce", coarse_ce)
            loss = loss + m.coarse_weight * coarse_ce
        return loss

    def clean_targets(self, clean: torch.Tensor) -> list[torch.Tensor]:
        """Per head, the clean image's softmax over the loss centres (no grad): the soft target of clean_target_weight."""
        m = self.method_cfg
        centers = self.clustering.loss_centers().to(clean.dtype)
        return [sinkhorn(clean @ c.T, m.clean_target_temperature, m.clean_target_sinkhorn)
                for c in self.clustering.split_heads(centers)]

    def one_view_ce(self, logits: list[torch.Tensor], labels: torch.Tensor, batch: dict,
                    soft: list[torch.Tensor] | None, teacher: list[torch.Tensor] | None) -> torch.Tensor:
        """The one-view loss of one set of head logits: the hard (or stage-2) CE, mixed with the clean image's soft
        target when clean_target_weight > 0."""
        hard = self.hard_ce(logits, labels, batch, soft)
        if teacher is None:
            return hard
        w = self.method_cfg.clean_target_weight
        soft_ce = torch.stack([soft_cross_entropy(h, t) for t, h in zip(teacher, logits)])
        return (1 - w) * hard + w * soft_ce.mean()

    def two_view_loss(self, logits: list[list[torch.Tensor]], labels: torch.Tensor, batch: dict) -> torch.Tensor:
        """view_loss=legacy: α·one-hot CE + (1−α)·CE against the other large view's stop-gradient softmax of the
        same (predictor) logits, averaged over all views; small crops are students."""
        alpha, total, terms = self.method_cfg.alpha, 0.0, 0
        soft = [[F.softmax(h.detach().float(), 1) for h in view] for view in logits[:2]]
        for v, view_logits in enumerate(logits):
            teachers = [1 - v] if v < 2 else [0, 1]
            one_hot = self.hard_ce(view_logits, labels, batch)
            swapped = torch.stack([
                soft_cross_entropy(h, soft[t][head])
                for t in teachers for head, h in enumerate(view_logits)
            ]).mean()
            total, terms = total + alpha * one_hot + (1 - alpha) * swapped, terms + 1
        return total / terms

    def on_train_epoch_end(self) -> None:
        log_clustering_dashboard(self)
