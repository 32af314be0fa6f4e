"""Your own images: unlabelled folders and tars read in path order, their failures named, and pretraining on
them through train.py (refusals, the kNN monitor on a labelled set beside them, export, evaluation, resume)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import evaluate
import train
from configs.loader import load_config
from datamodules import CorruptImageError, DataError, load_split
from datamodules.errors import NoLabelsError
from datamodules.sources import decode_rgb
from own_images import flat_folder, labelled_tree, nested_folder, pixels, real_jpegs, reencoded, tar_of
from tiny_data import run_dirs, train_args
from training_utils import metrics


@pytest.fixture(scope="module")
def jpegs(cifar10_tar, cache_dir, tmp_path_factory):
    return real_jpegs(cifar10_tar, cache_dir, tmp_path_factory.mktemp("tiny") / "tree")


def folder_cfg(path, tmp_path, *extra):
    overrides = ["data.name=folder", f"data.path={path}", f"data.cache_dir={tmp_path / 'cache'}", *extra]
    return load_config(None, overrides).data


def test_flat_nested_and_tar_rows_are_the_images_in_sorted_path_order(jpegs, tmp_path):
    nested = nested_folder(jpegs, tmp_path / "nested")
    names = sorted(p.relative_to(nested).as_posix() for p in nested.rglob("*.JPG"))
    expected = np.stack([pixels((nested / name).read_bytes()) for name in names])
    read = load_split(folder_cfg(nested, tmp_path), "pretrain")
    assert read.images.shape == (80, 3, 32, 32) and (read.fine == -1).all() and (read.coarse == -1).all()
    assert read.class_names == [] and np.array_equal(read.images, expected)
    for archive in ("photos.tar", "photos.tar.gz"):  # archive order is reversed: rows still follow sorted paths
        from_tar = load_split(folder_cfg(tar_of(nested, tmp_path / archive), tmp_path), "pretrain")
        assert np.array_equal(from_tar.images, expected)
    flat = load_split(folder_cfg(flat_folder(jpegs, tmp_path / "flat"), tmp_path), "pretrain")
    assert np.array_equal(flat.images, np.stack([pixels(j) for j in jpegs]))
    with pytest.raises(NoLabelsError):
        load_split(folder_cfg(nested, tmp_path), "train")


def test_mixed_formats_and_sizes_need_image_size(jpegs, tmp_path):
    folder = flat_folder(jpegs[:6], tmp_path / "mixed")
    (folder / "scan.bmp").write_bytes(reencoded(jpegs[6], "BMP"))  # not a torchvision format: PIL reads it
    (folder / "big.png").write_bytes(reencoded(jpegs[7], "PNG", size=(64, 48)))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(DataError, match=r"different sizes.*big.png is 48x64.*data.image_size"):
        load_split(folder_cfg(folder, tmp_path), "pretrain")
    read = load_split(folder_cfg(folder, tmp_path, "data.image_size=24"), "pretrain")
    assert read.images.shape == (8, 3, 24, 24)  # 6 JPEGs, the BMP and the PNG; the text file and .DS_Store not
    rows = sorted(p.name for p in folder.iterdir() if p.suffix in (".jpg", ".bmp", ".png"))
    scan = read.images[rows.index("scan.bmp")]
    assert np.array_equal(scan, decode_rgb(reencoded(jpegs[6], "PNG"), 24).numpy())  # BMP = the same pixels


def test_corrupt_file_is_named_or_skipped(jpegs, tmp_path):
    folder = flat_folder(jpegs[:10], tmp_path / "photos")
    (folder / "photo_004.jpg").write_bytes(jpegs[4][:40])  # a truncated download
    with pytest.raises(CorruptImageError, match=r"photo_004\.jpg.*data\.skip_corrupt=true"):
        load_split(folder_cfg(folder, tmp_path), "pretrain")
    read = load_split(folder_cfg(folder, tmp_path, "data.skip_corrupt=true"), "pretrain")
    assert len(read) == 9
    assert np.array_equal(read.images[4], pixels(jpegs[5]))  # ids close up over the skipped file


@pytest.mark.parametrize("content", ["empty", "no_images"])
def test_empty_or_imageless_folder_is_one_paragraph_and_nothing_written(content, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    if content == "no_images":
        (folder / "readme.txt").write_text("holiday photos to come")
        (folder / "list.csv").write_text("a,b\n")
    assert train.main(train_args(folder, tmp_path)) == 1
    err = capsys.readouterr().err
    expected = "holds no files" if content == "empty" else r"2 file\(s\) but no images.*\.csv, \.txt"
    assert err.startswith("data error:") and len(err.strip().splitlines()) == 1
    assert re.search(expected, err) and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_fewer_images_than_a_batch_is_refused_not_an_empty_run(jpegs, tmp_path, capsys):
    folder = flat_folder(jpegs[:30], tmp_path / "photos")
    assert train.main(train_args(folder, tmp_path)) == 1  # batch 40
    err = capsys.readouterr().err
    assert "30 training images are fewer than one batch (data.batch_size=40)" in err and "at most 30" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", [["configs/pretrain/supcon_coarse_cifar10.yaml"],
                                    ["configs/pretrain/quick.yaml", "method.coarse_weight=0.5"]])
def test_methods_that_need_labels_refuse_unlabelled_images(method, jpegs, tmp_path, capsys):
    folder = flat_folder(jpegs, tmp_path / "photos")
    assert train.main(train_args(folder, tmp_path, *method[1:], config=method[0])) == 1
    err = capsys.readouterr().err
    assert "trains on superclass labels" in err and "holds images without labels" in err and "simclr" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_unlabelled_folder_trains_exports_and_evaluates_on_the_labelled_set_beside_it(
        jpegs, cifar10_tar, cache_dir, tmp_path, capsys):
    photos = nested_folder(jpegs, tmp_path / "photos")
    labelled = labelled_tree(cifar10_tar, cache_dir, tmp_path / "labelled")
    assert train.main(train_args(photos, tmp_path, f"data.labelled={labelled}")) == 0
    run = run_dirs(tmp_path)[-1]
    logged = metrics(run)
    assert len(logged["online/knn_fine_acc1"]) == 2 and all(0 <= a <= 1 for a in logged["online/knn_fine_acc1"])
    assert "online/fine_acc1" not in logged and "train/loss" in logged
    ckpt = run / "checkpoints" / "last.ckpt"

    capsys.readouterr()
    assert evaluate.main([str(ckpt), "data.labelled=''", f"out_dir={tmp_path / 'no-labels'}"]) == 1
    err = capsys.readouterr().err
    assert "evaluate.py needs labelled images" in err and "data.labelled=" in err and "Traceback" not in err

    out = tmp_path / "eval"
    assert evaluate.main([str(ckpt), "protocol=knn", "levels=fine", "knn.ks=[5]", "data.subset=5", f"out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["name"] == "folder" and report["data"]["source"] == str(labelled)
    assert report["data"]["splits"]["test"]["images"] == 30 and report["data"]["splits"]["train"]["images"] == 50
    assert any(r["protocol"] == "knn" and r["level"] == "fine" for r in report["results"])

    export = tmp_path / "backbone.safetensors"
    assert evaluate.main([str(ckpt), f"export={export}"]) == 0
    import timm
    from safetensors.torch import load_file

    backbone = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    backbone.load_state_dict(load_file(export), strict=True)


def test_resume_on_unlabelled_folder_keeps_instance_ids_and_coke_memory(jpegs, tmp_path, caplog):
    photos = nested_folder(jpegs, tmp_path / "photos")
    coke = ["method.num_clusters=[8,10]", "trainer.max_epochs=1"]
    assert train.main(train_args(photos, tmp_path, *coke, config="configs/pretrain/quick.yaml")) == 0
    assert sum("online probe off" in r.getMessage() for r in caplog.records) == 1  # said once, with the fix
    run = run_dirs(tmp_path)[-1]
    cfg = folder_cfg(photos, tmp_path)
    before = load_split(cfg, "pretrain")

    saved = {p.relative_to(photos): p.read_bytes() for p in photos.rglob("*.JPG")}
    shutil.rmtree(photos)  # the same photos written again in another order: new mtimes, new file system order
    for rel in sorted(saved, key=lambda r: r.name[::-1]):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(saved[rel])
    after = load_split(cfg, "pretrain")
    assert np.array_equal(after.images, before.images)  # instance i is the same photo

    assert train.main(train_args(photos, tmp_path, "method.num_clusters=[8,10]", "trainer.max_epochs=2",
                                 f"resume={run}", config="configs/pretrain/quick.yaml")) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4  # the run continued: 2 epochs of 2 steps (80 images, batch 40)
    memory = next(v for k, v in ckpt["state_dict"].items()
                  if k.endswith(("clustering.labels", "clustering.label_memory")))
    assert memory.shape[0] == 80 and (memory >= 0).all()  # one row per instance, every one assigned
