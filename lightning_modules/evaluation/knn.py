"""kNN classification (test queries against the train bank) and leave-one-out retrieval, as result rows."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.rows import result_row, score_rows
from ops.knn import cosine_topk, weighted_vote
from ops.retrieval import recall_from_neighbours

log = logging.getLogger(__name__)


def clamped_ks(ks, available: int, key: str, what: str) -> list[int]:
    """The distinct ks, each at most ``available`` (with a warning naming the key when one is cut)."""
    asked = sorted(int(k) for k in ks)
    if asked and asked[-1] > available:
        log.warning("%s=%s: only %d %s, so k is cut to %d (pass smaller ks, or a larger data.subset)",
                    key, asked, available, what, available)
    return sorted({min(k, available) for k in asked})


def run_knn(train: FeatureSet, test: FeatureSet, levels: list[str], num_classes: dict[str, int],
            fine_to_coarse: Optional[torch.Tensor], cfg: Any, device: torch.device) -> list[dict]:
    """One neighbour search, then a weighted vote per k and label level."""
    ks = clamped_ks(cfg.ks, len(train), "knn.ks", "train images")
    sims, ids = cosine_topk(test.features.to(device), train.features.to(device), max(ks),
                            query_chunk=cfg.query_chunk, bank_chunk=cfg.bank_chunk)
    sims, ids = sims.cpu(), ids.cpu()
    rows = []
    for level in levels:
        bank_labels, labels = train.labels(level), test.labels(level)
        if (bank_labels < 0).any() or (labels < 0).any():
            continue  # no hierarchy for this data
        for k in ks:
            scores = weighted_vote(sims, bank_labels[ids], num_classes[level], k, cfg.temperature)
            params = dict(k=k, temperature=cfg.temperature, similarity="cosine", bank="train", bank_images=len(train))
            rows += score_rows("knn", level, scores, labels, fine_to_coarse, **params)
    return rows


def run_retrieval(queries: FeatureSet, split: str, levels: list[str], cfg: Any, device: torch.device) -> list[dict]:
    """Recall@K, leave-one-out within ``queries``, a hit being a neighbour of the same label."""
    ks = clamped_ks(cfg.ks, len(queries) - 1, "retrieval.ks", f"other {split} images")
    _, ids = cosine_topk(queries.features.to(device), queries.features.to(device), max(ks), exclude_self=True,
                         query_chunk=cfg.query_chunk, bank_chunk=cfg.bank_chunk)
    ids = ids.cpu()
    rows = []
    for level in levels:
        labels = queries.labels(level)
        if (labels < 0).any():
            continue
        for k, value in recall_from_neighbours(labels[ids], labels, ks).items():
            rows.append(result_row("retrieval", level, f"recall@{k}", value, split, k=k, similarity="cosine", leave_one_out=True))
    return rows
