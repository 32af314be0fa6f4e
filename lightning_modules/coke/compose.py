"""The one place that reads which departures and variant the config names, and builds their objects for the method.
A new departure: its file in this package, its section in config.py, one line here."""
from __future__ import annotations

from types import SimpleNamespace

from lightning_modules.coke.assignment import CleanImageAssignment, EmaCleanImageAssignment, ViewAssignment
from lightning_modules.coke.coarse import CoarseCE
from lightning_modules.coke.instance_term import InstanceTerm
from lightning_modules.coke.kmeans_start import KMeansStart, OnlineStart
from lightning_modules.coke.soft_target import CleanSoftTarget, HardTarget
from lightning_modules.coke.target import CurrentLabel, PreviousEpochLabel
from lightning_modules.coke.views import EarlierTwoViewLoss, OfficialTwoViewLoss, OneView, OneViewWithProjection
from ops.coke_state import CokeState


def views(module, m):
    if module.cfg.augment.num_large_crops == 1:
        with_projection = m.projection_weight and module.cfg.model.pred_hidden_dim  # else z is h: nothing to add
        return OneViewWithProjection(m.projection_weight) if with_projection else OneView()
    if m.view_loss == "faithful":
        return OfficialTwoViewLoss(m.alpha, m.large_crop_weight)
    return EarlierTwoViewLoss(m.alpha)


def clustering(module, m, data_info: dict, dim: int) -> CokeState:
    coarse = m.coarse_weight > 0
    if coarse and not data_info["num_coarse"]:
        raise ValueError("method.coarse_weight > 0 needs superclass labels: use a data set with a hierarchy")
    if data_info["num_train"] < max(m.num_clusters):
        raise ValueError(
            f"method.num_clusters={list(m.num_clusters)} asks for more clusters than the {data_info['num_train']} "
            "training images: every cluster needs members. Use fewer clusters (e.g. method.num_clusters="
            f"[{max(2, data_info['num_train'] // 10)}]) or more images")
    return CokeState(
        data_info["num_train"], list(m.num_clusters), dim, ratio=m.ratio, dual_lr=m.dual_lr, kernel=m.kernel,
        max_scores=m.max_scores, precision=m.assign_precision, seed=module.cfg.seed,
        stage2_slots=m.stage2_slots if m.stage2_epochs else 0,
        stage2_temperature=m.stage2_temperature, stage2_rule=m.stage2_rule,
        superclass_sizes=data_info.get("superclass_sizes") if coarse else None,
        center_carry=m.carried_members.fraction)


def departures(module, m, data_info: dict, dim: int) -> SimpleNamespace:
    """Built after the projection (the EMA encoder copies it) and the clustering, in the order they register."""
    clean = m.clean_view.assign_on == "clean"
    coarse_head = CoarseCE(dim, data_info["num_coarse"], m.coarse_weight) if m.coarse_weight > 0 else None
    if clean and m.clean_view.momentum:
        assignment = EmaCleanImageAssignment(module.backbone, module.projection, m.clean_view.momentum)
    else:
        assignment = CleanImageAssignment() if clean else ViewAssignment()
    soft = m.soft_target
    terms = [InstanceTerm(m.instance_term.weight, m.instance_term.temperature)] if m.instance_term.weight else []
    return SimpleNamespace(
        coarse_head=coarse_head, assignment=assignment,
        target=CurrentLabel() if m.target.label == "current" else PreviousEpochLabel(),
        soft_target=CleanSoftTarget(soft.weight, soft.temperature, soft.sinkhorn_iterations) if soft.weight
        else HardTarget(),
        terms=terms + ([coarse_head] if coarse_head is not None else []),
        start=KMeansStart(m.kmeans_start.iterations) if m.kmeans_start.init == "kmeans" else OnlineStart(),
    )
