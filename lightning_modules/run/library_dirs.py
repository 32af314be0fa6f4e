"""Caches that libraries write on their own (matplotlib's font list, imported by W&B and the report figures)
go under the configured cache (``data.cache_dir``), not ``~/.cache`` or ``~/.config``. A value the user set wins."""
from __future__ import annotations

import os
from pathlib import Path


def keep_library_caches_in(cache_dir: str | Path) -> None:
    os.environ.setdefault("MPLCONFIGDIR", str(Path(cache_dir).expanduser() / "matplotlib"))
