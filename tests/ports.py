"""Where the tests' process groups meet, and the ports they need, without a race on a port number.

Picking a "free" port by binding port 0 and closing the socket leaves a gap: another process may take the port
before the test binds it again. So:

- the tests that start their own gloo processes meet through a file (torch's ``file://`` rendezvous, a FileStore in
  the test's tmp folder): no port at all;
- a launch that picks its port itself (Lightning's ``ddp_spawn``: ``find_free_network_port`` binds, releases and
  binds again in the workers) is retried when, and only when, it failed with EADDRINUSE;
- a port that must refuse connections stays bound (never listening) while the test uses it, so no one can take it.
"""
from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch.multiprocessing as mp

ADDRESS_IN_USE = re.compile(r"EADDRINUSE|address already in use", re.IGNORECASE)


def file_init_method(directory: Path) -> str:
    """A ``torch.distributed.init_process_group`` init_method through a new FileStore file under ``directory``."""
    return (Path(directory).resolve() / f"rendezvous-{uuid.uuid4().hex}").as_uri()


def spawn_and_wait(worker: Callable, args: tuple, nprocs: int, timeout_s: float) -> None:
    """``mp.spawn`` the workers (``worker(rank, *args)``) and wait for them; a worker's exception is raised here, and a
    hang past ``timeout_s`` kills them and fails the test."""
    context = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {nprocs} gloo workers did not finish within {timeout_s:g} s")


def failed_on_address_in_use(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and bool(ADDRESS_IN_USE.search(f"{proc.stdout}\n{proc.stderr}"))


def run_retrying_on_address_in_use(command: list[str], before_each: Callable[[], None] = lambda: None,
                                   attempts: int = 3, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(command, **kwargs)`` for a launch that picks its own port: rerun (after ``before_each``, which
    clears what a try left) when the port was taken between its choice and its use. Any other result is returned."""
    for attempt in range(attempts):
        before_each()
        proc = subprocess.run(command, **kwargs)
        if not failed_on_address_in_use(proc):
            return proc
    return proc


@contextlib.contextmanager
def closed_local_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, never listening, and held until the block ends."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
