"""CoKe's one-view last stage (docs/algorithm.md §2): per-instance label slots and the moving average of the centres.

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


class OnlineCenters(torch.nn.Module):
    """The paper's centres (docs/algorithm.md §1.1-1.4), and the rules every stage-2 rule follows before its stage
    begins: assign against the online centres C, update them as normalised running means (`update_clusters_`),
    freeze them as C_prev for the loss at each epoch end. With no last stage (stage2_epochs = 0) it is the whole rule.
    Holds no buffers."""

    started = False  # host flag: `CokeState.step` never reads a device value to pick its branch
    exact_means = False  # stage 2 (faithful): the online centres are exact running means (`update_running_means_`)

    def begin(self) -> None:
        raise RuntimeError("stage 2 needs stage2_slots > 0 and a stage-2 rule at construction")

    def assign_centers(self, state) -> torch.Tensor:
        return state.centers

    def record(self, index: torch.Tensor, new_labels: torch.Tensor) -> None:
        pass

    def end_epoch(self, state) -> None:
        state.prev_centers.copy_(state.centers)

    def loss_centers(self, state) -> torch.Tensor:
        return state.prev_centers

    def slot_weights_of(self, index: torch.Tensor, head: int) -> torch.Tensor:
        raise RuntimeError("no stage-2 slots: stage2_epochs is 0")


def _mirror_started(module: "_Slots", incompatible_keys) -> None:
    """After a load: the host copy of `stage2_started`, read once here instead of in every step."""
    module.started = bool(module.stage2_started)


class _Slots(OnlineCenters):
    """Buffers both rules share: per instance and head, `slots` labels; whether the stage began; its epochs ended."""

    def __init__(self, num_instances: int, num_heads: int, slots: int):
        super().__init__()
        self.register_buffer("slot_labels", torch.full((num_instances, num_heads, slots), -1, dtype=torch.int32))
        self.register_buffer("stage2_started", torch.zeros((), dtype=torch.bool))
        self.register_buffer("center_epochs", torch.zeros((), dtype=torch.int64))  # stage-2 epochs ended
        self.register_load_state_dict_post_hook(_mirror_started)  # a function, not a lambda: ddp_spawn pickles it
        self.started = False

    @torch.no_grad()
    def begin(self) -> None:
        self.slot_labels.fill_(-1)
        self.center_epochs.zero_()
        self.stage2_started.fill_(True)
        self.started = True


class OfficialStage2(_Slots):
    """stage2_rule=faithful, the official code's last stage: from `begin`, batches are assigned against the averaged
    centres C_avg (`prev_centers`, fixed within the epoch), the online centres are exact running means, and at each
    epoch end C_avg <- normalize((1 - f) C_avg + f normalize(C_epoch)) with f = 1 / (stage-2 epochs so far); the
    slot weights are the running average of one-hots (`faithful_slot_update`)."""

    def __init__(self, num_instances: int, num_heads: int, slots: int):
        super().__init__(num_instances, num_heads, slots)
        self.register_buffer("slot_weights", torch.zeros(num_instances, num_heads, slots))

    def fraction(self) -> torch.Tensor:
        """f = 1 / (stage-2 epochs so far, the current one included), as a device scalar."""
        return 1.0 / (self.center_epochs + 1).to(torch.float32)

    def begin(self) -> None:
        super().begin()
        self.slot_weights.zero_()

    def assign_centers(self, state) -> torch.Tensor:
        return state.prev_centers if self.started else state.centers

    @property
    def exact_means(self) -> bool:
        return self.started

    def record(self, index: torch.Tensor, new_labels: torch.Tensor) -> None:
        if self.started:  # copies of one id carry the same label; they all write the same result once
            labels, weights = faithful_slot_update(self.slot_labels[index], self.slot_weights[index], new_labels,
                                                   self.fraction())
            self.slot_labels[index], self.slot_weights[index] = labels, weights

    def end_epoch(self, state) -> None:
        if not self.started:
            return super().end_epoch(state)
        state.prev_centers.copy_(moving_average_centers(state.prev_centers, state.centers, self.fraction()))
        state.centers.copy_(state.prev_centers)
        self.center_epochs += 1

    def slot_weights_of(self, index: torch.Tensor, head: int) -> torch.Tensor:
        return self.slot_weights[index, head]


class EarlierStage2(_Slots):
    """stage2_rule=legacy, this project's earlier last stage: assignment and centres as in stage 1; slot weights
    are label counts over the instance's steps (`legacy_slot_update`); the loss centres are the normalised sum of
    the stage-2 epochs' centres."""

    def __init__(self, num_instances: int, num_heads: int, slots: int, num_clusters: int, dim: int):
        super().__init__(num_instances, num_heads, slots)
        self.register_buffer("slot_counts", torch.zeros(num_instances, num_heads, slots))
        self.register_buffer("slot_steps", torch.zeros(num_instances))
        self.register_buffer("center_sum", torch.zeros(num_clusters, dim))

    def begin(self) -> None:
        super().begin()
        self.slot_counts.zero_()
        self.slot_steps.zero_()
        self.center_sum.zero_()

    def record(self, index: torch.Tensor, new_labels: torch.Tensor) -> None:
        labels, counts = legacy_slot_update(self.slot_labels[index], self.slot_counts[index], new_labels)
        self.slot_labels[index], self.slot_counts[index] = labels, counts
        self.slot_steps[index] = self.slot_steps[index] + 1

    def end_epoch(self, state) -> None:
        super().end_epoch(state)
        self.center_sum += state.centers
        self.center_epochs += 1

    def loss_centers(self, state) -> torch.Tensor:
        return torch.where(self.center_epochs > 0, F.normalize(self.center_sum, dim=1), state.prev_centers)

    def slot_weights_of(self, index: torch.Tensor, head: int) -> torch.Tensor:
        return self.slot_counts[index, head] / self.slot_steps[index].clamp_min(1).unsqueeze(1)


def paper_centers(num_instances: int, num_heads: int, slots: int) -> OnlineCenters:
    """The centres' rule of the paper and the official code: online centres, and from the last stage on (when it has
    slots) the official averaged centres."""
    return OfficialStage2(num_instances, num_heads, slots) if slots > 0 else OnlineCenters()


STAGE2_BUFFERS = ("slot_labels", "stage2_started", "center_epochs", "slot_weights", "slot_counts", "slot_steps",
                  "center_sum")
