"""SIGTERM / SIGUSR1 mid-epoch: a checkpoint at the next step boundary, status 75, and a resume that ends
bit-identical to the uninterrupted run; under SLURM, SIGUSR1 requeues the job and the requeued job continues the
same run directory. The signal is sent from a callback at a given step: no timing."""
import csv
import json
import os
import shlex
import signal
import stat

import pytest
import torch

from fault_runs import (SignalAtStep, args_for, assert_same_weights, cli, coke_reference, extra_callback,  # noqa: F401
                        fault_tree, last_paragraph, simclr_reference)
from lightning_modules.run.preemption import PREEMPTED_STATUS
from tiny_data import run_dirs

pytestmark = pytest.mark.usefixtures("one_thread")


def _logged_steps(run_dir):
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.parametrize("method", ["simclr", "coke"])
def test_a_signal_mid_epoch_saves_and_the_resume_is_bit_identical(method, fault_tree, tmp_path, monkeypatch, capsys,
                                                                   request):
    reference = request.getfixturevalue(f"{method}_reference")
    args = args_for(method, fault_tree, tmp_path)
    with extra_callback(monkeypatch, SignalAtStep(3)):  # the first step of the second epoch
        status, err = cli(args, capsys)
    [run_dir] = run_dirs(tmp_path)
    message = last_paragraph(err)
    assert status == PREEMPTED_STATUS, err
    assert message.startswith("stopped by SIGTERM at epoch 2, global step 3 (batch 1 of 2)"), message
    assert f"saved {run_dir / 'checkpoints' / 'last.ckpt'}" in message and f"resume={run_dir}" in message
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (run_dir / "checkpoints" / "epoch000.ckpt").is_file()  # every earlier checkpoint is kept

    resume_args = shlex.split(message.split("resume with: ")[1].split(". Every")[0])[2:]  # the printed command's
    status, _ = cli(resume_args, capsys)
    assert status == 0 and run_dirs(tmp_path) == [run_dir]
    assert_same_weights(run_dir / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    assert _logged_steps(run_dir) == _logged_steps(reference) == list(range(6))  # the loggers' step continued


def _fake_scontrol(folder):
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder / "scontrol.calls"}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "scontrol.calls"


def _slurm_job(monkeypatch, job_id: str, bin_dir):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in {"SLURM_JOB_ID": job_id, "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1",
                       "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_JOB_NAME": "coke", "SLURM_NODELIST": "node01"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_sigusr1_under_slurm_requeues_and_the_requeued_job_continues_its_run(fault_tree, simclr_reference, tmp_path,
                                                                             monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = _fake_scontrol(bin_dir)
    args = args_for("simclr", fault_tree, tmp_path, "resume=auto")  # as the sbatch recipe runs it
    with monkeypatch.context() as job:
        _slurm_job(job, "4242", bin_dir)
        with extra_callback(monkeypatch, SignalAtStep(3, signal.SIGUSR1)):
            status, err = cli(args, capsys)
        assert status == PREEMPTED_STATUS, err
        assert "SLURM job 4242 was requeued and will continue this run" in last_paragraph(err)
        assert calls.read_text().split() == ["requeue", "4242"]
        [run_dir] = run_dirs(tmp_path)
        record = json.loads((run_dir / "run.json").read_text())
        assert record["slurm_job_id"] == "4242"

        # Another job of the same run name wrote a newer run meanwhile: the requeued job still takes its own.
        with monkeypatch.context() as other:
            _slurm_job(other, "777", bin_dir)
            assert cli(args_for("simclr", fault_tree, tmp_path, "trainer.max_epochs=1"), capsys)[0] == 0
        assert len(run_dirs(tmp_path)) == 2

        status, err = cli(args, capsys)  # the requeued job: same id, same command line
    assert status == 0, err
    assert json.loads((run_dir / "run.json").read_text()) == record  # the same W&B run id
    assert_same_weights(run_dir / "checkpoints" / "last.ckpt", simclr_reference / "checkpoints" / "last.ckpt")
    assert calls.read_text().split() == ["requeue", "4242"]  # requeued once, by the signal only


def test_sigterm_under_slurm_saves_but_does_not_requeue(fault_tree, tmp_path, monkeypatch, capsys):
    """scancel and preemption send SIGTERM: the job must not put itself back in the queue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = _fake_scontrol(bin_dir)
    with monkeypatch.context() as job:
        _slurm_job(job, "4243", bin_dir)
        with extra_callback(monkeypatch, SignalAtStep(1)):
            status, err = cli(args_for("simclr", fault_tree, tmp_path, "trainer.max_epochs=1"), capsys)
    assert status == PREEMPTED_STATUS and "resume with: python train.py" in last_paragraph(err)
    assert not calls.exists()
    assert torch.load(run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1


def test_the_rng_states_saved_at_a_signal_come_back_before_the_first_resumed_step():
    import random

    import numpy as np

    from lightning_modules.run.preemption import PreemptionSave

    interrupted = PreemptionSave(save=None)
    interrupted.received = signal.SIGTERM  # what the handler records
    state = interrupted.state_dict()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    resumed = PreemptionSave(save=None)
    resumed.load_state_dict(state)
    resumed.on_train_batch_start(None, None, None, 0)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    assert PreemptionSave(save=None).state_dict() == {}  # an epoch's own checkpoint carries none


def test_a_mid_epoch_checkpoint_resumed_with_the_worker_loader_restarts_the_epoch(fault_tree, tmp_path, monkeypatch,
                                                                                  capsys, caplog):
    """The worker DataLoader keeps no position: the resume says so and trains the epoch from its first batch."""
    args = args_for("simclr", fault_tree, tmp_path, "trainer.max_epochs=2")
    with extra_callback(monkeypatch, SignalAtStep(3)):
        assert cli(args, capsys)[0] == PREEMPTED_STATUS
    status, err = cli([*args, "resume=auto", "data.loader=workers"], capsys)
    assert status == 0, err
    assert "cannot take the checkpoint's position in the epoch" in caplog.text
    [run_dir] = run_dirs(tmp_path)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
