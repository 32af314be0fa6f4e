"""Which labels a method trains on, so a pretraining set without labels is refused before a model is built.

A method that trains on labels says so with a ``labels_used(method_cfg) -> "fine" | "coarse" | ""`` static
method; any method with ``method.coarse_weight > 0`` (CoKe with coarse labels, CoIns) trains on superclasses.
"""
from __future__ import annotations

from lightning_modules.registry import METHODS, method_class

LEVEL_WORDS = {"fine": "class labels", "coarse": "superclass labels"}


def labels_used(method_cfg) -> str:
    own = getattr(method_class(method_cfg.name), "labels_used", None)
    if own is not None:
        return own(method_cfg)
    return "coarse" if float(method_cfg.get("coarse_weight", 0) or 0) > 0 else ""


def unlabelled_refusal(method_cfg, data_cfg) -> str:
    """One paragraph when ``method_cfg`` needs labels that an unlabelled pretraining set lacks, else ''."""
    level = labels_used(method_cfg)
    if not level:
        return ""
    what = f"method.name={method_cfg.name}"
    weight = "coarse_weight" in method_cfg and level == "coarse"
    if weight:
        what += f" with method.coarse_weight={method_cfg.coarse_weight}"
    free = [name for name in METHODS if not name.startswith(("supervised", "supcon", "coins"))]
    return (
        f"{what} trains on {LEVEL_WORDS[level]}, but {data_cfg.path or data_cfg.name} holds images without labels. "
        f"Pretrain with a method that needs none ({', '.join(free)}{'; or method.coarse_weight=0' if weight else ''}), "
        "or on a labelled set: data.path=<folder of train/<class>/<image>> (superclasses from "
        "data.hierarchy=<JSON fine class -> superclass>), or data.name=cifar10 / cifar100"
    )
