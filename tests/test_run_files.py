"""A run writes only under its run directory and the configured cache (W&B's own files included), and a resumed
run continues its W&B run id. Run in a fresh process with its own HOME and cwd."""
import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_modules.run.resume import WANDB_RUN_DIR, ensure_run_record
from tiny_data import tiny_tree, train_args

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import train
from lightning_modules.run.cli_errors import run_cli
args = {args!r}
assert run_cli(train.main, args) == 0
assert run_cli(train.main, args + ["resume=auto", "trainer.max_epochs=2"]) == 0
"""


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_wandb_run_stays_in_the_run_directory_and_a_resume_continues_its_id(cifar10_tar, cache_dir, tmp_path):
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    args = train_args(tree, tmp_path, "logger.kind=wandb", "trainer.max_epochs=1",
                      config=str(REPO / "configs" / "pretrain" / "simclr_cifar10.yaml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_", "COKE_CACHE"))}
    env.update(HOME=str(home), WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(args=args)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files_under(home) == [] and _files_under(work) == []  # nothing in ~/.cache/wandb, ~/.config, the cwd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "home", "runs", "tree", "work"]
    [run_dir] = list((tmp_path / "runs" / "tiny").iterdir())
    assert list(run_dir.glob("wandb/cache/wandb/logs/core-debug-*.log"))  # wandb-core's log, kept with the run
    run_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    offline_runs = sorted(run_dir.glob("wandb/offline-run-*"))
    # offline-run-<time>-<id>; W&B adds "-1" to the second when both start within the same second
    ids = [(m := WANDB_RUN_DIR.fullmatch(p.name)) and m["id"] for p in offline_runs]
    assert ids == [run_id, run_id], offline_runs


def test_a_lost_run_record_recovers_the_wandb_id_from_the_newest_run_folder(tmp_path):
    """Without run.json the id comes from W&B's newest folder, whose name may carry W&B's "-1" for a second run
    started within the same second as the first."""
    for name in ("offline-run-20261207_210435-3c222d4d", "offline-run-20261207_210435-3c222d4d-1"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert ensure_run_record(tmp_path)["wandb_id"] == "3c222d4d"
    assert json.loads((tmp_path / "run.json").read_text())["wandb_id"] == "3c222d4d"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert len(ensure_run_record(fresh)["wandb_id"]) == 8  # no earlier folder: a new id
