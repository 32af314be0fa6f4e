"""Optimisers (SGD, LARS, AdamW), parameter groups and the per-iteration warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from timm.optim import Lars as TimmLars
from timm.optim.lars import lars
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool, probe_prefixes=("probes.",),
                 skip=()):
    """Backbone/heads with decay, biases and norm weights without, online probes in their own group.
    Parameters in ``skip`` are left out (a method groups them itself)."""
    skip = {id(p) for p in skip}
    decay, no_decay, probes = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in skip:
            continue
        if name.startswith(probe_prefixes):
            probes.append(param)
        elif exclude_bias_and_norm and param.ndim <= 1:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]], probes


def scaled_lr(base_lr: float, global_batch: int, scale: bool) -> float:
    return base_lr * global_batch / 256 if scale else base_lr


class Lars(TimmLars):
    """timm's LARS, except that a group with ``"lars": False`` steps as torch.optim.SGD (momentum and weight decay,
    no trust ratio): timm adapts every group with non-zero weight decay, which would all but freeze SeCu's centres
    (the official code moves them by plain SGD, idstcv/SeCu main.py)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads, decay, adapt = [p.grad for p in params], group["weight_decay"], group["always_adapt"]
            if not group.get("lars", True):  # SGD's step: decay in the gradient, and none in the group (no ratio)
                grads, decay, adapt = [g.add(p, alpha=decay) for g, p in zip(grads, params)], 0.0, False
            momentum = group["momentum"]
            buffers = [self.state[p].get("momentum_buffer") for p in params] if momentum else []
            lars(params, grads, buffers, foreach=group["foreach"], lr=group["lr"], momentum=momentum,
                 dampening=group["dampening"], weight_decay=decay, nesterov=group["nesterov"],
                 trust_coeff=group["trust_coeff"], eps=group["eps"], trust_clip=group["trust_clip"],
                 always_adapt=adapt)
            for p, buffer in zip(params, buffers):  # created on the first step
                self.state[p]["momentum_buffer"] = buffer
        return loss


def build_optimizer(cfg, groups: list[dict], lr: float, on_cuda: bool) -> torch.optim.Optimizer:
    if cfg.implementation not in ("auto", "default", "foreach", "fused"):
        raise ValueError(f"unknown optim.implementation `{cfg.implementation}`; use auto, foreach, fused or default")
    impl = {} if cfg.implementation in ("auto", "default") else {cfg.implementation: True}
    if cfg.implementation == "auto" and on_cuda and cfg.name in ("sgd", "adamw"):
        impl = {"fused": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **impl)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), **impl)
    if cfg.name == "lars":
        # LARS adaptation is skipped for groups with weight_decay 0 (biases, norms, probes) and "lars": False.
        if cfg.implementation == "fused":
            raise ValueError("optim.implementation=fused: LARS has no fused kernel. Use auto (timm's LARS is "
                             "multi-tensor/foreach wherever torch supports it) or foreach")
        return Lars(groups, lr=lr, momentum=cfg.momentum, **impl)
    raise ValueError(f"unknown optim.name `{cfg.name}`; use sgd, lars or adamw")


def constant_lr(step: int) -> float:
    """LR multiplier of a group that keeps its lr (e.g. SeCu's centres)."""
    return 1.0


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, zero_steps: int = 0, min_ratio: float = 0.0) -> float:
    """LR multiplier: 0 for ``zero_steps`` (clustering initialisation), linear warm-up, then cosine."""
    if step < zero_steps:
        return 0.0
    step -= zero_steps
    total = max(1, total_steps - zero_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
