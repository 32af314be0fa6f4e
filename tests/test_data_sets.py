"""The data-set registry and its readers: STL-10's official binaries, the full CIFAR-100 pickles (on the real
fragment), and a labelled folder with extra unlabelled images (STL-10's layout), all through one contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from configs.loader import load_config
from datamodules import DataError, MissingDataError, PretrainDataModule, load_split
from datamodules.errors import NoLabelsError
from datamodules.jpeg_stream import load_jpeg_split
from datamodules.labelled import labelled_cfg
from datamodules.registry import DATASETS, dataset_spec
from datamodules.spec import DataSetSpec
from data_utils import write_cifar100_pickles
from own_images import flat_folder, labelled_tree, pixels, real_jpegs, reencoded

STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def cfg_of(*overrides):
    return load_config(None, list(overrides)).data


@pytest.fixture(scope="module")
def jpegs(cifar10_tar, cache_dir, tmp_path_factory):
    return real_jpegs(cifar10_tar, cache_dir, tmp_path_factory.mktemp("tiny") / "tree")


def write_stl10(folder, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]):
    """The official layout: each X.bin holds N x 3 x 96 x 96 bytes, every channel column-major (as the
    reference reader's ``np.transpose(images, (0, 3, 2, 1))`` undoes); y.bin holds uint8 labels 1..10."""
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(STL_CLASSES) + "\n")
    for name, x in images.items():
        (folder / f"{name}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
    for name, y in labels.items():
        (folder / f"{name}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    return folder


@pytest.fixture(scope="module")
def stl10(jpegs, tmp_path_factory):
    """Real photos at STL-10's 96 px: 20 train, 10 test, 30 unlabelled."""
    big = np.stack([pixels(reencoded(j, "PNG", size=(96, 96))) for j in jpegs[:60]])
    y = np.arange(60) % 10
    x = {"train": big[:20], "test": big[20:30], "unlabeled": big[30:]}
    folder = write_stl10(tmp_path_factory.mktemp("stl") / "stl10_binary", x, {"train": y[:20], "test": y[20:30]})
    return folder, x, y


def test_every_registered_name_is_a_data_set_and_unknown_names_list_them():
    for name in DATASETS:
        assert isinstance(dataset_spec(name), DataSetSpec) and dataset_spec(name).about
    with pytest.raises(MissingDataError, match="cifar10, cifar100, stl10, folder"):
        dataset_spec("imagenet21k")


def test_stl10_binaries_read_upright_with_labels_and_unlabelled_pretraining(stl10, tmp_path):
    folder, x, y = stl10
    raw = np.fromfile(folder / "train_X.bin", dtype=np.uint8)
    assert np.array_equal(raw[:96], x["train"][0, 0, :, 0])  # the file starts with image 0's first red column
    cfg = cfg_of("data.name=stl10", f"data.path={folder}", f"data.cache_dir={tmp_path}")
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    assert np.array_equal(train.images, x["train"]) and np.array_equal(test.images, x["test"])  # not transposed
    assert train.fine.tolist() == y[:20].tolist() and train.class_names == STL_CLASSES
    pretrain = load_split(cfg, "pretrain")
    assert pretrain.images.shape == (50, 3, 96, 96) and np.array_equal(pretrain.images[20:], x["unlabeled"])
    assert pretrain.fine[:20].tolist() == y[:20].tolist() and (pretrain.fine[20:] == -1).all()
    small = load_split(cfg_of("data.name=stl10", f"data.root={folder.parent}", "data.image_size=48"), "test")
    assert small.images.shape == (10, 3, 48, 48)  # found under data.root as stl10_binary/, resized


def test_stl10_truncated_file_is_named(stl10, tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    for path in stl10[0].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "test_X.bin").write_bytes((stl10[0] / "test_X.bin").read_bytes()[:-100])
    with pytest.raises(DataError, match=r"test_X.bin is not an official STL-10 binary file.*Download"):
        load_split(cfg_of("data.name=stl10", f"data.path={folder}"), "test")


def test_stl10_datamodule_probes_learn_from_the_labelled_rows_only(stl10, tmp_path):
    cfg = load_config(None, ["data.name=stl10", f"data.path={stl10[0]}", "data.val_fraction=0.5",
                             f"data.cache_dir={tmp_path}", "augment.crop_size=96"])
    dm = PretrainDataModule(cfg.data, cfg.augment)
    dm.setup("fit")
    assert dm.info.num_train == 40 and dm.info.num_fine == 10  # 10 labelled rows held out as validation
    assert (dm.val_set.data.fine >= 0).all() and len(dm.val_set) == 10 and len(dm.test_set) == 10
    assert (dm.train_set.data.fine == -1).sum() == 30


def test_cifar100_fragment_through_the_datamodule_and_as_a_labelled_set(cifar100_fragment, tmp_path):
    pickles = write_cifar100_pickles(cifar100_fragment, tmp_path / "cifar-100-python")
    hierarchy = json.loads((cifar100_fragment / "cifar100_hierarchy.json").read_text())
    cfg = load_config(None, ["data.name=cifar100", f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'c'}",
                             "data.download=false"])
    dm = PretrainDataModule(cfg.data, cfg.augment)
    dm.setup("fit")
    info = dm.info
    assert info.num_train == 486 and info.num_fine == 100 and info.num_coarse == 20
    present = sorted(set(dm.train_set.data.fine.tolist()))
    assert [info.fine_to_coarse[f] for f in present] == [hierarchy["fine_to_coarse"][f] for f in present]
    assert len(dm.test_set) == 916
    beside = labelled_cfg(cfg_of("data.name=folder", "data.path=photos", f"data.labelled={pickles}"))
    assert beside.name == "cifar100" and beside.path == str(pickles)


def test_labelled_folder_with_unlabelled_extra_images(jpegs, cifar10_tar, cache_dir, tmp_path):
    tree = labelled_tree(cifar10_tar, cache_dir, tmp_path / "tree")
    flat_folder(jpegs[:12], tree / "unlabelled" / "batch1")
    cfg = cfg_of("data.name=folder", f"data.path={tree}", f"data.cache_dir={tmp_path / 'c'}")
    pretrain = load_split(cfg, "pretrain")
    assert len(pretrain) == 92 and (pretrain.fine[:80] >= 0).all() and (pretrain.fine[80:] == -1).all()
    assert pretrain.class_names == load_split(cfg, "train").class_names and len(load_split(cfg, "train")) == 80
    assert pretrain.superclass_names == []  # a folder has no built-in hierarchy
    streamed = load_jpeg_split(cfg, "pretrain")  # data.format=jpeg lists the same rows in the same order
    assert streamed.fine.tolist() == pretrain.fine.tolist()
    assert [n.split("/")[-1] for n in streamed.images.names[80:]] == [f"photo_{i:03d}.jpg" for i in range(12)]


def test_labelled_set_must_have_labels(jpegs, tmp_path):
    photos = flat_folder(jpegs[:8], tmp_path / "photos")
    cfg = load_config(None, ["data.name=folder", f"data.path={photos}", f"data.labelled={photos}",
                             f"data.cache_dir={tmp_path}"])
    with pytest.raises(DataError, match=r"data.labelled=.*unlabelled images.*must be a labelled set"):
        PretrainDataModule(cfg.data, cfg.augment).setup("fit")
    with pytest.raises(MissingDataError, match="neither an existing path nor a data set name"):
        labelled_cfg(cfg_of(f"data.labelled={tmp_path / 'nowhere'}"))
    with pytest.raises(NoLabelsError):
        load_jpeg_split(cfg.data, "train")
