"""The old import path of :mod:`lightning_modules.checkpoints.sources`, kept for the scripts and tests that name it."""
from lightning_modules.checkpoints.sources import (  # noqa: F401
    EXPORT_METADATA_KEY, RANDOM, EvalSource, build_eval_backbone, load_source, sidecar_path)
