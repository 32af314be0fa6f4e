"""Typed schema of a pretraining run. YAML and the command line are merged over these dataclasses.

Method hyper-parameters are not listed here: each method declares its own dataclass
(``lightning_modules.<method>.<Name>Config``) and the loader slots it in under ``method``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT_ENV = "COKE_DATA_ROOT"


def default_data_root() -> str:
    """``$COKE_DATA_ROOT``, else ``../shared/data`` next to the repository."""
    return os.environ.get(DATA_ROOT_ENV, str(REPO_ROOT.parent / "shared" / "data"))


def default_cache_dir() -> str:
    return os.environ.get("COKE_CACHE_DIR", str(Path.home() / ".cache" / "coke-lightning"))


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | cifar100 | stl10 | folder (your own images): datamodules/registry.py
    root: str = field(default_factory=default_data_root)
    # Explicit source: a pickle or STL-10 folder, an image folder (labelled or not), or a .tar/.tar.gz. Empty:
    # discovered under ``root``.
    path: str = ""
    # A labelled set beside the pretraining set, for the kNN monitor and evaluate.py (an unlabelled folder has no
    # other): a data set name under ``root``, or a path (train/<class>/ + test/<class>/ folder or tar, CIFAR, STL-10).
    labelled: str = ""
    hierarchy: str = ""  # JSON file {fine class: superclass}; built in for cifar10 and cifar100
    image_size: int = 0  # folders of mixed sizes: resize shorter side + centre crop to this; 0 keeps native
    subset: float = 0.0  # train images: 0 all; >= 1 images per class; (0, 1) fraction per class (unlabelled: one class)
    eval_subset: float = 0.0  # the same for the validation and test splits
    val_fraction: float = 0.0  # held out from train, per class, for tuning without touching test
    batch_size: int = 256  # per device
    eval_batch_size: int = 512
    num_workers: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    skip_corrupt: bool = False  # skip undecodable images (and log how many) instead of failing
    # decoded: decode once into a cached uint8 array (small data sets). jpeg: loader workers read encoded bytes
    # only and each batch is decoded after the transfer, on the GPU with nvjpeg (ImageNet scale).
    format: str = "decoded"
    # Where batches come from (format=decoded). device: the decoded set lives on the training device and a batch is an
    # index draw there (no workers, pinning or copies). workers: a DataLoader with num_workers. auto: device when the
    # set takes under half the device's free memory (always on the CPU), else workers.
    loader: str = "auto"
    decode_device: str = "auto"  # format=jpeg: auto (where the batch is) | cpu | cuda
    download: bool = True  # try torchvision's download when the data is missing
    cache_dir: str = field(default_factory=default_cache_dir)
    seed: int = 0  # for subset and validation split


@dataclass
class AugmentConfig:
    kind: str = "simclr"  # simclr | byol | multicrop
    num_large_crops: int = 2  # 1 for one-view methods (CoKe one view, supervised baselines)
    crop_size: int = 32
    # Side of the training large crops; 0: crop_size. Smaller views are cheaper steps; evaluation and the clean view
    # keep crop_size (train low, test high: see benchmarks/RESULTS.md).
    view_size: int = 0
    min_scale: float = 0.2
    max_scale: float = 1.0
    num_small_crops: int = 0
    small_crop_size: int = 16
    small_min_scale: float = 0.05
    small_max_scale: float = 0.2
    color_jitter_strength: float = 1.0
    gaussian_blur: bool = False  # off for 32-px CIFAR, on for ImageNet-size images
    # The blur's kernel side (odd); 0: about a tenth of the crop (3 px on CIFAR, which truncates sigma 2 to a near box
    # filter). The official SeCu blur (PIL, radius = sigma up to 2) needs about 6 sigma + 1 = 13.
    blur_kernel_size: int = 0
    mean: List[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])
    std: List[float] = field(default_factory=lambda: [0.2470, 0.2435, 0.2616])
    eval_resize: int = 32  # evaluation transform: resize shorter side, then centre crop to crop_size
    clean_view: bool = False  # training batches also carry the un-augmented image (the evaluation transform)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any timm model name
    cifar_stem: bool = True  # 3x3 stride-1 first conv, no max-pool (for 32-px inputs)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model keywords
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    proj_layers: int = 2
    pred_hidden_dim: int = 0  # 0: no predictor
    channels_last: bool = False
    sync_batchnorm: bool = False
    compile: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | lars | adamw
    lr: float = 0.3  # base lr at batch 256; the used lr is lr * global_batch / 256 when scale_lr
    scale_lr: bool = True
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    probe_lr: float = 0.1  # online probes (not batch-scaled)
    exclude_bias_and_norm: bool = True
    implementation: str = "auto"  # auto | foreach | fused | default (torch optimizer backend)


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | csv | none
    project: str = "coke-lightning"
    entity: str = ""
    mode: str = "auto"  # auto (offline when no login or no network) | online | offline
    log_every_n_steps: int = 10
    view_grid_every_n_epochs: int = 1  # 0: never
    # Feature diagnostics (RankMe, alignment, uniformity, within-superclass collapse) of held-out images during
    # pretraining, every N epochs (lightning_modules/run/feature_diagnostics.py); 0: never
    diagnostics_every_n_epochs: int = 5
    diagnostics_images: int = 1024  # held-out images (validation split, else test) they are measured on


@dataclass
class CheckpointConfig:
    every_n_epochs: int = 10  # keep one numbered checkpoint every N epochs, besides last.ckpt
    save_last: bool = True  # last.ckpt every epoch (overwritten)


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameter dataclass."""

    name: str = "simclr"


@dataclass
class PretrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # Passed to lightning.Trainer unchanged: max_epochs, devices, strategy, num_nodes, precision, ...
    trainer: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    run_dir: str = "runs"
    run_name: str = ""  # empty: <config name>-<timestamp>
    resume: str = ""  # path to a checkpoint, or "auto" (newest last.ckpt of this run name)
    init_backbone: str = ""  # a new run's backbone from this checkpoint (.ckpt, run directory or .safetensors)
    max_time_minutes: float = 0.0  # 0: no wall-clock budget
    # On the CPU a run estimated over an hour stops after its first batches (lightning_modules/run/cpu_run.py); true: go on
    allow_slow_cpu: bool = False
