"""How many views the clustering sees and how the loss combines them: the paper's one view, and the two-view
variants (config: `augment.num_large_crops`, `method.view_loss`). Each is a `Views` (parts.py), called with the
per-view predictor outputs h and projections z, the labels, `ce` (the CE of per-head logits against the batch's
targets) and `logits` (an output's per-head logits against the loss centres)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.coke.parts import HeadLogits, HeadLoss
from ops.coke_losses import coke_view_loss, label_ce, soft_cross_entropy
from ops.precision import upcast


class OneView:
    """The paper's one-view loss (docs/algorithm.md §1.5): CE of normalize(h)·C_prev / T against the previous-epoch
    label, averaged over the views (small crops, if any, are more views). The official code trains the predictor
    output only (its --coke-beta β = 1)."""

    def cluster_input(self, z: list[torch.Tensor]) -> torch.Tensor:
        return F.normalize(z[0], dim=1)

    def __call__(self, h: list[torch.Tensor], z: list[torch.Tensor], labels: torch.Tensor, ce: HeadLoss,
                 logits: HeadLogits) -> torch.Tensor:
        return sum(ce(logits(hv)) for hv in h) / len(h)


class OneViewWithProjection(OneView):
    """projection_weight w > 0 (with a predictor): the projection's CE, weight w, added to the predictor's. The
    official --coke-beta β weights them β and 1 − β; this is that loss divided by β, with w = (1 − β)/β. Ledger:
    "beta" (the old name of w, the opposite of the official β)."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, h, z, labels, ce, logits) -> torch.Tensor:
        return super().__call__(h, z, labels, ce, logits) + self.weight * ce(logits(z[0]))


class TwoViews(OneView):
    """Two large views: the clustering takes the mean of their unit x, not renormalised (the official code)."""

    def cluster_input(self, z: list[torch.Tensor]) -> torch.Tensor:
        return (F.normalize(z[0], dim=1) + F.normalize(z[1], dim=1)) / 2


class EarlierTwoViewLoss(TwoViews):
    """view_loss=legacy, this project's earlier two-view loss and the two-view default: per view
    α·one-hot CE + (1 − α)·CE against the other large view's stop-grad softmax of the same predictor logits, averaged
    over all views; small crops are students of both large views. Differs from the official loss (below) in its
    teachers (predictor, not projection), its branches (predictor only) and its weights (every view equal). Ledger:
    "view_loss" (the official loss collapsed its labels at short budgets)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, h, z, labels, ce, logits) -> torch.Tensor:
        per_view = [logits(hv) for hv in h]
        soft = [[F.softmax(upcast(lg.detach()), 1) for lg in view] for view in per_view[:2]]
        total, terms = 0.0, 0
        for v, view_logits in enumerate(per_view):
            teachers = [1 - v] if v < 2 else [0, 1]
            one_hot = label_ce(view_logits, labels)
            swapped = torch.stack([soft_cross_entropy(lg, soft[t][j])
                                   for t in teachers for j, lg in enumerate(view_logits)]).mean()
            total = total + self.alpha * one_hot + (1 - self.alpha) * swapped
            terms += 1
        return total / terms


class OfficialTwoViewLoss(TwoViews):
    """view_loss=faithful, the official two-view (+ small crops) loss, checked against idstcv/CoKe: predictor and
    projection logits, teachers from the projection softmax, 0.5/(2H) scale, small crops weighted
    1 − large_crop_weight (ops/coke_losses.py: coke_view_loss)."""

    def __init__(self, alpha: float, large_crop_weight: float):
        self.alpha, self.large_crop_weight = alpha, large_crop_weight

    def __call__(self, h, z, labels, ce, logits) -> torch.Tensor:
        return coke_view_loss([logits(hv) for hv in h], [logits(zv) for zv in z], labels,
                              alpha=self.alpha, large_weight=self.large_crop_weight)
