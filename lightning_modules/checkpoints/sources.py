"""What ``evaluate.py CHECKPOINT`` and ``train.py init_backbone=`` can name, loaded into one description of a
backbone's weights:

- a Lightning checkpoint of this project (``state_dict`` with ``backbone.*``, ``hyper_parameters.cfg``);
- an exported backbone ``.safetensors`` (its settings in the sidecar ``.json`` or the file's metadata);
- ``random``: a randomly initialised backbone, the baseline row (its settings come from ``model.*``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lightning_modules.backbone import build_backbone
from lightning_modules.checkpoints.safe_load import file_sha256, load_safetensors, load_weights_only, read_json

RANDOM = "random"
BACKBONE_PREFIX = "backbone."
EXPORT_METADATA_KEY = "coke_lightning"
CLUSTER_LABEL_SUFFIXES = ("clustering.labels", "label_memory")  # CoKe's clustering state; SeCu's own buffer
CLUSTER_OFFSETS_SUFFIX = "clustering.head_offsets"  # cluster ids of head j are offsets[j] .. offsets[j+1] - 1


@dataclass
class EvalSource:
    kind: str  # lightning | safetensors | random
    path: str
    content_hash: str  # sha256 of the file's bytes (random: "random-init")
    backbone_state: Optional[dict[str, torch.Tensor]]  # None: random init
    pretrain_cfg: dict = field(default_factory=dict)  # the run config, or the part an export keeps
    method: str = ""
    epochs: Optional[int] = None  # completed pretraining epochs
    global_step: Optional[int] = None
    cluster_labels: Optional[torch.Tensor] = None  # CoKe label memory (N, heads), -1 where unassigned
    clusters_per_head: Optional[list[int]] = None


def sidecar_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def _completed_epochs(ckpt: dict) -> Optional[int]:
    try:
        # "processed": epochs whose training finished; "completed" is still one behind in the end-of-epoch save.
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(ckpt["epoch"]) if "epoch" in ckpt else None


def _lightning_source(path: Path) -> EvalSource:
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no `state_dict`); pass an exported .safetensors instead")
    state = {k.replace("_orig_mod.", ""): v for k, v in ckpt["state_dict"].items()}
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise ValueError(f"{path} holds no `backbone.*` weights (keys start with {sorted({k.split('.')[0] for k in state})})")
    cfg = (ckpt.get("hyper_parameters") or {}).get("cfg") or {}
    if "model" not in cfg:
        raise ValueError(f"{path} carries no run config (hyper_parameters.cfg.model); export its backbone or pass model.*")
    labels = [v for k, v in state.items() if k.endswith(CLUSTER_LABEL_SUFFIXES)]
    offsets = [v for k, v in state.items() if k.endswith(CLUSTER_OFFSETS_SUFFIX)]
    return EvalSource(
        kind="lightning", path=str(path), content_hash=file_sha256(path), backbone_state=backbone, pretrain_cfg=cfg,
        method=str((cfg.get("method") or {}).get("name", "")), epochs=_completed_epochs(ckpt),
        global_step=ckpt.get("global_step"), cluster_labels=labels[0].long() if labels else None,
        clusters_per_head=offsets[0].diff().tolist() if offsets else _clusters_per_head(cfg),
    )


def _clusters_per_head(cfg: dict) -> Optional[list[int]]:
    """Without stored head offsets (SeCu keeps them out of its checkpoints), the config's cluster counts."""
    sizes = (cfg.get("method") or {}).get("num_clusters")
    return [int(k) for k in sizes] if isinstance(sizes, (list, tuple)) else None


def _safetensors_source(path: Path) -> EvalSource:
    tensors, metadata = load_safetensors(path)
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        info = read_json(sidecar)
    elif EXPORT_METADATA_KEY in metadata:
        info = json.loads(metadata[EXPORT_METADATA_KEY])
    else:  # a foreign file: model.* must describe it
        info = {}
    return EvalSource(
        kind="safetensors", path=str(path), content_hash=file_sha256(path), backbone_state=tensors,
        pretrain_cfg={section: info[section] for section in ("model", "augment", "data") if section in info},
        method=info.get("method", ""), epochs=info.get("epochs"), global_step=info.get("global_step"),
    )


def checkpoint_in_directory(folder: Path) -> Path:
    """A run directory (``runs/<name>/<timestamp>``) or its ``checkpoints/`` folder stands for its last.ckpt."""
    for candidate in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{folder} is a directory without checkpoints/last.ckpt or last.ckpt. Pass a run directory "
        "(runs/<name>/<timestamp>), a .ckpt file, an exported .safetensors, or `random`"
    )


def load_source(spec: str) -> EvalSource:
    """Load what CHECKPOINT names. Pickled checkpoints are read with ``weights_only=True`` only."""
    if spec == RANDOM:
        return EvalSource(kind=RANDOM, path=RANDOM, content_hash="random-init", backbone_state=None, method="random-init", epochs=0)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = checkpoint_in_directory(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (pass a .ckpt, an exported .safetensors, or `random`)")
    return _safetensors_source(path) if path.suffix == ".safetensors" else _lightning_source(path)


def build_eval_backbone(source: EvalSource, model_cfg: Any, seed: int = 0) -> tuple[nn.Module, int]:
    """The backbone in eval mode with the source's weights loaded strictly (random init: seeded)."""
    if source.backbone_state is None:
        torch.manual_seed(seed)
    backbone, dim = build_backbone(model_cfg.backbone, model_cfg.cifar_stem, **dict(model_cfg.kwargs))
    if source.backbone_state is not None:
        mismatch = ""
        try:
            missing, unexpected = backbone.load_state_dict(source.backbone_state, strict=False)
            if missing or unexpected:
                mismatch = f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        except RuntimeError as err:  # same names, different shapes
            mismatch = str(err).splitlines()[-1].strip()
        if mismatch:
            raise ValueError(
                f"the weights in {source.path} do not fit model.backbone={model_cfg.backbone} "
                f"model.cifar_stem={model_cfg.cifar_stem}: {mismatch}. Pass the model.* the checkpoint was trained with."
            )
    return backbone.eval(), dim

