"""The slots of CoKe's step as typed interfaces: method.py calls only these, compose.py fills each with the paper's
object or a departure's. A part gets what it needs as arguments, never the whole LightningModule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol

import torch
from torch import nn

from ops.coke_state import CokeState

HeadLogits = Callable[[torch.Tensor], list[torch.Tensor]]  # a (B, D) output -> per head normalize(·)·C / T
HeadLoss = Callable[[list[torch.Tensor]], torch.Tensor]  # per-head logits -> the CE against this batch's targets
Log = Callable[[str, torch.Tensor], None]  # LightningModule.log


class OnlineNetwork(Protocol):
    """The online backbone and projection, which the clustering's input is computed from."""
    backbone: nn.Module
    projection: nn.Module

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...  # backbone features

    def encode_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]: ...


class Views(Protocol):
    """How many views the clustering sees, and how the loss combines them (views.py)."""

    def cluster_input(self, z: list[torch.Tensor]) -> torch.Tensor: ...

    def __call__(self, h: list[torch.Tensor], z: list[torch.Tensor], labels: torch.Tensor, ce: HeadLoss,
                 logits: HeadLogits) -> torch.Tensor: ...


class Assignment(Protocol):
    """What the clustering assigns (assignment.py): from the view's x in training, and outside it from a batch."""

    def encode(self, online: OnlineNetwork, x: torch.Tensor, batch: dict) -> torch.Tensor: ...

    def no_grad_input(self, online: OnlineNetwork, batch: dict) -> torch.Tensor: ...


class Target(Protocol):
    """Which label the loss predicts, against which centres (target.py)."""

    def labels(self, previous: torch.Tensor, index: torch.Tensor, state: CokeState) -> torch.Tensor: ...

    def centers(self, state: CokeState) -> torch.Tensor: ...


class SoftTarget(Protocol):
    """The CE's target for this batch (soft_target.py)."""

    def bind(self, labels: torch.Tensor, stage2: Optional[list[torch.Tensor]], clean: torch.Tensor,
             state: CokeState) -> HeadLoss: ...


class Term(Protocol):
    """An extra loss term (instance_term.py, coarse.py)."""

    def __call__(self, h: list[torch.Tensor], z: list[torch.Tensor], clean: torch.Tensor, batch: dict,
                 log: Log) -> torch.Tensor: ...


class Start(Protocol):
    """How the clusters start, before the first epoch (kmeans_start.py)."""

    def __call__(self, state: CokeState, batches: Callable[[], Iterable[dict]],
                 embed: Callable[[dict], torch.Tensor]) -> None: ...


class LastStage(Protocol):
    """When the one-view last stage runs, and its soft targets (last_stage.py)."""

    def runs(self, epoch: int, max_epochs: Callable[[], int]) -> bool: ...

    def targets(self, state: CokeState, index: torch.Tensor, running: bool) -> Optional[list[torch.Tensor]]: ...

    def epoch_start(self, state: CokeState, running: bool) -> None: ...


@dataclass
class Parts:
    """What compose.build returns: one object per slot, in the order the method registers them."""
    views: Views
    clustering: CokeState
    coarse_head: Optional[nn.Module]  # registered under this name: its checkpoint key
    assignment: Assignment
    target: Target
    soft_target: SoftTarget
    terms: list[Term]
    start: Start
    last_stage: LastStage
    cluster_weight: float
