"""The CoKe clustering state (design §5): centres, duals, counters and label memory, all in buffers.

Every rank holds a replica and calls `step` on the same gathered batch, so the replicas stay
identical without any broadcast. Nothing here synchronises with the host.

Rules this module fixes (the design leaves them open):
- Duplicated instance ids in one batch (DistributedSampler padding): every row takes part in
  the assignment, the counts, the duals and the centres as an ordinary row, but the label
  memory (and the stage-2 slots) receive, for every copy, the label of the copy that comes
  FIRST in the batch. So all copies write the same value and the result does not depend on
  the order in which the writes land.
- Coarse labels: with `superclass_sizes`, the clusters of every head are split into contiguous
  blocks, one per superclass, in proportion to its size (at least one each). A row whose
  coarse label is c may only take clusters of block c; a row with coarse label -1 may take any
  cluster of the head. The dual target of cluster k in block c is r * (B_c / K_c + B_u / K) / B,
  where B_c rows of the batch belong to c and B_u rows are unknown, so that the size bound
  r * N_c / K_c holds inside each superclass.
- Stage 2 (one view, last stage), when `stage2_slots` > 0: every instance keeps, per head,
  up to S (label, count) slots. On each step the new label either increments its slot, or
  takes the first empty slot with count 1, or, when all slots are taken, replaces the slot with
  the smallest count (the lowest slot on ties) with count 1. The weight of a slot is its count
  divided by the number of stage-2 steps that instance saw (its frequency over the epochs), and
  the soft target is softmax(weight / T) over the occupied slots. The end-of-epoch centres are
  averaged the same way. Call `begin_stage2()` when the last stage starts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .assign import assign, to_local_labels
from .coke_update import update_clusters_


def partition_clusters(num_clusters: int, superclass_sizes: Sequence[int]) -> list[int]:
    """Clusters per superclass: >= 1 each, the rest in proportion to the sizes (largest remainder)."""
    num_classes = len(superclass_sizes)
    if num_classes > num_clusters:
        raise ValueError(f"{num_classes} superclasses need at least as many clusters per head, got {num_clusters}")
    total = sum(superclass_sizes)
    spare = num_clusters - num_classes
    quotas = [spare * size / total if total > 0 else spare / num_classes for size in superclass_sizes]
    shares = [int(q) for q in quotas]
    by_remainder = sorted(range(num_classes), key=lambda c: (-(quotas[c] - shares[c]), c))
    for c in by_remainder[: spare - sum(shares)]:
        shares[c] += 1
    return [1 + share for share in shares]


def first_occurrence_rows(index: torch.Tensor) -> torch.Tensor:
    """For every row, the position of the first row in the batch with the same instance id."""
    sorted_ids, order = torch.sort(index, stable=True)
    positions = torch.arange(index.numel(), device=index.device)
    starts_group = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts_group[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group_start = torch.cummax(torch.where(starts_group, positions, 0), dim=0).values
    first = torch.empty_like(order)
    first[order] = order[group_start]
    return first


def _segments(offsets: list[int]) -> list[slice]:
    return [slice(lo, hi) for lo, hi in zip(offsets[:-1], offsets[1:])]


class CokeState(torch.nn.Module):
    def __init__(
        self,
        num_instances: int,
        num_clusters: Sequence[int],
        dim: int,
        ratio: float = 0.4,
        dual_lr: float = 20.0,
        kernel: str = "auto",
        max_scores: int = 2**22,
        seed: int = 0,
        stage2_slots: int = 0,
        stage2_temperature: float = 0.5,
        superclass_sizes: Sequence[int] | None = None,
    ):
        super().__init__()
        self.num_clusters = [int(k) for k in num_clusters]
        self.offsets = [0]
        for k in self.num_clusters:
            self.offsets.append(self.offsets[-1] + k)
        self.num_instances, self.dim = int(num_instances), int(dim)
        self.ratio, self.dual_lr = float(ratio), float(dual_lr)
        self.kernel, self.max_scores = kernel, int(max_scores)
        self.stage2_slots, self.stage2_temperature = int(stage2_slots), float(stage2_temperature)
        total, heads = self.offsets[-1], len(self.num_clusters)

        generator = torch.Generator().manual_seed(seed)
        centers = F.normalize(torch.randn(total, dim, generator=generator), dim=1)
        self.register_buffer("head_offsets", torch.tensor(self.offsets, dtype=torch.int64))
        self.register_buffer("centers", centers)
        self.register_buffer("prev_centers", centers.clone())
        self.register_buffer("duals", torch.zeros(total))
        self.register_buffer("counters", torch.zeros(total, dtype=torch.int64))
        self.register_buffer("label_memory", torch.full((num_instances, heads), -1, dtype=torch.int64))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        # Dashboard accumulators for the current epoch.
        self.register_buffer("epoch_bound", torch.zeros(total))
        self.register_buffer("epoch_changed", torch.zeros(heads, dtype=torch.int64))
        self.register_buffer("epoch_compared", torch.zeros(heads, dtype=torch.int64))

        head_size = torch.cat([torch.full((k,), float(k)) for k in self.num_clusters])
        self.register_buffer("head_size_of_cluster", head_size, persistent=False)
        self._init_superclasses(superclass_sizes)
        if self.stage2_slots > 0:
            self.register_buffer("slot_labels", torch.full((num_instances, heads, self.stage2_slots), -1, dtype=torch.int32))
            self.register_buffer("slot_counts", torch.zeros(num_instances, heads, self.stage2_slots))
            self.register_buffer("slot_steps", torch.zeros(num_instances))
            self.register_buffer("center_sum", torch.zeros(total, dim))
            self.register_buffer("center_epochs", torch.zeros((), dtype=torch.int64))

    def _init_superclasses(self, superclass_sizes):
        self.num_superclasses = 0 if superclass_sizes is None else len(superclass_sizes)
        if superclass_sizes is None:
            return
        starts, owner, block_size = [], [], []
        for head, k in enumerate(self.num_clusters):
            shares = partition_clusters(k, superclass_sizes)
            head_starts = [self.offsets[head]]
            for c, share in enumerate(shares):
                head_starts.append(head_starts[-1] + share)
                owner += [c] * share
                block_size += [float(share)] * share
            starts.append(head_starts)
        self.register_buffer("block_starts", torch.tensor(starts, dtype=torch.int64), persistent=False)
        self.register_buffer("superclass_of_cluster", torch.tensor(owner, dtype=torch.int64), persistent=False)
        self.register_buffer("block_size_of_cluster", torch.tensor(block_size), persistent=False)

    # ----------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, x: torch.Tensor, index: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        """One clustering step on the gathered batch; returns the previous-epoch local labels (B,H), -1 if none."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        device = self.centers.device
        x, index = x.to(device), index.to(device=device, dtype=torch.int64)
        if coarse is not None and self.num_superclasses > 0:
            coarse = coarse.to(device=device, dtype=torch.int64)
        else:
            coarse = None
        kernel = self.kernel if self.kernel != "auto" else ("triton" if x.is_cuda else "torch")

        prev_labels = self.label_memory[index]
        labels, counts = assign(
            x, self.centers, self.duals, self.head_offsets if kernel == "triton" else self.offsets,
            row_ranges=None if coarse is None else self.row_ranges(coarse),
            kernel=kernel, max_scores=self.max_scores)
        target = self.dual_target(coarse, x.shape[0])
        update_clusters_(x, labels, counts, self.centers, self.counters, self.duals, target,
                         dual_lr=self.dual_lr, clamp=self.ratio < 1.0, kernel=kernel)

        new_labels = to_local_labels(labels, self.head_offsets)[first_occurrence_rows(index)]
        self._track_epoch(prev_labels, new_labels, target, x.shape[0])
        self.label_memory[index] = new_labels
        if self.stage2_slots > 0:
            self._update_slots(index, new_labels)
        return prev_labels

    def row_ranges(self, coarse: torch.Tensor) -> torch.Tensor:
        """(B,H,2) absolute [lo, hi): the block of the row's superclass, or the whole head when coarse is -1."""
        known = (coarse >= 0).unsqueeze(1)
        klass = coarse.clamp_min(0)
        lo = torch.where(known, self.block_starts[:, klass].T, self.head_offsets[:-1])
        hi = torch.where(known, self.block_starts[:, klass + 1].T, self.head_offsets[1:])
        return torch.stack([lo, hi], dim=2)

    def dual_target(self, coarse: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(sum K,) target share n_k / B of every cluster: r / K, or the per-superclass share."""
        if coarse is None:
            return self.ratio / self.head_size_of_cluster
        known = coarse >= 0
        rows_of_class = torch.zeros(self.num_superclasses, device=coarse.device)
        rows_of_class.index_add_(0, coarse.clamp_min(0), known.to(torch.float32))
        unknown = (~known).sum().to(torch.float32)
        share = (rows_of_class[self.superclass_of_cluster] / self.block_size_of_cluster
                 + unknown / self.head_size_of_cluster)
        return self.ratio * share / max(batch_size, 1)

    def _track_epoch(self, prev_labels, new_labels, target, batch_size):
        compared = prev_labels >= 0
        self.epoch_compared += compared.sum(dim=0)
        self.epoch_changed += (compared & (prev_labels != new_labels)).sum(dim=0)
        self.epoch_bound += target * batch_size

    def _update_slots(self, index: torch.Tensor, new_labels: torch.Tensor) -> None:
        slot_labels = self.slot_labels[index]
        slot_counts = self.slot_counts[index]
        label = new_labels.to(slot_labels.dtype).unsqueeze(2)
        hit = slot_labels == label
        empty = slot_labels < 0
        chosen = torch.where(
            hit.any(dim=2), hit.to(torch.int8).argmax(dim=2),
            torch.where(empty.any(dim=2), empty.to(torch.int8).argmax(dim=2), slot_counts.argmin(dim=2)))
        chosen = chosen.unsqueeze(2)
        count = torch.where(hit.any(dim=2, keepdim=True), slot_counts.gather(2, chosen) + 1, 1.0)
        has_label = label >= 0
        slot_labels.scatter_(2, chosen, torch.where(has_label, label, slot_labels.gather(2, chosen)))
        slot_counts.scatter_(2, chosen, torch.where(has_label, count, slot_counts.gather(2, chosen)))
        self.slot_labels[index] = slot_labels
        self.slot_counts[index] = slot_counts
        self.slot_steps[index] = self.slot_steps[index] + 1

    # ---------------------------------------------------------------------------------------- epochs
    @torch.no_grad()
    def end_epoch(self) -> dict[str, torch.Tensor]:
        """Freeze the centres for the loss, reset the per-epoch counters; returns this epoch's summary."""
        summary = self.epoch_summary()
        self.prev_centers.copy_(self.centers)
        if self.stage2_slots > 0:
            self.center_sum += self.centers
            self.center_epochs += 1
        self.counters.zero_()
        self.epoch_bound.zero_()
        self.epoch_changed.zero_()
        self.epoch_compared.zero_()
        self.epoch += 1
        return summary

    @torch.no_grad()
    def begin_stage2(self) -> None:
        """Start the stage-2 averages afresh (call when the one-view last stage begins)."""
        if self.stage2_slots == 0:
            raise RuntimeError("stage 2 needs stage2_slots > 0 at construction")
        self.slot_labels.fill_(-1)
        self.slot_counts.zero_()
        self.slot_steps.zero_()
        self.center_sum.zero_()
        self.center_epochs.zero_()

    def loss_centers(self) -> torch.Tensor:
        """(sum K, D) centres the loss uses: the previous epoch's, or in stage 2 their average over epochs."""
        if self.stage2_slots == 0:
            return self.prev_centers
        averaged = F.normalize(self.center_sum, dim=1)
        return torch.where(self.center_epochs > 0, averaged, self.prev_centers)

    def split_heads(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        """Split a (sum K, ...) tensor into one view per head."""
        return [stacked[segment] for segment in _segments(self.offsets)]

    @torch.no_grad()
    def soft_targets(self, index: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 targets of one head: local labels (B,S) (-1 = empty slot) and probabilities (B,S).

        Rows with no occupied slot get all-zero probabilities, so they add nothing to a cross-entropy.
        """
        index = index.to(self.centers.device, torch.int64)
        labels = self.slot_labels[index, head].to(torch.int64)
        weights = self.slot_counts[index, head] / self.slot_steps[index].clamp_min(1).unsqueeze(1)
        occupied = labels >= 0
        logits = torch.where(occupied, weights / self.stage2_temperature, float("-inf"))
        any_occupied = occupied.any(dim=1, keepdim=True)
        probs = torch.softmax(torch.where(any_occupied, logits, 0.0), dim=1)
        return labels, torch.where(occupied, probs, 0.0)

    def dense_soft_targets(self, index: torch.Tensor, head: int) -> torch.Tensor:
        """The same targets as a dense (B, K_head) distribution."""
        labels, probs = self.soft_targets(index, head)
        dense = torch.zeros(labels.shape[0], self.num_clusters[head], device=probs.device)
        return dense.scatter_add_(1, labels.clamp_min(0), probs)

    # ------------------------------------------------------------------------------------ dashboards
    def cluster_sizes(self) -> list[torch.Tensor]:
        """Members of every cluster so far this epoch, per head (copies: `end_epoch` resets the counters)."""
        return [sizes.clone() for sizes in self.split_heads(self.counters)]

    def fraction_under_bound(self) -> torch.Tensor:
        """(H,) fraction of clusters whose size this epoch is under the bound r * N / K (per superclass if any)."""
        under = (self.counters.to(torch.float32) < self.epoch_bound).to(torch.float32)
        return torch.stack([part.mean() for part in self.split_heads(under)])

    def dual_stats(self) -> torch.Tensor:
        """(H, 3) min, mean and max of the duals of every head."""
        return torch.stack([torch.stack([d.min(), d.mean(), d.max()]) for d in self.split_heads(self.duals)])

    def fraction_changed(self) -> torch.Tensor:
        """(H,) fraction of this epoch's labels that differ from the instance's previous label."""
        return self.epoch_changed.to(torch.float32) / self.epoch_compared.clamp_min(1).to(torch.float32)

    def epoch_summary(self) -> dict[str, torch.Tensor]:
        return {
            "under_bound": self.fraction_under_bound(),
            "duals": self.dual_stats(),
            "changed": self.fraction_changed(),
            "min_size": torch.stack([sizes.min() for sizes in self.cluster_sizes()]),
            "max_size": torch.stack([sizes.max() for sizes in self.cluster_sizes()]),
        }

    def checksum(self) -> torch.Tensor:
        """(6,) float64 fingerprint of the state, to compare across ranks."""
        weights = torch.arange(1, self.centers.shape[1] + 1, device=self.centers.device, dtype=torch.float64)
        return torch.stack([
            self.centers.double().sum(),
            (self.centers.double() @ weights).sum(),
            self.duals.double().sum(),
            self.counters.double().sum(),
            self.label_memory.double().sum(),
            self.epoch.double(),
        ])

    def extra_repr(self) -> str:
        return (f"instances={self.num_instances}, clusters={self.num_clusters}, dim={self.dim}, "
                f"ratio={self.ratio}, dual_lr={self.dual_lr}, kernel={self.kernel!r}, "
                f"superclasses={self.num_superclasses}, stage2_slots={self.stage2_slots}")
