"""MoCo v2, MoCo v3, SwAV and DeepCluster-v2 on real CIFAR-10: they train, and resume keeps their state.

Each run starts from the method's CIFAR-10 config, shrunk to a small backbone and a subset. The losses
themselves are tested in test_losses.py.
"""
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from configs.loader import load_config, to_plain
from datamodules import PretrainDataModule
from lightning_modules.registry import method_class, method_schemas
from training_utils import SEED, make_trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pretrain"
TINY = [
    "model.backbone=resnet10t", "model.cifar_stem=false", "model.proj_hidden_dim=256", "model.pred_hidden_dim=256",
    "data.batch_size=64", "data.num_workers=0", "data.pin_memory=false", "data.subset=100", "data.eval_subset=50",
    "optim.name=sgd", "optim.lr=0.3", "optim.warmup_epochs=0", "optim.probe_lr=0.5",
]
SMALL_STATE = {  # queues and heads scaled to 1000 training images
    "mocov2": ["method.queue_size=512"],
    "mocov3": [],
    "swav": ["method.num_prototypes=20", "method.queue_length=128", "method.queue_start_epoch=1",
             "method.freeze_prototypes_iters=5"],
    "deepclusterv2": ["method.num_prototypes=[20,30,40]"],
}
STATE_BUFFERS = {
    "mocov2": ["queue", "queue_ptr"],
    "mocov3": [],  # its state is the momentum encoder's weights, compared below with every tensor
    "swav": ["queue", "queue_count"],
    "deepclusterv2": ["memory", "prototypes", "assignments", "clustered_epoch"],
}


def build(method: str, cifar10_tar, cache_dir, *overrides: str):
    cfg = load_config(CONFIGS / f"{method}_cifar10.yaml", [
        *TINY, *SMALL_STATE[method], f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}",
        *overrides,
    ], method_schemas())
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    pl.seed_everything(SEED)
    return method_class(method)(to_plain(cfg), asdict(datamodule.info)), datamodule


class StateAtStart(pl.Callback):
    """The step and the module's tensors as fit starts (after a checkpoint restore, before the method's hooks)."""

    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class Losses(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(trainer.callback_metrics["train/loss"].item())


@pytest.mark.parametrize("method", list(SMALL_STATE))
def test_fits_and_resumes_with_its_state(method, tmp_path, cifar10_tar, cache_dir):
    model, datamodule = build(method, cifar10_tar, cache_dir)
    first = make_trainer(2)
    first.fit(model, datamodule=datamodule)
    steps_per_epoch = first.global_step // 2
    checkpoint = tmp_path / "epoch2.ckpt"
    first.save_checkpoint(checkpoint)

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    fresh, _ = build(method, cifar10_tar, cache_dir)
    fresh.load_state_dict(saved["state_dict"])
    for name in STATE_BUFFERS[method]:
        assert torch.equal(getattr(fresh, name), getattr(model, name)), name

    start = StateAtStart()
    second = make_trainer(3, start)
    resumed, _ = build(method, cifar10_tar, cache_dir)
    second.fit(resumed, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    assert start.global_step == saved["global_step"] == 2 * steps_per_epoch
    for name, value in saved["state_dict"].items():
        assert torch.equal(start.state[name], value), name
    assert second.global_step == 3 * steps_per_epoch
    assert math.isfinite(second.callback_metrics["train/loss"].item())
    # No accuracy threshold here: after 3 epochs on 1,000 images the online probe sits within noise of chance
    # (MoCo v3 measured 0.146 on one install and > 0.15 on another). Whether each method learns is measured at
    # equal wall clock against a random-init backbone by benchmarks/budget.py (RESULTS.md).

    if method == "mocov2":  # both views' keys of every step went in
        batch = 64
        assert saved["state_dict"]["queue_ptr"].item() == (2 * steps_per_epoch * 2 * batch) % 512
        assert torch.allclose(saved["state_dict"]["queue"].norm(dim=1), torch.ones(512))
    if method == "swav":  # filled from epoch 1 on
        assert saved["state_dict"]["queue_count"].item() == steps_per_epoch * 64
    if method == "deepclusterv2":  # clustered at the start of epochs 0 and 1, every instance assigned
        assert saved["state_dict"]["clustered_epoch"].item() == 1
        assert (saved["state_dict"]["assignments"] >= 0).float().mean() > 0.9


def test_deepcluster_first_trained_epoch_has_targets(cifar10_tar, cache_dir):
    model, datamodule = build("deepclusterv2", cifar10_tar, cache_dir)
    seen = {}

    class FirstBatch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0:
                seen["targets"] = pl_module.assignments[:, batch["index"]].clone()
                seen["memory_filled"] = (pl_module.memory.norm(dim=1) > 0).float().mean().item()

    make_trainer(1, FirstBatch(), limit_train_batches=2, limit_val_batches=0).fit(model, datamodule=datamodule)
    assert (seen["targets"] >= 0).all()
    for head, k in enumerate([20, 30, 40]):  # real clusters: the first batch is spread over several
        assert len(seen["targets"][head].unique()) > 3 and seen["targets"][head].max() < k
    # the initialisation pass saw every instance except the last incomplete batch (drop_last)
    assert seen["memory_filled"] >= 1 - 64 / 1000


def test_swav_small_batch_loss_leaves_ln_k_and_prototypes_stay_frozen(cifar10_tar, cache_dir):
    """Batch 32, K = 20, a queue of 4 batches from epoch 1: a loss clearly under ln K means informative codes
    (uniform codes keep the cross-entropy at or above ln K whatever the predictions)."""
    model, datamodule = build(
        "swav", cifar10_tar, cache_dir, "data.subset=50", "data.batch_size=32", "optim.lr=1.0",
        "augment.min_scale=0.5", "augment.color_jitter_strength=0.5",
    )
    losses, prototypes = Losses(), {}

    class Prototypes(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            prototypes[trainer.global_step] = pl_module.prototypes.weight.detach().clone()

    make_trainer(3, losses, Prototypes(), limit_val_batches=0).fit(model, datamodule=datamodule)
    tail = sum(losses.values[-10:]) / 10
    print(f"MEASURED swav_tail_loss_below_lnK={math.log(20) - tail:.4f}")
    assert tail < math.log(20) - 0.3, losses.values
    assert model.queue_in_use()
    frozen = model.method_cfg.freeze_prototypes_iters
    assert torch.allclose(prototypes[1], prototypes[frozen], atol=1e-6)  # only renormalised while frozen
    assert not torch.allclose(prototypes[frozen], prototypes[max(prototypes)], atol=1e-3)


def test_momentum_encoder_is_an_ema_on_a_cosine_schedule():
    from torch import nn

    from lightning_modules.momentum import MomentumEncoder, cosine_momentum

    assert cosine_momentum(0, 100, 0.99) == 0.99 and cosine_momentum(100, 100, 0.99) == 1.0
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target = MomentumEncoder(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = [p.detach().clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update([online], momentum=0.9)
    for old, new, source in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * source)
