"""Frozen backbone features: extracted once per (weights, data rows, transform, backbone), cached on disk.

The cache key hashes the weights file's bytes, so a changed checkpoint is re-extracted even under the same
path; and the transform settings, so a changed eval resize or normalisation is too. Files are safetensors
(tensors only), written atomically, so a concurrent reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)
FEATURE_CACHE_VERSION = 1


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, D) float32, the backbone's pooled output
    fine: torch.Tensor  # (N,) int64
    coarse: torch.Tensor  # (N,) int64, -1 where unknown

    def __len__(self) -> int:
        return self.features.shape[0]

    def take(self, rows: torch.Tensor) -> "FeatureSet":
        return FeatureSet(self.features[rows], self.fine[rows], self.coarse[rows])

    def labels(self, level: str) -> torch.Tensor:
        return self.fine if level == "fine" else self.coarse


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    transform: nn.Module,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    description: str = "features",
) -> torch.Tensor:
    """Pooled features (N, D) float32 of uint8 ``images`` (N, 3, H, W); bf16 autocast on CUDA."""
    device = torch.device(device)
    backbone, transform = backbone.eval().to(device), transform.to(device)
    chunks = []
    with _progress() as progress:
        task = progress.add_task(description, total=images.shape[0])
        for start in range(0, images.shape[0], batch_size):
            views = transform(images[start : start + batch_size].to(device, non_blocking=True))
            if channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                chunks.append(backbone(views).float().cpu())
            progress.advance(task, views.shape[0])
    return torch.cat(chunks)


def feature_cache_key(parts: dict) -> str:
    blob = json.dumps({"version": FEATURE_CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def rows_digest(rows: torch.Tensor) -> str:
    """A short hash of the chosen row ids (the subset), for the cache key."""
    return hashlib.sha256(rows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def _save(path: Path, features: FeatureSet, parts: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tensors = {"features": features.features.contiguous(), "fine": features.fine.contiguous(), "coarse": features.coarse.contiguous()}
    save_file(tensors, str(tmp), metadata={"key_parts": json.dumps(parts, sort_keys=True, default=str)})
    os.replace(tmp, path)


def _load(path: Path) -> FeatureSet:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return FeatureSet(tensors["features"], tensors["fine"], tensors["coarse"])


def cached_features(
    cache_dir: Optional[str | Path], parts: dict, compute: Callable[[], FeatureSet]
) -> tuple[FeatureSet, Optional[Path], bool]:
    """``compute()``'s features, from ``<cache_dir>/features/<key>.safetensors`` when there.

    ``parts`` is everything the features depend on. Returns (features, cache file or None, whether it was a hit).
    """
    if not cache_dir:
        return compute(), None, False
    path = Path(cache_dir).expanduser() / "features" / f"{feature_cache_key(parts)}.safetensors"
    if path.is_file():
        log.info("features from cache: %s", path)
        return _load(path), path, True
    features = compute()
    _save(path, features, parts)
    log.info("features cached at %s", path)
    return features, path, False
