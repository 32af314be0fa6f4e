"""``resume=``: find the checkpoint, prove it loads (exists, readable, weights-only safe) before any work, and
decide which run directory the resumed run writes into. Also the run record (``run.json``) that marks a run
directory and keeps its W&B run id, so a resumed run continues the same W&B run.

``resume=auto`` and a run directory take the newest checkpoint of the run that loads: ``last.ckpt``, the kept
previous one, ``epochNNN.ckpt``; a damaged one is skipped (and named), never deleted.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lightning_modules.checkpoints.atomic_save import TEMP_SUFFIX, atomic_write_bytes
from lightning_modules.checkpoints.safe_load import CheckpointReadError, UnsafeCheckpointError, load_weights_only
from lightning_modules.run.last_good import DIVERGED_NAME

log = logging.getLogger(__name__)
RUN_RECORD = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
SLURM_JOB_KEY = "slurm_job_id"


class ResumeError(ValueError):
    """``resume=`` names nothing usable; the message says what to pass instead."""


@dataclass
class ResumePoint:
    checkpoint: Path
    global_step: int  # CSV rows from this step on are dropped: the resumed run logs them again
    run_dir: Optional[Path]  # the run directory the checkpoint belongs to; None: a checkpoint from elsewhere
    run_cfg: dict = field(default_factory=dict)  # the config the checkpoint was trained with
    shapes: dict = field(default_factory=dict)  # state_dict key -> shape


def owning_run_dir(checkpoint: Path) -> Optional[Path]:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>`` when ``<run>`` is a run directory this project wrote, else None.

    Marked by ``run.json``; runs from before it by ``config.yaml`` beside ``csv/``, ``wandb/`` or ``views/``.
    """
    if checkpoint.parent.name != CHECKPOINTS:
        return None
    run_dir = checkpoint.parent.parent
    if (run_dir / RUN_RECORD).is_file():
        return run_dir
    if (run_dir / CONFIG_FILE).is_file() and any((run_dir / d).is_dir() for d in ("csv", "wandb", "views")):
        return run_dir
    return None


def run_checkpoints(folder: Path) -> list[Path]:
    """A run's resumable checkpoints, newest first (by modification time; ``last.ckpt`` first on a tie)."""
    folder = folder / CHECKPOINTS if (folder / CHECKPOINTS).is_dir() else folder
    found = [p for p in folder.glob("*.ckpt") if p.is_file() and p.name != DIVERGED_NAME
             and not p.name.startswith(".") and not p.name.endswith(TEMP_SUFFIX)]
    return sorted(found, key=lambda p: (-p.stat().st_mtime, p.name != "last.ckpt", p.name))


def _training_checkpoint(path: Path) -> dict:
    ckpt = load_weights_only(path)  # UnsafeCheckpointError / CheckpointReadError name the file
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ResumeError(f"{path} is not a training checkpoint of this project (no state_dict or global_step). "
                          "Resume from a run's checkpoints/last.ckpt or epochNNN.ckpt")
    return ckpt


def _newest_that_loads(candidates: list[Path], what: str) -> tuple[Path, dict]:
    skipped = []
    for path in candidates:
        try:
            ckpt = _training_checkpoint(path)
        except (CheckpointReadError, UnsafeCheckpointError, ResumeError) as err:
            skipped.append(f"{path.name} ({' '.join(str(err).split('. ')[0].split())})")
            continue
        for reason in skipped:
            log.warning("resume: skipped %s; the file is kept as it is", reason)
        log.info("resume: continuing from %s (epoch %s, global step %s), the newest checkpoint of %s that loads%s",
                 path, ckpt.get("epoch"), ckpt.get("global_step"), what,
                 f"; {len(skipped)} newer one(s) skipped" if skipped else "")
        return path, ckpt
    detail = "; ".join(skipped) if skipped else "there is none"
    raise ResumeError(f"no checkpoint of {what} loads: {detail}. Nothing was changed or deleted. Resume from an "
                      "intact copy (resume=<path of a .ckpt>), or start a new run without resume=")


def _auto_candidates(root: Path) -> list[Path]:
    """Every run's checkpoints under ``runs/<name>/``, newest first; under SLURM this job's own run first."""
    runs = [p for p in root.glob("*") if p.is_dir()]
    job = slurm_job_id()
    mine = [run for run in runs if job and read_run_record(run).get(SLURM_JOB_KEY) == job]
    own = [p for run in mine for p in run_checkpoints(run)]
    others = [p for run in runs if run not in mine for p in run_checkpoints(run)]
    newest = sorted(others, key=lambda p: -p.stat().st_mtime)
    return own + newest


def resolve_resume(cfg, run_name: str) -> Optional[ResumePoint]:
    """The checkpoint ``cfg.resume`` names, loaded once (weights only) to prove it is usable, or None."""
    if not cfg.resume:
        return None
    root = Path(cfg.run_dir, run_name)
    if cfg.resume == "auto":
        candidates = _auto_candidates(root)
        if not candidates:
            log.warning("resume=auto: no checkpoint under %s; starting a new run", root)
            return None
        path, ckpt = _newest_that_loads(candidates, f"the runs under {root}")
    else:
        path = Path(cfg.resume).expanduser()
        if not path.exists():
            raise ResumeError(f"resume={cfg.resume}: no such file. Pass resume=auto (the newest checkpoint under "
                              f"{root}), a run directory, or the path of a .ckpt")
        if path.is_dir():
            candidates = run_checkpoints(path)
            if not candidates:
                raise ResumeError(f"resume={cfg.resume}: {path} holds no checkpoints (no checkpoints/*.ckpt). Pass "
                                  "a run directory (runs/<name>/<timestamp>) or the path of a .ckpt")
            path, ckpt = _newest_that_loads(candidates, str(path))
        else:
            ckpt = _explicit(path)
    return ResumePoint(path, int(ckpt["global_step"]), owning_run_dir(path),
                       (ckpt.get("hyper_parameters") or {}).get("cfg") or {},
                       {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")})


def _explicit(path: Path) -> dict:
    try:
        return _training_checkpoint(path)
    except CheckpointReadError as err:
        run_dir = owning_run_dir(path)
        if run_dir is None:
            raise
        raise CheckpointReadError(f"{err}; or pass the run directory (resume={run_dir}) to resume from its newest "
                                  "checkpoint that loads") from None


def slurm_job_id() -> str:
    """This job's id as ``scontrol requeue`` takes it (``<array job>_<task>`` in a job array); '' outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID", "")


def resume_command(config: str, overrides: list[str], run_dir: Path) -> str:
    """The command line that resumes ``run_dir`` with the same config and overrides."""
    kept = [o for o in overrides if not o.startswith("resume=")]
    return shlex.join(["python", "train.py", config, *kept, f"resume={run_dir}"])


def read_run_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


# W&B's folder of a run: offline-run-<time>-<id> or run-<time>-<id>, with "-1" added when one of that second exists
WANDB_RUN_DIR = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-(?P<id>[A-Za-z0-9]+)(?:-\d+)?")


def ensure_run_record(run_dir: Path) -> dict:
    """The run's record, written on first use with a W&B run id (an earlier W&B run's id when there is one), and
    the SLURM job that runs it (a requeued job finds its run by it)."""
    record = read_run_record(run_dir)
    before = dict(record)
    if not record.get("wandb_id"):
        ids = [m["id"] for p in sorted(run_dir.glob("wandb/*run-*-*")) if (m := WANDB_RUN_DIR.fullmatch(p.name))]
        record["wandb_id"] = ids[-1] if ids else secrets.token_hex(4)
    if slurm_job_id() and not record.get(SLURM_JOB_KEY):
        record[SLURM_JOB_KEY] = slurm_job_id()
    if record != before:
        atomic_write_bytes(run_dir / RUN_RECORD, (json.dumps(record, indent=1) + "\n").encode())
    return record
