"""Run directories, resume and the Trainer: everything ``train.py`` wires together."""
from __future__ import annotations

import errno
import inspect
import logging
import os
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from configs.loader import ConfigError, to_plain, to_yaml
from lightning_modules.checkpoints.atomic_save import AtomicCheckpointIO, remove_stale_temp_files, size_in_words
from lightning_modules.run.callbacks import Throughput, ViewGrid
from lightning_modules.run.cpu_run import CpuCostNotice, fit_precision_to_cpu
from lightning_modules.run.feature_diagnostics import FeatureDiagnostics
from lightning_modules.run.last_good import LastCheckpoint
from lightning_modules.run.loggers import build_loggers
from lightning_modules.run.resume import CHECKPOINTS, CONFIG_FILE, ResumePoint, ensure_run_record
from lightning_modules.run.preemption import PreemptionSave, slurm_plugins
from lightning_modules.run.run_progress import RunProgressBar

log = logging.getLogger(__name__)


def check_trainer_keys(trainer_cfg: dict) -> None:
    """Unknown ``trainer.*`` keys fail before any work, like the rest of the config."""
    import difflib

    valid = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in trainer_cfg:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean `trainer.{close[0]}`?" if close else ""
            raise ConfigError(f"unknown config key `trainer.{key}` (not a lightning.Trainer argument).{hint}")


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


def _without_resume_key(config_yaml: str) -> list[str]:
    return [line for line in config_yaml.splitlines() if not line.startswith("resume:")]


class RunDirError(OSError):
    """The run directory cannot be created or written; the message names it and the fix."""

    def __str__(self) -> str:
        return self.strerror


def _new_run_dir(parent: Path) -> Path:
    """``parent/<timestamp>``, created here and by no one else: ``os.mkdir`` fails on a name that exists, so a twin
    job started in the same second takes ``<timestamp>-2`` (and so on), by construction."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        candidate = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent} holds 9999 run directories stamped {stamp}")


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (permissions alone miss read-only mounts and root's rights)."""
    with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
        pass


def _unwritable(folder: Path, err: OSError, resumed: bool) -> RunDirError:
    reason = {errno.EROFS: "it is on a read-only file system", errno.ENOSPC: "its disk is full",
              errno.EDQUOT: "its disk quota is used up"}.get(err.errno, f"{err.strerror or err} (errno {err.errno})")
    fix = ("Make it writable again (or copy the run elsewhere and resume=<the copy>)" if resumed
           else "Set run_dir= to a writable folder")
    return RunDirError(err.errno, f"cannot write into the run directory {folder}: {reason}. Nothing was changed in it. "
                                  f"{fix}")


def prepare_run_dir(cfg, run_name: str, resume: ResumePoint | None) -> Path:
    """A new directory per run (``<run_dir>/<name>/<timestamp>``); a resumed run continues in its own, and a run
    resumed from a checkpoint outside any run directory gets a new one (nothing is written beside that checkpoint).

    Only rank 0 creates it and writes the config: the other ranks start later (their timestamp would differ) and
    Lightning writes checkpoints and logs from rank 0 only. A resume keeps the run's config.yaml; a changed config
    goes beside it as config-resumed-<timestamp>.yaml.
    """
    if resume and resume.run_dir:
        run_dir = resume.run_dir
    elif launch_rank() != 0 and os.environ.get(RUN_DIR_ENV, "").startswith(f"{os.getppid()}:"):
        run_dir = Path(os.environ[RUN_DIR_ENV].split(":", 1)[1])
    else:
        run_dir = Path(cfg.run_dir, run_name, time.strftime("%Y%m%d-%H%M%S"))
    if launch_rank() != 0:
        return run_dir
    resumed = bool(resume and resume.run_dir)
    try:
        if resumed:
            for folder in (run_dir, run_dir / CHECKPOINTS):
                if folder.is_dir():
                    check_writable(folder)
            if removed := remove_stale_temp_files(run_dir / CHECKPOINTS):
                log.warning("resume: removed %d partial checkpoint file(s) left by a save that was cut off (%s, %s); "
                            "the checkpoints themselves are whole", len(removed),
                            ", ".join(name for name, _ in removed), size_in_words(sum(n for _, n in removed)))
        else:
            run_dir = _new_run_dir(run_dir.parent)
        config_file, text = run_dir / CONFIG_FILE, to_yaml(cfg)
        if not config_file.is_file():
            config_file.write_text(text)
        elif _without_resume_key(config_file.read_text()) != _without_resume_key(text):
            (run_dir / f"config-resumed-{time.strftime('%Y%m%d-%H%M%S')}.yaml").write_text(text)
        ensure_run_record(run_dir)
    except OSError as err:
        raise _unwritable(run_dir if resumed or run_dir.is_dir() else run_dir.parent, err, resumed) from None
    os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
    return run_dir


def build_trainer(cfg, run_dir: Path, run_name: str, resume_step: int | None = None) -> pl.Trainer:
    """``resume_step``: the global step a resumed run starts from (the CSV history before it is kept)."""
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        CpuCostNotice(allow_slow=cfg.allow_slow_cpu, max_time_minutes=cfg.max_time_minutes),
        Throughput(),
        ViewGrid(run_dir / "views", cfg.logger.view_grid_every_n_epochs),
        FeatureDiagnostics(cfg.logger.diagnostics_every_n_epochs, cfg.logger.diagnostics_images),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RunProgressBar(leave=True))
    # last.ckpt is also the preemption's save, so a run without save_last still gets one when it is stopped
    last = LastCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1,
                          enable_version_counter=False, save_on_train_epoch_end=True)
    if cfg.checkpoint.save_last:
        callbacks.append(last)
    callbacks.append(PreemptionSave(last.save_now))
    if cfg.checkpoint.every_n_epochs:
        callbacks.append(ModelCheckpoint(
            dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
            every_n_epochs=cfg.checkpoint.every_n_epochs, save_top_k=-1, save_on_train_epoch_end=True,
        ))
    loggers = build_loggers(cfg.logger, run_dir, run_name, to_plain(cfg), resume_step)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs = fit_precision_to_cpu(dict(to_plain(cfg.trainer)))
    trainer_kwargs.setdefault("log_every_n_steps", cfg.logger.log_every_n_steps)
    if cfg.model.sync_batchnorm:
        trainer_kwargs.setdefault("sync_batchnorm", True)
    if cfg.max_time_minutes:
        trainer_kwargs.setdefault("max_time", {"minutes": cfg.max_time_minutes})
    plugins = [AtomicCheckpointIO(), *slurm_plugins(), *trainer_kwargs.pop("plugins", [])]
    return pl.Trainer(default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks, plugins=plugins,
                      **trainer_kwargs)
