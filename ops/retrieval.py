"""Leave-one-out retrieval: Recall@K is the fraction of queries with a same-label row among their K nearest
other rows (cosine), as in deep metric learning (e.g. Song et al. 2016)."""
from __future__ import annotations

from typing import Sequence

import torch

from ops.knn import cosine_topk


def recall_from_neighbours(neighbour_labels: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K from the labels (N, >= max K) of every row's neighbours, most similar first."""
    hits = neighbour_labels == labels.to(neighbour_labels.device)[:, None]
    hit_by_rank = hits.cummax(dim=1).values  # column j: a hit among the first j + 1 neighbours
    return {k: hit_by_rank[:, k - 1].float().mean().item() for k in ks}


def recall_at_k(
    features: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 5, 10),
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> dict[int, float]:
    """Leave-one-out Recall@K of ``features`` (N, D) against ``labels`` (N,), for every K in ``ks``."""
    _, ids = cosine_topk(features, features, max(ks), exclude_self=True, query_chunk=query_chunk, bank_chunk=bank_chunk)
    return recall_from_neighbours(labels.to(ids.device)[ids], labels, ks)
