"""DeepCluster-v2's spherical k-means on a feature memory, written with scatter ops only.

There is no Python loop over clusters inside the iterations and nothing in the whole run reads a
value back to the host, so on a GPU it is queued without synchronisation. DeepCluster-v2's loss is a
plain cross-entropy of normalize(z) . centroids^T / T against these assignments, so no loss lives here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ops.precision import upcast


def assign_to_nearest(features: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 65536) -> torch.Tensor:
    """Index (N,) of the most similar centroid for every row, in row chunks so N x k never materialises whole."""
    return torch.cat([(chunk @ centroids.T).argmax(dim=1) for chunk in features.split(chunk_size)])


def random_rows_init(features: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k distinct rows drawn uniformly (DeepCluster-v2's initialisation)."""
    chosen = torch.randperm(features.shape[0], generator=generator)[:k].to(features.device)
    return features[chosen]


def kmeans_plus_plus_init(features: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding with the chord distance 2 - 2 cos: each next centre is a row drawn with
    probability proportional to its squared distance to the nearest centre chosen so far.

    Sequential in k (one pass over the rows per centre), so meant for small k; the draw is an
    inverse-CDF lookup with uniforms made up front, so it stays on the device.
    """
    n = features.shape[0]
    uniforms = torch.rand(k, generator=generator).to(features.device)
    first = (uniforms[0] * n).long().clamp_max(n - 1)
    chosen = [features[first]]
    nearest = features @ chosen[0]
    for j in range(1, k):
        cumulative = (2 - 2 * nearest).clamp_min(0).cumsum(0)
        index = torch.searchsorted(cumulative, (uniforms[j] * cumulative[-1]).reshape(1), right=True)
        chosen.append(features[index.clamp_max(n - 1)].squeeze(0))
        nearest = torch.maximum(nearest, features @ chosen[-1])
    return torch.stack(chosen)


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
    init: str | torch.Tensor = "random",
    chunk_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster unit-norm rows (N, D) into k clusters by cosine similarity.

    init: "random" (k distinct random rows, as DeepCluster-v2), "k-means++", or a (k, D) tensor of
    starting centroids. generator is a CPU torch.Generator; seed it identically on every rank to get
    identical results. Each iteration assigns every row to its most similar centroid, then moves each
    centroid to the normalised mean of its members. Empty clusters keep their previous centroid (as in
    DeepCluster-v2); they are not re-seeded.
    Returns (centroids (k, D) unit-norm, float32 (float64 for float64 rows), assignments (N,) int64 against the returned centroids).
    """
    if not 0 < k <= features.shape[0]:
        raise ValueError(f"k must be in [1, N={features.shape[0]}], got {k}")
    features = upcast(features)
    if isinstance(init, torch.Tensor):
        if init.shape != (k, features.shape[1]):
            raise ValueError(f"init centroids must have shape {(k, features.shape[1])}, got {tuple(init.shape)}")
        centroids = init.to(features)
    elif init == "random":
        centroids = random_rows_init(features, k, generator)
    elif init == "k-means++":
        centroids = kmeans_plus_plus_init(features, k, generator)
    else:
        raise ValueError(f"init must be 'random', 'k-means++' or a tensor, got {init!r}")
    centroids = F.normalize(centroids, dim=1)
    for _ in range(iterations):
        centroids = _centroid_update(features, assign_to_nearest(features, centroids, chunk_size), centroids)
    return centroids, assign_to_nearest(features, centroids, chunk_size)
