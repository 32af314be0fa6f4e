"""What a method's Config may offer the loader, besides its fields:

- ``RENAMED``: old key -> new dotted key, both relative to ``method``. Old keys still load, moved to their new place
  with a one-line notice each; the loader applies them to every YAML and command-line layer (and a method may apply
  them to the config stored in an old checkpoint).
- ``validate(cfg) -> list[str]``: the rules on combining its options, one sentence per broken rule, checked once
  the whole run config is merged, so every entry point refuses before anything runs (CoKe's rules:
  lightning_modules/coke/rules.py).
"""
from __future__ import annotations

import logging
from typing import Mapping

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def rename_keys(method: DictConfig | None, renamed: Mapping[str, str], origin: str) -> list[str]:
    """Move each old key of the ``method`` mapping to its new key, in place; one notice per key moved.
    A key whose value is already a mapping is a new section of the same name and stays."""
    notices = []
    if not isinstance(method, DictConfig):
        return notices
    for old, new in renamed.items():
        if old not in method or isinstance(method[old], (DictConfig, dict)):
            continue
        value = method.pop(old)
        OmegaConf.update(method, new, value, force_add=True)
        notices.append(f"config key method.{old} (from {origin}) is now method.{new}: read as method.{new}={value}")
    for notice in notices:
        log.warning(notice)
    return notices


def rename_layers(schema: type | None, layers: list[tuple[DictConfig, str]]) -> None:
    """Apply ``schema.RENAMED`` to the ``method`` section of each (layer, origin)."""
    for layer, origin in layers:
        rename_keys(layer.get("method"), getattr(schema, "RENAMED", {}), origin)


def rule_errors(schema: type | None, cfg: DictConfig) -> list[str]:
    """``schema.validate(cfg)``; none for a schema without rules."""
    validate = getattr(schema, "validate", None)
    return list(validate(cfg)) if validate is not None else []
