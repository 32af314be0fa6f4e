"""When the one-view last stage runs (config fields `method.stage2_*`; docs/algorithm.md §2). Its rules on the
centres and the label slots are the clustering's (ops/coke_stage2.py); this part says when it begins and hands the
loss its soft targets."""
from __future__ import annotations

from typing import Callable

import torch

from ops.coke_state import CokeState


class NoLastStage:
    """stage2_epochs = 0, every shipped config (ledger: "stage 2 off"): the last stage never runs."""

    def runs(self, epoch: int, max_epochs: Callable[[], int]) -> bool:
        return False

    def targets(self, state: CokeState, index: torch.Tensor, running: bool) -> list[torch.Tensor] | None:
        return None

    def epoch_start(self, state: CokeState, running: bool) -> None:
        pass


class OfficialLastStage(NoLastStage):
    """The official one-view last stage: its final `epochs` epochs train on labels averaged over epochs."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def runs(self, epoch: int, max_epochs: Callable[[], int]) -> bool:
        return epoch >= max_epochs() - self.epochs

    def targets(self, state: CokeState, index: torch.Tensor, running: bool) -> list[torch.Tensor] | None:
        """The soft targets of the earlier stage-2 epochs: call BEFORE the step writes this epoch's labels."""
        if not running:
            return None
        return [state.dense_soft_targets(index, head) for head in range(len(state.num_clusters))]

    def epoch_start(self, state: CokeState, running: bool) -> None:
        # On a resume inside the first stage-2 epoch the state has begun stage 2 already: do not restart it.
        if running and not state.stage2_started:
            state.begin_stage2()
