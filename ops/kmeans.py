"""DeepCluster-v2's spherical k-means on a feature memory, written with scatter ops only.

There is no Python loop over clusters and nothing in the iteration loop reads a value back to the
host, so on a GPU the whole run is queued without synchronisation. DeepCluster-v2's loss is a plain
cross-entropy of normalize(z) . centroids^T / T against these assignments, so no loss lives here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def assign_to_nearest(features: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """Index (N,) of the most similar centroid for every row, in row chunks so N x k never materialises whole."""
    return torch.cat([(chunk @ centroids.T).argmax(dim=1) for chunk in features.split(chunk_size)])


def _centroid_update(features: torch.Tensor, assignments: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Normalised mean of each cluster's members; a cluster with no members (or members summing to ~0) keeps its centroid."""
    sums = torch.zeros_like(centroids).index_add_(0, assignments, features)
    norms = sums.norm(dim=1, keepdim=True)
    # The mean's direction is the sum's direction, so the division by the count is skipped.
    return torch.where(norms > 1e-12, sums / norms.clamp_min(1e-12), centroids)


def spherical_kmeans(
    features: torch.Tensor,
    k: int,
    iterations: int = 10,
    generator: torch.Generator | None = None,
    chunk_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster unit-norm rows (N, D) into k clusters by cosine similarity.

    Initialisation: k distinct rows drawn at random (generator is a CPU torch.Generator; pass one
    seeded identically on every rank to get identical results). Each iteration assigns every row to
    its most similar centroid and moves each centroid to the normalised mean of its members.
    Empty clusters keep their previous centroid (as DeepCluster-v2 does); they are not re-seeded.
    Returns (centroids (k, D) float32 unit-norm, assignments (N,) int64 against the returned centroids).
    """
    if not 0 < k <= features.shape[0]:
        raise ValueError(f"k must be in [1, N={features.shape[0]}], got {k}")
    features = features.float()
    first = torch.randperm(features.shape[0], generator=generator)[:k].to(features.device)
    centroids = F.normalize(features[first], dim=1)
    for _ in range(iterations):
        centroids = _centroid_update(features, assign_to_nearest(features, centroids, chunk_size), centroids)
    return centroids, assign_to_nearest(features, centroids, chunk_size)
