"""SeA (semantic adversarial augmentation) for frozen features: the feature-space perturbation.

For a batch of unit-norm features X (B, D) and the gradient G of the probe's loss with respect to them, each
row i is pushed towards the other rows of the batch that best follow its own adversarial direction:

    w_ij = softmax over j != i of <g_i / |g_i|, x_j> / alpha        (w_ii = 0)
    d_i  = sum_j w_ij x_j / |sum_j w_ij x_j|                          (a unit vector in span{x_j : j != i})
    x_i' = normalize(x_i + eta * d_i)

so the perturbation eta * d_i has norm exactly eta and lies in the span of the *other* examples of the batch: the
adversarial step stays on the data's semantic directions rather than anywhere in feature space.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sea_direction(features: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """Unit directions (..., B, D): each row a softmax(<g_i, x_j>/alpha)-weighted mix of the other rows x_j.

    ``features`` (B, D) are shared; ``grad`` (..., B, D) may carry leading dimensions (one per probe head).
    A batch of one row has no other rows: its direction is zero.
    """
    batch = features.shape[0]
    if batch < 2:
        return torch.zeros_like(grad)
    unit_grad = F.normalize(grad, dim=-1)
    logits = unit_grad @ features.T / alpha  # (..., B, B)
    self_mask = torch.eye(batch, dtype=torch.bool, device=features.device)
    weights = logits.masked_fill(self_mask, float("-inf")).softmax(dim=-1)
    return F.normalize(weights @ features, dim=-1)


def sea_perturbation(features: torch.Tensor, grad: torch.Tensor, alpha: float, eta) -> torch.Tensor:
    """The step ``eta * d`` (norm eta per row); ``eta`` a float or a tensor broadcasting over (..., B, 1)."""
    return eta * sea_direction(features, grad, alpha)


def sea_augment(features: torch.Tensor, grad: torch.Tensor, alpha: float, eta) -> torch.Tensor:
    """The augmented unit features ``normalize(x + eta * d)``."""
    return F.normalize(features + sea_perturbation(features, grad, alpha, eta), dim=-1)
