"""Clustering quality against fine and coarse labels: spherical k-means on frozen features, and CoKe's own
label memory when the checkpoint holds one (each head scored separately)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.metrics import clustering_metrics
from lightning_modules.evaluation.rows import result_row
from ops.kmeans import spherical_kmeans


def run_kmeans(features: FeatureSet, split: str, levels: list[str], num_classes: dict[str, int], cfg: Any,
               seed: int, device: torch.device) -> list[dict]:
    """One k-means per level with k = that level's class count (or ``clustering.num_clusters``)."""
    rows, done = [], {}
    unit = F.normalize(features.features.float(), dim=1).to(device)
    for level in levels:
        labels = features.labels(level)
        if (labels < 0).any():
            continue
        k = int(cfg.num_clusters) or num_classes[level]
        if k not in done:  # the same k serves every level
            generator = torch.Generator().manual_seed(seed)
            _, done[k] = spherical_kmeans(unit, k, cfg.iterations, generator=generator, init=cfg.init)
        params = dict(source="kmeans", k=k, iterations=cfg.iterations, init=cfg.init, images=len(features))
        for metric, value in clustering_metrics(done[k].cpu(), labels).items():
            rows.append(result_row("clustering", level, metric, value, split, **params))
    return rows


def run_coke_assignments(cluster_labels: torch.Tensor, targets: Optional[FeatureSet], levels: list[str],
                         clusters_per_head: Optional[list[int]] = None) -> list[dict]:
    """CoKe's stored assignments (N, heads) of the pretraining train set against its labels.

    ``targets`` holds the labels of that same train set, row for row (same subset and order); rows CoKe never
    assigned (-1) are left out.
    """
    if targets is None or cluster_labels.shape[0] != len(targets):
        return []
    labels_per_head = cluster_labels if cluster_labels.dim() == 2 else cluster_labels[:, None]
    rows = []
    for head in range(labels_per_head.shape[1]):
        assigned = labels_per_head[:, head]
        seen = assigned >= 0
        for level in levels:
            labels = targets.labels(level)
            if (labels < 0).any() or not seen.any():
                continue
            k = clusters_per_head[head] if clusters_per_head else int(assigned.max()) + 1
            params = dict(source="coke", k=k, head=head, images=int(seen.sum()))
            for metric, value in clustering_metrics(assigned[seen], labels[seen]).items():
                rows.append(result_row("clustering", level, metric, value, "train", **params))
    return rows
