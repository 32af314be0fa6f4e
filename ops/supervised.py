"""Losses that use (coarse) labels: supervised contrastive (SupCon), supervised CE, and CoIns (cosine classifier)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ops.contrastive import info_nce
from ops.distributed import gather_no_grad, gather_with_grad, rank


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """Khosla et al.'s SupCon, the L_out form (mean of log-probabilities over the positives, outside the log).

    z: (B, V, D) projections of V views per instance (L2-normalised here); labels: (B,) int64.
    Every local view is an anchor; the contrast set is every other view on every rank. Positives
    are the other views of the same instance and every view of an instance with the same label.
    A negative label means "unknown": such an instance's only positives are its own other views.
    Anchors with no positive at all (V == 1 and no other known instance of their label) are left
    out of the mean; with V >= 2 every anchor counts, so the mean of the per-rank losses equals
    the loss on the concatenated batch.
    """
    batch, views, _ = z.shape
    anchors = F.normalize(z, dim=2).reshape(batch * views, -1)
    local_instances = torch.arange(batch, device=z.device)
    if gather:
        contrast = gather_with_grad(anchors)
        all_labels = gather_no_grad(labels)
        local_instances = local_instances + rank() * batch
    else:
        contrast, all_labels = anchors, labels
    all_instances = torch.arange(all_labels.shape[0], device=z.device)

    # One entry per view, instance-major (b0v0, b0v1, ..., b1v0, ...), matching reshape above.
    anchor_label = labels.repeat_interleave(views)
    anchor_instance = local_instances.repeat_interleave(views)
    contrast_label = all_labels.repeat_interleave(views)
    contrast_instance = all_instances.repeat_interleave(views)

    anchor_index = anchor_instance * views + torch.arange(views, device=z.device).repeat(batch)
    is_self = anchor_index[:, None] == torch.arange(contrast.shape[0], device=z.device)[None, :]
    same_instance = anchor_instance[:, None] == contrast_instance[None, :]
    same_known_label = (anchor_label[:, None] == contrast_label[None, :]) & (anchor_label[:, None] >= 0)
    positive = (same_instance | same_known_label) & ~is_self

    logits = (anchors @ contrast.T / temperature).masked_fill(is_self, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1)
    positives_per_anchor = positive.sum(dim=1)
    has_positive = positives_per_anchor > 0
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positives_per_anchor.clamp_min(1)
    # A weighted sum rather than boolean indexing, which would sync with the host on a GPU.
    return (per_anchor * has_positive).sum() / has_positive.sum().clamp_min(1)


def cosine_classifier_logits(z: torch.Tensor, weight: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Cosine-similarity logits (B, C) = normalize(z) . normalize(weight)^T / T, for weight (C, D)."""
    return F.normalize(z, dim=1) @ F.normalize(weight, dim=1).T / temperature


def supervised_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (mean over rows with a known label); a negative label means unknown and is left out.

    With no known label at all the loss is 0 (not NaN, as F.cross_entropy's mean would give).
    """
    known = labels >= 0
    per_row = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
    return (per_row * known).sum() / known.sum().clamp_min(1)


def coins_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, classifier: torch.Tensor, coarse: torch.Tensor,
    temperature: float = 0.2, coarse_weight: float = 0.5,
) -> torch.Tensor:
    """CoIns: MoCo's InfoNCE of query q against key k and the queue, plus λ·CE of the cosine classifier
    (normalize(q)·normalize(W)ᵀ / T) on the coarse labels. One T is shared by both terms."""
    coarse_logits = cosine_classifier_logits(q, classifier, temperature)
    return info_nce(q, k, temperature, queue) + coarse_weight * supervised_ce(coarse_logits, coarse)
