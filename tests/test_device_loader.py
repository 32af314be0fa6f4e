"""The device-resident training loader: the same batches as the worker path, DDP shards, exact mid-epoch resume."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.datasets import ImageDataset, collate_batched
from datamodules.device_loader import DeviceBatches
from datamodules.sampling import EpochSeededSampler


@pytest.fixture(scope="module")
def real_set(cifar10):
    train, _ = cifar10
    rows = np.arange(0, 50000, 97)[:500]  # 500 real images, all classes
    return ImageDataset(train.take(rows))


def worker_batches(dataset: ImageDataset, batch_size: int, seed: int, epoch: int) -> list[dict]:
    sampler = EpochSeededSampler(len(dataset), seed)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate_batched)
    return list(loader)


def test_device_batches_equal_the_worker_paths_batches(real_set):
    loader = DeviceBatches(real_set, 64, torch.device("cpu"), shuffle=True, seed=3)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        expected = worker_batches(real_set, 64, seed=3, epoch=epoch)
        got = list(loader)
        assert len(got) == len(loader) == len(expected) == 500 // 64
        for a, b in zip(got, expected):
            for key in ("image", "index", "fine", "coarse"):
                assert torch.equal(a[key], b[key]), key
    first_epoch = torch.cat([b["index"] for b in worker_batches(real_set, 64, 3, 0)])
    second_epoch = torch.cat([b["index"] for b in worker_batches(real_set, 64, 3, 1)])
    assert not torch.equal(first_epoch, second_epoch)  # a new order each epoch


def test_ddp_shards_are_disjoint_and_equal_in_length(real_set):
    shards = [DeviceBatches(real_set, 32, torch.device("cpu"), shuffle=True, seed=0, rank=r, world_size=3)
              for r in range(3)]
    lengths = {len(s) for s in shards}
    assert lengths == {167 // 32}  # ceil(500 / 3) rows per rank, full batches only
    seen = [torch.cat([b["index"] for b in s]) for s in shards]
    union = torch.cat(seen)
    assert len(set(union.tolist())) == len(union)  # no image twice within an epoch (padding falls in dropped rows)


def test_evaluation_batches_keep_the_last_partial_batch_in_order(real_set):
    loader = DeviceBatches(real_set, 64, torch.device("cpu"), shuffle=False)
    indices = torch.cat([b["index"] for b in loader])
    assert torch.equal(indices, torch.arange(500))


def test_resume_continues_mid_epoch_with_the_next_batch(real_set):
    first = DeviceBatches(real_set, 64, torch.device("cpu"), shuffle=True, seed=5)
    first.sampler.set_epoch(2)
    iterator = iter(first)
    served = [next(iterator) for _ in range(3)]
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 3
    rest_uninterrupted = list(iterator)

    resumed = DeviceBatches(real_set, 64, torch.device("cpu"), shuffle=True, seed=5)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # Lightning sets the epoch before the first batch is drawn
    rest = list(resumed)
    assert len(served) + len(rest) == len(first)
    for a, b in zip(rest, rest_uninterrupted):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["image"], b["image"])
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == len(first)  # the next epoch is whole again


def test_a_state_from_other_data_is_not_applied(real_set):
    loader = DeviceBatches(real_set, 64, torch.device("cpu"), shuffle=True, seed=5)
    loader.load_state_dict({"epoch": 0, "batches": 4, "size": 499, "seed": 5})
    assert len(list(loader)) == len(loader)


def test_training_uses_the_device_path_by_default(tmp_path, cifar10_tar, cache_dir):
    from datamodules import PretrainDataModule
    from configs.loader import load_config
    import pytorch_lightning as pl

    cfg = load_config(None, [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", "data.subset=20"])
    dm = PretrainDataModule(cfg.data, cfg.augment)
    dm.setup("fit")
    dm.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert isinstance(dm.train_dataloader(), DeviceBatches)
    assert dm.train_dataloader() is dm.train_dataloader()  # asked twice (step count, training): one device copy
    assert isinstance(dm.val_dataloader(), DeviceBatches)
    cfg.data.loader = "workers"
    assert isinstance(dm.train_dataloader(), DataLoader)


def test_unknown_loader_name_is_refused():
    from datamodules import PretrainDataModule
    from configs.loader import load_config

    cfg = load_config(None, ["data.loader=gpu"])
    with pytest.raises(ValueError, match="data.loader"):
        PretrainDataModule(cfg.data, cfg.augment)
