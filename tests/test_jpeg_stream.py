"""data.format=jpeg on the CPU with the shared CIFAR-10 JPEGs: workers read bytes only, the batch decode equals
the decoded cache, a real fit runs through train.py, undecodable files are named (or replaced when skipped)."""
import tarfile

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device

from configs.loader import load_config
from datamodules import CorruptImageError, PretrainDataModule
from datamodules.datasets import LabeledImages
from datamodules.jpeg_stream import BatchDecoder, EncodedBatch, JpegDataset, JpegStore, list_encoded
from datamodules.sources import decode_rgb
from training_utils import metrics, run


def datamodule(cifar10_tar, cache_dir, *overrides):
    cfg = load_config(None, [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}", "data.subset=8",
                             "data.eval_subset=4", "data.batch_size=16", "data.pin_memory=false", *overrides])
    dm = PretrainDataModule(cfg.data, cfg.augment)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def jpeg_dm(cifar10_tar, cache_dir):
    return datamodule(cifar10_tar, cache_dir, "data.format=jpeg", "data.num_workers=1")


def test_loader_workers_read_bytes_only(jpeg_dm, cifar10_tar, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader worker decoded an image")

    # The worker is forked after this, so it inherits the refusing decoders.
    for module in ("datamodules.jpeg_stream", "datamodules.sources"):
        monkeypatch.setattr(f"{module}.decode_image", refuse)
    monkeypatch.setattr("datamodules.jpeg_stream.decode_jpeg", refuse)
    batch = next(iter(jpeg_dm.train_dataloader()))
    assert "image" not in batch and isinstance(batch["jpeg"], EncodedBatch) and len(batch["jpeg"]) == 16
    assert batch["index"].dtype == torch.int64 and batch["fine"].shape == batch["coarse"].shape == (16,)
    name = batch["jpeg"].names[0].split(":", 1)[1]
    with tarfile.open(cifar10_tar) as tar:
        raw = tar.extractfile(name).read()
    assert batch["jpeg"].item(0).numpy().tobytes() == raw  # the bytes of the file, untouched
    # Lightning's transfer moves tensors but leaves the encoded bytes on the CPU, where decode_jpeg wants them.
    moved = move_data_to_device(batch, torch.device("meta"))
    assert moved["index"].is_meta and moved["jpeg"].data.device.type == "cpu"


def test_batch_decode_equals_decoded_cache(jpeg_dm, cifar10_tar, cache_dir):
    cached = datamodule(cifar10_tar, cache_dir)  # data.format=decoded, same subset rows
    rows = [0, 3, 17, 33, 39]  # the test split holds 40 (eval_subset=4)
    for name in ("train_set", "test_set"):
        jpeg_set, decoded_set = getattr(jpeg_dm, name), getattr(cached, name)
        assert len(jpeg_set) == len(decoded_set)
        batch = jpeg_dm.on_after_batch_transfer(jpeg_set.__getitems__(rows))
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (5, 3, 32, 32)
        assert torch.equal(batch["image"], decoded_set.images[rows])
        assert torch.equal(batch["fine"], decoded_set.fine[rows]) and torch.equal(batch["coarse"], decoded_set.coarse[rows])
        assert batch["eval_view"].shape == (5, 3, 32, 32)


@pytest.fixture()
def small_tree(tmp_path, cifar10_tar):
    """A folder with 3 real JPEGs, one PNG and one corrupt JPEG (a real file cut short)."""
    with tarfile.open(cifar10_tar) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/test/cat/" in m.name][:4]
        raws = [tar.extractfile(m).read() for m in members]
    root = tmp_path / "tree"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    for i, raw in enumerate(raws[:3]):
        (root / "train" / "cat" / f"{i}.jpg").write_bytes(raw)
    from torchvision.io import encode_png

    (root / "train" / "dog" / "a.png").write_bytes(encode_png(decode_rgb(raws[3])).numpy().tobytes())
    (root / "train" / "dog" / "broken.jpg").write_bytes(raws[3][: len(raws[3]) // 3])
    return root


def _all_rows(store: JpegStore, fine) -> dict:
    labeled = LabeledImages(store, fine, np.full_like(fine, -1), ["cat", "dog"], [])
    return JpegDataset(labeled).__getitems__(list(range(len(store))))


def test_corrupt_file_is_named_or_replaced(small_tree):
    store, fine, names = list_encoded(small_tree, "train")
    assert names == ["cat", "dog"] and fine.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(CorruptImageError, match=r"broken\.jpg.*data\.skip_corrupt=true"):
        BatchDecoder()(_all_rows(store, fine))
    batch = BatchDecoder(skip_corrupt=True)(_all_rows(store, fine))
    broken = [i for i, n in enumerate(store.names) if n.endswith("broken.jpg")][0]
    assert batch["image"].shape == (5, 3, 32, 32)
    replaced_by = int(batch["index"][broken])  # the row now holds another instance, index and labels with it
    assert replaced_by != broken and torch.equal(batch["image"][broken], batch["image"][replaced_by])
    assert batch["fine"][broken] == fine[replaced_by]


def test_png_resize_and_plain_tar_match_the_cache_decoder(small_tree, tmp_path):
    (small_tree / "train" / "dog" / "broken.jpg").unlink()
    plain_tar = tmp_path / "tree.tar"
    with tarfile.open(plain_tar, "w") as tar:
        tar.add(small_tree, arcname="tree")
    for source in (small_tree, plain_tar):
        store, fine, _ = list_encoded(source, "train")
        assert store.kind == ("folder" if source == small_tree else "tar")
        batch = BatchDecoder(image_size=24)(_all_rows(store, fine))
        expected = torch.stack([decode_rgb(bytes(store.read(i)), 24) for i in range(len(store))])
        assert torch.equal(batch["image"], expected)  # the PNG went through the CPU fallback


@pytest.mark.slow
def test_fit_through_train_py_with_jpeg_input(tmp_path, cifar10_tar, cache_dir):
    run_dir = run("configs/pretrain/quick.yaml", tmp_path, cifar10_tar, cache_dir, "data.format=jpeg",
                  "data.subset=20", "data.eval_subset=10", "method.num_clusters=[10,20]", "trainer.max_epochs=2",
                  "logger.log_every_n_steps=1")
    m = metrics(run_dir)
    assert len(m["train/loss"]) == 2 * (200 // 64) and all(v == v for v in m["train/loss"])
    assert "online/fine_acc1" in m and (run_dir / "checkpoints" / "last.ckpt").is_file()
