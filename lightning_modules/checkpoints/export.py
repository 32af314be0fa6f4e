"""Export a backbone to a safetensors file that timm loads with a plain, strict ``load_state_dict``:

    model, _ = build_backbone(name, cifar_stem)       # == timm.create_model(name, num_classes=0) (+ CIFAR stem)
    model.load_state_dict(safetensors.torch.load_file(path))

The settings needed to rebuild it (timm name, stem, kwargs, the view normalisation) go into a sidecar
``<name>.json`` and, as a copy, into the file's own metadata.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save

from lightning_modules.backbone import backbone_state_for_timm
from lightning_modules.checkpoints.atomic_save import atomic_write_bytes
from lightning_modules.checkpoints.sources import EXPORT_METADATA_KEY, EvalSource, build_eval_backbone, sidecar_path

EXPORT_FORMAT = "coke-lightning-backbone"
EXPORT_VERSION = 1


def export_info(source: EvalSource, model: dict, augment: dict, data: dict, feat_dim: int) -> dict:
    """The sidecar: what rebuilds the backbone, the views it expects, and where it came from."""
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "feat_dim": feat_dim,
        "model": {"backbone": model["backbone"], "cifar_stem": bool(model["cifar_stem"]), "kwargs": model["kwargs"]},
        "augment": {k: augment[k] for k in ("crop_size", "mean", "std", "eval_resize")},
        "data": {k: data[k] for k in ("name", "hierarchy", "image_size")},
        "method": source.method, "epochs": source.epochs, "global_step": source.global_step,
        "source_checkpoint": source.path, "source_sha256": source.content_hash,
    }


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def export_backbone(source: EvalSource, cfg: Any, out_path: str | Path) -> Path:
    """Write the backbone of ``source`` to ``out_path`` (.safetensors) and its sidecar json; return the path."""
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ValueError(f"export={out_path}: the file name must end in .safetensors")
    backbone, feat_dim = build_eval_backbone(source, cfg.model, cfg.seed)  # fails here if the weights do not fit
    info = export_info(source, _plain(cfg.model), _plain(cfg.augment), _plain(cfg.data), feat_dim)
    # atomic, as every checkpoint: a full disk or a kill leaves the previous export whole
    weights = save(backbone_state_for_timm(backbone), metadata={EXPORT_METADATA_KEY: json.dumps(info)})
    atomic_write_bytes(out_path, weights)
    atomic_write_bytes(sidecar_path(out_path), (json.dumps(info, indent=2) + "\n").encode())
    return out_path
