"""``last.ckpt`` that is always a good checkpoint to resume from: weights that are finite and have given a
finite loss.

Each epoch's checkpoint is saved as usual, but the one before it is kept (``last-previous.ckpt``) until a
training step has run on the new weights with a finite loss. When the very first step on the new weights gives a
non-finite loss (a diverging run can end an epoch with finite but huge weights), the new file is dropped and the
previous one becomes ``last.ckpt`` again. Weights that are not finite are never saved.

Every save is atomic (:mod:`lightning_modules.checkpoints.atomic_save`); the previous file is kept as a second name
of the same bytes, so ``last.ckpt`` exists at every moment, even when a save fails or the process is killed during one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_modules.checkpoints.atomic_save import keep_copy

log = logging.getLogger(__name__)
PREVIOUS_NAME = "last-previous.ckpt"
DIVERGED_NAME = "last-diverged.ckpt"


def weights_are_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch; its own class keeps its state apart from the periodic checkpoints'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._untested_path: str | None = None  # saved, but no training step has run on its weights yet

    def _previous(self, filepath: str) -> Path:
        return Path(filepath).with_name(PREVIOUS_NAME)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not weights_are_finite(trainer.lightning_module):
            log.warning("weights are not finite at global step %d: %s not overwritten (it keeps the last good "
                        "weights)", trainer.global_step, filepath)
            return
        if trainer.is_global_zero and os.path.isfile(filepath) and self._untested_path != filepath:
            keep_copy(filepath, self._previous(filepath))  # kept until the new weights give a finite loss
        super()._save_checkpoint(trainer, filepath)
        self._untested_path = filepath

    def save_now(self, trainer) -> Path:
        """Save ``last.ckpt`` at this step (a preemption's save), by the same rules as the epoch's save."""
        path = str(Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}")
        self._save_checkpoint(trainer, path)
        return Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._untested_path and trainer.is_global_zero:  # the step ran: the saved weights gave a finite loss
            self._previous(self._untested_path).unlink(missing_ok=True)
        self._untested_path = None

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self._untested_path and trainer.is_global_zero:  # a finished run keeps one last.ckpt, not two
            self._previous(self._untested_path).unlink(missing_ok=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if type(exception).__name__ != "NonFiniteLossError" or not self._untested_path or not trainer.is_global_zero:
            return
        path, previous = Path(self._untested_path), self._previous(self._untested_path)
        if not path.is_file():
            return
        os.replace(path, path.with_name(DIVERGED_NAME))  # for a post-mortem; resume=auto never picks it
        if previous.is_file():
            os.replace(previous, path)
            log.warning("the weights saved in %s gave a non-finite loss at once: it is the previous epoch's "
                        "checkpoint again (the diverged one is %s)", path, DIVERGED_NAME)
        else:
            log.warning("the weights saved in %s gave a non-finite loss at once and no earlier checkpoint exists: "
                        "it was renamed %s", path, DIVERGED_NAME)
