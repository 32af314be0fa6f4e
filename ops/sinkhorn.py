"""SwAV's Sinkhorn-Knopp equipartition, in the log domain so that no logit can overflow or underflow.

SwAV alternates two normalisations of Q = exp(scores / epsilon):
  1. per cluster (over the global batch): every cluster gets the same total mass;
  2. per sample (over clusters): every sample's row sums to one.
The constant factors SwAV multiplies in (1/K, 1/B, the initial total normalisation, the final *B)
are each undone by the next normalisation, so the iterates here are exactly SwAV's; only the
arithmetic differs: log-sum-exp with the max subtracted instead of sums of exponentials.
"""
from __future__ import annotations

import torch

from ops.distributed import all_reduce_max, all_reduce_sum
from ops.precision import upcast


def _stable_logsumexp(values: torch.Tensor, dim: int, across_ranks: bool = False) -> torch.Tensor:
    """log(sum(exp(values))) along dim, optionally summed over ranks too.

    The max is subtracted before exp (so the largest term is exactly 1), a slice that is all -inf
    keeps a finite shift, and the sum is clamped away from 0, so the result is finite whenever any
    entry of the slice is finite, and a large negative number otherwise.
    """
    peak = values.amax(dim=dim, keepdim=True)
    if across_ranks:
        peak = all_reduce_max(peak)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = (values - peak).exp().sum(dim=dim, keepdim=True)
    if across_ranks:
        total = all_reduce_sum(total)
    return peak + total.clamp_min(torch.finfo(total.dtype).tiny).log()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft equipartitioned assignments Q (B, K), float32, from prototype scores (B, K) of the local batch.

    Marginals of the result:
      - every row sums to 1 (exactly, up to float rounding), as SwAV returns it;
      - the column sums over the GLOBAL batch (all ranks) approach B_global / K as iterations grow;
        with SwAV's 3 iterations they are only approximately equal.
    Computed in float32 (float64 for float64 scores), without gradient. iterations=0 gives softmax(scores / epsilon).
    """
    log_q = upcast(scores.detach()) / epsilon
    if iterations == 0:  # torch's own softmax, so a caller without balancing keeps a plain softmax's exact arithmetic
        return torch.softmax(log_q, dim=1)
    for _ in range(iterations):
        log_q = log_q - _stable_logsumexp(log_q, dim=0, across_ranks=True)
        log_q = log_q - _stable_logsumexp(log_q, dim=1)
    return log_q.exp()
