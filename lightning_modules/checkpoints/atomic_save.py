"""Checkpoint files that hold either the old version or the new one, never part of either.

The bytes go to a temporary file in the destination's own directory, are flushed and fsynced, and the file is then
renamed over the old one (a rename within one file system is atomic). A temporary file in the system temp directory
would be moved across file systems, which is a copy that a full disk or a kill cuts short.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

TEMP_SUFFIX = ".saving"  # ".<name>.<random>.saving" beside the file while it is written; never a resume candidate
CHUNK_BYTES = 1 << 24
# A save in progress writes a chunk at least every few seconds; a temporary file untouched this long was left by a
# save that was killed (kill -9, a node lost) and will never be completed.
STALE_AFTER_SECONDS = 120.0


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the file it would have replaced is untouched."""

    def __init__(self, path: Path, needed: int, cause: OSError):
        super().__init__(cause.errno, str(cause))
        self.path, self.needed, self.cause = Path(path), needed, cause

    def __str__(self) -> str:
        folder = self.path.parent
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied"}.get(self.cause.errno, os.strerror(self.cause.errno or 0))
        try:
            free = f", {size_in_words(shutil.disk_usage(folder).free)} free there"
        except OSError:
            free = ""
        return (f"could not save {self.path.name} in {folder}: {reason} ({type(self.cause).__name__}"
                f"{f' errno {self.cause.errno}' if self.cause.errno else ''}). The checkpoint needs "
                f"{size_in_words(self.needed)}{free}. No checkpoint was damaged: the file it would have replaced is "
                f"untouched")


def size_in_words(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data[:CHUNK_BYTES])
        data = data[written:]


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically; on failure the old file is untouched and the temporary removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise CheckpointSaveError(path, len(data), err) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)  # the partial copy: frees the space it took
            except OSError:
                pass
    _fsync_directory(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def keep_copy(path: str | Path, copy: str | Path) -> None:
    """``copy`` becomes a second name of ``path``'s current bytes (a hard link; a copy where links are refused),
    so a later atomic save of ``path`` leaves ``copy`` with the old version."""
    path, copy = Path(path), Path(copy)
    link = copy.with_name(f".{copy.name}.link{TEMP_SUFFIX}")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
        os.replace(link, copy)
    except OSError:
        link.unlink(missing_ok=True)
        atomic_write_bytes(copy, path.read_bytes())


def remove_stale_temp_files(folder: Path, now: float | None = None) -> list[tuple[str, int]]:
    """Delete the temporary files of saves that were cut off (``.*.saving`` not modified for STALE_AFTER_SECONDS);
    returns each one's (name, bytes). The checkpoint each would have replaced is whole: only the partial copy goes."""
    now = time.time() if now is None else now
    removed = []
    for path in sorted(Path(folder).glob(f".*{TEMP_SUFFIX}")):
        try:
            stat = path.stat()
            if path.is_file() and now - stat.st_mtime >= STALE_AFTER_SECONDS:
                path.unlink()
                removed.append((path.name, stat.st_size))
        except OSError:  # gone already, or not ours to delete: leave it
            continue
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer for local paths, saving through :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)
