"""``resume=``: find the checkpoint, prove it loads (exists, readable, weights-only safe) before any work, and
decide which run directory the resumed run writes into. Also the run record (``run.json``) that marks a run
directory and keeps its W&B run id, so a resumed run continues the same W&B run."""
from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lightning_modules.evaluation.checkpoints import checkpoint_in_directory
from lightning_modules.evaluation.safe_load import load_weights_only

log = logging.getLogger(__name__)
RUN_RECORD = "run.json"
CONFIG_FILE = "config.yaml"


class ResumeError(ValueError):
    """``resume=`` names nothing usable; the message says what to pass instead."""


@dataclass
class ResumePoint:
    checkpoint: Path
    global_step: int  # CSV rows from this step on are dropped: the resumed run logs them again
    run_dir: Optional[Path]  # the run directory the checkpoint belongs to; None: a checkpoint from elsewhere


def owning_run_dir(checkpoint: Path) -> Optional[Path]:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>`` when ``<run>`` is a run directory this project wrote, else None.

    Marked by ``run.json``; runs from before it by ``config.yaml`` beside ``csv/``, ``wandb/`` or ``views/``.
    """
    if checkpoint.parent.name != "checkpoints":
        return None
    run_dir = checkpoint.parent.parent
    if (run_dir / RUN_RECORD).is_file():
        return run_dir
    if (run_dir / CONFIG_FILE).is_file() and any((run_dir / d).is_dir() for d in ("csv", "wandb", "views")):
        return run_dir
    return None


def resolve_resume(cfg, run_name: str) -> Optional[ResumePoint]:
    """The checkpoint ``cfg.resume`` names, loaded once (weights only) to prove it is usable, or None."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        candidates = sorted(Path(cfg.run_dir, run_name).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            log.warning("resume=auto: no last.ckpt under %s; starting a new run", Path(cfg.run_dir, run_name))
            return None
        path = candidates[-1]
    else:
        path = Path(cfg.resume).expanduser()
        if not path.exists():
            raise ResumeError(f"resume={cfg.resume}: no such file. Pass resume=auto (the newest last.ckpt under "
                              f"{Path(cfg.run_dir, run_name)}), a run directory, or the path of a .ckpt")
        if path.is_dir():
            try:
                path = checkpoint_in_directory(path)
            except FileNotFoundError as err:
                raise ResumeError(f"resume={cfg.resume}: {err}") from None
    ckpt = load_weights_only(path)  # UnsafeCheckpointError / CheckpointReadError name the file
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ResumeError(f"resume={cfg.resume}: {path} is not a training checkpoint of this project (no state_dict "
                          "or global_step). Resume from a run's checkpoints/last.ckpt or epochNNN.ckpt")
    return ResumePoint(path, int(ckpt["global_step"]), owning_run_dir(path))


def read_run_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def ensure_run_record(run_dir: Path) -> dict:
    """The run's record, written on first use with a W&B run id (an earlier W&B run's id when there is one)."""
    record = read_run_record(run_dir)
    if not record.get("wandb_id"):
        earlier = sorted(run_dir.glob("wandb/*run-*-*"))  # offline-run-<time>-<id> or run-<time>-<id>
        record["wandb_id"] = earlier[-1].name.rsplit("-", 1)[1] if earlier else secrets.token_hex(4)
        (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return record
