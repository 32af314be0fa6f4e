"""SwAV: swapped prediction of Sinkhorn codes over learnable prototypes.

Codes come from the large crops only; every other crop (the other large one and the small multi-crop
views) predicts them. The prototypes are renormalised before every step and get no update for the first
``freeze_prototypes_iters`` steps. With small batches the codes are near uniform and the loss sits at
ln K: the optional queue of past embeddings (per rank, as in SwAV; kept out of DDP's buffer broadcast)
joins the Sinkhorn batch once it is full. Whether it is full is known on the host (a count kept next to the
buffer ``queue_count``), so no step waits for the device to ask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from ops.sinkhorn import sinkhorn
from ops.swav import swav_loss

LARGE_CROPS = 2


def _mirror_queue_count(module: "SwAV", incompatible_keys) -> None:
    """After a state dict is loaded: the host's copy of the loaded ``queue_count`` (read once, outside the steps)."""
    module._queue_written = int(module.queue_count)


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    num_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_iters: int = 313  # optimiser steps without prototype updates
    queue_length: int = 0  # embeddings per large crop, per device; 0: no queue
    queue_start_epoch: int = 15  # the queue is filled from this epoch on, and used once full


class SwAV(PretrainModule):
    Config = SwAVConfig

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        dim = self.cfg.model.proj_output_dim
        self.projection = self.projector()
        self.prototypes = nn.Linear(dim, self.method_cfg.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(LARGE_CROPS, self.method_cfg.queue_length, dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # embeddings written so far
        self._ddp_params_and_buffers_to_ignore = ["queue", "queue_count"]
        # ``queue_count`` on the host: kept by enqueue, and read from the buffer once whenever a state dict is loaded
        # (a resume or a warm start), never inside a step.
        self._queue_written = 0
        self.register_load_state_dict_post_hook(_mirror_queue_count)  # a function, so the module pickles (ddp_spawn)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_after_backward(self) -> None:
        if self.global_step < self.method_cfg.freeze_prototypes_iters:
            self.prototypes.weight.grad = None

    def queue_started(self) -> bool:
        return self.queue.shape[1] > 0 and self.current_epoch >= self.method_cfg.queue_start_epoch

    def queue_in_use(self) -> bool:
        return self.queue_started() and self._queue_written >= self.queue.shape[1]

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, crop: int, use_queue: bool) -> torch.Tensor:
        """Sinkhorn codes (B, K) of one large crop's scores, computed together with the queue's scores if asked."""
        batch = scores.shape[0]
        if use_queue:
            scores = torch.cat([self.queue[crop] @ self.prototypes.weight.T, scores])
        cfg = self.method_cfg
        return sinkhorn(scores, cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)[-batch:]

    @torch.no_grad()
    def enqueue(self, embeddings: list[torch.Tensor]) -> None:
        length = self.queue.shape[1]
        newest = [z[-length:] for z in embeddings]  # a batch longer than the queue keeps its last rows
        rows = (self.queue_count + torch.arange(newest[0].shape[0], device=self.queue.device)) % length
        for crop, z in enumerate(newest):
            self.queue[crop, rows] = z.detach().to(self.queue.dtype)
        self.queue_count += newest[0].shape[0]
        self._queue_written += newest[0].shape[0]

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        embeddings = [F.normalize(self.projection(f), dim=1) for f in feats]
        scores = [self.prototypes(z) for z in embeddings]
        use_queue = self.queue_in_use()
        codes = [self.codes(scores[crop], crop, use_queue) for crop in range(LARGE_CROPS)]
        if self.queue_started():
            self.enqueue(embeddings[:LARGE_CROPS])
        self.log("train/queue_in_use", float(use_queue))
        return swav_loss(scores, codes, self.method_cfg.temperature)
