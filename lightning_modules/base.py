"""The base of every pretraining method: backbone, online probes, optimiser and schedule.

A method subclasses :class:`PretrainModule`, builds its heads in ``__init__`` and implements
``training_loss(batch, feats)``; everything else lives here.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics.classification import MulticlassAccuracy

from configs.schema import MethodConfig
from lightning_modules.backbone import build_backbone
from lightning_modules.heads import mlp
from lightning_modules.run.host_reads import logging_step, took_logging_step
from lightning_modules.optim import build_optimizer, constant_lr, param_groups, scaled_lr, warmup_cosine
from ops.precision import upcast


class NonFiniteLossError(FloatingPointError):
    pass


class PretrainModule(pl.LightningModule):
    Config = MethodConfig  # each method declares its own hyper-parameter dataclass
    zero_lr_epochs = 0  # epochs at lr 0 before training (CoKe's clustering initialisation)
    # Images in one epoch of the lr-0 phase and of the warm-up (zero_lr_epochs, optim.warmup_epochs); 0: the run's
    # own epoch. SeCu counts both in epochs of its official data set, whatever the subset or batch.
    schedule_epoch_images = 0

    def __init__(self, cfg: dict, data_info: dict):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "data_info": data_info})  # plain containers: weights_only-safe
        self.cfg = OmegaConf.create(cfg)
        self.data_info = data_info
        model_cfg = self.cfg.model
        self.backbone, self.feat_dim = build_backbone(model_cfg.backbone, model_cfg.cifar_stem, **model_cfg.kwargs)
        if model_cfg.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # Kept out of the module tree so checkpoints hold the plain backbone's keys either way.
        self.__dict__["compiled_backbone"] = torch.compile(self.backbone) if model_cfg.compile else None
        self.probes = nn.ModuleDict()  # none on unlabelled images (num_fine 0): the datamodule says so once
        if data_info["num_fine"]:
            self.probes["fine"] = nn.Linear(self.feat_dim, data_info["num_fine"])
        if data_info["num_coarse"]:
            self.probes["coarse"] = nn.Linear(self.feat_dim, data_info["num_coarse"])
        self.register_buffer("first_nonfinite_step", torch.tensor(-1), persistent=False)
        self.register_buffer("first_nonfinite_loss", torch.tensor(0.0), persistent=False)
        self.val_acc = nn.ModuleDict({
            level: MulticlassAccuracy(probe.out_features, top_k=1, average="micro")
            for level, probe in self.probes.items()
        })

    # ---- pieces a method builds on -------------------------------------------------------
    def projector(self, out_dim: int | None = None, last_bn: bool = False) -> nn.Module:
        m = self.cfg.model
        return mlp(self.feat_dim, m.proj_hidden_dim, out_dim or m.proj_output_dim, m.proj_layers, last_bn)

    def predictor(self, dim: int | None = None) -> nn.Module:
        m = self.cfg.model
        dim = dim or m.proj_output_dim
        return mlp(dim, m.pred_hidden_dim or 4 * dim, dim, 2)

    @property
    def method_cfg(self):
        return self.cfg.method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        backbone = self.compiled_backbone if self.compiled_backbone is not None and self.training else self.backbone
        return backbone(images)

    def encode_views(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features per view, one forward per resolution (multi-crop friendly)."""
        feats: list[torch.Tensor | None] = [None] * len(views)
        sizes = sorted({v.shape[-1] for v in views}, reverse=True)
        for size in sizes:
            ids = [i for i, v in enumerate(views) if v.shape[-1] == size]
            out = self(torch.cat([views[i] for i in ids])).chunk(len(ids))
            for i, f in zip(ids, out):
                feats[i] = f
        return feats

    def training_batches(self):
        """One pass over the training loader before training (the methods that embed the whole training set first):
        each batch on the device with its views made by the datamodule, as in training, under no grad and the
        precision's forward context."""
        trainer = self.trainer
        for batch in trainer.train_dataloader:
            batch = trainer.strategy.batch_to_device(trainer.precision_plugin.convert_input(batch))  # as the fit loop
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                yield batch

    def training_loss(self, batch: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # ---- training ------------------------------------------------------------------------
    def logging_step(self) -> bool:
        """Whether this step's metrics reach the loggers: the only steps that may read tensors on the host."""
        return logging_step(self.global_step, self.log_every_n_steps())

    def log_every_n_steps(self) -> int:
        """The trainer's, which wins over ``logger.log_every_n_steps`` when ``trainer.log_every_n_steps`` is set."""
        return self._trainer.log_every_n_steps if self._trainer is not None else self.cfg.logger.log_every_n_steps

    def log_step(self, name: str, value: torch.Tensor, **kwargs) -> None:
        """``self.log`` on logging steps only: logging a tensor reads it on the host, which waits for the device."""
        if self.logging_step():
            self.log(name, value, on_step=True, on_epoch=False, **kwargs)

    def online_probe_loss(self, feats: torch.Tensor, batch: dict) -> torch.Tensor:
        """Linear probes on detached features: they learn, the backbone gets no gradient from them. Unknown labels
        (-1) are ignored without a boolean mask, whose data-dependent size would be read on the host."""
        feats = upcast(feats.detach())
        total = feats.new_zeros(())
        for level, probe in self.probes.items():
            labels = batch[level]
            logits = probe(feats)
            valid = (labels >= 0).float()
            count = valid.sum().clamp(min=1)
            total = total + F.cross_entropy(logits, labels.clamp(min=0), reduction="none").mul(valid).sum() / count
            self.log_step(f"online/train_{level}_acc1", ((logits.argmax(1) == labels).float() * valid).sum() / count)
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        views = batch["views"]
        feats = self.encode_views(views)
        loss = self.training_loss(batch, feats)
        self.watch_finite(loss)
        if self.logging_step() or batch_idx == 0:  # the first step on an epoch's saved weights is checked at once
            self.check_finite()
        self.log_step("train/loss", loss)  # the bar shows it from the loggers (run_progress.py)
        return loss + self.online_probe_loss(feats[0], batch)

    def watch_finite(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss was not finite, on the device (no host read)."""
        loss = loss.detach().float()
        first = ~torch.isfinite(loss) & (self.first_nonfinite_step < 0)
        self.first_nonfinite_step.copy_(torch.where(first, self.global_step, self.first_nonfinite_step))
        self.first_nonfinite_loss.copy_(torch.where(first, loss, self.first_nonfinite_loss))

    def check_finite(self) -> None:
        """Stop on a non-finite loss seen since the last check (on logging steps, epoch starts and epoch ends)."""
        step = int(self.first_nonfinite_step)
        if step < 0:
            return
        raise NonFiniteLossError(
            f"loss became {float(self.first_nonfinite_loss)} at global step {step} (epoch {self.current_epoch}). "
            "The run stopped; the last good checkpoint (checkpoints/last.ckpt: the newest weights that gave a finite "
            "loss) is kept. "
            "Lower optim.lr, raise optim.warmup_epochs, or try trainer.precision=32, then resume=<that checkpoint>"
        )

    def on_train_epoch_end(self) -> None:
        self.check_finite()  # before the epoch's checkpoint is saved

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        feats = self(batch["eval_view"]).float()
        for level, probe in self.probes.items():
            labels = batch[level]
            valid = labels >= 0
            if valid.any():
                self.val_acc[level].update(probe(feats[valid]), labels[valid])

    def on_validation_epoch_end(self) -> None:
        for level, metric in self.val_acc.items():
            if metric.update_count:
                self.log(f"online/{level}_acc1", metric.compute(), prog_bar=level == "fine", sync_dist=False)
            metric.reset()

    # ---- optimiser -----------------------------------------------------------------------
    def global_batch_size(self) -> int:
        trainer = self.trainer
        return self.cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    def own_param_groups(self) -> list[dict]:
        """Groups a method sets apart ({"params", "lr", "weight_decay", "name"}); "scheduled": False keeps the lr."""
        return []

    def configure_optimizers(self):
        optim_cfg = self.cfg.optim
        global_batch = self.global_batch_size()
        lr = scaled_lr(optim_cfg.lr, global_batch, optim_cfg.scale_lr)
        own = self.own_param_groups()
        groups, probe_params = param_groups(self, optim_cfg.weight_decay, optim_cfg.exclude_bias_and_norm,
                                            skip=[p for group in own for p in group["params"]])
        groups += own
        groups.append({"params": probe_params, "weight_decay": 0.0, "lr": optim_cfg.probe_lr, "name": "probes"})
        for group in groups:
            group.setdefault("lr", lr)
        optimizer = build_optimizer(optim_cfg, groups, lr, on_cuda=self.device.type == "cuda")
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = self.schedule_steps_per_epoch(max(1, total // max(1, self.trainer.max_epochs or 1)))
        schedule = partial(
            warmup_cosine, total_steps=total, warmup_steps=int(optim_cfg.warmup_epochs * steps_per_epoch),
            zero_steps=self.zero_lr_epochs * steps_per_epoch, min_ratio=optim_cfg.min_lr_ratio,
        )
        t = self.trainer
        self.lr_scaling = {
            "global_batch": global_batch, "per_device_batch": self.cfg.data.batch_size, "devices": t.num_devices,
            "num_nodes": t.num_nodes, "accumulate_grad_batches": t.accumulate_grad_batches,
            "base_lr": optim_cfg.lr, "lr": lr, "scaled": optim_cfg.scale_lr,
        }
        scheduler = LambdaLR(optimizer, [schedule if g.get("scheduled", True) else constant_lr for g in groups])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def schedule_steps_per_epoch(self, loader_steps: int) -> int:
        """Steps in one epoch of the lr-0 phase and the warm-up: the loader's epoch, or `schedule_epoch_images`
        images when the method counts them in images."""
        if self.schedule_epoch_images:
            return max(1, self.schedule_epoch_images // self.global_batch_size())
        return loader_steps

    def on_train_start(self) -> None:
        info = getattr(self, "lr_scaling", {})
        if self.logger is not None and info:
            self.logger.log_hyperparams({f"optim/{k}": v for k, v in info.items()})
        batch = (f"global batch {info.get('global_batch')} = {info.get('per_device_batch')} per device x "
                 f"{info.get('devices')} device(s) x {info.get('num_nodes')} node(s) x "
                 f"{info.get('accumulate_grad_batches')} accumulated")
        lr = (f"lr = {info.get('base_lr')} x {info.get('global_batch')}/256 = {info.get('lr')}" if info.get("scaled")
              else f"lr {info.get('lr')} (not batch-scaled)")
        self.print(f"{batch}: {lr}")

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        if took_logging_step(self.trainer):
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
