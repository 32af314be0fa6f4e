"""Which label the loss predicts, against which centres (config section `method.target`)."""
from __future__ import annotations

import torch

from ops.coke_state import CokeState


class PreviousEpochLabel:
    """The paper: the label the instance got in the previous epoch, against the centres frozen at that epoch's end."""

    def labels(self, previous: torch.Tensor, index: torch.Tensor, state: CokeState) -> torch.Tensor:
        return previous

    def centers(self, state: CokeState) -> torch.Tensor:
        return state.loss_centers()


class CurrentLabel:
    """target.label=current: the label this step just wrote (the first copy's, for a duplicated id), against the
    current centres. Changes vs the paper: no epoch of delay between a label and its use (ledger:
    "target=current")."""

    def labels(self, previous: torch.Tensor, index: torch.Tensor, state: CokeState) -> torch.Tensor:
        return state.label_memory[index.to(previous.device)]

    def centers(self, state: CokeState) -> torch.Tensor:
        return state.centers
