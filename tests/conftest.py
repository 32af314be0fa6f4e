"""Shared fixtures: the real data under ../shared/data (or $COKE_DATA_ROOT).

Missing data skips a test locally, but fails it under CI=true: CI must never pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `-n 2` on 2 cores: one intra-op thread per worker (and in the processes it starts), or they oversubscribe.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Before anything imports triton (Lightning does): kernels defined later must be interpreted on the CPU, or the
    # Triton tests depend on which test file the worker collected first. tests/test_cuda.py compiles them on CUDA.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from configs.schema import default_data_root  # noqa: E402


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"real test data missing: {path}. Set COKE_DATA_ROOT to the folder holding the shared data."
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Two shared cores: one intra-op thread avoids the stalls of oversubscribed threads (a module opts in)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _test_seed(request) -> int:
    import zlib

    return int(os.environ.get("COKE_RNG_SEED") or zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def seeded_global_rngs(request):
    """Every test starts its global RNGs (torch, NumPy, random) from a seed of its own node id and leaves them as it
    found them: an unseeded draw in a test gives the same numbers whichever tests ran before it on its worker."""
    import random

    import numpy as np
    import torch

    seed = _test_seed(request)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


@pytest.fixture
def rng(request):
    """A torch.Generator of this test's own, seeded from its node id (the global RNGs are seeded the same way, by
    `seeded_global_rngs`). The seed is printed, so a failing test's report shows it (COKE_RNG_SEED=N reruns a test
    under another seed)."""
    import torch

    seed = _test_seed(request)
    print(f"random seed of {request.node.nodeid}: {seed} (COKE_RNG_SEED={seed} reruns it)")
    yield torch.Generator().manual_seed(seed)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _require(Path(default_data_root()))


@pytest.fixture(scope="session")
def cifar10_tar(data_root) -> Path:
    return _require(data_root / "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def cifar100_fragment(data_root) -> Path:
    return _require(data_root / "cifar100-fragment")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache per test session (the first CIFAR-10 decode takes a few seconds)."""
    shared = os.environ.get("COKE_TEST_CACHE")
    if shared:
        return Path(shared)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cache for all workers (the cache writes files atomically)
        path = tmp_path_factory.getbasetemp().parent / "decode-cache"
        path.mkdir(exist_ok=True)
        return path
    return tmp_path_factory.mktemp("decode-cache")


@pytest.fixture(scope="session")
def cifar10(cifar10_tar, cache_dir):
    """The shared CIFAR-10 (train, test) as LabeledImages."""
    from configs.loader import load_config
    from datamodules import load_split

    cfg = load_config(None, [f"data.path={cifar10_tar}", f"data.cache_dir={cache_dir}"]).data
    return load_split(cfg, "train"), load_split(cfg, "test")
