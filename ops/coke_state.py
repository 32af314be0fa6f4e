"""The CoKe clustering state (docs/algorithm.md §1): centres, duals, counters and label memory, all in buffers.

Every rank holds a replica and calls `step` on the same gathered batch, so the replicas stay
identical without any broadcast. Nothing here synchronises with the host.

Rules this module fixes (the official code leaves them open; docs/algorithm.md §6):
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
- Stage 2 (one view, last stage), when `stage2_slots` > 0: every instance keeps, per head, up to
  S (label, weight) slots, and the soft target is softmax(weight / T) over the slots with weight > 0.
  Call `begin_stage2()` when the last stage starts. The rule object at `self.stage2` owns the slots and picks the
  centres the assignment and the loss use (ops/coke_stage2.py: `OnlineCenters` without a last stage, the official
  code's `OfficialStage2` for "faithful", this project's earlier `EarlierStage2` for "legacy").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .assign import assign, to_local_labels
from .coke_carry import CarriedMembers, EpochReset
from .coke_partition import partition_clusters
from .coke_stage2 import STAGE2_BUFFERS, OnlineCenters, paper_centers, slot_soft_targets
from .coke_update import update_clusters_, update_running_means_


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


def _stage2_keys_moved(state_dict, prefix, *args) -> None:
    """Checkpoints from before the stage-2 strategies (ops/coke_stage2.py) hold its buffers on the state itself."""
    for name in STAGE2_BUFFERS:
        if prefix + name in state_dict:
            state_dict[f"{prefix}stage2.{name}"] = state_dict.pop(prefix + name)


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
        precision: str = "ieee",
        seed: int = 0,
        stage2_slots: int = 0,
        stage2_temperature: float = 0.5,
        superclass_sizes: Sequence[int] | None = None,
        center_carry: float = 0.0,
        stage2: OnlineCenters | None = None,
        carry: EpochReset | CarriedMembers | None = None,
    ):
        super().__init__()  # `stage2`, `carry`: the config's rule objects (coke/compose.py: center_rule, clustering)
        self.center_carry = float(center_carry)
        self.carry = carry or (CarriedMembers(self.center_carry) if self.center_carry else EpochReset())
        self.num_clusters = [int(k) for k in num_clusters]
        self.offsets = [0]
        for k in self.num_clusters:
            self.offsets.append(self.offsets[-1] + k)
        self.num_instances, self.dim = int(num_instances), int(dim)
        self.ratio, self.dual_lr = float(ratio), float(dual_lr)
        self.kernel, self.max_scores, self.precision = kernel, int(max_scores), precision
        self.stage2_slots, self.stage2_temperature = int(stage2_slots), float(stage2_temperature)
        total, heads = self.offsets[-1], len(self.num_clusters)

        generator = torch.Generator().manual_seed(seed)
        centers = F.normalize(torch.randn(total, dim, generator=generator), dim=1)
        self.register_buffer("head_offsets", torch.tensor(self.offsets, dtype=torch.int64))
        self.register_buffer("centers", centers)
        self.register_buffer("prev_centers", centers.clone())
        self.register_buffer("duals", torch.zeros(total))
        self.register_buffer("counters", torch.zeros(total, dtype=torch.int64))
        # Members carried into this epoch's counters by center_carry (not this epoch's members: dashboards skip them).
        self.register_buffer("carried", torch.zeros(total, dtype=torch.int64))
        self.register_buffer("label_memory", torch.full((num_instances, heads), -1, dtype=torch.int64))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
        # Dashboard accumulators for the current epoch.
        self.register_buffer("epoch_bound", torch.zeros(total))
        self.register_buffer("epoch_changed", torch.zeros(heads, dtype=torch.int64))
        self.register_buffer("epoch_compared", torch.zeros(heads, dtype=torch.int64))

        head_size = torch.cat([torch.full((k,), float(k)) for k in self.num_clusters])
        self.register_buffer("head_size_of_cluster", head_size, persistent=False)
        self._init_superclasses(superclass_sizes)
        self.stage2 = stage2 if stage2 is not None else paper_centers(num_instances, heads, self.stage2_slots)
        self._register_load_state_dict_pre_hook(_stage2_keys_moved)

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

        prev_labels = self.label_memory[index]  # y^{t-1}: read before this step writes y^t (§1.5)
        # §1.1 y_i = argmax_k x_i·c_k + ρ_k: the duals ρ hold every cluster above its size bound r·N/K
        labels, counts = assign(
            x, self.stage2.assign_centers(self), self.duals,
            self.head_offsets if kernel == "triton" else self.offsets,
            row_ranges=None if coarse is None else self.row_ranges(coarse),
            kernel=kernel, max_scores=self.max_scores, precision=self.precision)
        target, clamp = self.dual_target(coarse, x.shape[0]), self.ratio < 1.0  # r / K; no clamp at r = 1
        if self.stage2.exact_means:  # §2: in the official last stage the online centres are exact running means
            update_running_means_(x, labels, counts, self.centers, self.counters, self.duals, target, self.offsets,
                                  dual_lr=self.dual_lr, clamp=clamp)
        else:  # §1.2 dual step ρ_k ← max(0, ρ_k + η(r/K − n_k/B)); §1.3 c_k ← normalize(m_k c_k + Σ x_i)
            update_clusters_(x, labels, counts, self.centers, self.counters, self.duals, target,
                             dual_lr=self.dual_lr, clamp=clamp, kernel=kernel)

        new_labels = to_local_labels(labels, self.head_offsets)[first_occurrence_rows(index)]
        self._track_epoch(prev_labels, new_labels, target, x.shape[0])
        self.label_memory[index] = new_labels
        self.stage2.record(index, new_labels)
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
        rows_of_class = torch.zeros(self.num_superclasses, dtype=self.duals.dtype, device=coarse.device)
        rows_of_class.index_add_(0, coarse.clamp_min(0), known.to(rows_of_class.dtype))
        unknown = (~known).sum().to(rows_of_class.dtype)
        share = (rows_of_class[self.superclass_of_cluster] / self.block_size_of_cluster
                 + unknown / self.head_size_of_cluster)
        return self.ratio * share / max(batch_size, 1)

    def _track_epoch(self, prev_labels, new_labels, target, batch_size):
        compared = prev_labels >= 0
        self.epoch_compared += compared.sum(dim=0)
        self.epoch_changed += (compared & (prev_labels != new_labels)).sum(dim=0)
        self.epoch_bound += target * batch_size

    # ---------------------------------------------------------------------------------------- epochs
    @torch.no_grad()
    def end_epoch(self) -> dict[str, torch.Tensor]:
        """Freeze the centres for the loss, reset the per-epoch counters; returns this epoch's summary."""
        summary = self.epoch_summary()
        self.stage2.end_epoch(self)
        self.carried.copy_(self.carry.carried(self.counters))  # the paper: none (ops/coke_carry.py)
        self.counters.copy_(self.carried)
        self.epoch_bound.zero_()
        self.epoch_changed.zero_()
        self.epoch_compared.zero_()
        self.epoch += 1
        return summary

    @torch.no_grad()
    def load_clusters(self, centers: torch.Tensor, labels: torch.Tensor) -> None:
        """Start from given clusters as if an initialisation epoch had just ended: centres (sum K, D) for the
        assignment and the loss, local labels (N, H) as every instance's previous-epoch label (-1: none), duals
        and counters at zero (so each centre is replaced by its first member of the next epoch, as after any
        epoch)."""
        if centers.shape != self.centers.shape or labels.shape != self.label_memory.shape:
            raise ValueError(f"need centres {tuple(self.centers.shape)} and labels {tuple(self.label_memory.shape)}, "
                             f"got {tuple(centers.shape)} and {tuple(labels.shape)}")
        self.centers.copy_(F.normalize(centers.to(self.centers), dim=1))
        self.prev_centers.copy_(self.centers)
        self.label_memory.copy_(labels)
        self.duals.zero_()
        self.counters.zero_()
        self.carried.zero_()

    def begin_stage2(self) -> None:  # start the stage-2 averages afresh, when the one-view last stage begins
        self.stage2.begin()

    @property
    def stage2_started(self) -> bool:
        return self.stage2.started

    def loss_centers(self) -> torch.Tensor:
        """(sum K, D) centres the loss uses: the previous epoch's, or in stage 2 the strategy's average."""
        return self.stage2.loss_centers(self)

    def split_heads(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        """Split a (sum K, ...) tensor into one view per head."""
        return [stacked[segment] for segment in _segments(self.offsets)]

    @torch.no_grad()
    def soft_targets(self, index: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 targets of one head: local labels (B,S) (-1 = empty slot) and probabilities (B,S).

        Rows with no occupied slot get all-zero probabilities, so they add nothing to a cross-entropy.
        """
        index = index.to(self.centers.device, torch.int64)
        labels = self.stage2.slot_labels[index, head].to(torch.int64)
        return labels, slot_soft_targets(labels, self.stage2.slot_weights_of(index, head), self.stage2_temperature)

    def dense_soft_targets(self, index: torch.Tensor, head: int) -> torch.Tensor:
        """The same targets as a dense (B, K_head) distribution."""
        labels, probs = self.soft_targets(index, head)
        dense = torch.zeros(labels.shape[0], self.num_clusters[head], device=probs.device)
        return dense.scatter_add_(1, labels.clamp_min(0), probs)

    # ------------------------------------------------------------------------------------ dashboards
    def cluster_sizes(self) -> list[torch.Tensor]:
        """Members of every cluster so far this epoch, per head (copies: `end_epoch` resets the counters)."""
        return [sizes.clone() for sizes in self.split_heads(self.counters - self.carried)]

    def fraction_under_bound(self) -> torch.Tensor:
        """(H,) fraction of clusters whose size this epoch is under the bound r * N / K (per superclass if any)."""
        under = ((self.counters - self.carried).to(torch.float32) < self.epoch_bound).to(torch.float32)
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
                f"superclasses={self.num_superclasses}, stage2_slots={self.stage2_slots}, "
                f"stage2={type(self.stage2).__name__}")
