"""CoKe's per-epoch dashboard: cluster sizes, the bound, duals, label churn and NMI; plus a cross-rank check.
Logging only: the clustering's epoch boundary is the method's `on_train_epoch_end`, which passes the summary in."""
from __future__ import annotations

import torch
from torchmetrics.functional.clustering import normalized_mutual_info_score

from ops.coke_state import CokeState
from ops.distributed import gather_no_grad, is_distributed


def assert_ranks_agree(state: CokeState) -> None:
    """Every rank runs the same update; a differing checksum means they diverged (e.g. unequal batches)."""
    if not is_distributed():
        return
    sums = gather_no_grad(state.checksum().unsqueeze(0))
    if not torch.equal(sums, sums[:1].expand_as(sums)):
        raise RuntimeError(
            "CoKe clustering state differs across ranks: every rank must see the same gathered batch. "
            "Check that drop_last is on and that no rank skips a step; the state checksums were "
            f"{sums.tolist()}"
        )


def epoch_logs(state: CokeState, instance_labels: torch.Tensor, summary: dict,
               sizes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The epoch that just ended, for `log_dict`: `summary` from `CokeState.end_epoch`, `sizes` its clusters' member
    counts, `instance_labels` the (N, 2) fine and coarse classes of the instances seen (-1: not yet)."""
    logs = {}
    labels = state.label_memory
    seen = instance_labels[:, 0] >= 0
    for head in range(len(sizes)):
        logs[f"coke/h{head}_under_bound"] = summary["under_bound"][head]
        logs[f"coke/h{head}_dual_min"], logs[f"coke/h{head}_dual_mean"], logs[f"coke/h{head}_dual_max"] = summary["duals"][head]
        logs[f"coke/h{head}_changed"] = summary["changed"][head]
        logs[f"coke/h{head}_min_size"] = summary["min_size"][head].float()
        logs[f"coke/h{head}_max_size"] = summary["max_size"][head].float()
        if seen.any() and head == 0:
            for level, column in (("fine", 0), ("coarse", 1)):
                truth = instance_labels[seen, column]
                if (truth >= 0).all():
                    logs[f"coke/nmi_{level}"] = normalized_mutual_info_score(labels[seen, head], truth)
    return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in logs.items()}


def log_size_histograms(loggers: list, sizes: list[torch.Tensor], step: int, rank: int) -> None:
    """The clusters' sizes per head, as histograms to Weights & Biases (rank 0 only)."""
    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger" and rank == 0:
            import wandb

            logger.experiment.log({
                f"coke/h{h}_cluster_sizes": wandb.Histogram(s.cpu().numpy()) for h, s in enumerate(sizes)
            } | {"trainer/global_step": step})
