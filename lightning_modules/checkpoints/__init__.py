"""Checkpoint files, on the ground floor: atomic writes (``atomic_save``), weights-only reads (``safe_load``), what a
checkpoint argument can name (``sources``) and the timm-loadable backbone export (``export``). It imports no other
room of ``lightning_modules``; ``run/`` and ``evaluation/`` both build on it."""
