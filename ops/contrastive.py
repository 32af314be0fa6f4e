"""Contrastive losses: SimCLR's NT-Xent, MoCo v2's InfoNCE with a queue, MoCo v3's in-batch InfoNCE.

All three L2-normalise their inputs. Under DDP each rank passes its local batch; negatives come
from every rank, and the mean of the per-rank losses equals the loss on the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ops.distributed import gather_no_grad, gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather: bool = True) -> torch.Tensor:
    """SimCLR NT-Xent over two views (B, D) each.

    Every one of the 2B local rows is an anchor; its positive is the other view of the same
    instance and its negatives are all other 2*B_global - 2 projections from all ranks.
    Returns the mean over the local anchors.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    local = z1.shape[0]
    if gather:
        all1, all2, offset = gather_with_grad(z1), gather_with_grad(z2), rank() * local
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.shape[0]

    anchors = torch.cat([z1, z2])
    logits = anchors @ torch.cat([all1, all2]).T / temperature  # (2B, 2*B_global)

    # Global column of each anchor's own copy, and of its positive (the other view).
    own = torch.arange(local, device=z1.device) + offset
    self_columns = torch.cat([own, own + total])
    positive_columns = torch.cat([own + total, own])
    rows = torch.arange(2 * local, device=z1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_columns] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, positive_columns)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2, queue: torch.Tensor | None = None
) -> torch.Tensor:
    """MoCo v2 InfoNCE: query q (B, D) against its key k (B, D), which is detached.

    With a queue (Q, D) of past keys (stored L2-normalised, as MoCo keeps them) the negatives are the
    queue rows. Without one, the negatives are the other keys of the batch (no cross-rank gather).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    if queue is None:
        logits = q @ k.T / temperature
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3 contrastive loss: local queries (B, D) against the keys of all ranks, times 2T.

    Keys are detached (they come from the momentum encoder). Query i's positive is its own key,
    at global index rank*B + i. The 2T factor is MoCo v3's, which keeps the gradient scale
    independent of the temperature. Symmetrise in the caller: moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1).
    """
    q = F.normalize(q, dim=1)
    keys = gather_no_grad(F.normalize(k.detach(), dim=1))
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)
