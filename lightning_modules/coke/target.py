"""Which label the loss predicts, against which centres (config section `method.target`)."""
from __future__ import annotations

import torch


class PreviousEpochLabel:
    """The paper: the label the instance got in the previous epoch, against the centres frozen at that epoch's end."""

    def labels(self, module, previous: torch.Tensor, batch: dict) -> torch.Tensor:
        return previous

    def centers(self, clustering) -> torch.Tensor:
        return clustering.loss_centers()


class CurrentLabel:
    """target.label=current: the label this step just wrote (the first copy's, for a duplicated id), against the
    current centres. Changes vs the paper: no epoch of delay between a label and its use (ledger:
    "target=current")."""

    def labels(self, module, previous: torch.Tensor, batch: dict) -> torch.Tensor:
        return module.clustering.label_memory[batch["index"].to(previous.device)]

    def centers(self, clustering) -> torch.Tensor:
        return clustering.centers
