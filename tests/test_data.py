"""Readers, hierarchies, cache and splits on the real shared data."""
import json
import tarfile

import numpy as np
import pytest
import torch

from configs.loader import load_config
from datamodules import CorruptImageError, MissingDataError, PretrainDataModule, load_split
from datamodules.datasets import ImageDataset, per_class_rows, split_off_validation
from datamodules.hierarchy import CIFAR10_SUPERCLASSES
from data_utils import write_cifar100_pickles


def data_cfg(**kw):
    return load_config(None, [f"data.{k}={v}" for k, v in kw.items()]).data


def test_cifar10_tar_both_splits_with_hierarchy(cifar10):
    train, test = cifar10
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == np.uint8
    assert np.bincount(train.fine).tolist() == [5000] * 10 and np.bincount(test.fine).tolist() == [1000] * 10
    assert train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    assert train.superclass_names == ["animals", "vehicles"]
    for fine, coarse in zip(train.fine[::997], train.coarse[::997]):
        assert train.superclass_names[coarse] == CIFAR10_SUPERCLASSES[train.class_names[fine]]
    assert 30 < train.images.mean() < 200  # real pixels, not zeros


def test_cifar100_fragment_hierarchy_is_a_function(cifar100_fragment):
    meta = json.loads((cifar100_fragment / "cifar100_hierarchy.json").read_text())
    sample = np.load(cifar100_fragment / "cifar100_prefix_sample.npz")
    fine, coarse = sample["train_fine_all"], sample["train_coarse_all"]
    assert fine.shape == (50000,) and fine.max() == 99 and coarse.max() == 19
    pairs = {(f, c) for f, c in zip(fine.tolist(), coarse.tolist())}
    assert len(pairs) == 100  # every fine class maps to exactly one superclass
    assert sorted({c for _, c in pairs}) == list(range(20))
    assert [c for _, c in sorted(pairs)] == meta["fine_to_coarse"]


def test_pickle_reader_cifar100_native_coarse(cifar100_fragment, tmp_path):
    write_cifar100_pickles(cifar100_fragment, tmp_path / "cifar-100-python")
    sample = np.load(cifar100_fragment / "cifar100_prefix_sample.npz")
    cfg = data_cfg(name="cifar100", root=tmp_path, cache_dir=tmp_path / "cache", download=False)
    train = load_split(cfg, "train")
    assert train.images.shape == sample["train_x"].shape
    assert np.array_equal(train.images, sample["train_x"])
    assert np.array_equal(train.coarse, sample["train_coarse"])
    assert len(train.class_names) == 100 and len(train.superclass_names) == 20


def _small_tree(cifar10_tar, root, per_class=3):
    """A real <split>/<class>/*.jpg folder: the first few images of each class from the shared tar."""
    counts = {}
    with tarfile.open(cifar10_tar) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4:
                key = (parts[1], parts[2])
                if counts.get(key, 0) < per_class:
                    counts[key] = counts.get(key, 0) + 1
                    target = root / parts[1] / parts[2] / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and min(counts.values()) == per_class:
                break
    return root


def test_folder_reader_json_hierarchy_and_cache_invalidation(cifar10_tar, tmp_path):
    tree = _small_tree(cifar10_tar, tmp_path / "tree")
    hierarchy = tmp_path / "h.json"
    hierarchy.write_text(json.dumps({c: ("machine" if c in ("airplane", "truck") else "other") for c in CIFAR10_SUPERCLASSES}))
    cfg = data_cfg(name="folder", path=tree, hierarchy=hierarchy, cache_dir=tmp_path / "cache")
    first = load_split(cfg, "train")
    assert len(first) == 30 and first.superclass_names == ["machine", "other"]
    assert (first.coarse[first.fine == 0] == 0).all() and (first.coarse[first.fine == 2] == 1).all()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # Replace one image with another real image: the cache must not serve the stale array.
    files = sorted((tree / "train" / "airplane").glob("*.jpg"))
    files[0].write_bytes((tree / "train" / "truck" / sorted(p.name for p in (tree / "train" / "truck").glob("*.jpg"))[0]).read_bytes())
    second = load_split(cfg, "train")
    assert not np.array_equal(first.images, second.images)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_corrupt_image_named_or_skipped(cifar10_tar, tmp_path):
    tree = _small_tree(cifar10_tar, tmp_path / "tree", per_class=2)
    bad = sorted((tree / "train" / "cat").glob("*.jpg"))[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(CorruptImageError, match=rf"{bad.name}.*data.skip_corrupt=true"):
        load_split(data_cfg(name="folder", path=tree, cache_dir=tmp_path / "c1"), "train")
    data = load_split(data_cfg(name="folder", path=tree, cache_dir=tmp_path / "c2", skip_corrupt=True), "train")
    assert len(data) == 19


def test_missing_data_names_path_and_option(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_split(data_cfg(root=tmp_path / "nowhere", download=False, cache_dir=tmp_path), "train")
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar10-jpeg.tar.gz") in msg and "data.root" in msg and "COKE_DATA_ROOT" in msg


def test_subset_and_validation_are_deterministic_and_disjoint(cifar10):
    train, _ = cifar10
    rest, val = split_off_validation(train, 0.1, seed=3)
    assert len(val) == 5000 and len(rest) == 45000
    assert np.bincount(val.fine).tolist() == [500] * 10
    rows_a, rows_b = per_class_rows(rest.fine, 20, seed=1), per_class_rows(rest.fine, 20, seed=1)
    assert np.array_equal(rows_a, rows_b) and np.bincount(rest.fine[rows_a]).tolist() == [20] * 10
    assert not np.array_equal(rows_a, per_class_rows(rest.fine, 20, seed=2))
    # disjoint: no validation image is also a training image
    train_keys = {im.tobytes() for im in rest.images[rows_a]}
    assert not any(im.tobytes() in train_keys for im in val.images[:500])


def test_datamodule_batches_follow_contract(cifar10_tar, cache_dir):
    cfg = load_config(None, [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", "data.subset=30",
                             "data.val_fraction=0.1", "data.batch_size=32", "data.num_workers=0"])
    dm = PretrainDataModule(cfg.data, cfg.augment)
    dm.setup("fit")
    info = dm.info
    assert info.num_train == 300 and info.num_fine == 10 and info.num_coarse == 2
    assert info.fine_to_coarse == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert len(dm.val_set) == 5000  # held out from train, not test
    seen = []
    for batch in dm.train_dataloader():
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, 32, 32)
        assert batch["index"].dtype == torch.int64 and batch["fine"].dtype == torch.int64
        assert ((batch["coarse"] >= 0) & (batch["coarse"] < 2)).all()
        seen.append(batch["index"])
    seen = torch.cat(seen)
    assert len(seen) == len(set(seen.tolist())) == 288  # drop_last, each instance once, unique ids
    assert seen.min() >= 0 and seen.max() < 300


def test_image_dataset_single_item_matches_batch(cifar10):
    ds = ImageDataset(cifar10[1].take(np.arange(10)))
    batch = ds.__getitems__([3, 7])
    assert torch.equal(batch["image"][1], ds[7]["image"]) and batch["fine"][0] == ds[3]["fine"]
