"""Cosine nearest neighbours in bounded memory, and the weighted kNN vote of InstDisc (Wu et al. 2018).

Similarities are computed for ``query_chunk x bank_chunk`` pairs at a time and a running top-k is kept per
query, so neither the full query x bank matrix nor a bank-sized buffer per query is ever materialised.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def cosine_topk(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    exclude_self: bool = False,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most cosine-similar bank rows of every query row, most similar first.

    exclude_self: ``queries`` and ``bank`` are the same rows (leave-one-out), so row i never returns i.
    Returns (similarities (Nq, k) float32, bank indices (Nq, k) int64).
    """
    if exclude_self and queries.shape[0] != bank.shape[0]:
        raise ValueError("exclude_self needs the queries to be the bank itself (same number of rows)")
    available = bank.shape[0] - int(exclude_self)
    if not 0 < k <= available:
        raise ValueError(f"k must be in [1, {available}] for a bank of {bank.shape[0]} rows, got {k}")
    queries = F.normalize(queries.float(), dim=1)
    bank = F.normalize(bank.float(), dim=1)
    all_sims, all_ids = [], []
    for q_start in range(0, queries.shape[0], query_chunk):
        q = queries[q_start : q_start + query_chunk]
        best_sims = q.new_empty(q.shape[0], 0)
        best_ids = torch.empty(q.shape[0], 0, dtype=torch.int64, device=q.device)
        for b_start in range(0, bank.shape[0], bank_chunk):
            sims = q @ bank[b_start : b_start + bank_chunk].T
            ids = torch.arange(b_start, b_start + sims.shape[1], device=q.device)
            if exclude_self:
                own = torch.arange(q_start, q_start + q.shape[0], device=q.device)
                sims = sims.masked_fill(own[:, None] == ids[None, :], float("-inf"))
            top_sims, top_cols = sims.topk(min(k, sims.shape[1]), dim=1)
            merged_sims = torch.cat([best_sims, top_sims], dim=1)
            merged_ids = torch.cat([best_ids, ids[top_cols]], dim=1)
            best_sims, order = merged_sims.topk(min(k, merged_sims.shape[1]), dim=1)
            best_ids = merged_ids.gather(1, order)
        all_sims.append(best_sims)
        all_ids.append(best_ids)
    return torch.cat(all_sims), torch.cat(all_ids)


def weighted_vote(
    neighbour_sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, k: int, temperature: float
) -> torch.Tensor:
    """Class scores (Nq, C): the sum of exp(sim / T) over the first ``k`` neighbours of each class.

    Neighbours must be sorted most similar first (as :func:`cosine_topk` returns them).
    """
    weights = (neighbour_sims[:, :k] / temperature).exp()
    scores = weights.new_zeros(neighbour_sims.shape[0], num_classes)
    return scores.scatter_add_(1, neighbour_labels[:, :k], weights)


def weighted_knn_scores(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.07,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> dict[int, torch.Tensor]:
    """Weighted cosine kNN class scores (Nq, C) for every k in ``ks``, from one neighbour search."""
    sims, ids = cosine_topk(queries, bank, max(ks), query_chunk=query_chunk, bank_chunk=bank_chunk)
    labels = bank_labels.to(ids.device)[ids]
    return {k: weighted_vote(sims, labels, num_classes, k, temperature) for k in ks}
