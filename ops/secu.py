"""SeCu's losses and size-constraint update (stable cluster discrimination, ICCV 2023), as pure functions.

Centres of all heads are stacked: (sum K, D), unit rows; `head_offsets` is [0, K1, K1+K2, ...] and labels are
GLOBAL indices into the stack (as `ops.assign` returns them), -1 where an instance has no label yet.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .assign import label_histogram, offsets_list
from .coke_update import dual_step
from .precision import upcast


def head_slices(head_offsets: torch.Tensor | Sequence[int]) -> list[slice]:
    offsets = offsets_list(head_offsets)
    return [slice(lo, hi) for lo, hi in zip(offsets[:-1], offsets[1:])]


def local_labels(labels: torch.Tensor, head: int, head_slice: slice) -> torch.Tensor:
    """Head `head`'s labels as indices in [0, K_h); -1 stays -1."""
    column = labels[:, head]
    return torch.where(column >= 0, column - head_slice.start, column)


def center_loss(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, head_offsets, temperature: float):
    """Hardness-aware centre loss of one view, averaged over the heads.

    Cross-entropy of x·c / T against the assigned cluster, where only the assigned centre's logit carries a
    gradient, and only to the centres (x is a constant). So d loss / d c_y = sum over its members of
    (p_iy − 1)·x_i / (T·B·H): instances the centre already explains well pull it less.
    """
    scores = upcast(x.detach()) @ upcast(centers).T
    assigned = torch.zeros_like(scores).scatter_add_(1, labels.clamp_min(0), (labels >= 0).to(scores.dtype)) > 0
    logits = torch.where(assigned, scores, scores.detach()) / temperature
    losses = [F.cross_entropy(logits[:, s], local_labels(labels, h, s), ignore_index=-1)
              for h, s in enumerate(head_slices(head_offsets))]
    return torch.stack(losses).mean()


def mixed_targets(teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """(1 − τ)·softmax(teacher) + τ·one-hot(label), a constant.

    A row without a label (-1: dropped from the last, partial batch of epoch 0) keeps the softmax alone.
    """
    soft = F.softmax(upcast(teacher_logits.detach()), dim=1)
    known = (labels >= 0).unsqueeze(1)
    one_hot = F.one_hot(labels.clamp_min(0), soft.shape[1]).to(soft.dtype) * known
    return (1 - tau * known.to(soft.dtype)) * soft + tau * one_hot


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(upcast(logits), dim=1)).sum(dim=1).mean()


def representation_loss(logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor, head_offsets,
                        tau: float) -> torch.Tensor:
    """Each view predicts the other view's softmax mixed with the label, per head; the mean over heads and views.

    logits1, logits2: (B, sum K) scores of the two views against the centres frozen at the epoch start, over T.
    labels: (B, H) global labels, the previous epoch's (the current ones in the first epoch).
    """
    losses = []
    for h, s in enumerate(head_slices(head_offsets)):
        local = local_labels(labels, h, s)
        losses.append(soft_cross_entropy(logits1[:, s], mixed_targets(logits2[:, s], local, tau)))
        losses.append(soft_cross_entropy(logits2[:, s], mixed_targets(logits1[:, s], local, tau)))
    return torch.stack(losses).mean()


def size_dual_targets(num_clusters: Sequence[int], ratio: float) -> torch.Tensor:
    """r / K_h for every cluster of head h: the lower bound on the fraction of a batch each cluster should take."""
    return torch.cat([torch.full((k,), ratio / k) for k in num_clusters])


def size_dual_step(duals: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, lr: float,
                   clamp: bool) -> torch.Tensor:
    """ρ_k ← max(0, ρ_k + η·(r/K − n_k/B)) with n_k the count of label k among the B rows (no clamp when r = 1)."""
    counts = label_histogram(labels, duals.shape[0])
    return dual_step(duals, counts, targets.to(duals.device), labels.shape[0], lr, clamp)
