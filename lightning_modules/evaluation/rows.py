"""Result rows, the leaf every protocol writes its numbers with: one row per (protocol, level, metric), with the split
it was measured on and the settings that produced it (report.json's ``results``)."""
from __future__ import annotations

from typing import Any

from lightning_modules.evaluation.metrics import classification_metrics, within_superclass_accuracy

ROW_KEYS = ("protocol", "level", "metric", "value", "split", "params")


def result_row(protocol: str, level: str, metric: str, value: float, split: str, **params: Any) -> dict:
    return {"protocol": protocol, "level": level, "metric": metric, "value": float(value), "split": split, "params": params}


def score_rows(protocol: str, level: str, scores, labels, fine_to_coarse, **params: Any) -> list[dict]:
    """Rows for class scores on test: top-1 (and top-5), plus fine top-1 within the true superclass for fine labels."""
    rows = [result_row(protocol, level, metric, value, "test", **params)
            for metric, value in classification_metrics(scores, labels).items()]
    if level == "fine" and fine_to_coarse is not None:
        value = within_superclass_accuracy(scores, labels, fine_to_coarse)
        rows.append(result_row(protocol, "fine-within-superclass", "top1", value, "test", **params))
    return rows
