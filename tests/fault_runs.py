"""Tiny real runs for the fault tests: three epochs of two steps on 80 CIFAR-10 JPEGs, the reference run
a faulty one must match, and the helpers that inject a fault at a given step or file write (never on a timer)."""
from __future__ import annotations

import errno
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import train
from lightning_modules.run.cli_errors import run_cli
from tiny_data import run_dirs, tiny_tree, train_args

EPOCHS = 3  # x 2 steps
CONFIGS = {"simclr": ("configs/pretrain/simclr_cifar10.yaml", []),
           "coke": ("configs/pretrain/quick.yaml", ["method.num_clusters=[4,6]"])}


def args_for(method: str, tree: Path, tmp_path: Path, *overrides: str) -> list[str]:
    config, extra = CONFIGS[method]
    return train_args(tree, tmp_path, f"trainer.max_epochs={EPOCHS}", "checkpoint.every_n_epochs=1", *extra,
                      *overrides, config=config)


def cli(args: list[str], capsys) -> tuple[int, str]:
    status = run_cli(train.main, [str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, err


def last_paragraph(err: str) -> str:
    return err.strip().splitlines()[-1]


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="session")
def fault_tree(cifar10_tar, cache_dir, tmp_path_factory) -> Path:
    return tiny_tree(cifar10_tar, cache_dir, tmp_path_factory.mktemp("fault-tree") / "tree")


def reference_run(method: str, tree: Path, tmp_path: Path) -> Path:
    """One intra-op thread, as the tests' own runs have (``one_thread``): a thread count changes float sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(train.main, args_for(method, tree, tmp_path)) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dirs(tmp_path)[0]


@pytest.fixture(scope="session")
def simclr_reference(fault_tree, tmp_path_factory) -> Path:
    """An uninterrupted SimCLR run: its run directory."""
    return reference_run("simclr", fault_tree, tmp_path_factory.mktemp("simclr-reference"))


@pytest.fixture(scope="session")
def coke_reference(fault_tree, tmp_path_factory) -> Path:
    return reference_run("coke", fault_tree, tmp_path_factory.mktemp("coke-reference"))


class SignalAtStep(pl.Callback):
    """Sends ``signum`` to this process during the training step that ends at global step ``step`` (a deterministic
    preemption: the run stops after that step)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


@contextmanager
def extra_callback(monkeypatch, callback: pl.Callback):
    """``callback`` joins the Trainer that train.main builds."""
    import lightning_modules.run.runs as runs

    build = runs.build_trainer

    def build_with(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(callback)
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(runs, "build_trainer", build_with)
        yield


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@contextmanager
def failing_writes(monkeypatch, name_part: str, error: int = errno.ENOSPC, after_files: int = 0):
    """``os.write`` to a file whose name contains ``name_part`` raises OSError(error), from the ``after_files``+1-th
    such file on (the files before it are written normally): a disk that fills up."""
    real_write, seen = os.write, []

    def write(fd, data):
        path = fd_path(fd)
        if name_part in os.path.basename(path):
            if path not in seen:
                seen.append(path)
            if len(seen) > after_files:
                real_write(fd, bytes(data[: len(data) // 2]))  # part of it lands, as on a real disk
                raise OSError(error, os.strerror(error))
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", write)
        yield


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of a run under ``dest/runs/tiny/``, as train.main finds it with ``run_dir=dest/runs``."""
    target = dest / "runs" / "tiny" / run_dir.name
    shutil.copytree(run_dir, target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
