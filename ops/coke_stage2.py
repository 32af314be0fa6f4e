"""CoKe's one-view last stage (design §5): per-instance label slots and the moving average of the centres.

Slots are (R, H, S) tensors: for every row and head, S (label, weight) pairs; label -1 or weight 0 = empty.
Two rules:
- faithful (the official code): with f = 1 / (stage-2 epochs so far, this one included), a label already in a
  slot multiplies all weights by (1 - f) and adds f to its slot; a new label evicts the lowest-weight slot
  (weight v, lowest slot on ties), the others are multiplied by (1 - f) / (1 - v) and the new label gets f.
  So the weights of an instance seen in every stage-2 epoch always sum to 1.
- legacy: the weight is a count; a new label takes the first empty slot, else replaces the smallest count
  (lowest slot on ties), with count 1. The soft-target weight is count / stage-2 steps of the instance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def faithful_slot_update(labels: torch.Tensor, weights: torch.Tensor, new_labels: torch.Tensor,
                         fraction: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The official running average of one-hots over the stage-2 epochs; rows whose new label is -1 keep theirs."""
    new = new_labels.to(labels.dtype).unsqueeze(-1)
    hit = (labels == new) & (weights > 0)
    has_hit = hit.any(dim=-1, keepdim=True)
    slot = torch.where(has_hit, hit.to(torch.int8).argmax(dim=-1, keepdim=True),
                       weights.argmin(dim=-1, keepdim=True))
    evicted = torch.where(has_hit, 0.0, weights.gather(-1, slot))
    # v = 1 only with a single slot: nothing else is left to rescale.
    scale = torch.where(evicted < 1, (1 - fraction) / (1 - evicted).clamp_min(1e-12), 0.0)
    scaled = weights * scale
    kept = torch.where(has_hit, scaled.gather(-1, slot), 0.0)
    updated_weights = scaled.scatter(-1, slot, kept + fraction)
    updated_labels = labels.scatter(-1, slot, new.expand_as(slot))
    valid = new >= 0
    return torch.where(valid, updated_labels, labels), torch.where(valid, updated_weights, weights)


def legacy_slot_update(labels: torch.Tensor, counts: torch.Tensor,
                       new_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label counts: increment the label's slot, else take the first empty one, else replace the smallest count."""
    new = new_labels.to(labels.dtype).unsqueeze(-1)
    hit = labels == new
    empty = labels < 0
    slot = torch.where(
        hit.any(dim=-1), hit.to(torch.int8).argmax(dim=-1),
        torch.where(empty.any(dim=-1), empty.to(torch.int8).argmax(dim=-1), counts.argmin(dim=-1))).unsqueeze(-1)
    count = torch.where(hit.any(dim=-1, keepdim=True), counts.gather(-1, slot) + 1, 1.0)
    valid = new >= 0
    labels = labels.scatter(-1, slot, torch.where(valid, new, labels.gather(-1, slot)))
    counts = counts.scatter(-1, slot, torch.where(valid, count, counts.gather(-1, slot)))
    return labels, counts


def slot_soft_targets(labels: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(w / t) over the slots with a label and w > 0; rows with no such slot get all zeros."""
    occupied = (labels >= 0) & (weights > 0)
    logits = torch.where(occupied, weights / temperature, float("-inf"))
    any_occupied = occupied.any(dim=-1, keepdim=True)
    probs = torch.softmax(torch.where(any_occupied, logits, 0.0), dim=-1)
    return torch.where(occupied, probs, 0.0)


def moving_average_centers(averaged: torch.Tensor, epoch_centers: torch.Tensor,
                           fraction: torch.Tensor | float) -> torch.Tensor:
    """normalize((1 - f) * C_avg + f * normalize(C_epoch)), row-wise."""
    return F.normalize((1 - fraction) * averaged + fraction * F.normalize(epoch_centers, dim=1), dim=1)
