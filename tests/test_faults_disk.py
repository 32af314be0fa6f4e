"""A disk that fills up, a kill during a save, a read-only run directory, a checkpoint folder on another file system
than the system temp: one paragraph and a non-zero exit, every intact checkpoint and log kept, and a resume that
ends on the uninterrupted run's weights."""
import errno
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from fault_runs import (args_for, assert_same_weights, cli, copy_run, failing_writes, fault_tree,  # noqa: F401
                        last_paragraph, simclr_reference, snapshot)
from lightning_modules.checkpoints.atomic_save import (STALE_AFTER_SECONDS, TEMP_SUFFIX, remove_stale_temp_files,
                                                       size_in_words)
from tiny_data import run_dirs

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["global_step"]


def _printed_resume(message: str) -> list[str]:
    return shlex.split(message.split("resume with: ")[1])[2:]


def test_a_full_disk_keeps_the_last_checkpoint_and_the_resume_finishes_the_run(fault_tree, simclr_reference, tmp_path,
                                                                               monkeypatch, capsys):
    with failing_writes(monkeypatch, "last.ckpt", errno.ENOSPC, after_files=1):  # epoch 0's save lands, epoch 1's not
        status, err = cli(args_for("simclr", fault_tree, tmp_path), capsys)
    [run_dir] = run_dirs(tmp_path)
    checkpoints = run_dir / "checkpoints"
    message = last_paragraph(err)
    assert status == 1, err
    assert message.startswith(f"checkpoint error: could not save last.ckpt in {checkpoints}: the disk is full"), message
    assert "The checkpoint needs " in message and " MB" in message and "is kept" in message
    assert "resume with: python train.py configs/pretrain/simclr_cifar10.yaml" in message
    assert f"resume={run_dir}" in message
    assert _step(checkpoints / "last.ckpt") == 2  # epoch 0's, whole
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(TEMP_SUFFIX)]  # the partial copy is gone
    assert (run_dir / "csv" / "metrics.csv").is_file()

    assert cli(_printed_resume(message), capsys)[0] == 0  # space freed: the printed command finishes the run
    assert run_dirs(tmp_path) == [run_dir]
    assert_same_weights(checkpoints / "last.ckpt", simclr_reference / "checkpoints" / "last.ckpt")


KILL_DURING_SAVE = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import train
from lightning_modules.run.cli_errors import run_cli
real_write, seen = os.write, []
def write(fd, data):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{{fd}}"))
    if ".last.ckpt." in name:
        seen.append(name) if name not in seen else None
        if len(seen) == 2:  # the second save of last.ckpt: half of it, then SIGKILL
            real_write(fd, bytes(data[: len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)
os.write = write
sys.exit(run_cli(train.main, {args!r}))
"""


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_whole(fault_tree, simclr_reference, tmp_path, capsys,
                                                                   caplog):
    args = args_for("simclr", fault_tree, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE.format(tests=str(REPO / "tests"), args=args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-2000:]
    [run_dir] = run_dirs(tmp_path)
    checkpoints = run_dir / "checkpoints"
    assert _step(checkpoints / "last.ckpt") == 2  # epoch 0's last.ckpt, untouched by the cut-off save
    [partial] = [p for p in checkpoints.iterdir() if p.name.endswith(TEMP_SUFFIX)]  # what the kill left

    size = partial.stat().st_size
    stale = partial.stat().st_mtime - STALE_AFTER_SECONDS
    os.utime(partial, (stale, stale))  # as if the resume came minutes after the kill
    with caplog.at_level(logging.WARNING):
        assert cli([*args, "resume=auto"], capsys)[0] == 0
    assert not partial.exists()  # never a resume candidate; removed by the resume, and said once
    [said] = [r.getMessage() for r in caplog.records if "partial checkpoint" in r.getMessage()]
    assert partial.name in said and size_in_words(size) in said
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert_same_weights(checkpoints / "last.ckpt", simclr_reference / "checkpoints" / "last.ckpt")


def test_only_a_stale_temporary_file_is_removed(tmp_path):
    """A save in progress (its temporary file written to moments ago) is left alone; one untouched for longer than a
    save can pause is removed, and nothing else in the folder."""
    now = 1_000_000.0
    files = {name: tmp_path / name for name in (".last.ckpt.a1.saving", ".last.ckpt.b2.saving", "last.ckpt",
                                                "epoch001.ckpt.saving", ".notes.txt")}
    for name, path in files.items():
        path.write_bytes(b"x" * 10)
        age = 1.0 if name == ".last.ckpt.b2.saving" else STALE_AFTER_SECONDS + 1
        os.utime(path, (now - age, now - age))
    assert remove_stale_temp_files(tmp_path, now=now) == [(".last.ckpt.a1.saving", 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(files) - {".last.ckpt.a1.saving"})


def test_checkpoints_on_another_file_system_than_the_system_temp(fault_tree, tmp_path, monkeypatch, capsys):
    """A rename across file systems fails with EXDEV: here every rename or move out of another directory does, and
    the system temp directory is elsewhere. The checkpoints never leave their folder, so the run is unaffected."""
    elsewhere = tmp_path / "system-temp"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    real_replace, real_rename = os.replace, os.rename

    def same_folder_only(real):
        def move(src, dst, *a, **k):
            if Path(src).resolve().parent != Path(dst).resolve().parent:
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
            return real(src, dst, *a, **k)
        return move

    monkeypatch.setattr(os, "replace", same_folder_only(real_replace))
    monkeypatch.setattr(os, "rename", same_folder_only(real_rename))
    status, err = cli(args_for("simclr", fault_tree, tmp_path, "trainer.max_epochs=2"), capsys)
    assert status == 0, err
    checkpoints = run_dirs(tmp_path)[0] / "checkpoints"
    assert _step(checkpoints / "last.ckpt") == 4 and _step(checkpoints / "epoch001.ckpt") == 4
    assert list(elsewhere.iterdir()) == []


def test_a_read_only_run_directory_ends_before_anything_changes(simclr_reference, fault_tree, tmp_path, monkeypatch,
                                                                capsys):
    run_dir = copy_run(simclr_reference, tmp_path)
    before = snapshot(run_dir)
    real_open = os.open

    def read_only(path, flags, *a, **k):  # a read-only mount of the run directory (root ignores chmod)
        if str(path).startswith(str(run_dir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", read_only)
        status, err = cli(args_for("simclr", fault_tree, tmp_path, f"resume={run_dir}", "trainer.max_epochs=4"), capsys)
    assert status == 2, err
    assert last_paragraph(err) == (
        f"run directory error: cannot write into the run directory {run_dir}: it is on a read-only file system. "
        "Nothing was changed in it. Make it writable again (or copy the run elsewhere and resume=<the copy>)")
    assert snapshot(run_dir) == before


def test_a_run_directory_that_cannot_be_created(fault_tree, tmp_path, monkeypatch, capsys):
    blocked = tmp_path / "runs"
    blocked.write_text("a file where the runs folder would go\n")
    status, err = cli(args_for("simclr", fault_tree, tmp_path), capsys)
    assert status == 2 and last_paragraph(err).startswith("run directory error: cannot write into the run directory")
    assert "Set run_dir= to a writable folder" in err
    assert blocked.read_text() == "a file where the runs folder would go\n"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_a_full_disk_during_an_export_keeps_the_previous_export(simclr_reference, tmp_path, monkeypatch, capsys):
    import evaluate
    from lightning_modules.run.cli_errors import run_cli

    out = tmp_path / "export" / "backbone.safetensors"
    checkpoint = simclr_reference / "checkpoints" / "epoch000.ckpt"
    assert evaluate.main([str(checkpoint), f"export={out}"]) == 0
    first = out.read_bytes()
    with failing_writes(monkeypatch, "backbone.safetensors", errno.ENOSPC):
        status = run_cli(evaluate.main, [str(simclr_reference / "checkpoints" / "last.ckpt"), f"export={out}"])
    err = capsys.readouterr().err
    assert status == 1 and last_paragraph(err).startswith(
        f"checkpoint error: could not save backbone.safetensors in {out.parent}: the disk is full")
    assert out.read_bytes() == first and sorted(p.name for p in out.parent.iterdir()) == ["backbone.json", out.name]


def test_a_full_disk_under_the_log_is_one_paragraph_too(fault_tree, tmp_path, monkeypatch, capsys):
    from lightning_modules.run.csv_history import HistoryKeepingWriter

    real_save = HistoryKeepingWriter.save

    def save_until_epoch_1(self):
        if any(row.get("epoch") == 1 for row in self.metrics):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.metrics_file_path)
        return real_save(self)

    monkeypatch.setattr(HistoryKeepingWriter, "save", save_until_epoch_1)
    status, err = cli(args_for("simclr", fault_tree, tmp_path, "trainer.max_epochs=2"), capsys)
    [run_dir] = run_dirs(tmp_path)
    message = last_paragraph(err)
    assert status == 1 and message.startswith(
        f"disk error: could not write {run_dir / 'csv' / 'metrics.csv'}: the disk is full"), message
    assert "resume with: python train.py" in message and "is kept" in message
    assert _step(run_dir / "checkpoints" / "epoch000.ckpt") == 2
