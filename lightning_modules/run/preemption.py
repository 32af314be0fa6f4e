"""SIGTERM or SIGUSR1 (what a cluster sends before it stops or preempts a job): save ``last.ckpt`` at the next step
boundary and stop with :data:`PREEMPTED_STATUS`; under SLURM, SIGUSR1 (the sbatch recipe's time-limit warning)
also requeues the job, which continues the same run.

The handler only records the signal. After a training step the flag is raised in Lightning's own stop check, so
Lightning stops after that step; under DDP the ranks first agree (rank 0's signal is broadcast every
:data:`DDP_CHECK_EVERY` steps, in the same hook on every rank), so every rank stops after the same step. The
exception reaches :meth:`PreemptionSave.on_exception` on every rank, where the loop state is that of a finished step.
The checkpoint holds what Lightning restores mid-epoch (the loops' progress, the loggers' step, the stateful loader's
position, the module's buffers, CoKe's clustering state among them) plus the RNG states, put back before the first
resumed step.
"""
from __future__ import annotations

import logging
import random
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)
PREEMPTED_STATUS = 75  # sysexits' EX_TEMPFAIL: stopped early on purpose, resume to continue
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REQUEUE_SIGNAL = signal.SIGUSR1  # SIGTERM also comes with scancel: that one must not requeue
DDP_CHECK_EVERY = 10  # steps between the ranks' agreements on a signal (a host read each)


class PreemptionSave(pl.Callback):
    """``save(trainer) -> Path`` writes the checkpoint (every rank calls it; rank 0 writes)."""

    def __init__(self, save, requeue_on_slurm: bool = True):
        self.save, self.requeue_on_slurm = save, requeue_on_slurm
        self.received: int | None = None
        self.saved: Path | None = None
        self.requeued: str | None = None  # the SLURM job id requeued
        self._rng_to_restore: dict | None = None
        self._steps = 0  # training steps run by this process

    # ---- signals ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        # Lightning gives a stateful loader its checkpointed position only when it builds the loader after the
        # restore; configure_optimizers' estimated_stepping_batches built it before, so the position is given here.
        try:
            trainer.fit_loop._load_combined_loader_states()
        except RuntimeError as err:  # a loader without state (data.loader=workers) resuming a device loader's
            trainer.fit_loop._combined_loader_states_to_load = []
            log.warning("resume: the training loader cannot take the checkpoint's position in the epoch (%s); this "
                        "epoch's batches start again from its first", str(err).split(". ")[0])
        # Installed over Lightning's SIGTERM handler; Lightning's teardown restores the handlers of before the fit.
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: saving a checkpoint after the current training step, then stopping",
                        signal.Signals(signum).name)
            self.received = signum

    def _rank0_received(self, trainer) -> bool:
        """Whether rank 0 has a signal, known alike on every rank (a read of the device every few steps)."""
        if not _distributed(trainer):
            return self.received is not None
        if self._steps % DDP_CHECK_EVERY:
            return False
        flag = torch.tensor([int(self.received is not None)], device=trainer.strategy.root_device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    # ---- the save -------------------------------------------------------------------------------
    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, SIGTERMException):
            return
        self.received = self.received or signal.SIGTERM  # under DDP the flag may come from rank 0's broadcast
        if not self._steps:
            return  # no step trained in this process: the checkpoint it started from is the latest
        self.saved = self.save(trainer)
        if trainer.is_global_zero and self.received == REQUEUE_SIGNAL and self.requeue_on_slurm:
            self.requeued = requeue_slurm_job()

    def state_dict(self) -> dict:
        return {"rng": rng_states()} if self.received is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._rng_to_restore is not None:  # as the interrupted run had them after its last step
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._steps += 1
        if self._rank0_received(trainer):
            trainer._signal_connector.received_sigterm = True  # Lightning's own flag: it stops after this step

    def describe(self, trainer, resume_hint: str) -> str:
        name = signal.Signals(self.received or signal.SIGTERM).name
        where = (f"epoch {trainer.current_epoch + 1}, global step {trainer.global_step}"
                 f" (batch {trainer.fit_loop.epoch_loop.batch_progress.current.completed} of "
                 f"{trainer.num_training_batches})")
        saved = f"saved {self.saved}" if self.saved else "no checkpoint was saved"
        then = (f"SLURM job {self.requeued} was requeued and will continue this run" if self.requeued
                else f"resume with: {resume_hint}")
        return f"stopped by {name} at {where}: {saved}; {then}. Every earlier checkpoint and log is kept"


def _distributed(trainer) -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1


def rng_states() -> dict:
    """Python's, NumPy's and torch's generator states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def requeue_slurm_job() -> str | None:
    """``scontrol requeue <job>`` (rank 0, once); the requeued job resumes the run (the sbatch uses resume=auto)."""
    from lightning_modules.run.resume import slurm_job_id

    job = slurm_job_id()
    if not job:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("could not requeue SLURM job %s: %s; resubmit it (it resumes with resume=auto)", job, err)
        return None
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%s): %s; resubmit the job (it resumes with resume=auto)", job,
                    done.returncode, done.stderr.strip())
        return None
    log.info("requeued SLURM job %s", job)
    return job


def slurm_plugins() -> list:
    """Under SLURM: Lightning's environment without its own SIGUSR1 handler (which saves mid-step, to
    ``hpc_ckpt_N.ckpt``, and auto-resumes from it); :class:`PreemptionSave` does the saving and requeueing."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def is_preemption(err: BaseException) -> bool:
    return isinstance(err, SIGTERMException)
