"""The one place that reads which departures and variant the config names, and builds their objects for the method
(their slots: parts.py). A new departure: its file in this package, its section in config.py, one line here. The
rules on combining options are rules.py's."""
from __future__ import annotations

from dataclasses import dataclass

from lightning_modules.coke.assignment import CleanImageAssignment, EmaCleanImageAssignment, ViewAssignment
from lightning_modules.coke.coarse import CoarseCE
from lightning_modules.coke.config import AssignOn, ClusterInit, CoKeConfig, Stage2Rule, TargetLabel, ViewLoss
from lightning_modules.coke.instance_term import InstanceTerm
from lightning_modules.coke.kmeans_start import KMeansStart, OnlineStart
from lightning_modules.coke.last_stage import NoLastStage, OfficialLastStage
from lightning_modules.coke.parts import OnlineNetwork, Parts, Views
from lightning_modules.coke.rules import data_errors
from lightning_modules.coke.soft_target import CleanSoftTarget, HardTarget
from lightning_modules.coke.target import CurrentLabel, PreviousEpochLabel
from lightning_modules.coke.views import EarlierTwoViewLoss, OfficialTwoViewLoss, OneView, OneViewWithProjection
from ops.coke_carry import CarriedMembers, EpochReset
from ops.coke_stage2 import EarlierStage2, OnlineCenters, paper_centers
from ops.coke_state import CokeState


@dataclass(frozen=True)
class Run:
    """What CoKe's parts need of the rest of the run config."""
    num_views: int  # augment.num_large_crops
    predictor: bool  # model.pred_hidden_dim > 0
    channels_last: bool
    seed: int
    dim: int  # model.proj_output_dim


def views(m: CoKeConfig, run: Run) -> Views:
    if run.num_views == 1:
        with_projection = m.projection_weight and run.predictor  # else z is h: nothing to add
        return OneViewWithProjection(m.projection_weight) if with_projection else OneView()
    return OfficialTwoViewLoss(m.alpha, m.large_crop_weight) if m.view_loss is ViewLoss.faithful \
        else EarlierTwoViewLoss(m.alpha)


def center_rule(m: CoKeConfig, num_train: int, dim: int) -> OnlineCenters:
    """The centres' rule (ops/coke_stage2.py): the paper's, or with stage-2 slots the named last-stage rule."""
    slots, heads = (m.stage2_slots if m.stage2_epochs else 0), len(m.num_clusters)
    if slots > 0 and m.stage2_rule is Stage2Rule.legacy:
        return EarlierStage2(num_train, heads, slots, sum(m.num_clusters), dim)
    return paper_centers(num_train, heads, slots)


def clustering(m: CoKeConfig, run: Run, data_info: dict) -> CokeState:
    if problems := data_errors(m, data_info):
        raise ValueError(" ".join(problems))
    coarse, fraction = m.coarse_weight > 0, m.carried_members.fraction
    return CokeState(
        data_info["num_train"], list(m.num_clusters), run.dim, ratio=m.ratio, dual_lr=m.dual_lr, kernel=m.kernel.value,
        max_scores=m.max_scores, precision=m.assign_precision.value, seed=run.seed,
        stage2_slots=m.stage2_slots if m.stage2_epochs else 0,
        stage2_temperature=m.stage2_temperature,
        superclass_sizes=data_info.get("superclass_sizes") if coarse else None,
        center_carry=fraction, stage2=center_rule(m, data_info["num_train"], run.dim),
        carry=CarriedMembers(fraction) if fraction else EpochReset())


def build(m: CoKeConfig, run: Run, data_info: dict, online: OnlineNetwork) -> Parts:
    """Every part, built after the projection (the EMA encoder copies it), in the order the method registers them."""
    chosen_views = views(m, run)
    state = clustering(m, run, data_info)
    clean = m.clean_view.assign_on is AssignOn.clean
    coarse_head = CoarseCE(run.dim, data_info["num_coarse"], m.coarse_weight) if m.coarse_weight > 0 else None
    if clean and m.clean_view.momentum:
        assignment = EmaCleanImageAssignment(online.backbone, online.projection, m.clean_view.momentum,
                                             run.channels_last)
    else:
        assignment = CleanImageAssignment() if clean else ViewAssignment(chosen_views.cluster_input, run.num_views)
    soft, instance = m.soft_target, m.instance_term
    terms = [InstanceTerm(instance.weight, instance.temperature)] if instance.weight else []
    two_views = run.num_views == 2
    return Parts(
        views=chosen_views, clustering=state, coarse_head=coarse_head, assignment=assignment,
        target=CurrentLabel() if m.target.label is TargetLabel.current else PreviousEpochLabel(),
        soft_target=CleanSoftTarget(soft.weight, soft.temperature, soft.sinkhorn_iterations) if soft.weight
        else HardTarget(),
        terms=terms + ([coarse_head] if coarse_head is not None else []),
        start=KMeansStart(m.kmeans_start.iterations, run.seed) if m.kmeans_start.init is ClusterInit.kmeans
        else OnlineStart(),
        last_stage=OfficialLastStage(m.stage2_epochs) if m.stage2_epochs and not two_views else NoLastStage(),
        cluster_weight=instance.cluster_weight,
    )
