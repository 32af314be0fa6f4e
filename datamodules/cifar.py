"""``data.name=cifar10`` / ``cifar100``: the official python pickles (``cifar-10-batches-py``,
``cifar-100-python``, CIFAR-100 with its native 20 superclasses) or the same images as a
``<split>/<class>/*.jpg`` folder or tar (as ``../shared/data/cifar10-jpeg.tar.gz``)."""
from __future__ import annotations

import logging
from pathlib import Path

from datamodules.hierarchy import CIFAR10_SUPERCLASSES
from datamodules.sources import DecodedSplit, _is_pickle_dir, read_cifar_pickles, read_image_tree
from datamodules.spec import DataSetSpec

log = logging.getLogger(__name__)


def read_cifar(cfg, path: Path, split: str) -> DecodedSplit:
    if _is_pickle_dir(path):
        return read_cifar_pickles(path, split, 10 if (path / "batches.meta").is_file() else 100)
    return read_image_tree(path, split, skip_corrupt=cfg.skip_corrupt, image_size=cfg.image_size)


def _downloader(name: str, folder: str):
    def download(root: Path) -> Path | None:
        import socket

        from torchvision import datasets

        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)  # never hang on a dead network
        try:
            getattr(datasets, name)(str(root), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - any failure means "not available offline"
            log.warning("download of %s into %s failed: %s", name, root, err)
            return None
        finally:
            socket.setdefaulttimeout(old_timeout)
        return root / folder

    return download


CIFAR10 = DataSetSpec(
    read_cifar, "CIFAR-10: the official python pickles (cifar-10-batches-py) or a <split>/<class>/*.jpg folder or tar",
    root_names=("cifar-10-batches-py", "cifar10-jpeg.tar.gz", "cifar10-jpeg", "cifar10"),
    hierarchy=CIFAR10_SUPERCLASSES, pretrain_is_train=True, download=_downloader("CIFAR10", "cifar-10-batches-py"),
)
CIFAR100 = DataSetSpec(
    read_cifar, "CIFAR-100 with its 20 superclasses: the official python pickles (cifar-100-python) or an image tree",
    root_names=("cifar-100-python", "cifar100-jpeg.tar.gz", "cifar100-jpeg", "cifar100"),
    pretrain_is_train=True, download=_downloader("CIFAR100", "cifar-100-python"),
)
