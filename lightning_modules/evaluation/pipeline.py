"""``evaluate.py``'s work after its command line: read what it names (``read_request``), then score the frozen
features of the loaded images with the chosen protocols into one report (``evaluate``)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from configs.eval_schema import eval_defaults, selected_levels
from configs.loader import ConfigError, load_config
from lightning_modules.checkpoints.safe_load import UnsafeCheckpointError
from lightning_modules.checkpoints.sources import RANDOM, EvalSource, build_eval_backbone, load_source
from lightning_modules.evaluation.eval_data import (EvalData, data_block, features_block, fine_to_coarse_table,
                                                    frozen_features)
from lightning_modules.evaluation.protocols import EvalInputs, protocol_inputs, run_protocols
from lightning_modules.evaluation.registry import selected_protocols
from lightning_modules.evaluation.report import build_report, describe_source

log = logging.getLogger("evaluate")
# what read_request refuses with a one-line message (exit status 2)
REFUSALS = (ConfigError, UnsafeCheckpointError, FileNotFoundError, ValueError)


def read_request(checkpoint: str, config_file: str, overrides: list[str]):
    """(source, cfg, protocols, levels): the checkpoint, the eval config on the defaults its run implies, and the
    protocols and label levels chosen."""
    source = load_source(checkpoint)
    cfg = load_config(config_file, overrides, schema=eval_defaults(source.pretrain_cfg))
    return source, cfg, selected_protocols(cfg.protocol), selected_levels(cfg)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def report_dir(source: EvalSource, cfg) -> Path:
    """``out_dir``, else ``<checkpoint dir>/../eval/<checkpoint name>/`` (random init: under runs/eval/)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    if source.kind == RANDOM:
        return Path("runs") / "eval" / f"random-{cfg.model.backbone}-seed{cfg.seed}"
    path = Path(source.path)
    return path.parent.parent / "eval" / path.stem


def levels_present(levels: list[str], has_hierarchy: bool, data_name: str) -> list[str]:
    if not has_hierarchy and "coarse" in levels:
        log.warning("no superclass hierarchy for %s: coarse level skipped", data_name)
        levels = [level for level in levels if level != "coarse"]
    return levels


def evaluate(source: EvalSource, cfg, protocols: list[str], levels: list[str], data: EvalData,
             device: torch.device, command: str) -> tuple[dict, dict]:
    """(report, artifacts for its figures)."""
    backbone, feat_dim = build_eval_backbone(source, cfg.model, cfg.seed)
    features, cache = frozen_features(data, source, backbone, cfg, device)
    timings = {"features": time.perf_counter() - data.started}

    has_hierarchy = bool(data.train.superclass_names)
    levels = levels_present(levels, has_hierarchy, cfg.data.name)
    fine_to_coarse = fine_to_coarse_table(data.train)
    inputs = EvalInputs(
        features["train"], features["test"], levels,
        {"fine": len(data.train.class_names), "coarse": len(data.train.superclass_names)},
        fine_to_coarse if has_hierarchy else None, **protocol_inputs(protocols, source, cfg, data.labelled_beside),
    )
    results, protocol_timings, artifacts = run_protocols(protocols, inputs, cfg, device)
    report = build_report(
        checkpoint=describe_source(source, cfg.model), data=data_block(cfg, data, fine_to_coarse, has_hierarchy),
        features=features_block(cfg, feat_dim, cache), results=results, timings={**timings, **protocol_timings},
        command=command,
    )
    return report, artifacts
