"""A tiny real image folder (CIFAR-10 JPEGs from the shared tar) and a train.py argument list that trains on it
in seconds: for the reliability tests, which need real runs but not learning."""
from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from training_utils import TINY

TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 3
COMPLETE = ".complete"


def tiny_tree(cifar10_tar: Path, cache_dir: Path, dest: Path) -> Path:
    """``dest/<split>/<class>/*.jpg``: 8 train and 3 test images per class (extracted once per cache_dir)."""
    master = Path(cache_dir) / f"tiny-tree-{TRAIN_PER_CLASS}-{TEST_PER_CLASS}"
    if not (master / COMPLETE).is_file():
        _extract_once(cifar10_tar, master)
    shutil.copytree(master, dest, ignore=shutil.ignore_patterns(COMPLETE))
    return dest


def _extract_once(cifar10_tar: Path, master: Path) -> None:
    """One worker at a time (an exclusive ``flock`` on a lock file beside ``master``, held across processes and
    threads): it looks again, and if ``master`` is still not complete, extracts into a private folder, marks it
    complete and renames it into place in one step. A worker that waited for the lock finds the tree complete and
    leaves it alone. A complete ``master`` is never written or removed, so a reader that saw its marker copies it
    without the lock; only a tree without the marker (half a tree left by an interrupted run of older code, which
    extracted in place) is moved aside and removed, under the lock, where nothing else writes or reads it."""
    master.parent.mkdir(parents=True, exist_ok=True)
    with open(master.parent / f".{master.name}.lock", "a") as lock:  # kept: removing a lock file races its users
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if this process dies
        if (master / COMPLETE).is_file():
            return
        if master.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{master.name}-stale-", dir=master.parent))
            os.replace(master, stale / "tree")
            shutil.rmtree(stale)
        staging = Path(tempfile.mkdtemp(prefix=f".{master.name}-", dir=master.parent))
        try:
            _extract(cifar10_tar, staging)
            (staging / COMPLETE).touch()
            os.replace(staging, master)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _extract(cifar10_tar: Path, folder: Path) -> None:
    wanted, counts = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}, {}
    with tarfile.open(cifar10_tar) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and counts.get((parts[1], parts[2]), 0) < wanted[parts[1]]:
                counts[(parts[1], parts[2])] = counts.get((parts[1], parts[2]), 0) + 1
                target = folder / parts[1] / parts[2] / parts[3]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and all(n == wanted[split] for (split, _), n in counts.items()):
                break


def train_args(tree: Path, tmp_path: Path, *overrides: str, config: str = "configs/pretrain/simclr_cifar10.yaml") -> list[str]:
    """80 train images, batch 40: two steps per epoch; CSV logging; a decode cache of its own under tmp_path."""
    return [config, *TINY, "data.name=folder", f"data.path={tree}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.batch_size=40", "data.eval_batch_size=64", f"run_dir={tmp_path / 'runs'}", "run_name=tiny",
            "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "checkpoint.every_n_epochs=0",
            "logger.log_every_n_steps=1", "logger.view_grid_every_n_epochs=0", *overrides]


def run_dirs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs" / "tiny"
    return sorted(root.iterdir()) if root.is_dir() else []
