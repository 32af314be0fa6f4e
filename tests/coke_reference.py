"""A few CoKe training steps on fixed real images, reduced to numbers: per step the method's loss, the batch's new
labels and fingerprints of the gradient (the online probes left out: they are the base class's); at the end the
clustering state's checksum. tests/test_coke_reference.py compares them with tests/fixtures/coke_reference.json, so a
change that moves any number fails.

The steps run in float64 (Lightning's "64-true": the module, the batches and every loss and clustering op). In
float32 the same steps differ between CPUs of one kind (AVX-512 against AVX2 kernels sum in other orders) by round-off
that training amplifies step by step, to 1e-2 of a gradient fingerprint after six steps; in float64 that round-off
stays near 1e-13, so the fixture holds on any machine while a changed rule still moves the numbers by far more.

The fixture's provenance: the float32 numbers of the code before CoKe became a package were recorded first; the
current code reproduced them on the recording machine (labels exact, loss to 1e-6, gradients to 1e-5) before the
float64 numbers were recorded from it. The two old-layout checkpoints (tests/fixtures/coke_old_*.ckpt) were written by
that older code and are kept as they are; their resumed fourth epoch is recorded in float64 too.
`python tests/coke_reference.py` re-records the numbers (only when a change is meant); it never rewrites the
checkpoints.

The images are the first 32 training JPEGs of the shared CIFAR-10 tar; the views are fixed transforms of them (no
random augmentation), so the numbers depend on the method alone."""
from __future__ import annotations

import io
import json
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs.loader import load_config, to_plain  # noqa: E402
from lightning_modules.registry import method_class  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "coke_reference.json"
CONFIGS = ROOT / "configs" / "pretrain"
IMAGES, BATCH, EPOCHS = 32, 16, 3
TINY = ["model.backbone=test_resnet", "model.cifar_stem=false", "model.proj_hidden_dim=64",
        "model.pred_hidden_dim=64", "model.proj_output_dim=32", "model.channels_last=false", "trainer.precision=32",
        "optim.warmup_epochs=0", "method.num_clusters=[4,6]", "method.kernel=torch", "augment.crop_size=32",
        "augment.small_crop_size=16", "augment.num_small_crops=0", "method.kmeans_start.iterations=3", "seed=0",
        "logger.kind=none", "data.name=cifar10"]
# name -> (config, overrides): every shipped CoKe config, then the variants and departures none of them turns on.
CASES = {
    "paper": ("coke_cifar10_paper", []),
    "default": ("coke_cifar10", []),
    "quick": ("quick", []),
    "twoview": ("coke_cifar10_twoview", []),
    "coarse": ("coke_coarse_cifar10", []),
    "imagenet": ("coke_imagenet", ["augment.num_small_crops=2", "augment.kind=simclr", "augment.gaussian_blur=false",
                                   "model.sync_batchnorm=false", "trainer.devices=1", "trainer.strategy=auto"]),
    "twoview_official": ("coke_cifar10_twoview", ["method.view_loss=faithful"]),
    "multicrop_official": ("coke_cifar10_twoview", ["method.view_loss=faithful", "augment.num_small_crops=2"]),
    "stage2_official": ("coke_cifar10_paper", ["method.stage2_epochs=2", "method.stage2_rule=faithful",
                                               "trainer.max_epochs=4"]),
    "stage2_legacy": ("coke_cifar10_paper", ["method.stage2_epochs=2", "method.stage2_rule=legacy",
                                             "trainer.max_epochs=4"]),
    "current_carry": ("coke_cifar10_paper", ["method.target.label=current", "method.carried_members.fraction=0.5",
                                             "method.temperature=0.2"]),
    "ema_sinkhorn": ("coke_cifar10", ["method.clean_view.momentum=0.9", "method.soft_target.weight=0.3",
                                      "method.soft_target.sinkhorn_iterations=3"]),
    "contrast_only": ("coke_cifar10", ["method.instance_term.weight=1.0", "method.instance_term.cluster_weight=0.0"]),
    "balanced_nopred": ("coke_cifar10_paper", ["method.ratio=1.0", "method.proj_last_bn=false",
                                               "model.pred_hidden_dim=0"]),
}
# Old-layout checkpoints (tests/fixtures/coke_old_<name>.ckpt), saved after 3 of 4 epochs by the code before the
# package, with a 22k-parameter backbone; their fourth epoch, resumed, is recorded as case <name>.
SMALL_NET = ["model.kwargs={channels: [8, 8, 16, 16], stem_width: 8}", "trainer.max_epochs=4",
             "method.stage2_epochs=2"]
CHECKPOINTS = {
    "ckpt_official": ("coke_cifar10", [*SMALL_NET, "method.stage2_rule=faithful", "method.clean_view.momentum=0.9",
                                       "method.soft_target.weight=0.3"]),
    "ckpt_legacy": ("coke_cifar10_paper", [*SMALL_NET, "method.stage2_rule=legacy",
                                           "method.carried_members.fraction=0.5"]),
}


def checkpoint_path(name: str) -> Path:
    return FIXTURE.parent / f"coke_old_{name}.ckpt"


def cifar_images(tar_path: Path, count: int = IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (count,3,32,32) training images in the tar's order, and their class ids (sorted class names)."""
    images, names = [], []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "train":
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
                names.append(parts[2])
                if len(images) == count:
                    break
    classes = sorted(set(names))
    return torch.stack(images), torch.tensor([classes.index(n) for n in names])


def batches(images: torch.Tensor, fine: torch.Tensor, cfg) -> list[dict]:
    """Fixed views: the image, its mirror, its 16-px down-sample for the small crops; the clean view is the image."""
    mean = torch.tensor(list(cfg.augment.mean), dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.augment.std), dtype=torch.float64).view(1, 3, 1, 1)
    x = (images.double() / 255 - mean) / std  # float64 from the pixels on
    large = [x, x.flip(3)][: cfg.augment.num_large_crops]
    small = [torch.nn.functional.avg_pool2d(v, 2) for v in (x, x.flip(2))][: cfg.augment.num_small_crops]
    coarse = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 0, 0])[fine]  # CIFAR-10's vehicles / animals
    out = []
    for lo in range(0, images.shape[0], BATCH):
        rows = slice(lo, lo + BATCH)
        out.append({"views": [v[rows] for v in large + small], "clean_view": x[rows],
                    "index": torch.arange(images.shape[0])[rows], "fine": fine[rows], "coarse": coarse[rows]})
    return out


def build(case: str, tar_path: Path):
    config, overrides = {**CASES, **CHECKPOINTS}[case]
    cls = method_class("coke")
    cfg = load_config(CONFIGS / f"{config}.yaml", [*TINY, f"trainer.max_epochs={EPOCHS}", *overrides],
                      {"coke": cls.Config})
    images, fine = cifar_images(tar_path)
    info = {"num_train": IMAGES, "num_fine": 10, "num_coarse": 2, "superclass_sizes": [12, 20]}
    pl.seed_everything(0)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the initial weights drawn in float64 too
    try:
        return cls(to_plain(cfg), info), batches(images, fine, cfg)
    finally:
        torch.set_default_dtype(dtype)


class Record(pl.Callback):
    def __init__(self):
        self.steps: list[dict] = []
        self.pending: dict = {}

    def on_after_backward(self, trainer, module):
        grads = torch.cat([p.grad.flatten() for name, p in sorted(module.named_parameters())
                           if p.grad is not None and not name.startswith("probes.")])
        projection = torch.randn(4, grads.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        self.pending = {"grad_norm": grads.double().norm().item(),
                        "grad_projections": (projection @ grads.double()).tolist()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        labels = module.clustering.label_memory[batch["index"]].T.tolist()
        self.steps.append({"loss": float(self.loss), "labels": labels, **self.pending})
        self.pending = {}


def trainer(max_epochs: int, *callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, callbacks=list(callbacks), log_every_n_steps=1, precision="64-true")


def record(case: str, tar_path: Path, resume: Path | None = None) -> dict:
    """Train the case on one thread in float64 and return its numbers; resume: continue from that checkpoint to the
    last epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module, data = build(case, tar_path)
        recorder = Record()
        method_loss = module.training_loss

        def recorded_loss(batch, feats):  # the method's loss alone: the online probes are the base class's
            loss = method_loss(batch, feats)
            recorder.loss = loss.detach()
            return loss

        module.training_loss = recorded_loss
        fit = trainer(module.cfg.trainer.max_epochs, recorder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None),
                    ckpt_path=str(resume) if resume else None)
        return {"steps": recorder.steps, "checksum": module.clustering.checksum().tolist()}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    from configs.schema import default_data_root

    tar = Path(default_data_root()) / "cifar10-jpeg.tar.gz"
    result = {case: record(case, tar) for case in CASES}
    result.update({name: record(name, tar, resume=checkpoint_path(name)) for name in CHECKPOINTS})
    FIXTURE.write_text(json.dumps(result, indent=None, separators=(",", ":")) + "\n")
    print(f"{FIXTURE}: {FIXTURE.stat().st_size} bytes, {len(result)} cases")
