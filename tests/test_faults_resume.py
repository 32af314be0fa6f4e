"""resume= takes the newest checkpoint that loads and never deletes a damaged one; another method's checkpoint is
refused before anything is written; twin jobs get two run directories by construction; a malformed hierarchy or a
config with several errors is one paragraph naming the file, the line and every error."""
import logging
import time

import pytest
import pytorch_lightning as pl
import torch

from configs.loader import load_config
from fault_runs import (args_for, cli, copy_run, extra_callback, fault_tree, last_paragraph,  # noqa: F401
                        simclr_reference, snapshot)
from lightning_modules.registry import method_schemas
from lightning_modules.run.runs import prepare_run_dir
from tiny_data import run_dirs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_damaged_last_ckpt_is_skipped_named_and_kept(simclr_reference, fault_tree, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="lightning_modules.run.resume")
    run_dir = copy_run(simclr_reference, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    damaged = last.read_bytes()[:5000]
    last.write_bytes(damaged)  # the newest file: a save cut short by a full disk on an older version
    status, _ = cli(args_for("simclr", fault_tree, tmp_path, f"resume={run_dir}", "trainer.max_epochs=4"), capsys)
    assert status == 0
    assert "skipped last.ckpt (cannot read checkpoint" in caplog.text and "the file is kept" in caplog.text
    assert f"continuing from {run_dir / 'checkpoints' / 'epoch002.ckpt'} (epoch 2, global step 6)" in caplog.text
    assert torch.load(run_dir / "checkpoints" / "epoch003.ckpt", weights_only=True)["global_step"] == 8
    assert last.read_bytes() != damaged  # the resumed run's own last.ckpt replaced it only once it trained


def test_when_no_checkpoint_loads_nothing_is_deleted(simclr_reference, fault_tree, tmp_path, capsys):
    run_dir = copy_run(simclr_reference, tmp_path)
    for checkpoint in (run_dir / "checkpoints").iterdir():
        checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    before = snapshot(run_dir)
    status, err = cli(args_for("simclr", fault_tree, tmp_path, "resume=auto"), capsys)
    assert status == 2
    message = last_paragraph(err)
    assert message.startswith(f"resume error: no checkpoint of the runs under {run_dir.parent} loads: last.ckpt (")
    assert "epoch000.ckpt" in message and "Nothing was changed or deleted" in message
    assert snapshot(run_dir) == before and run_dirs(tmp_path) == [run_dir]


def test_another_methods_checkpoint_is_refused_before_anything_is_written(simclr_reference, fault_tree, tmp_path,
                                                                          capsys):
    before = snapshot(simclr_reference)
    status, err = cli(args_for("coke", fault_tree, tmp_path, f"resume={simclr_reference}"), capsys)
    assert status == 2
    message = last_paragraph(err)
    assert message.startswith(f"resume error: resume={simclr_reference / 'checkpoints'}/")
    assert ("is a checkpoint of simclr on test_resnet, but configs/pretrain/quick.yaml trains coke on test_resnet"
            in message)
    assert f"python train.py {simclr_reference / 'config.yaml'} resume={simclr_reference}" in message
    assert f"replace resume= by init_backbone={simclr_reference / 'checkpoints'}/" in message
    assert snapshot(simclr_reference) == before  # no config-resumed-*.yaml in the other run
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing written, no data read


def test_a_checkpoint_whose_heads_do_not_fit_is_refused_before_the_run_directory(simclr_reference, fault_tree,
                                                                                  tmp_path, capsys):
    before = snapshot(simclr_reference)
    status, err = cli(args_for("simclr", fault_tree, tmp_path, f"resume={simclr_reference}",
                               "model.proj_hidden_dim=64"), capsys)
    assert status == 2
    assert "the checkpoint does not fit its model (" in err and "of another shape, e.g. projection." in err
    assert snapshot(simclr_reference) == before and not (tmp_path / "runs").exists()


def test_twin_jobs_started_in_the_same_second_get_two_run_directories(tmp_path, monkeypatch):
    cfg = load_config(None, [f"run_dir={tmp_path / 'runs'}"], method_schemas())
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-120000")  # one second for every job
    dirs = [prepare_run_dir(cfg, "twin", None) for _ in range(3)]
    assert [d.name for d in dirs] == ["20260101-120000", "20260101-120000-2", "20260101-120000-3"]
    assert all((d / "config.yaml").is_file() and (d / "run.json").is_file() for d in dirs)


def test_a_hierarchy_file_that_is_not_json_names_the_file_and_line(fault_tree, tmp_path, capsys):
    hierarchy = tmp_path / "hierarchy.json"
    hierarchy.write_text('{\n  "airplane": "vehicles",\n  "cat": animals\n}\n')
    status, err = cli(args_for("simclr", fault_tree, tmp_path, f"data.hierarchy={hierarchy}"), capsys)
    assert status == 1
    assert last_paragraph(err).startswith(
        f"data error: hierarchy file {hierarchy} is not valid JSON: Expecting value at line 3, column 10 "
        '(`"cat": animals`). Fix that line')
    assert not (tmp_path / "runs").exists()


def test_a_config_with_several_errors_names_them_all(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("_base_: " + str(__import__("pathlib").Path("configs/pretrain/simclr_cifar10.yaml").resolve())
                      + "\noptim:\n  lr: fast\n  momentum: 2\n")
    status, err = cli([str(config), "data.batch_size=0"], capsys)
    message = last_paragraph(err)
    assert status == 2 and message.startswith("config error: 3 problems in the config, fix them all: (1) wrong type "
                                              f"for config key `optim.lr` (from {config}, line 3)")
    assert "(2) `data.batch_size=0` is out of range" in message
    assert "(3) `optim.momentum=2.0` is out of range" in message
    assert not (tmp_path / "runs").exists()


def test_init_backbone_starts_a_new_run_from_another_methods_backbone(simclr_reference, fault_tree, tmp_path,
                                                                     monkeypatch, capsys):
    """What the refusal above offers instead: CoKe's first step runs on SimCLR's backbone, in a new run directory."""
    seen = {}

    class BackboneAtStart(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update({k: v.clone() for k, v in pl_module.backbone.state_dict().items()})

    before = snapshot(simclr_reference)
    with extra_callback(monkeypatch, BackboneAtStart()):
        status, err = cli(args_for("coke", fault_tree, tmp_path, f"init_backbone={simclr_reference}",
                                   "trainer.max_epochs=1"), capsys)
    assert status == 0, err
    simclr = torch.load(simclr_reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert seen and all(torch.equal(v, simclr[f"backbone.{k}"]) for k, v in seen.items())
    assert snapshot(simclr_reference) == before and len(run_dirs(tmp_path)) == 1


def test_init_backbone_that_does_not_fit_is_refused_before_the_run_directory(simclr_reference, fault_tree, tmp_path,
                                                                             capsys):
    status, err = cli(args_for("coke", fault_tree, tmp_path, f"init_backbone={simclr_reference}",
                               "model.backbone=resnet18"), capsys)
    assert status == 2 and last_paragraph(err).startswith(f"init_backbone error: init_backbone={simclr_reference}")
    assert "holds test_resnet weights that do not fit model.backbone=resnet18" in err
    assert not (tmp_path / "runs").exists()
