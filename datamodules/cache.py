"""Decode once, keep a uint8 array on disk, keyed by the source's identity so a changed source is re-read."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from datamodules.sources import DecodedSplit

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def source_fingerprint(path: Path) -> list:
    """Path, size and mtime of the source file, or of every file of a source folder."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    return [str(path)] + [
        [f.relative_to(path).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.rglob("*")) if f.is_file()
    ]


def cache_key(path: Path, **params) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "source": source_fingerprint(path), **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_decode(cache_dir: str | Path, tag: str, path: Path, read: Callable[[], DecodedSplit], **params) -> DecodedSplit:
    """Return ``read()``'s result, from ``cache_dir`` when the same source was decoded before."""
    cache_file = Path(cache_dir) / f"{tag}-{cache_key(path, **params)}.npz"
    if cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return DecodedSplit(
                images=z["images"], fine=z["fine"], class_names=meta["class_names"],
                coarse=z["coarse"] if meta["has_coarse"] else None,
                superclass_names=meta["superclass_names"], skipped=meta["skipped"], names=meta.get("names"),
            )
    split = read()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "class_names": split.class_names, "superclass_names": split.superclass_names,
        "has_coarse": split.coarse is not None, "skipped": split.skipped, "names": split.names,
    }
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp, images=split.images, fine=split.fine, meta=np.array(json.dumps(meta)),
        coarse=split.coarse if split.coarse is not None else np.zeros(0, np.int64),
    )
    os.replace(tmp, cache_file)  # atomic: a concurrent reader never sees half a file
    log.info("cached decoded %s at %s", tag, cache_file)
    return split
