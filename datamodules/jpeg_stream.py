"""ImageNet-scale input without DALI (``data.format=jpeg``).

Loader workers only read encoded bytes (from a folder, a plain ``.tar`` or a ``.tar.gz``) and hand over one flat
uint8 buffer per batch. Decoding happens after the batch transfer, in ``on_after_batch_transfer``, all images of
the batch at once: ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvjpeg) on a GPU, the same call on the CPU
elsewhere. Then every image is resized (shorter side) and centre-cropped to ``data.image_size`` exactly as the
decoded cache does it, so the Kornia views see the same uint8 ``image`` batch either way.
"""
from __future__ import annotations

import functools
import logging
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from datamodules.class_lists import align_to_train
from datamodules.datasets import LabeledImages
from datamodules.discovery import _is_pickle_dir, _with_hierarchy, locate_source
from datamodules.errors import CorruptImageError, DataError, NoLabelsError
from datamodules.folder import LAYOUT_HELP, _no_images, is_labelled, unlabelled_names
from datamodules.registry import dataset_spec
from datamodules.sources import DecodedSplit, _split_parts
from datamodules.stl10 import is_stl10_dir

log = logging.getLogger(__name__)
JPEG_MAGIC = b"\xff\xd8\xff"
# torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they are still the only nvjpeg batch path.
warnings.filterwarnings("ignore", message=".*decod.*deprecated.*", category=UserWarning)


class JpegStore:
    """The encoded images of one split, addressable by row; ``store[rows]`` is a subset (``LabeledImages.take``).

    kind ``folder``: ``names`` are paths under ``root``; ``tar``: bytes at (``starts``, ``sizes``) inside an
    uncompressed tar; ``memory``: the same inside ``blob`` (a ``.tar.gz`` cannot be read at random, so it is read
    into memory once; forked workers share it).
    """

    def __init__(self, kind: str, root: Path, names: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                 blob: np.ndarray | None = None):
        self.kind, self.root, self.names, self.starts, self.sizes, self.blob = kind, root, names, starts, sizes, blob
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, rows) -> "JpegStore":
        return JpegStore(self.kind, self.root, self.names[rows], self.starts[rows], self.sizes[rows], self.blob)

    def __getstate__(self):  # open file handles never travel to worker processes
        return {**self.__dict__, "_file": None, "_pid": None}

    def read(self, row: int) -> bytes | np.ndarray:
        if self.kind == "folder":
            return (self.root / self.names[row]).read_bytes()
        start, size = int(self.starts[row]), int(self.sizes[row])
        if self.kind == "memory":
            return self.blob[start : start + size]
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.root, "rb"), os.getpid()
        return os.pread(self._file.fileno(), size, start)

    def label(self, row: int) -> str:
        return f"{self.root}:{self.names[row]}"


class EncodedBatch:
    """A batch's encoded images: one flat uint8 CPU tensor and B+1 offsets, plus the file names for errors.

    Deliberately neither a tensor nor a dataclass and without ``.to``: Lightning's batch transfer leaves it on the
    CPU, which is where ``decode_jpeg`` wants its input even when it decodes on the GPU.
    """

    def __init__(self, data: torch.Tensor, offsets: torch.Tensor, names: list[str]):
        self.data, self.offsets, self.names = data, offsets, names

    @classmethod
    def from_chunks(cls, chunks: list, names: list[str]) -> "EncodedBatch":
        sizes = np.fromiter((len(c) for c in chunks), dtype=np.int64, count=len(chunks))
        offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), dtype=np.uint8)
        for chunk, start, end in zip(chunks, offsets[:-1], offsets[1:]):
            flat[start:end] = np.frombuffer(chunk, dtype=np.uint8) if isinstance(chunk, bytes) else chunk
        return cls(torch.from_numpy(flat), torch.from_numpy(offsets), names)

    def __len__(self) -> int:
        return len(self.names)

    def item(self, i: int) -> torch.Tensor:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]


class JpegDataset(Dataset):
    """Serves batches of encoded bytes with the batch contract's index, fine and coarse. Never decodes."""

    def __init__(self, data: LabeledImages):
        if not isinstance(data.images, JpegStore):
            raise TypeError("JpegDataset needs LabeledImages whose images are a JpegStore (load_jpeg_split)")
        self.data, self.store = data, data.images
        self.fine = torch.from_numpy(data.fine)
        self.coarse = torch.from_numpy(data.coarse)

    def __len__(self) -> int:
        return len(self.store)

    def __getitems__(self, rows: list[int]) -> dict:
        idx = torch.as_tensor(rows, dtype=torch.int64)
        encoded = EncodedBatch.from_chunks([self.store.read(r) for r in rows], [self.store.label(r) for r in rows])
        return {"jpeg": encoded, "index": idx, "fine": self.fine[idx], "coarse": self.coarse[idx]}

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])


# ---- listing a source ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _read_compressed_tar(path: str, size: int, mtime: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Every member of a compressed tar: (names, starts, sizes, blob). Cached so train and test read it once."""
    if size > 2**31:
        log.warning("%s is a %.1f GB compressed tar read into memory; for large data sets use an image folder or "
                    "an uncompressed .tar (read at random, nothing held in memory)", path, size / 1e9)
    names, chunks = [], []
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile():
                names.append(member.name)
                chunks.append(tar.extractfile(member).read())
    sizes = np.array([len(c) for c in chunks], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return names, starts, sizes, np.frombuffer(b"".join(chunks), dtype=np.uint8)


def _split_rows(names: list[str], split: str) -> list[tuple[str, str | None]]:
    """(name, class or None) of one split's images, in the decoded cache's order: sorted relative paths (pretrain:
    train's, then the unlabelled ones'; an unlabelled tree: all of its images)."""
    if split != "pretrain":
        return sorted((name, parts[0]) for name in names if (parts := _split_parts(name, split)))
    return _split_rows(names, "train") + [(name, None) for name in sorted(unlabelled_names(names))]


def list_encoded(path: Path, split: str) -> tuple[JpegStore, np.ndarray, list[str]]:
    """(store, fine labels (-1: none), class names) of one split, in the decoded cache's order."""
    if path.is_dir():
        names = [f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()]
        starts = sizes = [0] * len(names)
        kind, blob = "folder", None
    elif tarfile.is_tarfile(path):
        with open(path, "rb") as f:
            compressed = f.read(2) in (b"\x1f\x8b", b"BZ", b"\xfd7")
        if compressed:
            st = path.stat()
            names, starts, sizes, blob = _read_compressed_tar(str(path.resolve()), st.st_size, st.st_mtime_ns)
            kind = "memory"
        else:
            with tarfile.open(path, "r:") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
            names, starts, sizes = [m.name for m in members], [m.offset_data for m in members], [m.size for m in members]
            kind, blob = "tar", None
    else:
        raise DataError(f"data.format=jpeg reads a folder or a .tar/.tar.gz of <split>/<class>/*.jpg; {path} is neither")
    if split != "pretrain" and not is_labelled(names):
        raise NoLabelsError(f"{path} holds unlabelled images (no train/<class>/ folders)")
    rows = _split_rows(names, split)
    if not rows:
        raise _no_images(path, names) if split == "pretrain" else DataError(
            f"no images for split `{split}` in {path}; expected {LAYOUT_HELP}")
    where = {name: (start, size) for name, start, size in zip(names, starts, sizes)}
    class_names = sorted({cls for _, cls in rows if cls is not None})
    lookup = {name: i for i, name in enumerate(class_names)}
    store = JpegStore(
        kind, path, np.array([name for name, _ in rows]), np.array([where[n][0] for n, _ in rows], dtype=np.int64),
        np.array([where[n][1] for n, _ in rows], dtype=np.int64), blob,
    )
    return store, np.array([lookup.get(cls, -1) for _, cls in rows], dtype=np.int64), class_names


def load_jpeg_split(cfg, split: str, train_classes: list[str] | None = None) -> LabeledImages:
    """Like ``discovery.load_split`` but ``images`` is a :class:`JpegStore`: nothing is decoded here."""
    path = locate_source(cfg)
    split = "train" if split == "pretrain" and dataset_spec(cfg.name).pretrain_is_train else split
    if _is_pickle_dir(path) or is_stl10_dir(path):
        raise DataError(f"data.format=jpeg needs encoded images, but {path} holds already decoded arrays (CIFAR "
                        "pickles or STL-10 binaries). Use data.format=decoded, or point data.path at a folder or "
                        ".tar of JPEGs")
    store, fine, class_names = list_encoded(path, split)
    decoded = DecodedSplit(images=store, fine=fine, class_names=class_names)
    if split == "test":  # labels follow train's class list (datamodules/class_lists.py)
        decoded = align_to_train(decoded, train_classes or list_encoded(path, "train")[2], split, path)
    return _with_hierarchy(cfg, decoded)


# ---- decoding after the transfer ----------------------------------------------------------------------------------
def _resize_groups(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Shorter side to ``size`` and centre crop (as ``sources.decode_rgb``), one call per distinct input shape."""
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for shape, rows in groups.items():
        if shape[-2:] == (size, size):
            resized = [images[i] for i in rows]
        else:
            stack = torch.stack([images[i] for i in rows])
            resized = TF.center_crop(TF.resize(stack, size, antialias=True), [size, size]).unbind(0)
        for i, im in zip(rows, resized):
            out[i] = im
    return out


class BatchDecoder:
    """Turns ``batch["jpeg"]`` into ``batch["image"]`` (uint8, B x 3 x S x S) on the batch's device.

    device ``auto``: decode where the batch is (nvjpeg on CUDA, libjpeg on the CPU); ``cpu``: always on the CPU,
    then copy (for a GPU whose nvjpeg misbehaves); ``cuda``: insist on nvjpeg.
    Non-JPEG files (PNG) and JPEGs nvjpeg rejects (CMYK, progressive corner cases) are decoded on the CPU.
    A file nothing can decode raises :class:`CorruptImageError` naming it, or with ``skip_corrupt`` its row is
    replaced by a copy of a good row of the same batch (index and labels included), so the batch keeps its size
    across DDP ranks and the duplicate writes one instance's memory consistently, as DistributedSampler padding does.
    """

    def __init__(self, image_size: int = 0, device: str = "auto", skip_corrupt: bool = False):
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"data.decode_device must be auto, cpu or cuda, got `{device}`")
        self.image_size, self.device, self.skip_corrupt = image_size, device, skip_corrupt

    def target(self, batch_device: torch.device) -> torch.device:
        if self.device == "cpu":
            return torch.device("cpu")
        if self.device == "cuda" and batch_device.type != "cuda":
            raise DataError("data.decode_device=cuda but the batch is on the CPU (no GPU in use); "
                            "use data.decode_device=auto to decode on the CPU there")
        return batch_device

    def decode(self, encoded: EncodedBatch, device: torch.device) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """Decoded images (None where undecodable) and {row: error} for the undecodable rows."""
        chunks = [encoded.item(i) for i in range(len(encoded))]
        is_jpeg = [bytes(c[:3].tolist()) == JPEG_MAGIC for c in chunks]
        images: list[torch.Tensor | None] = [None] * len(chunks)
        jpeg_rows = [i for i, j in enumerate(is_jpeg) if j]
        if jpeg_rows:
            try:
                decoded = decode_jpeg([chunks[i] for i in jpeg_rows], mode=ImageReadMode.RGB, device=device)
                for i, im in zip(jpeg_rows, decoded):
                    images[i] = im
            except RuntimeError:
                pass  # one bad file fails the whole call; find it below, one file at a time
        failures: dict[int, str] = {}
        for i, im in enumerate(images):
            if im is not None:
                continue
            try:
                images[i] = decode_image(chunks[i], mode=ImageReadMode.RGB).to(device, non_blocking=True)
            except (RuntimeError, ValueError) as err:
                failures[i] = str(err).splitlines()[0] if str(err) else type(err).__name__
        return images, failures

    def __call__(self, batch: dict) -> dict:
        encoded: EncodedBatch = batch.pop("jpeg")
        batch_device = batch["index"].device
        images, failures = self.decode(encoded, self.target(batch_device))
        if failures:
            named = "; ".join(f"{encoded.names[i]} ({err})" for i, err in failures.items())
            good = [i for i in range(len(images)) if i not in failures]
            if not self.skip_corrupt or not good:
                raise CorruptImageError(
                    f"cannot decode image(s) {named}. Fix or remove the file(s), or set data.skip_corrupt=true "
                    "to replace undecodable images by other images of their batch"
                )
            log.warning("skipped %d undecodable image(s), each replaced by another image of its batch: %s",
                        len(failures), named)
            source = torch.arange(len(images))
            for n, i in enumerate(failures):
                source[i] = good[n % len(good)]
                images[i] = images[good[n % len(good)]]
            for key in ("index", "fine", "coarse"):
                batch[key] = batch[key][source.to(batch[key].device)]
        if self.image_size:
            images = _resize_groups(images, self.image_size)
        shapes = sorted({tuple(im.shape) for im in images})
        if len(shapes) > 1:
            raise DataError(f"images of one batch have different sizes {shapes[:4]}; set data.image_size to resize "
                            "them (shorter side, then centre crop) to one size")
        batch["image"] = torch.stack(images).to(batch_device, non_blocking=True)
        return batch
