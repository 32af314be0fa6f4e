"""Thin collectives over torch.distributed that degrade to no-ops in a single process.

Every helper assumes all ranks pass tensors of the same shape (equal per-rank batch sizes,
as DDP with a distributed sampler gives).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends every rank's gradient back to the slice's owner.

    Scaling: rank s receives the SUM over ranks of d(L_r)/d(x_s), i.e. d(sum_r L_r)/d(x_s).
    If every rank's loss L_r is the mean over its local rows, the global loss on the
    concatenated batch is L = mean_r L_r, so x_s.grad = world_size * dL/dx_s. DDP then
    averages parameter gradients over ranks, which divides that factor away again: the
    DDP-averaged parameter gradients equal the single-process gradients of L.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        local = grad.shape[0] // world_size()
        return grad[rank() * local : (rank() + 1) * local]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all ranks along dim 0 (rank order), keeping gradients to the local slice."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all ranks along dim 0 (rank order); the result is detached."""
    if not is_distributed():
        return x.detach()
    return _all_gather_cat(x.detach())


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, returned as a new tensor (x is left untouched); no gradient."""
    if not is_distributed():
        return x.detach()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks, returned as a new tensor (x is left untouched); no gradient."""
    if not is_distributed():
        return x.detach()
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
