"""CoKe's multi-view loss as the official code computes it (docs/algorithm.md §3 "Two views" and §4 "Multi-crop").

Inputs are logits `normalize(·) @ C_prev.T / T`, indexed [view][head]: views 0 and 1 are the large crops, the
rest small crops. `pred` come from the predictor, `proj` from the projection; y (B, H) are the previous-epoch
labels (-1: none yet; such rows are left out of the one-hot terms only). With q_v = stop-grad softmax(proj_v):

    large_j = α·[CE(p1,y) + CE(p2,y) + CE(z1,y) + CE(z2,y)] + (1−α)·[H(q2,p1) + H(q1,p2) + H(q2,z1) + H(q1,z2)]
    small_j = Σ_s 2α·CE(p_s,y) + (1−α)·[H(q1,p_s) + H(q2,p_s)], and the same for z_s
    loss    = 0.5/(2H)·Σ_j large_j                                   without small crops
            = β·0.5/(2H)·Σ_j large_j + (1−β)·0.5/(2·S·H)·Σ_j small_j   with S small crops

Small crops are students only: they never give a teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from ops.precision import upcast


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over the rows with a label (>= 0); a zero that keeps the graph when there is none."""
    valid = labels >= 0
    log_probs = F.log_softmax(upcast(logits), dim=1)
    picked = log_probs.gather(1, labels.clamp_min(0).unsqueeze(1)).squeeze(1)
    return -(picked * valid).sum() / valid.sum().clamp_min(1)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The same as `hard_cross_entropy` by ignore_index (the exact sum of F.cross_entropy over the labelled rows);
    0, with zero gradient, when no row has a label (F.cross_entropy's 0/0)."""
    return torch.nan_to_num(F.cross_entropy(upcast(logits), labels, ignore_index=-1), nan=0.0)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """H(q, p) = −Σ q·log softmax(p), averaged over the rows."""
    return -(target * F.log_softmax(upcast(logits), dim=1)).sum(dim=1).mean()


def label_ce(logits: list[torch.Tensor], labels: torch.Tensor, soft: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The paper's one-view loss over the heads: mean of CE(logits_j, y_j). In stage 2 (`soft`, dense (B, K_j) per
    head) the target is the soft one where the instance has one, else its previous-epoch hard label."""
    if soft is None:
        return torch.stack([labelled_cross_entropy(h, labels[:, j]) for j, h in enumerate(logits)]).mean()
    losses = []
    for j, h in enumerate(logits):
        known = labels[:, j:j + 1] >= 0
        hard = F.one_hot(labels[:, j].clamp_min(0), h.shape[1]).to(soft[j].dtype) * known
        target = torch.where(soft[j].sum(1, keepdim=True) > 0, soft[j], hard)
        rows = (target.sum(1) > 0).sum().clamp_min(1)
        losses.append(-(target * F.log_softmax(upcast(h), 1)).sum() / rows)
    return torch.stack(losses).mean()


def coke_view_loss(pred: list[list[torch.Tensor]], proj: list[list[torch.Tensor]], labels: torch.Tensor,
                   alpha: float = 0.2, large_weight: float = 0.5) -> torch.Tensor:
    """The official two-view loss, plus the small-crop students weighted 1 − `large_weight` when there are any."""
    num_views, num_heads = len(pred), labels.shape[1]
    if num_views < 2 or len(proj) != num_views:
        raise ValueError(f"need >= 2 views, as many of each branch: got {num_views} and {len(proj)}")
    teachers = [[F.softmax(upcast(z.detach()), dim=1) for z in proj[v]] for v in (0, 1)]
    large = 0.0
    for j in range(num_heads):
        for branch in (pred, proj):
            for v, other in ((0, 1), (1, 0)):
                large = large + alpha * hard_cross_entropy(branch[v][j], labels[:, j]) \
                    + (1 - alpha) * soft_cross_entropy(branch[v][j], teachers[other][j])
    large = 0.5 / (2 * num_heads) * large
    num_small = num_views - 2
    if num_small == 0:
        return large
    small = 0.0
    for j in range(num_heads):
        for branch in (pred, proj):
            for s in range(2, num_views):
                small = small + 2 * alpha * hard_cross_entropy(branch[s][j], labels[:, j]) \
                    + (1 - alpha) * (soft_cross_entropy(branch[s][j], teachers[0][j])
                                     + soft_cross_entropy(branch[s][j], teachers[1][j]))
    small = 0.5 / (2 * num_small * num_heads) * small
    return large_weight * large + (1 - large_weight) * small
