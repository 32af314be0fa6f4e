"""What of a cluster's members the next epoch's running mean starts from (config section `method.carried_members`)."""
from __future__ import annotations

import torch


class EpochReset:
    """The paper: the counters restart at each epoch, so an epoch's first member replaces its centre."""

    def carried(self, counters: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(counters)


class CarriedMembers:
    """A fraction c of each cluster's member count is carried into the next epoch, so its centre keeps c × its weight
    (an exponential memory of about 1/(1 − c) epochs of members) and moves smoothly instead of being replaced.
    Changes vs the paper: centres keep their identity across the epoch boundary (RESULTS.md ledger: center_carry)."""

    def __init__(self, fraction: float):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"center_carry must be in [0, 1), got {fraction}")
        self.fraction = float(fraction)

    def carried(self, counters: torch.Tensor) -> torch.Tensor:
        return torch.floor(counters * self.fraction).to(torch.int64)
