"""Every rule on combining CoKe's options, in one place. `CoKeConfig.validate` calls `errors` when a config loads
(configs/loader.py through configs/method_hooks.py), so every entry point refuses a bad combination before anything
trains; `data_errors` holds the two rules that need the data set, checked when the module is built.

Each message names the keys and the fix, in one paragraph."""
from __future__ import annotations

from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from configs.ranges import INF, range_errors

# CoKe's numeric keys: (lowest, highest, what the value means), as configs/ranges.py.
RANGES: dict[str, tuple[float, float, str]] = {
    "method.kmeans_start.iterations": (1, INF, "k-means iterations"),
    "method.soft_target.weight": (0, 1, "the soft target's weight in [0, 1]"),
    "method.soft_target.temperature": (1e-12, INF, "a positive temperature"),
    "method.soft_target.sinkhorn_iterations": (0, INF, "Sinkhorn iterations (0: a plain softmax)"),
    "method.instance_term.weight": (0, INF, "a non-negative weight"),
    "method.instance_term.temperature": (1e-12, INF, "a positive temperature"),
    "method.instance_term.cluster_weight": (0, INF, "a non-negative weight"),
}


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg


def _value(choice: Any) -> str:
    return choice.value if isinstance(choice, Enum) else str(choice)


def _views(cfg) -> list[str]:
    """The paper's one view, or the official two views (docs/algorithm.md §1, §3): no other count of large crops."""
    crops = cfg.augment.num_large_crops
    if crops in (1, 2):
        return []
    return [f"augment.num_large_crops={crops} is not a CoKe setting: CoKe clusters one view (the paper) or the mean "
            "of two large views (the official two-view code), and more large crops would be silently left out of "
            "the clustering. Set augment.num_large_crops=1 or 2, and add views as small crops "
            "(augment.num_small_crops)"]


def _stage2(cfg) -> list[str]:
    m = cfg.method
    if m.stage2_epochs > 0 and cfg.augment.num_large_crops != 1:
        return [f"method.stage2_epochs={m.stage2_epochs} asks for the last stage, which the official code has for "
                f"one view only (docs/algorithm.md §2), but augment.num_large_crops={cfg.augment.num_large_crops}: "
                "with two views it would never start. Set method.stage2_epochs=0, or augment.num_large_crops=1"]
    return []


def _clean_view(cfg) -> list[str]:
    m, errors = cfg.method, []
    clean = _value(m.clean_view.assign_on) == "clean"
    if clean and not cfg.augment.clean_view:
        errors.append("method.clean_view.assign_on=clean needs the un-augmented image: set augment.clean_view=true")
    if clean and cfg.augment.num_large_crops != 1:
        errors.append("method.clean_view.assign_on=clean is a one-view option (two views cluster the mean of the "
                      "two views): set augment.num_large_crops=1 or method.clean_view.assign_on=view")
    needs_clean = {"clean_view.momentum": m.clean_view.momentum, "soft_target.weight": m.soft_target.weight,
                   "instance_term.weight": m.instance_term.weight}
    for key, value in needs_clean.items():
        if value and not clean:
            errors.append(f"method.{key} works on the clean image: set method.clean_view.assign_on=clean (and "
                          f"augment.clean_view=true), or method.{key}=0")
    if not 0.0 <= m.clean_view.momentum < 1.0:
        errors.append(f"method.clean_view.momentum must be in [0, 1), got {m.clean_view.momentum}")
    if not 0.0 <= m.carried_members.fraction < 1.0:
        errors.append(f"method.carried_members.fraction must be in [0, 1), got {m.carried_members.fraction}")
    return errors


def _projection_without_predictor(cfg) -> list[str]:
    m = cfg.method
    if m.projection_weight > 0 and not cfg.model.pred_hidden_dim:
        return [f"method.projection_weight={m.projection_weight} weighs the projection's CE beside the predictor's, "
                "but model.pred_hidden_dim=0 builds no predictor, so the projection's CE is the only one and the "
                "weight would change nothing. Set model.pred_hidden_dim > 0 to train both, or "
                "method.projection_weight=0"]
    return []


def errors(cfg) -> list[str]:
    """One sentence per broken rule of the whole run config `cfg` (a DictConfig with Enums or plain strings)."""
    found = _views(cfg) + _stage2(cfg) + _clean_view(cfg) + _projection_without_predictor(cfg)
    return found + [f"{e}. Set it to a value in range" for e in range_errors(_plain(cfg), RANGES)]


def data_errors(m, data_info: dict) -> list[str]:
    """The rules that need the data set (`data_info` of the datamodule), checked when the module is built."""
    found = []
    if m.coarse_weight > 0 and not data_info["num_coarse"]:
        found.append("method.coarse_weight > 0 needs superclass labels: use a data set with a hierarchy")
    if data_info["num_train"] < max(m.num_clusters):
        found.append(
            f"method.num_clusters={list(m.num_clusters)} asks for more clusters than the {data_info['num_train']} "
            "training images: every cluster needs members. Use fewer clusters (e.g. method.num_clusters="
            f"[{max(2, data_info['num_train'] // 10)}]) or more images")
    return found
