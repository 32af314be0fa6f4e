"""Find the device-to-host reads of a training loop, on any device.

On a GPU every ``.item()``, ``.cpu()``, ``.tolist()``, ``bool(tensor)`` or boolean-mask index waits for the queued
kernels, so the host cannot run ahead and the GPU idles between steps. ``torch.cuda.set_sync_debug_mode`` finds them
on CUDA only; :class:`HostReads` finds the same calls on the CPU by wrapping those tensor methods (:class:`CudaSyncs`
collects CUDA's own reports the same way), and the :class:`StepTracker` callback files each read under the training
step it happened in, with its source line.
"""
from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Read:
    step: int  # the training step it happened in; -1 outside the training loop's batches
    what: str
    where: str  # the innermost frame outside torch, and the innermost of this project when that one is a library's
    package: str  # the top-level package of the innermost frame outside torch ("" for this project)
    function: str  # the function of the innermost frame outside torch


def _is_mask(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys)


def _where(frame) -> str:
    path = Path(frame.filename)
    inside = path.is_relative_to(PROJECT) and ".venv" not in path.parts
    return f"{path.relative_to(PROJECT) if inside else path.name}:{frame.lineno}"


def _package(frame) -> str:
    parts = Path(frame.filename).parts
    return parts[parts.index("site-packages") + 1] if "site-packages" in parts else ""


def _caller() -> tuple[str, str, str]:
    """The innermost frame outside torch (and the innermost of this project when that one is a library's), and the
    package of the former."""
    frames = [f for f in traceback.extract_stack() if f.filename != __file__ and "/warnings.py" not in f.filename]
    ours = [f for f in frames if Path(f.filename).is_relative_to(PROJECT) and ".venv" not in Path(f.filename).parts]
    outside_torch = [f for f in frames if "/torch/" not in f.filename] or frames
    inner = outside_torch[-1]
    if not ours or ours[-1] is inner:
        return _where(inner), _package(inner), inner.name
    return f"{_where(inner)} from {_where(ours[-1])}", _package(inner), inner.name


class HostReads:
    """While active, every host read of a tensor is recorded in ``reads`` with ``step`` (set by the tracker)."""

    def __init__(self):
        self.reads: list[Read] = []
        self.step = -1
        self.steps: set[int] = set()  # the training steps the tracker saw
        self._saved: dict[str, object] = {}

    def _wrap(self, name: str, original):
        def wrapped(tensor, *args, **kwargs):
            self.reads.append(Read(self.step, name, *_caller()))
            return original(tensor, *args, **kwargs)
        return wrapped

    def _wrap_getitem(self, original):
        def getitem(tensor, key):
            if _is_mask(key):
                self.reads.append(Read(self.step, "boolean mask", *_caller()))
            return original(tensor, key)
        return getitem

    def __enter__(self) -> "HostReads":
        for name in (*READS, "__getitem__"):
            self._saved[name] = getattr(torch.Tensor, name)
        for name in READS:
            setattr(torch.Tensor, name, self._wrap(name, self._saved[name]))
        torch.Tensor.__getitem__ = self._wrap_getitem(self._saved["__getitem__"])
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)



class CudaSyncs(HostReads):
    """On CUDA: every synchronisation the CUDA caching allocator and copies report (``set_sync_debug_mode``), filed
    like :class:`HostReads`' reads, with the source line (the warning's stack)."""

    def __enter__(self) -> "CudaSyncs":
        torch.cuda.set_sync_debug_mode("warn")
        self._show, self._filters = warnings.showwarning, warnings.filters[:]
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = self._record
        return self

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        self.reads.append(Read(self.step, "CUDA sync", *_caller()))

    def __exit__(self, *exc) -> None:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = self._show
        warnings.filters[:] = self._filters


class StepTracker(pl.Callback):
    """Files reads from one batch's start to the next batch's start (views, step, logging and callbacks) under that
    batch's global step; reads after the last batch and in validation are filed under -1."""

    def __init__(self, reads: HostReads):
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.reads.step = trainer.global_step
        self.reads.steps.add(trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module):
        self.reads.step = -1

    def on_validation_start(self, trainer, pl_module):
        self.reads.step = -1


def logging_step(step: int, every: int) -> bool:
    """The steps on which Lightning writes step metrics to the loggers (``log_every_n_steps``)."""
    return (step + 1) % max(1, every) == 0


def took_logging_step(trainer) -> bool:
    """In ``on_train_batch_end``: whether the step just taken was one of :func:`logging_step`'s."""
    return logging_step(trainer.global_step - 1, trainer.log_every_n_steps)
