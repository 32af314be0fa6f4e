"""The dtype that losses and clustering compute in: float32 for reduced-precision activations (bf16/fp16 logits over
a small temperature would blur), and float64 kept as it is, so that a float64 run stays float64 end to end (the
numeric reference of tests/coke_reference.py runs in float64, where round-off cannot differ between machines)."""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its compute dtype: bf16/fp16 (and float32) as float32, float64 unchanged."""
    return x.to(compute_dtype(x.dtype))
