"""Triton kernels for CoKe: the fused constrained assignment and the cluster update.

`assign_kernel`: one GEMM tile loop plus an epilogue that adds the duals, keeps a running
(max, argmax) per row and head segment, and counts the winners with integer atomics.
The B x sum(K) score matrix is never written.

`update_kernel`: one program per cluster. It sums its members (rows pre-sorted by label, so
the summation order is fixed and every rank gets bit-identical centres), blends the sum into
the running mean, renormalises, advances the counter and takes the dual step.

This module imports triton at import time; `ops.assign` and `ops.coke_update` import it lazily,
so `TRITON_INTERPRET=1` only has to be set before the first triton call.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PRECISIONS = ("ieee", "tf32")


@triton.jit
def _assign_kernel(
    x_ptr, centers_ptr, duals_ptr, head_offsets_ptr, ranges_ptr,
    labels_ptr, scores_ptr, counts_ptr,
    num_rows, dim, num_heads, stride_x, stride_c,
    HAS_RANGES: tl.constexpr, WRITE_SCORES: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < num_rows
    rows64 = rows.to(tl.int64)
    k_start = tl.load(head_offsets_ptr + head)
    k_end = tl.load(head_offsets_ptr + head + 1)

    if HAS_RANGES:
        pair = ranges_ptr + (rows64 * num_heads + head) * 2
        lo = tl.maximum(tl.load(pair, mask=row_ok, other=0).to(tl.int64), k_start)
        hi = tl.minimum(tl.load(pair + 1, mask=row_ok, other=0).to(tl.int64), k_end)
        live = row_ok & (lo < hi)
        # Only visit the cluster tiles that some row of this block may use.
        loop_lo = tl.min(tl.where(live, lo, k_end), axis=0)
        loop_hi = tl.max(tl.where(live, hi, k_start), axis=0)
    else:
        lo = tl.zeros((BLOCK_B,), dtype=tl.int64) + k_start
        hi = tl.zeros((BLOCK_B,), dtype=tl.int64) + k_end
        loop_lo = k_start
        loop_hi = k_end

    best = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_B,), -1, dtype=tl.int64)
    for k0 in range(loop_lo, loop_hi, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < k_end
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < dim
            x_tile = tl.load(x_ptr + rows64[:, None] * stride_x + dd[None, :],
                             mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            c_tile = tl.load(centers_ptr + cols.to(tl.int64)[None, :] * stride_c + dd[:, None],
                             mask=col_ok[None, :] & d_ok[:, None], other=0.0).to(tl.float32)
            acc = tl.dot(x_tile, c_tile, acc, input_precision=PRECISION)
        rho = tl.load(duals_ptr + cols, mask=col_ok, other=0.0)
        allowed = (cols[None, :] >= lo[:, None]) & (cols[None, :] < hi[:, None])
        scores = tl.where(allowed, acc + rho[None, :], float("-inf"))
        tile_best, tile_arg = tl.max(scores, axis=1, return_indices=True,
                                     return_indices_tie_break_left=True)
        # Strict '>' keeps the earlier tile on ties: the lowest index wins, as in torch.argmax.
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, k0 + tile_arg.to(tl.int64), best_idx)

    cell = rows64 * num_heads + head
    tl.store(labels_ptr + cell, best_idx, mask=row_ok)
    if WRITE_SCORES:
        tl.store(scores_ptr + cell, best, mask=row_ok)
    won = row_ok & (best_idx >= 0)
    tl.atomic_add(counts_ptr + tl.where(won, best_idx, 0), tl.full((BLOCK_B,), 1, tl.int32), mask=won)


def _row_block(num_rows: int, num_heads: int) -> int:
    """Rows per program: large tiles for big batches, small ones so small batches still fill the GPU."""
    for block in (128, 64, 32):
        if triton.cdiv(num_rows, block) * num_heads >= 256:
            return block
    return 16


def assign_triton(
    x: torch.Tensor,
    centers: torch.Tensor,
    duals: torch.Tensor,
    head_offsets: torch.Tensor,
    row_ranges: torch.Tensor | None = None,
    *,
    return_score: bool = False,
    precision: str = "ieee",
    block_b: int | None = None,
    block_k: int = 64,
    block_d: int = 32,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
):
    """Fused assignment; see `ops.assign.assign` for the contract. No host synchronisation.

    `out` = (labels (B,H) int64, counts (sum K,) int32, scores (B,H) fp32) reuses buffers
    (counts is zeroed here; labels and scores are overwritten).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = x.contiguous()
    centers = centers.contiguous()
    duals = duals.to(torch.float32).contiguous()
    head_offsets = head_offsets.to(device=x.device, dtype=torch.int64).contiguous()
    num_rows, dim = x.shape
    num_heads = head_offsets.numel() - 1
    if out is None:
        labels = torch.empty((num_rows, num_heads), dtype=torch.int64, device=x.device)
        counts = torch.zeros(centers.shape[0], dtype=torch.int32, device=x.device)
        scores = torch.empty((num_rows, num_heads), dtype=torch.float32, device=x.device)
    else:
        labels, counts, scores = out
        counts.zero_()
    if row_ranges is not None:
        row_ranges = row_ranges.to(torch.int64).contiguous()
    block_b = block_b or _row_block(num_rows, num_heads)
    grid = (triton.cdiv(num_rows, block_b), num_heads)
    if num_rows > 0:
        _assign_kernel[grid](
            x, centers, duals, head_offsets, row_ranges if row_ranges is not None else labels,
            labels, scores, counts,
            num_rows, dim, num_heads, x.stride(0), centers.stride(0),
            HAS_RANGES=row_ranges is not None, WRITE_SCORES=return_score, PRECISION=precision,
            BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_D=block_d,
        )
    return (labels, counts, scores) if return_score else (labels, counts)


@triton.jit
def _update_kernel(
    x_ptr, member_rows_ptr, starts_ptr, counts_ptr,
    centers_ptr, counters_ptr, duals_ptr, target_ptr,
    dim, stride_x, stride_c, batch_size, dual_lr,
    CLAMP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    k = tl.program_id(0)
    n = tl.load(counts_ptr + k).to(tl.int64)
    start = tl.load(starts_ptr + k)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < dim

    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for r0 in range(start, start + n, BLOCK_R):
        slot = r0 + tl.arange(0, BLOCK_R)
        slot_ok = slot < start + n
        rows = tl.load(member_rows_ptr + slot, mask=slot_ok, other=0)
        tile = tl.load(x_ptr + rows[:, None] * stride_x + dd[None, :],
                       mask=slot_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        total += tl.sum(tile, axis=0)

    k64 = k.to(tl.int64)
    center = tl.load(centers_ptr + k64 * stride_c + dd, mask=d_ok, other=0.0)
    m = tl.load(counters_ptr + k)
    m_f = m.to(tl.float32)
    n_f = n.to(tl.float32)
    blended = (m_f * center + total) / tl.maximum(m_f + n_f, 1.0)
    norm = tl.sqrt(tl.sum(blended * blended, axis=0))
    blended = blended / tl.maximum(norm, 1e-12)
    tl.store(centers_ptr + k64 * stride_c + dd, tl.where(n > 0, blended, center), mask=d_ok)
    tl.store(counters_ptr + k, m + n)

    rho = tl.load(duals_ptr + k) + dual_lr * (tl.load(target_ptr + k) - n_f / batch_size)
    if CLAMP:
        rho = tl.maximum(rho, 0.0)
    tl.store(duals_ptr + k, rho)


def update_triton_(
    x: torch.Tensor,
    member_rows: torch.Tensor,
    starts: torch.Tensor,
    counts: torch.Tensor,
    centers: torch.Tensor,
    counters: torch.Tensor,
    duals: torch.Tensor,
    dual_target: torch.Tensor,
    *,
    dual_lr: float,
    clamp: bool,
    block_r: int = 32,
) -> None:
    """In-place cluster update. `member_rows[starts[k] : starts[k] + counts[k]]` are cluster k's rows."""
    x = x.contiguous()
    assert centers.is_contiguous() and counters.is_contiguous() and duals.is_contiguous()
    num_clusters, dim = centers.shape
    _update_kernel[(num_clusters,)](
        x, member_rows, starts, counts,
        centers, counters, duals, dual_target.to(torch.float32).contiguous(),
        dim, x.stride(0), centers.stride(0), float(max(x.shape[0], 1)), float(dual_lr),
        CLAMP=clamp, BLOCK_R=block_r, BLOCK_D=triton.next_power_of_2(dim),
    )
