"""SwAV's swapped-prediction loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def swav_loss(
    logits_per_crop: list[torch.Tensor], codes_for_large: list[torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """Cross-entropy of every other crop's prediction against each large crop's codes, averaged over the terms.

    logits_per_crop: prototype scores (B, K) per crop, the large crops first, so that
        codes_for_large[i] are the codes (e.g. sinkhorn output) of logits_per_crop[i].
    codes_for_large: soft targets (B, K) whose rows sum to 1; treated as constants.
    The mean over all (code i, crop v != i) pairs equals SwAV's per-code mean over the other
    crops followed by the mean over codes, since every code has the same number of predictors.
    """
    if len(codes_for_large) > len(logits_per_crop):
        raise ValueError("there are more codes than crops; codes_for_large[i] must belong to logits_per_crop[i]")
    log_probs = [F.log_softmax(logits.float() / temperature, dim=1) for logits in logits_per_crop]
    terms = [
        -(codes.detach().float() * log_probs[crop]).sum(dim=1).mean()
        for i, codes in enumerate(codes_for_large)
        for crop in range(len(logits_per_crop))
        if crop != i
    ]
    return torch.stack(terms).mean()
