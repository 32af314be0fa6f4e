"""Every error of train.py and evaluate.py ends with the CLI's own paragraph and a non-zero status, no traceback
unless --debug. Real files throughout: the shared CIFAR data, real pickles and checkpoints."""
import json
import pickle

import pytest

import evaluate
import train
from data_utils import write_cifar100_pickles
from lightning_modules.run import loggers
from lightning_modules.run.cli_errors import run_cli
from lightning_modules.simclr import SimCLR
from test_evaluate import write_checkpoint
from tiny_data import tiny_tree, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(main, args, capsys) -> tuple[int, str]:
    status = run_cli(main, [str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, err


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n  devices: [1\nseed: 1\n")
    status, err = cli(train.main, [bad, "--print-config"], capsys)
    [line] = err.strip().splitlines()
    assert status == 2 and f"{bad}:4:5" in line and line.startswith("config error: YAML syntax error")


@pytest.mark.parametrize("override, named", [("trainer.max_epochs=-3", "trainer.max_epochs=-3"),
                                              ("data.batch_size=0", "data.batch_size=0"),
                                              ("optim.lr=-0.1", "optim.lr=-0.1")])
def test_out_of_range_numbers_are_refused_even_by_print_config(capsys, override, named):
    status, err = cli(train.main, ["configs/pretrain/quick.yaml", override, "--print-config"], capsys)
    assert status == 2 and f"`{named}` is out of range" in err


def test_evaluate_refuses_an_out_of_range_k_at_config_load(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    status, err = cli(evaluate.main, [ckpt, "knn.ks=[0,20]", "--print-config"], capsys)
    assert status == 2 and "`knn.ks=[0, 20]` is out of range" in err


def _cifar_folder(cifar100_fragment, tmp_path, damage):
    folder = write_cifar100_pickles(cifar100_fragment, tmp_path / "cifar-100-python")
    if damage == "wrong-shape":
        with open(folder / "train", "rb") as f:
            blob = pickle.load(f)
        blob[b"data"] = blob[b"data"][:, :1000]  # rows of 1000 bytes, not 3 x 32 x 32
        with open(folder / "train", "wb") as f:
            pickle.dump(blob, f)
    else:
        (folder / "train").write_text("not a pickle at all\n")
    return folder


@pytest.mark.parametrize("damage", ["wrong-shape", "not-a-pickle"])
def test_a_malformed_cifar_pickle_is_named(cifar100_fragment, tmp_path, capsys, damage):
    folder = _cifar_folder(cifar100_fragment, tmp_path, damage)
    status, err = cli(train.main, train_args(folder, tmp_path, "data.name=cifar100"), capsys)
    assert status == 1 and f"{folder / 'train'} is not an official CIFAR python pickle" in err
    assert ("shape" if damage == "wrong-shape" else "UnpicklingError") in err


def test_a_data_path_that_is_neither_folder_nor_archive_is_named(tmp_path, capsys):
    source = tmp_path / "images.bin"
    source.write_bytes(b"JFIF? no: a text file saved with the wrong name\n" * 20)
    status, err = cli(train.main, train_args(source, tmp_path), capsys)
    assert status == 1 and f"cannot read {source} as an image folder or a .tar/.tar.gz archive" in err


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_evaluate_names_an_unreadable_checkpoint(tmp_path, capsys, content):
    good = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(good[: len(good) // 3] if content == "truncated" else b"epoch,loss\n0,1.5\n")
    status, err = cli(evaluate.main, [ckpt], capsys)
    assert status == 2 and f"cannot read checkpoint {ckpt}" in err
    assert ("truncated or damaged" if content == "truncated" else "not a PyTorch checkpoint") in err


def test_evaluate_takes_a_run_directory_or_says_what_it_expected(tmp_path, capsys):
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    status, out = run_cli(evaluate.main, [str(run_dir), "--print-config"]), capsys.readouterr().out
    assert status == 0 and "backbone: test_resnet" in out
    status, err = cli(evaluate.main, [tmp_path], capsys)
    assert status == 2 and f"{tmp_path} is a directory without checkpoints/last.ckpt" in err and "run directory" in err


def test_evaluate_clamps_knn_k_to_the_train_set_with_a_warning(cifar10_tar, cache_dir, tmp_path, caplog):
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    ckpt = write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    args = [ckpt, "protocol=knn", "levels=fine", "knn.ks=[5,200]", "data.name=folder", f"data.path={tree}",
            f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'eval'}", "logger.kind=none", "device=cpu"]
    assert run_cli(evaluate.main, [str(a) for a in args]) == 0
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())["results"]
    assert sorted({r["params"]["k"] for r in rows if r["protocol"] == "knn"}) == [5, 80]
    assert "knn.ks=[5, 200]: only 80 train images, so k is cut to 80" in caplog.text


def test_online_logging_without_network_says_what_to_use_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(loggers, "_reachable", lambda *a, **k: False)
    status, err = cli(train.main, train_args(tmp_path / "tree", tmp_path, "logger.kind=wandb", "logger.mode=online"), capsys)
    assert status == 2 and "logger.mode=online" in err and "logger.mode=offline" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_a_nan_loss_ends_with_the_message_only(cifar10_tar, cache_dir, tmp_path, capsys, monkeypatch):
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    original = SimCLR.training_loss
    monkeypatch.setattr(SimCLR, "training_loss", lambda self, batch, feats: original(self, batch, feats) * float("nan"))
    status, err = cli(train.main, train_args(tree, tmp_path, "trainer.max_epochs=1"), capsys)
    assert status == 1
    assert err.strip().splitlines()[-1].startswith("training stopped: loss became nan at global step 0")
    with pytest.raises(FloatingPointError):  # --debug: Python's own traceback
        run_cli(train.main, train_args(tree, tmp_path, "trainer.max_epochs=1", "--debug"))


def test_a_setting_the_method_refuses_is_a_config_error_before_any_run_directory(cifar10_tar, cache_dir, tmp_path,
                                                                                 capsys):
    tree = tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    args = train_args(tree, tmp_path, "augment.clean_view=false", "method.assign_on=clean",
                      config="configs/pretrain/quick.yaml")
    status, err = cli(train.main, args, capsys)
    assert status == 2
    last = err.strip().splitlines()[-1]  # the key is method.assign_on or, in CoKe's package, method.clean_view.assign_on
    assert last.startswith("config error: method.") and "assign_on=clean needs the un-augmented image" in last
    assert not (tmp_path / "runs").exists()
