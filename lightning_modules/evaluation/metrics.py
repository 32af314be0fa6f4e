"""Accuracy from class scores, and clustering agreement (NMI, ARI, Hungarian accuracy)."""
from __future__ import annotations

import torch

TOP5_MIN_CLASSES = 6  # top-5 of 5 classes or fewer is always 100%: not reported


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    top = scores.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def within_superclass_accuracy(scores: torch.Tensor, fine: torch.Tensor, fine_to_coarse: torch.Tensor) -> float:
    """Fine top-1 when only the fine classes of each row's true superclass may be predicted."""
    allowed = fine_to_coarse[None, :] == fine_to_coarse[fine][:, None]
    return (scores.masked_fill(~allowed, float("-inf")).argmax(dim=1) == fine).float().mean().item()


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1, and top5 when there are more than five classes."""
    metrics = {"top1": topk_accuracy(scores, labels, 1)}
    if scores.shape[1] >= TOP5_MIN_CLASSES:
        metrics["top5"] = topk_accuracy(scores, labels, 5)
    return metrics


def hungarian_accuracy(assignments: torch.Tensor, labels: torch.Tensor) -> float:
    """Best one-to-one matching of clusters to classes (unmatched clusters count as errors)."""
    from scipy.optimize import linear_sum_assignment

    clusters, cluster_ids = torch.unique(assignments, return_inverse=True)
    classes, class_ids = torch.unique(labels, return_inverse=True)
    counts = torch.zeros(len(clusters), len(classes), dtype=torch.int64)
    counts.index_put_((cluster_ids, class_ids), torch.ones_like(cluster_ids), accumulate=True)
    rows, cols = linear_sum_assignment(counts.numpy(), maximize=True)
    return counts[rows, cols].sum().item() / labels.numel()


def clustering_metrics(assignments: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score

    assignments, labels = assignments.long().cpu(), labels.long().cpu()
    return {
        "nmi": float(normalized_mutual_info_score(assignments, labels)),
        "ari": float(adjusted_rand_score(assignments, labels)),
        "acc": hungarian_accuracy(assignments, labels),
    }
