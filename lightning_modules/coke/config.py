"""CoKe's typed config: the paper's fields at the top, each departure from it in its own section.

Names follow the official code's arguments (idstcv/CoKe): --coke-k is `num_clusters`, --coke-t `temperature`,
--coke-dual-lr `dual_lr`, --coke-ratio `ratio`, --coke-alpha `alpha`; its --coke-beta is not `projection_weight`
(see there). The rules on combining options live in rules.py; `validate` hands them to configs/loader.py, which
checks them when a config loads, so `--print-config`, benchmarks/budget.py and every entry point refuse a bad
combination before anything trains. `RENAMED` maps the keys used before this layout (flat, `beta`) to these; old
configs and checkpoints still load, with a one-line notice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, List

from configs.schema import MethodConfig


# Member names are the values: a plain config (a checkpoint's, `to_plain`'s) holds these strings.
class AssignOn(Enum):
    view = "view"  # the paper
    clean = "clean"


class TargetLabel(Enum):
    previous_epoch = "previous_epoch"  # the paper
    current = "current"


class ClusterInit(Enum):
    online = "online"  # the paper: init_epochs at lr 0 run the online clustering
    kmeans = "kmeans"


class Stage2Rule(Enum):
    faithful = "faithful"  # the official code (ops/coke_stage2.py: OfficialStage2; when: coke/last_stage.py)
    legacy = "legacy"  # this project's earlier rule (EarlierStage2)


class ViewLoss(Enum):
    legacy = "legacy"  # the earlier two-view loss (EarlierTwoViewLoss), the two-view default
    faithful = "faithful"  # the official two-view loss (OfficialTwoViewLoss)


class Kernel(Enum):
    auto = "auto"
    triton = "triton"
    torch = "torch"


class AssignPrecision(Enum):
    ieee = "ieee"  # exact fp32 scores: the torch path's labels
    tf32 = "tf32"  # the Triton GEMM in tf32: faster, labels agree on >= 99.9% (tests/test_cuda.py)


@dataclass
class CleanView:
    """Cluster the un-augmented image (RESULTS.md ledger: "assign_on=clean"); `momentum` > 0 encodes it with an
    EMA copy of backbone + projection (ledger: "assign_momentum")."""
    assign_on: AssignOn = AssignOn.view
    momentum: float = 0.0


@dataclass
class SoftTarget:
    """weight w: the loss is (1 − w)·CE(hard label) + w·CE(the clean image's soft assignment at `temperature`,
    balanced by `sinkhorn_iterations` of Sinkhorn-Knopp when > 0) (ledger: "clean_target_weight")."""
    weight: float = 0.0
    temperature: float = 0.05
    sinkhorn_iterations: int = 0


@dataclass
class InstanceTerm:
    """MoCo v3's InfoNCE of the view against the batch's clean images, weighted `weight` (ledger:
    "clean_contrast_weight"); `cluster_weight` scales the cluster targets (0: the instance term alone)."""
    weight: float = 0.0
    temperature: float = 0.2
    cluster_weight: float = 1.0


@dataclass
class Target:
    """label=current: this step's label against the current centres (ledger: "target=current")."""
    label: TargetLabel = TargetLabel.previous_epoch


@dataclass
class CarriedMembers:
    """A fraction of each cluster's members counted into the next epoch's running mean (ledger: "center_carry")."""
    fraction: float = 0.0


@dataclass
class KMeansStart:
    """init=kmeans: spherical k-means of one no-grad pass starts the clusters (ledger: "cluster_init=kmeans")."""
    init: ClusterInit = ClusterInit.online
    iterations: int = 10


@dataclass
class CoKeConfig(MethodConfig):
    name: str = "coke"
    # ---- the paper (and the official code's options) ----
    num_clusters: List[int] = field(default_factory=lambda: [300, 400, 500])  # one head per entry
    ratio: float = 0.4  # lower bound r·N/K instances per cluster; 1.0 = balanced (no clamp)
    dual_lr: float = 20.0
    temperature: float = 0.0  # 0: 0.1 for one view, 0.05 for two views
    init_epochs: int = 1  # clustering initialisation at lr 0
    # Weight w of the projection's CE added to the predictor's (was `beta`, the opposite of the official --coke-beta,
    # which weights them β and 1 − β): this loss is the official one divided by β, with w = (1 − β)/β. 0: the
    # predictor's alone (official β = 1).
    projection_weight: float = 0.0
    proj_last_bn: bool = True  # the paper's BatchNorm at the end of the projection
    alpha: float = 0.2  # two views: weight of the one-hot CE against the swapped soft CE
    large_crop_weight: float = 0.5  # view_loss=faithful with small crops: β of the large crops' loss
    stage2_slots: int = 5
    stage2_temperature: float = 0.5
    stage2_rule: Stage2Rule = Stage2Rule.faithful
    coarse_weight: float = 0.0  # > 0: clusters partitioned by superclass, plus λ·coarse CE (CoKe with coarse labels)
    kernel: Kernel = Kernel.auto
    assign_precision: AssignPrecision = AssignPrecision.ieee  # the Triton assignment's GEMM (the torch path is fp32)
    max_scores: int = 4194304  # torch path: most B×K scores held at once
    # ---- the official code's options whose default here departs from the paper (a ledger row each) ----
    view_loss: ViewLoss = ViewLoss.legacy  # two views: `faithful` is the paper's (RESULTS.md ledger: "view_loss")
    stage2_epochs: int = 0  # one view: the paper's last stage (soft targets averaged over epochs) is off (ledger:
    # "stage 2 off"); > 0 trains the last `stage2_epochs` epochs on them, by `stage2_rule`
    # ---- departures from the paper, one section each; its docstring's ledger row, its objects in
    # lightning_modules/coke/<section>.py, except clean_view (assignment.py, the slot it fills) and carried_members
    # (ops/coke_carry.py: a rule of the clustering state, which lives below the method) ----
    clean_view: CleanView = field(default_factory=CleanView)
    soft_target: SoftTarget = field(default_factory=SoftTarget)
    instance_term: InstanceTerm = field(default_factory=InstanceTerm)
    target: Target = field(default_factory=Target)
    carried_members: CarriedMembers = field(default_factory=CarriedMembers)
    kmeans_start: KMeansStart = field(default_factory=KMeansStart)

    RENAMED: ClassVar[dict[str, str]] = {
        "beta": "projection_weight",
        "assign_on": "clean_view.assign_on", "assign_momentum": "clean_view.momentum",
        "clean_target_weight": "soft_target.weight", "clean_target_temperature": "soft_target.temperature",
        "clean_target_sinkhorn": "soft_target.sinkhorn_iterations",
        "clean_contrast_weight": "instance_term.weight", "clean_contrast_temperature": "instance_term.temperature",
        "cluster_loss_weight": "instance_term.cluster_weight",
        "target": "target.label", "center_carry": "carried_members.fraction",
        "cluster_init": "kmeans_start.init", "kmeans_iterations": "kmeans_start.iterations",
    }

    @classmethod
    def validate(cls, cfg) -> list[str]:
        """One sentence per broken rule on combining options, for the whole run config `cfg` (rules.py)."""
        from lightning_modules.coke.rules import errors

        return errors(cfg)


def typed(method) -> CoKeConfig:
    """The method's plain config (train.py's, a checkpoint's, after `upgrade`) as the dataclass, its choices as the
    Enums above: the method converts at its boundary, so the parts compare Enums, never strings."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CoKeConfig), method))


def upgrade(cfg: dict) -> dict:
    """A run config whose `method` is complete and in this layout: old keys moved (a notice each, e.g. from an old
    checkpoint's stored config), missing fields at their defaults, choices checked. Plain containers out."""
    from omegaconf import OmegaConf

    from configs.method_hooks import rename_keys

    method = OmegaConf.create(dict(cfg.get("method") or {}))
    rename_keys(method, CoKeConfig.RENAMED, "a stored run config")
    merged = OmegaConf.merge(OmegaConf.structured(CoKeConfig), method)
    return {**cfg, "method": OmegaConf.to_container(merged, enum_to_str=True)}
