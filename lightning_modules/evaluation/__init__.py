"""Frozen-feature evaluation: safe checkpoint loading, cached features, linear probe, kNN, retrieval,
clustering, the report, and the backbone export. ``evaluate.py`` wires them together."""
