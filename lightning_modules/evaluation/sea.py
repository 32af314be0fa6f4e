"""SeA linear probe on frozen features (semantic adversarial augmentation; Qian et al., the CoKe authors).

Features are L2-normalised and the probe is a bias-free linear layer trained with a temperature-scaled cross
entropy, ``T * CE(logits / T)``. Every step first takes the gradient of that loss with respect to the batch's
features, turns it into a direction inside the span of the *other* examples of the batch
(:func:`ops.sea.sea_direction`), moves each feature by ``eta`` along it, re-normalises, and trains the probe on the
moved features. Scoring uses the clean test features.

As for the plain probe (linear_probe.py), every (lr, eta) pair of the grid is its own head trained in the same pass
(each head gets its own adversarial direction), the best on a validation split of train is retrained on the whole
train split, and only that one is scored on test.
"""
from __future__ import annotations

from itertools import product
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.linear_probe import LinearProbe, probe_rows, train_probe
from ops.sea import sea_augment


class SeAProbe(LinearProbe):
    """Bias-free linear heads on unit features, trained on SeA-augmented features (SGD, cosine schedule)."""

    def __init__(self, dim: int, num_classes: int, settings: list[dict], alpha: float, temperature: float,
                 momentum: float = 0.9):
        super().__init__(torch.zeros(dim), torch.ones(dim), num_classes, settings, "sgd", momentum)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes, bias=False) for _ in settings)
        self.register_buffer("etas", torch.tensor([float(s["eta"]) for s in settings]).view(-1, 1, 1))
        self.alpha, self.temperature = alpha, temperature

    def _logits(self, unit: torch.Tensor) -> torch.Tensor:
        """(heads, B, C) from unit features (B, D) shared by every head, or (heads, B, D) one set per head."""
        return torch.stack([head(unit if unit.dim() == 2 else unit[h]) for h, head in enumerate(self.heads)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(F.normalize(features, dim=1))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over heads of each head's mean ``T * CE(logits / T)``."""
        t = self.temperature
        return t * F.cross_entropy(logits.flatten(0, 1) / t, labels.repeat(len(self.heads)), reduction="sum") / labels.shape[0]

    def adversarial_grad(self, unit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d loss / d features (heads, B, D), each head's own; the heads' weights get no gradient from it."""
        probe_input = unit.detach().expand(len(self.heads), -1, -1).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(self._logits(probe_input), labels), probe_input)
        return grad

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, labels = batch
        unit = F.normalize(features, dim=1)
        augmented = sea_augment(unit, self.adversarial_grad(unit, labels), self.alpha, self.etas)
        return self.loss(self._logits(augmented), labels)


def fit_sea(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: list[dict], cfg: Any,
            seed: int = 0, accelerator: str = "auto") -> SeAProbe:
    torch.manual_seed(seed)
    probe = SeAProbe(features.shape[1], num_classes, settings, cfg.alpha, cfg.temperature, cfg.momentum)
    return train_probe(probe, features, labels, cfg.epochs, cfg.batch_size, seed, accelerator)


def run_sea(train: FeatureSet, test: FeatureSet, levels: list[str], num_classes: dict[str, int],
            fine_to_coarse: Optional[torch.Tensor], cfg: Any, val_fraction: float, seed: int = 0,
            accelerator: str = "auto") -> list[dict]:
    """Result rows of protocol ``sea``: top-1 (and top-5) per level on test, plus fine within the true superclass."""
    grid = [{"lr": lr, "eta": eta, "weight_decay": cfg.weight_decay} for lr, eta in product(cfg.lrs, cfg.etas)]
    return probe_rows(
        "sea", train, test, levels, num_classes, fine_to_coarse, grid,
        lambda x, y, k, settings: fit_sea(x, y, k, settings, cfg, seed, accelerator), val_fraction, seed,
        "the SeA probe picks lr and eta on a validation split of train: set data.val_fraction > 0, or give a "
        "single sea.lrs and sea.etas",
        optimizer="sgd", epochs=cfg.epochs, batch_size=cfg.batch_size, alpha=cfg.alpha, temperature=cfg.temperature,
        normalized="l2")
