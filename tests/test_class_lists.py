"""One class list for every split of an image folder: train's."""
import logging
import shutil

import numpy as np
import pytest

from configs.loader import load_config
from datamodules import DataError, load_split
from datamodules.jpeg_stream import load_jpeg_split
from tiny_data import tiny_tree


def data_cfg(tree, tmp_path):
    return load_config(None, ["data.name=folder", f"data.path={tree}", f"data.cache_dir={tmp_path / 'cache'}"]).data


@pytest.fixture()
def tree(cifar10_tar, cache_dir, tmp_path):
    return tiny_tree(cifar10_tar, cache_dir, tmp_path / "tree")


def _names_match_folders(split_data, tree, split):
    """Every image's label names the folder it came from (folder order = sorted file order, as the reader reads)."""
    files = sorted(tree.glob(f"{split}/*/*.jpg"), key=lambda p: p.relative_to(tree).as_posix())
    return [split_data.class_names[label] for label in split_data.fine] == [f.parent.name for f in files]


@pytest.mark.parametrize("how", ["empty", "missing"])
@pytest.mark.parametrize("loader", [load_split, load_jpeg_split])
def test_a_class_absent_from_test_keeps_train_numbering_and_is_named(tree, tmp_path, caplog, how, loader):
    for image in (tree / "test" / "cat").iterdir():
        image.unlink()
    if how == "missing":
        (tree / "test" / "cat").rmdir()
    cfg = data_cfg(tree, tmp_path)
    with caplog.at_level(logging.WARNING):
        train = loader(cfg, "train")
        test = loader(cfg, "test")  # without train_classes it reads train's list itself
    assert test.class_names == train.class_names and "cat" in train.class_names
    assert _names_match_folders(train, tree, "train") and _names_match_folders(test, tree, "test")
    dog = train.class_names.index("dog")
    assert (test.fine == dog).sum() == 3  # before: dog was one label lower in test than in train
    assert "no images of 1 of train's 10 classes" in caplog.text and "'cat'" in caplog.text
    assert test.superclass_names == train.superclass_names  # the built-in CIFAR-10 hierarchy, same numbering
    assert np.array_equal(np.unique(test.coarse), np.unique(train.coarse))


def test_an_empty_train_class_folder_is_named_not_dropped(tree, tmp_path):
    for image in (tree / "train" / "frog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"class folder\(s\) \['frog'\] of split `train`.*hold no images"):
        load_split(data_cfg(tree, tmp_path), "train")


def test_a_test_class_that_train_lacks_is_refused(tree, tmp_path):
    shutil.copytree(tree / "test" / "cat", tree / "test" / "lynx")
    cfg = data_cfg(tree, tmp_path)
    with pytest.raises(DataError, match=r"split `test`.*train does not have: \['lynx'\]"):
        load_split(cfg, "test", train_classes=load_split(cfg, "train").class_names)
