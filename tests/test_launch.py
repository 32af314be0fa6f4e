"""Scaling out goes through Lightning's own launchers: SLURM and torchrun environments are picked up by the Trainer
that train.py builds, and ``trainer.devices=2 trainer.strategy=ddp`` really runs two processes (gloo, CPU)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from configs.loader import load_config
from lightning_modules.registry import method_schemas
from lightning_modules.run.runs import build_trainer
from training_utils import TINY, metrics

# Multi-process tests share one xdist worker (`--dist loadgroup`): never two process groups at once on 2 cores.
pytestmark = pytest.mark.xdist_group("multiprocess")

REPO = Path(__file__).resolve().parents[1]
QUICK = "configs/pretrain/quick.yaml"
SLURM_VARS = ("SLURM_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE",
              "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


@pytest.fixture()
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(SLURM_VARS):
            monkeypatch.delenv(key)
    return monkeypatch


def trainer_for(tmp_path, *overrides):
    cfg = load_config(QUICK, ["logger.kind=none", "trainer.accelerator=cpu", "trainer.strategy=ddp", *overrides],
                      method_schemas())
    return build_trainer(cfg, tmp_path, "launch")


def test_slurm_environment_is_used_by_the_trainer(tmp_path, clean_env):
    # What `srun` sets for task 3 of a 2-node x 2-task job (the sbatch recipe in configs/launch/).
    for key, value in {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_ID": "42",
                       "SLURM_JOB_NAME": "coke", "SLURM_NODELIST": "node[01-02]"}.items():
        clean_env.setenv(key, value)
    trainer = trainer_for(tmp_path, "trainer.devices=2", "trainer.num_nodes=2")
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (4, 3, 1, 1)
    assert env.main_address == "node01" and trainer.world_size == 4
    assert env.creates_processes_externally  # srun started the processes; Lightning's launcher spawns none


def test_torchrun_environment_is_used_by_the_trainer(tmp_path, clean_env):
    for key, value in {"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "GROUP_RANK": "0",
                       "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512"}.items():
        clean_env.setenv(key, value)
    trainer = trainer_for(tmp_path, "trainer.devices=2")
    env = trainer.strategy.cluster_environment
    assert isinstance(env, TorchElasticEnvironment) and (env.world_size(), env.global_rank()) == (2, 1)
    assert env.creates_processes_externally


def test_plain_python_launch_spawns_with_lightnings_launcher(tmp_path, clean_env):
    trainer = trainer_for(tmp_path, "trainer.devices=2")
    assert isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) and trainer.world_size == 2
    assert not trainer.strategy.cluster_environment.creates_processes_externally  # it starts rank 1 itself


@pytest.mark.slow
def test_two_process_ddp_fit_through_train_py(tmp_path, cifar10_tar, cache_dir):
    args = [sys.executable, "train.py", QUICK, *TINY, f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}",
            f"run_dir={tmp_path / 'runs'}", "run_name=ddp", "data.subset=20", "data.eval_subset=10",
            "method.num_clusters=[10,20]", "trainer.max_epochs=2", "logger.log_every_n_steps=1",
            "trainer.devices=2", "trainer.strategy=ddp"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_VARS)}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(REPO))
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "MEMBER: 1/2" in out and "MEMBER: 2/2" in out  # Lightning's line, once per process
    assert "global batch 128 = 64 per device x 2 device(s) x 1 node(s)" in out
    run_dirs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(run_dirs) == 1, run_dirs  # rank 1 starts seconds later but writes into rank 0's run directory
    run_dir = run_dirs[0]
    hparams = (run_dir / "csv" / "hparams.yaml").read_text()
    assert "optim/global_batch: 128" in hparams and "optim/devices: 2" in hparams
    # 200 images over 2 ranks of 64: one step per epoch, two epochs
    assert len(metrics(run_dir)["train/loss"]) == 2


def test_only_a_launched_nonzero_rank_joins_the_advertised_run_directory(tmp_path, clean_env, monkeypatch):
    from lightning_modules.run.runs import RUN_DIR_ENV, prepare_run_dir

    cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}"], method_schemas())
    advertised = tmp_path / "runs" / "earlier" / "20260101-000000"
    monkeypatch.setenv(RUN_DIR_ENV, f"{os.getppid()}:{advertised}")
    fresh = prepare_run_dir(cfg, "fresh", None)  # a rank-0 launch by a process that ran train.main before
    assert fresh != advertised and fresh.parent.name == "fresh" and (fresh / "config.yaml").is_file()
    monkeypatch.setenv(RUN_DIR_ENV, f"{os.getppid()}:{advertised}")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning's launcher started
    assert prepare_run_dir(cfg, "fresh", None) == advertised
