"""CoKe update after an assignment (docs/algorithm.md §1.2-1.3), without host synchronisation.

- duals:   rho_k <- max(0, rho_k + lr * (target_k - n_k / B)); no clamp when the bound ratio r is 1;
- centres: c_k <- normalize((m_k c_k + sum of members' x) / (m_k + n_k)) where n_k > 0, else unchanged;
           so the first hits of an epoch (m_k = 0) replace the centre;
- counters: m_k <- m_k + n_k.
- one-view stage 2 (faithful rule): the same without the renormalisation (`update_running_means_`).

B is the number of rows of the (gathered) batch. Labels are global (B, H) indices, -1 = none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ops.precision import upcast


def dual_step(duals, counts, target, batch_size: int, lr: float, clamp: bool) -> torch.Tensor:
    stepped = duals + lr * (target - counts.to(duals.dtype) / max(batch_size, 1))
    return stepped.clamp_min(0.0) if clamp else stepped


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """(sum K, D) fp32 sum of the rows assigned to each cluster, over all heads."""
    num_heads = labels.shape[1]
    flat = labels.reshape(-1)
    rows = upcast(x).repeat_interleave(num_heads, dim=0) * (flat >= 0).unsqueeze(1)
    sums = torch.zeros((num_clusters, x.shape[1]), dtype=rows.dtype, device=x.device)
    return sums.index_add_(0, flat.clamp_min(0), rows)


def blend_centers(centers, counters, sums, counts) -> torch.Tensor:
    m = counters.to(centers.dtype).unsqueeze(1)
    n = counts.to(centers.dtype).unsqueeze(1)
    blended = F.normalize((m * centers + sums) / (m + n).clamp_min(1.0), dim=1)
    return torch.where(n > 0, blended, centers)


def members_by_cluster(labels: torch.Tensor, counts: torch.Tensor, num_clusters: int):
    """Rows grouped by label: `rows[starts[k] : starts[k] + counts[k]]` are the rows of cluster k, ascending."""
    num_heads = labels.shape[1]
    flat = labels.reshape(-1)
    key = torch.where(flat >= 0, flat, num_clusters)
    order = torch.sort(key, stable=True).indices
    counts = counts.to(torch.int64)
    starts = torch.cumsum(counts, 0) - counts
    return order // num_heads, starts


def update_clusters_(
    x: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    centers: torch.Tensor,
    counters: torch.Tensor,
    duals: torch.Tensor,
    dual_target: torch.Tensor,
    *,
    dual_lr: float,
    clamp: bool = True,
    kernel: str = "auto",
) -> None:
    """Update centers (fp32), counters (int64) and duals (fp32) in place.

    `dual_target` is (sum K,) fp32: r / K_h normally, or the per-superclass target under coarse labels.
    The triton path sums each cluster's members in a fixed order, so it is bit-reproducible across
    ranks; the torch path uses index_add_, which on CUDA is not.
    """
    if kernel == "auto":
        kernel = "triton" if x.is_cuda else "torch"
    if kernel == "triton":
        from .assign_triton import update_triton_

        rows, starts = members_by_cluster(labels, counts, centers.shape[0])
        update_triton_(x, rows, starts, counts, centers, counters, duals, dual_target,
                       dual_lr=dual_lr, clamp=clamp)
        return
    if kernel != "torch":
        raise ValueError(f"kernel must be 'auto', 'torch' or 'triton', got {kernel!r}")
    sums = cluster_sums(x, labels, centers.shape[0])
    centers.copy_(blend_centers(centers, counters, sums, counts))
    duals.copy_(dual_step(duals, counts, dual_target, x.shape[0], dual_lr, clamp))
    counters.add_(counts.to(counters.dtype))


def exact_cluster_sums(x: torch.Tensor, labels: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """(sum K, D) fp32 member sums as one-hot GEMMs, one per head: bit-reproducible across ranks on CUDA,
    where index_add_ is not."""
    x = upcast(x)
    sums = []
    with torch.autocast(x.device.type, enabled=False):  # fp32 sums even inside a bf16 training step
        for head, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
            local = (labels[:, head] - lo).clamp_min(0).unsqueeze(1)
            valid = (labels[:, head] >= 0).to(x.dtype).unsqueeze(1)
            one_hot = torch.zeros(x.shape[0], hi - lo, dtype=x.dtype, device=x.device).scatter_(1, local, valid)
            sums.append(one_hot.T @ x)
    return torch.cat(sums)


def update_running_means_(
    x: torch.Tensor,
    labels: torch.Tensor,
    counts: torch.Tensor,
    centers: torch.Tensor,
    counters: torch.Tensor,
    duals: torch.Tensor,
    dual_target: torch.Tensor,
    offsets: list[int],
    *,
    dual_lr: float,
    clamp: bool = True,
) -> None:
    """Like `update_clusters_`, but the centres stay the exact (un-normalised) running mean of this epoch's members
    (the official stage-2 rule): c <- (m c + sum of members' x) / (m + n) where n > 0."""
    sums = exact_cluster_sums(x, labels, offsets)
    m = counters.to(centers.dtype).unsqueeze(1)
    n = counts.to(centers.dtype).unsqueeze(1)
    centers.copy_(torch.where(n > 0, (m * centers + sums) / (m + n).clamp_min(1.0), centers))
    duals.copy_(dual_step(duals, counts, dual_target, x.shape[0], dual_lr, clamp))
    counters.add_(counts.to(counters.dtype))
