"""Frozen-feature evaluation: cached features, the protocols by name (``registry``: linear probe, kNN, retrieval,
clustering, SeA, few-shot, diagnostics), their result rows (``rows``), the report, and ``pipeline``, the work
``evaluate.py`` calls. Checkpoint files are the checkpoint room's (``lightning_modules/checkpoints``)."""
