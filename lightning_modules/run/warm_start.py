"""``init_backbone=<checkpoint>``: a new run whose backbone starts from another run's weights (a ``.ckpt`` of any
method, its run directory, or an exported ``.safetensors``); heads, optimiser, schedule and clustering start fresh.
What ``resume=`` of another method's checkpoint cannot do: a run only continues under the method it was trained with.
"""
from __future__ import annotations

import logging

from lightning_modules.checkpoints.safe_load import CheckpointReadError, UnsafeCheckpointError
from lightning_modules.checkpoints.sources import EvalSource, load_source
from lightning_modules.momentum import MomentumEncoder

log = logging.getLogger(__name__)


class WarmStartError(ValueError):
    """``init_backbone=`` names nothing that fits; the message says what does."""


def load_warm_start(cfg) -> EvalSource | None:
    """Before any work: the backbone weights ``init_backbone`` names, loaded weights-only (None without it)."""
    spec = str(cfg.get("init_backbone") or "")
    if not spec:
        return None
    if cfg.resume:
        raise WarmStartError(f"init_backbone={spec} and resume={cfg.resume} together: resume= continues a run, "
                             "init_backbone= starts a new one from a backbone. Keep one of them")
    if spec == "random":
        raise WarmStartError("init_backbone=random: a random backbone is the default; drop init_backbone=")
    try:
        source = load_source(spec)
    except (FileNotFoundError, CheckpointReadError, UnsafeCheckpointError, ValueError) as err:
        raise WarmStartError(f"init_backbone={spec}: {err}") from None
    return source


def apply_warm_start(model, source: EvalSource, model_cfg) -> None:
    """Copy the weights into ``model.backbone`` (and every momentum copy of it), refusing any that do not fit."""
    missing, unexpected = [], []
    try:
        missing, unexpected = model.backbone.load_state_dict(source.backbone_state, strict=False)
        problem = f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}" if missing or unexpected else ""
    except RuntimeError as err:  # same names, other shapes
        problem = str(err).strip().splitlines()[-1].strip()
    if problem:
        theirs = (source.pretrain_cfg.get("model") or {}).get("backbone", "another backbone")
        raise WarmStartError(
            f"init_backbone={source.path} holds {theirs} weights that do not fit model.backbone={model_cfg.backbone} "
            f"model.cifar_stem={model_cfg.cifar_stem} ({problem}). Set model.* to the checkpoint's backbone")
    for module in model.modules():
        if isinstance(module, MomentumEncoder) and type(module.net[0]) is type(model.backbone):
            module.net[0].load_state_dict(model.backbone.state_dict())
    log.info("init_backbone: backbone from %s (%s, %s epochs); heads, optimiser and clustering start fresh",
             source.path, source.method or "unknown method", source.epochs)
