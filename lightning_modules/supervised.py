"""Supervised cross-entropy on the backbone features: on superclasses only (the default coarse-label
baseline) or on the fine classes (the upper bound of superclass -> fine-grained transfer)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from ops.supervised import supervised_ce


def require_superclasses(data_info: dict, method: str) -> None:
    if not data_info["num_coarse"]:
        raise ValueError(
            f"{method} trains on superclass labels, but the data set has none: use cifar10/cifar100, "
            "or give data.hierarchy=<JSON fine class -> superclass>"
        )


@dataclass
class SupervisedConfig(MethodConfig):
    name: str = "supervised"
    labels: str = "coarse"  # coarse | fine


class Supervised(PretrainModule):
    Config = SupervisedConfig
    labels_used = staticmethod(lambda method_cfg: method_cfg.labels)  # lightning_modules/run/label_use.py

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        level = self.method_cfg.labels
        if level not in ("coarse", "fine"):
            raise ValueError(f"method.labels must be coarse or fine, not `{level}`")
        if level == "coarse":
            require_superclasses(data_info, "supervised with method.labels=coarse")
        self.classifier = nn.Linear(self.feat_dim, data_info[f"num_{level}"])

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        labels = batch[self.method_cfg.labels]
        return torch.stack([supervised_ce(self.classifier(f), labels) for f in feats]).mean()
