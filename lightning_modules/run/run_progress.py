"""Lightning's rich progress bar, plus the whole run: epochs done of the total, elapsed time, ETA, images/s."""
from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar

from lightning_modules.run.host_reads import took_logging_step
from lightning_modules.run.run_clock import BatchRate, batches_done, clock, run_batches


def run_summary(trainer, rate: BatchRate, batch_idx: int | None) -> dict[str, str]:
    """The whole-run fields shown beside the bar. ``batch_idx``: the last finished batch of this epoch (None: none)."""
    total = run_batches(trainer)
    epochs = "?" if trainer.max_epochs is None or trainer.max_epochs < 0 else str(trainer.max_epochs)
    done = (trainer.current_epoch * trainer.num_training_batches if batch_idx is None
            else batches_done(trainer, batch_idx))
    epochs_done = done // trainer.num_training_batches if trainer.num_training_batches else trainer.current_epoch
    fields = {"epochs done": f"{epochs_done}/{epochs}", "run elapsed": clock(rate.elapsed)}
    eta = rate.eta(total - done) if total is not None else None
    fields["run ETA"] = "-" if eta is None else clock(eta)
    speed = rate.images_per_sec
    fields["img/s"] = "-" if speed is None else f"{speed:.0f}"
    return fields


class RunProgressBar(RichProgressBar):
    """Lightning's bar (this epoch's batches and time), its description counting epochs from 1 of the total, and the
    whole run's fields (:func:`run_summary`) in front of the logged metrics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rate = BatchRate()
        self._last_batch_idx: int | None = None
        self.loss: float | None = None  # train/loss as last written to the loggers

    def on_train_start(self, trainer, pl_module):
        self.rate.start()
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        self.rate.new_epoch()
        self._last_batch_idx = None
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        images = batch["image"].shape[0] if isinstance(batch, dict) and "image" in batch else 0
        self.rate.batch_done(images * trainer.world_size)
        self._last_batch_idx = batch_idx
        if took_logging_step(trainer) and "train/loss" in trainer.logged_metrics:
            # read on a logging step only: a tensor logged with prog_bar would be read on the host every step
            self.loss = float(trainer.logged_metrics["train/loss"])
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module):
        logged = super().get_metrics(trainer, pl_module)
        loss = {} if self.loss is None else {"loss": f"{self.loss:.3f}"}
        return {**run_summary(trainer, self.rate, self._last_batch_idx), **loss, **logged}

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's own reads "Epoch 0/399" for the first of 400 epochs.
        epochs = self.trainer.max_epochs
        description = f"Epoch {current_epoch + 1}" + (f"/{epochs}" if epochs is not None and epochs >= 0 else "")
        return f"{description:{len(self.validation_description)}}"
