"""Run directories, resume and the Trainer: everything ``train.py`` wires together."""
from __future__ import annotations

import inspect
import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

from configs.loader import ConfigError, to_plain, to_yaml
from lightning_modules.callbacks import Throughput, ViewGrid
from lightning_modules.loggers import build_loggers

log = logging.getLogger(__name__)
CONFIG_FILE = "config.yaml"


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch; its own class keeps its state apart from the periodic checkpoints'."""


def check_trainer_keys(trainer_cfg: dict) -> None:
    """Unknown ``trainer.*`` keys fail before any work, like the rest of the config."""
    import difflib

    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in trainer_cfg:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean `trainer.{close[0]}`?" if close else ""
            raise ConfigError(f"unknown config key `trainer.{key}` (not a lightning.Trainer argument).{hint}")


def find_resume_checkpoint(cfg, run_name: str) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise FileNotFoundError(f"resume={cfg.resume}: no such checkpoint. Use resume=auto or a path to a .ckpt")
        return path
    candidates = sorted(Path(cfg.run_dir, run_name).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        log.warning("resume=auto: no last.ckpt under %s; starting a new run", Path(cfg.run_dir, run_name))
        return None
    return candidates[-1]


# "<pid>:<dir>": rank 0's run directory, inherited by the processes Lightning's DDP launcher starts from it
# (their parent pid is <pid> and their rank is not 0; a later run in rank 0's own process, or a rank-0 child
# it starts, does not pick it up).
RUN_DIR_ENV = "COKE_RUN_DIR"


def launch_rank() -> int:
    """This process's global rank as its launcher (srun, torchrun, Lightning's DDP launcher) set it, before
    torch.distributed exists; only whether it is 0 matters here."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return int(os.environ.get("NODE_RANK", 0)) + int(os.environ.get("LOCAL_RANK", 0))


def prepare_run_dir(cfg, run_name: str, resume_from: Path | None) -> Path:
    """A new directory per run (``<run_dir>/<name>/<timestamp>``); a resumed run continues in its own.

    Only rank 0 creates it and writes the config: the other ranks start later (their timestamp would differ) and
    Lightning writes checkpoints and logs from rank 0 only.
    """
    if resume_from:
        run_dir = resume_from.parent.parent
    elif launch_rank() != 0 and os.environ.get(RUN_DIR_ENV, "").startswith(f"{os.getppid()}:"):
        run_dir = Path(os.environ[RUN_DIR_ENV].split(":", 1)[1])
    else:
        run_dir = Path(cfg.run_dir, run_name, time.strftime("%Y%m%d-%H%M%S"))
    if launch_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(to_yaml(cfg))
        os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
    return run_dir


def build_trainer(cfg, run_dir: Path, run_name: str) -> pl.Trainer:
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        Throughput(),
        ViewGrid(run_dir / "views", cfg.logger.view_grid_every_n_epochs),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar(leave=True))
    if cfg.checkpoint.save_last:
        callbacks.append(LastCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1,
                                        enable_version_counter=False, save_on_train_epoch_end=True))
    if cfg.checkpoint.every_n_epochs:
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
            every_n_epochs=cfg.checkpoint.every_n_epochs, save_top_k=-1, save_on_train_epoch_end=True,
        ))
    loggers = build_loggers(cfg.logger, run_dir, run_name, to_plain(cfg))
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs = dict(to_plain(cfg.trainer))
    trainer_kwargs.setdefault("log_every_n_steps", cfg.logger.log_every_n_steps)
    if cfg.model.sync_batchnorm:
        trainer_kwargs.setdefault("sync_batchnorm", True)
    if cfg.max_time_minutes:
        trainer_kwargs.setdefault("max_time", {"minutes": cfg.max_time_minutes})
    return pl.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks, **trainer_kwargs)
