"""Typed schema of an evaluation run (``python evaluate.py CHECKPOINT [key=value ...]``).

The ``data``, ``augment`` and ``model`` sections are the pretraining ones. Their defaults come from the
checkpoint itself (:func:`eval_defaults`): the data set it was trained on, the normalisation and crop it saw,
and its backbone. YAML and the command line are merged over those, so ``data.name=cifar100`` evaluates on
another data set. Subsets are not inherited: a checkpoint pretrained on a subset is evaluated on the full data
unless ``data.subset`` / ``data.eval_subset`` say otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

from configs.schema import AugmentConfig, DataConfig, LoggerConfig, ModelConfig

PROTOCOLS = ("linear", "knn", "retrieval", "clustering")
LEVELS = ("fine", "coarse")

# What an evaluation takes over from the checkpoint's own config (what the backbone saw, not how it trained).
INHERITED_KEYS = {
    "data": ("name", "path", "hierarchy", "image_size", "skip_corrupt"),
    "augment": ("crop_size", "mean", "std", "eval_resize"),
    "model": ("backbone", "cifar_stem", "kwargs", "channels_last"),
}


@dataclass
class LinearProbeConfig:
    epochs: int = 100
    batch_size: int = 4096  # on cached feature tensors; 0 is full batch
    optimizer: str = "sgd"  # sgd (momentum, nesterov) | adamw
    # Every (lr, weight decay) pair is trained at once and the best on the validation split
    # (data.val_fraction of train) is retrained on the whole train split.
    lrs: List[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    weight_decays: List[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
    momentum: float = 0.9


@dataclass
class KnnConfig:
    ks: List[int] = field(default_factory=lambda: [20, 200])
    temperature: float = 0.07  # neighbour weight exp(cosine / T)
    query_chunk: int = 1024  # memory bound: query_chunk x bank_chunk similarities at a time
    bank_chunk: int = 65536


@dataclass
class RetrievalConfig:
    ks: List[int] = field(default_factory=lambda: [1, 2, 5, 10])
    split: str = "test"  # leave-one-out within this split
    query_chunk: int = 1024
    bank_chunk: int = 65536


@dataclass
class ClusteringConfig:
    # auto: CoKe's own label memory when the checkpoint holds one (and k-means too); kmeans | coke: only that
    source: str = "auto"
    split: str = "train"  # k-means on this split's features (CoKe's labels are always the pretraining train set)
    num_clusters: int = 0  # 0: the number of classes of each label level
    iterations: int = 50
    init: str = "k-means++"  # k-means++ | random


@dataclass
class EvalConfig:
    protocol: List[str] = field(default_factory=lambda: ["all"])  # linear | knn | retrieval | clustering | all
    levels: List[str] = field(default_factory=lambda: list(LEVELS))
    data: DataConfig = field(default_factory=lambda: DataConfig(val_fraction=0.1, num_workers=0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Read from the checkpoint; needed only for CHECKPOINT=random or an exported file without its sidecar json.
    model: ModelConfig = field(default_factory=ModelConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    out_dir: str = ""  # empty: <checkpoint dir>/../eval/<checkpoint name>/
    export: str = ""  # a .safetensors path: write the backbone there (plus a sidecar .json) and stop
    feature_cache: bool = True  # cache features under data.cache_dir/features/
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    seed: int = 0  # probe initialisation and batches, k-means, the random-init baseline


def eval_defaults(pretrain_cfg: Optional[Mapping[str, Any]]) -> EvalConfig:
    """Schema defaults with the checkpoint's data set, view normalisation and backbone filled in."""
    cfg = EvalConfig()
    for section, keys in INHERITED_KEYS.items():
        source = (pretrain_cfg or {}).get(section) or {}
        for key in keys:
            if key in source:
                setattr(getattr(cfg, section), key, source[key])
    return cfg


def selected_protocols(cfg) -> list[str]:
    """The protocols to run, in a fixed order; unknown names raise ValueError naming the valid ones."""
    names = [str(p) for p in cfg.protocol]
    unknown = [p for p in names if p not in PROTOCOLS + ("all",)]
    if unknown:
        raise ValueError(f"unknown protocol {unknown}; choose from {', '.join(PROTOCOLS)} or all (a list is fine)")
    return list(PROTOCOLS) if "all" in names else [p for p in PROTOCOLS if p in names]


def selected_levels(cfg) -> list[str]:
    unknown = [level for level in cfg.levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"unknown label level {unknown}; choose from {', '.join(LEVELS)}")
    return [level for level in LEVELS if level in cfg.levels]
