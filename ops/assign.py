"""Constrained assignment for CoKe (docs/algorithm.md §1.1): y_i = argmax_k (x_i . c_k + rho_k) per head.

All heads are stacked: `centers` is (sum K, D), `duals` is (sum K,), and `head_offsets` is
[0, K1, K1+K2, ...]. Labels come back as GLOBAL indices into the stack; `to_local_labels`
turns them into per-head indices. A row whose allowed range is empty gets label -1 and
counts nowhere.

Three implementations:
- `kernel="triton"`: the fused kernel in `ops.assign_triton` (never writes the score matrix);
- `kernel="torch"`: a chunked reference that holds at most `max_scores` scores at a time;
- `assign_reference_style`: full matmul + unique + index_add, as the official code does it
  (only for the benchmark).
The similarity is always computed in fp32 (bf16 inputs are upcast), never fp16.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ops.precision import compute_dtype

KERNELS = ("auto", "torch", "triton")


def offsets_list(head_offsets: torch.Tensor | Sequence[int]) -> list[int]:
    """Python ints of the head offsets (a host sync if they live on a GPU)."""
    return head_offsets.tolist() if isinstance(head_offsets, torch.Tensor) else [int(v) for v in head_offsets]


def _head_starts(head_offsets: torch.Tensor | Sequence[int], like: torch.Tensor) -> torch.Tensor:
    if isinstance(head_offsets, torch.Tensor):
        return head_offsets[:-1].to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(list(head_offsets)[:-1], dtype=like.dtype, device=like.device)


def to_local_labels(labels: torch.Tensor, head_offsets: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Global (B,H) labels -> per-head labels in [0, K_h); -1 stays -1. No host sync."""
    return torch.where(labels >= 0, labels - _head_starts(head_offsets, labels), labels)


def to_global_labels(local: torch.Tensor, head_offsets: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Per-head (B,H) labels -> global indices into the stacked clusters; -1 stays -1. No host sync."""
    return torch.where(local >= 0, local + _head_starts(head_offsets, local), local)


def label_histogram(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """int32 counts of the global labels; -1 entries are ignored. No host sync."""
    flat = labels.reshape(-1)
    valid = (flat >= 0).to(torch.int32)
    counts = torch.zeros(num_clusters, dtype=torch.int32, device=labels.device)
    return counts.scatter_add_(0, flat.clamp_min(0), valid)


def _best_in_segment(x, centers, duals, lo, hi, ranges, max_scores):
    """(best score, global argmax) of every row over clusters [lo, hi), in chunks of <= max_scores scores."""
    num_rows = x.shape[0]
    best = torch.full((num_rows,), float("-inf"), dtype=x.dtype, device=x.device)
    best_idx = torch.full((num_rows,), -1, dtype=torch.int64, device=x.device)
    col_chunk = max(1, min(hi - lo, max_scores))
    row_chunk = max(1, max_scores // col_chunk)
    for r0 in range(0, num_rows, row_chunk):
        rows = slice(r0, r0 + row_chunk)
        for k0 in range(lo, hi, col_chunk):
            k1 = min(k0 + col_chunk, hi)
            scores = x[rows] @ centers[k0:k1].T + duals[k0:k1]
            if ranges is not None:
                cols = torch.arange(k0, k1, device=x.device)
                allowed = (cols >= ranges[rows, 0:1]) & (cols < ranges[rows, 1:2])
                scores = scores.masked_fill(~allowed, float("-inf"))
            chunk_best, chunk_arg = scores.max(dim=1)
            # Strict '>' keeps the earlier chunk on ties: the lowest index wins.
            better = chunk_best > best[rows]
            best[rows] = torch.where(better, chunk_best, best[rows])
            best_idx[rows] = torch.where(better, chunk_arg + k0, best_idx[rows])
    return best, best_idx


def assign_torch(x, centers, duals, head_offsets, row_ranges=None, *, max_scores=2**22, return_score=False):
    """Chunked fp32 reference of `assign`."""
    if max_scores < 1:
        raise ValueError(f"max_scores must be >= 1, got {max_scores}")
    offsets = offsets_list(head_offsets)
    dtype = compute_dtype(torch.promote_types(x.dtype, centers.dtype))  # fp32, or fp64 in a float64 run
    x, centers, duals = x.to(dtype), centers.to(dtype), duals.to(dtype)
    num_heads = len(offsets) - 1
    labels = torch.empty((x.shape[0], num_heads), dtype=torch.int64, device=x.device)
    best = torch.empty((x.shape[0], num_heads), dtype=dtype, device=x.device)
    for head in range(num_heads):
        ranges = None if row_ranges is None else row_ranges[:, head].to(torch.int64)
        best[:, head], labels[:, head] = _best_in_segment(
            x, centers, duals, offsets[head], offsets[head + 1], ranges, max_scores)
    counts = label_histogram(labels, centers.shape[0])
    return (labels, counts, best) if return_score else (labels, counts)


def assign(
    x: torch.Tensor,
    centers: torch.Tensor,
    duals: torch.Tensor,
    head_offsets: torch.Tensor | Sequence[int],
    *,
    row_ranges: torch.Tensor | None = None,
    kernel: str = "auto",
    max_scores: int = 2**22,
    return_score: bool = False,
    precision: str = "ieee",
):
    """Assign every row of x to one cluster per head.

    Args:
        x: (B, D) fp32 or bf16, unit-norm rows.
        centers: (sum K, D) the centres of all heads, stacked.
        duals: (sum K,) fp32 dual variables rho.
        head_offsets: (H+1,) int64 [0, K1, K1+K2, ...] (a tensor, or a list of ints).
        row_ranges: optional (B, H, 2) absolute [lo, hi) per row and head; clusters outside are not allowed.
        kernel: "triton", "torch" (chunked reference) or "auto" (triton when x is on CUDA).
        max_scores: the torch path never holds more than this many scores at once.
        return_score: also return the winning score (B, H) fp32.
        precision: "ieee" (exact fp32) or "tf32" for the triton GEMM; the torch path follows torch's settings.

    Returns:
        labels (B, H) int64 GLOBAL indices (see `to_local_labels`), -1 where a row has no allowed cluster;
        counts (sum K,) int32 histogram of the labels; and, if asked, the best scores (B, H) fp32.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if x.dtype == torch.float16 or centers.dtype == torch.float16:
        raise TypeError("fp16 is not supported: use fp32 or bf16 (fp16 similarity is a known NaN source)")
    if kernel == "auto":
        kernel = "triton" if x.is_cuda else "torch"
    if kernel == "torch":
        return assign_torch(x, centers, duals, head_offsets, row_ranges,
                            max_scores=max_scores, return_score=return_score)
    from .assign_triton import assign_triton

    if not isinstance(head_offsets, torch.Tensor):
        head_offsets = torch.tensor(offsets_list(head_offsets), dtype=torch.int64)
    return assign_triton(x, centers, duals, head_offsets, row_ranges,
                         return_score=return_score, precision=precision)


def assign_reference_style(x, centers, duals, head_offsets):
    """What the official code does: the full B x sum K score matrix, argmax, torch.unique, index_add."""
    offsets = offsets_list(head_offsets)
    scores = x.to(torch.float32) @ centers.to(torch.float32).T + duals
    labels = torch.stack(
        [scores[:, lo:hi].argmax(dim=1) + lo for lo, hi in zip(offsets[:-1], offsets[1:])], dim=1)
    found, found_counts = torch.unique(labels, return_counts=True)
    counts = torch.zeros(centers.shape[0], dtype=torch.int32, device=x.device)
    counts.index_add_(0, found, found_counts.to(torch.int32))
    return labels, counts
