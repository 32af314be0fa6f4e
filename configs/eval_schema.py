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

LEVELS = ("fine", "coarse")

# What an evaluation takes over from the checkpoint's own config (what the backbone saw, not how it trained).
INHERITED_KEYS = {
    "data": ("name", "path", "labelled", "hierarchy", "image_size", "skip_corrupt"),
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
class SeaConfig:
    """SeA: the linear probe trained on semantically adversarial features (lightning_modules/evaluation/sea.py)."""

    epochs: int = 100
    batch_size: int = 256  # the perturbation mixes the other examples of the batch: keep it a real mini-batch
    # Every (lr, eta) pair is trained at once; the best on data.val_fraction of train is retrained on all of train.
    lrs: List[float] = field(default_factory=lambda: [0.4, 1.6])
    etas: List[float] = field(default_factory=lambda: [0.4, 0.8])  # step norm on the unit sphere (0: no augmentation)
    alpha: float = 0.01  # softmax temperature over the other examples
    temperature: float = 0.1  # the probe's loss is T * CE(logits / T) on unit features
    weight_decay: float = 1.0e-6
    momentum: float = 0.9


@dataclass
class FewshotConfig:
    """Label efficiency: a linear probe on n labelled images per class, several seeds (fewshot.py)."""

    shots: List[int] = field(default_factory=lambda: [1, 5, 10, 100, 0])  # labelled images per class; 0: all
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    # Fixed settings: one label per class leaves no validation split to choose them on.
    lr: float = 0.1
    weight_decay: float = 1.0e-4
    epochs: int = 100
    batch_size: int = 4096
    optimizer: str = "sgd"
    momentum: float = 0.9


@dataclass
class DiagnosticsConfig:
    """RankMe, alignment / uniformity, within-superclass collapse and a t-SNE map (diagnostics.py)."""

    split: str = "test"
    max_points: int = 5000  # rows for the numbers (uniformity is quadratic); 0: all
    map: bool = True  # the 2-D map PNG (t-SNE from scikit-learn)
    map_points: int = 2000  # rows in the map, spread evenly over the classes
    perplexity: float = 30.0


@dataclass
class EvalConfig:
    # linear | knn | retrieval | clustering | sea | fewshot | diagnostics | all (= the first four)
    protocol: List[str] = field(default_factory=lambda: ["all"])
    levels: List[str] = field(default_factory=lambda: list(LEVELS))
    data: DataConfig = field(default_factory=lambda: DataConfig(val_fraction=0.1, num_workers=0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Read from the checkpoint; needed only for CHECKPOINT=random or an exported file without its sidecar json.
    model: ModelConfig = field(default_factory=ModelConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    sea: SeaConfig = field(default_factory=SeaConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
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


def selected_levels(cfg) -> list[str]:
    unknown = [level for level in cfg.levels if level not in LEVELS]
    if unknown:
        raise ValueError(f"unknown label level {unknown}; choose from {', '.join(LEVELS)}")
    return [level for level in LEVELS if level in cfg.levels]
