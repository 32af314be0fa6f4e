"""``trainer.fit`` for ``train.py``, with the ways a fit stops on purpose or on a full disk turned into one
paragraph and an exit status: a slow CPU run, a preemption signal, a checkpoint that could not be written."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from lightning_modules.checkpoints.atomic_save import CheckpointSaveError
from lightning_modules.run.cpu_run import SlowCpuRun
from lightning_modules.run.loggers import finish_loggers
from lightning_modules.run.preemption import PREEMPTED_STATUS, PreemptionSave, is_preemption
from lightning_modules.run.resume import run_checkpoints

SLOW_CPU_STATUS = 3
SAVE_FAILED_STATUS = 1
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the file system is read-only"}


def _preemption(trainer) -> PreemptionSave | None:
    return next((c for c in trainer.callbacks if isinstance(c, PreemptionSave)), None)


def _kept(run_dir: Path) -> str:
    """The newest checkpoint left in the run (never loaded here: the resume checks it)."""
    kept = run_checkpoints(run_dir)
    return f"the newest intact checkpoint, {kept[0]}, is kept" if kept else "no earlier checkpoint exists"


def fit(trainer, model, datamodule, ckpt_path, run_dir: Path, resume_hint: str) -> int:
    """Train; 0 when the run finished, else the status of the stop (its paragraph is on stderr)."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SlowCpuRun as stop:  # the notice above it says what it costs and what to run instead
        print(stop, file=sys.stderr)
        return SLOW_CPU_STATUS
    except CheckpointSaveError as err:
        print(f"checkpoint error: {err}. The run stopped at global step {trainer.global_step}; {_kept(run_dir)}. "
              f"Free space there (or make it writable), then resume with: {resume_hint}", file=sys.stderr)
        return SAVE_FAILED_STATUS
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"disk error: could not write{where}: {DISK_ERRORS[err.errno]} ({os.strerror(err.errno)}). The run "
              f"stopped at global step {trainer.global_step}; {_kept(run_dir)}. Free space there (or make it "
              f"writable), then resume with: {resume_hint}", file=sys.stderr)
        return SAVE_FAILED_STATUS
    except BaseException as err:
        if not is_preemption(err) or _preemption(trainer) is None:
            raise
        if trainer.global_rank == 0:
            print(_preemption(trainer).describe(trainer, resume_hint), file=sys.stderr)
        return PREEMPTED_STATUS
    finally:
        finish_loggers(trainer.loggers)
    return 0
