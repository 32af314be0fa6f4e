"""resume= never destroys anything: a checkpoint is proved loadable before any write or data loading, a checkpoint
outside a run directory gets a new run directory, and a resumed run keeps its CSV history."""
import csv
import shutil

import pytest
import torch

import train
from lightning_modules.run.cli_errors import run_cli
from lightning_modules.simclr import SimCLR
from tiny_data import run_dirs, tiny_tree, train_args

pytestmark = pytest.mark.usefixtures("one_thread")
USER_CONFIG = "# my own project config\nlr: 3\n"


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def trained(cifar10_tar, cache_dir, tmp_path_factory):
    """A finished two-epoch run (two steps per epoch) and its tree: (tmp_path, run directory)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    assert train.main(train_args(tree, tmp_path)) == 0
    return tmp_path, run_dirs(tmp_path)[0]


def _steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


def _user_project(tmp_path, checkpoint_bytes: bytes):
    project = tmp_path / "proj"
    (project / "models").mkdir(parents=True)
    (project / "config.yaml").write_text(USER_CONFIG)
    (project / "models" / "model.ckpt").write_bytes(checkpoint_bytes)
    return project


def _untouched(project):
    assert (project / "config.yaml").read_text() == USER_CONFIG
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "models"]
    assert sorted(p.name for p in (project / "models").iterdir()) == ["model.ckpt"]


@pytest.mark.parametrize("damage", ["truncated", "not-a-checkpoint", "pickled-code", "missing"])
def test_a_bad_resume_checkpoint_stops_before_any_write_or_data_loading(trained, tmp_path, capsys, damage):
    good = (trained[1] / "checkpoints" / "last.ckpt").read_bytes()
    marker = tmp_path / "payload-ran"
    if damage == "pickled-code":
        evil = tmp_path / "evil.ckpt"
        torch.save({"state_dict": {}, "global_step": 1, "hyper_parameters": _RunsCode(marker)}, evil)
        content = evil.read_bytes()
    else:
        content = {"truncated": good[: len(good) // 2], "not-a-checkpoint": b"hello, not a checkpoint\n",
                   "missing": good}[damage]
    project = _user_project(tmp_path, content)
    ckpt = project / "models" / ("model.ckpt" if damage != "missing" else "nowhere.ckpt")
    status = run_cli(train.main, train_args(tmp_path / "no-tree-needed", tmp_path, f"resume={ckpt}"))
    err = capsys.readouterr().err
    assert status == 2 and str(ckpt) in err and "Traceback" not in err, err
    assert {"truncated": "truncated or damaged", "not-a-checkpoint": "not a PyTorch checkpoint",
            "pickled-code": "nothing in it was executed", "missing": "no such file"}[damage] in err
    _untouched(project)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # no run dir, no data read
    assert not marker.exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_resume_from_a_checkpoint_outside_a_run_directory_starts_a_new_one(trained, tmp_path):
    project = _user_project(tmp_path, (trained[1] / "checkpoints" / "last.ckpt").read_bytes())
    tree = shutil.copytree(trained[0] / "tree", tmp_path / "tree")
    args = train_args(tree, tmp_path, f"resume={project / 'models' / 'model.ckpt'}", "trainer.max_epochs=3")
    assert run_cli(train.main, args) == 0
    _untouched(project)
    [run_dir] = run_dirs(tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # continued from step 4: the checkpoint's training state was used
    assert _steps(run_dir) == [4, 5]


def test_a_resume_keeps_the_csv_history_after_a_crash_and_after_the_end(trained, tmp_path, monkeypatch):
    tree = shutil.copytree(trained[0] / "tree", tmp_path / "tree")
    args = train_args(tree, tmp_path, "trainer.max_epochs=3")

    def crash_in_third_epoch_after_one_step(self, outputs, batch, batch_idx):
        if self.current_epoch == 2:
            raise Interrupted()

    with monkeypatch.context() as patch:
        patch.setattr(SimCLR, "on_train_batch_end", crash_in_third_epoch_after_one_step)
        with pytest.raises(Interrupted):
            train.main(args)
    [run_dir] = run_dirs(tmp_path)
    config_before = (run_dir / "config.yaml").read_text()
    assert _steps(run_dir)[:4] == [0, 1, 2, 3]
    assert train.main([*args, "resume=auto"]) == 0
    assert run_dirs(tmp_path) == [run_dir]
    assert _steps(run_dir) == [0, 1, 2, 3, 4, 5]  # epochs 1-2 kept; the crashed epoch logged once, by the resume
    assert train.main([*args, "resume=auto"]) == 0  # a finished run: nothing to train, nothing lost
    assert _steps(run_dir) == [0, 1, 2, 3, 4, 5]
    assert (run_dir / "config.yaml").read_text() == config_before  # the run's own config is never overwritten
