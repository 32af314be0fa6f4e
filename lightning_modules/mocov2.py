"""MoCo v2: queries from the online encoder, keys from its momentum copy, negatives from a queue of past keys.

The loss is symmetric (each view's query against the other view's key), and both views' keys are
enqueued. Under DDP the keys of every rank are enqueued, so the queue is identical on all ranks; it is
kept out of DDP's per-step buffer broadcast for that reason. MoCo's shuffled BatchNorm is not used:
set model.sync_batchnorm=true on several devices instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from configs.schema import MethodConfig
from lightning_modules.base import PretrainModule
from lightning_modules.momentum import MomentumEncoder, MomentumKeys
from ops.contrastive import info_nce
from ops.distributed import gather_no_grad


@dataclass
class MoCoV2Config(MethodConfig):
    name: str = "mocov2"
    temperature: float = 0.2
    queue_size: int = 65536  # keys kept as negatives (the same on every rank)
    base_momentum: float = 0.99  # EMA momentum at step 0, raised to final_momentum by a cosine
    final_momentum: float = 1.0


class MoCoV2(MomentumKeys, PretrainModule):
    Config = MoCoV2Config

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__(cfg, data_info)
        self.projection = self.projector()
        self.key_encoder = MomentumEncoder(self.backbone, self.projection)
        dim = self.cfg.model.proj_output_dim
        self.register_buffer("queue", F.normalize(torch.randn(self.method_cfg.queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._ddp_params_and_buffers_to_ignore = ["queue", "queue_ptr"]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(gather_no_grad(keys).float(), dim=1)
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        q1, q2 = (self.projection(f) for f in feats[:2])
        k1, k2 = self.momentum_keys(batch["views"][:2])
        # A snapshot: enqueueing below writes into the buffer that backward still needs.
        queue = self.queue.clone()
        temperature = self.method_cfg.temperature
        loss = (info_nce(q1, k2, temperature, queue) + info_nce(q2, k1, temperature, queue)) / 2
        self.enqueue(torch.cat([k1, k2]))
        return loss
