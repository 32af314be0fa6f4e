"""Protocol ``diagnostics``: why a run is good or bad, from its frozen features, plus a 2-D map of them.

Numbers (raw, not percentages; see ``ops/diagnostics.py``):

- ``rankme`` (level ``none``): effective rank of the feature matrix, and ``rank_fraction`` = rankme / min(N, D).
  A collapsing run loses rank long before its probe accuracy stalls.
- ``uniformity`` (level ``none``): log mean exp(-2 |z_i - z_j|^2) over pairs of unit features (lower: more uniform).
- ``alignment`` (per label level): mean |z_i - z_j|^2 over pairs of unit features with the same label. There are no
  augmented views at evaluation, so the label defines the positives (lower: classes are tighter).
- ``collapse_ratio`` (level ``fine-within-superclass``): mean distance between centroids of fine classes of the same
  superclass over that between fine classes of different superclasses (near 0: fine classes collapsed within their
  superclass; near 1: the features ignore the hierarchy). ``within`` and ``across`` are in its params.

The map is t-SNE (scikit-learn) of up to ``map_points`` features, drawn by ``figures.py``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lightning_modules.evaluation.features import FeatureSet
from lightning_modules.evaluation.rows import result_row
from ops.diagnostics import class_alignment, class_centroids, effective_rank, superclass_collapse, uniformity


def spread_rows(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Up to ``count`` rows, as even across classes as the classes allow (deterministic in ``seed``)."""
    if count <= 0 or count >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    # rank of each row within its class in the random order; take rows round-robin over classes
    shuffled = labels[order]
    rank = torch.zeros(len(labels), dtype=torch.int64)
    for label in shuffled.unique():
        members = torch.nonzero(shuffled == label).flatten()
        rank[members] = torch.arange(len(members))
    keys = rank * (int(labels.max()) + 1) + shuffled
    return order[keys.argsort()[:count]].sort().values


def feature_diagnostics(features: torch.Tensor, fine: Optional[torch.Tensor], coarse: Optional[torch.Tensor],
                        fine_to_coarse: Optional[torch.Tensor], num_fine: Optional[int] = None) -> dict[str, float]:
    """The scalar diagnostics of one feature matrix (also what pretraining logs every N epochs)."""
    features = features.float()
    out = {"rankme": effective_rank(features), "uniformity": uniformity(features)}
    out["rank_fraction"] = out["rankme"] / min(features.shape)
    for level, labels in (("fine", fine), ("coarse", coarse)):
        if labels is not None and (labels >= 0).all():
            out[f"alignment_{level}"] = class_alignment(features, labels)
    if fine is not None and fine_to_coarse is not None and (fine_to_coarse >= 0).all():
        centroids, present = class_centroids(features, fine, num_fine or len(fine_to_coarse))
        collapse = superclass_collapse(centroids[present], fine_to_coarse[present])
        out.update({"collapse_ratio": collapse["ratio"], "collapse_within": collapse["within"],
                    "collapse_across": collapse["across"]})
    return out


def embed_2d(features: torch.Tensor, seed: int, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE (scikit-learn) of the unit features, after PCA to 50 dimensions when wider."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = F.normalize(features.float(), dim=1).numpy()
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, max(1.0, (x.shape[0] - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x).astype(np.float32)


def run_diagnostics(features: FeatureSet, split: str, levels: list[str], fine_to_coarse: Optional[torch.Tensor],
                    num_fine: int, cfg: Any, seed: int = 0) -> tuple[list[dict], dict]:
    """(result rows, {"map": {"xy", "fine", "coarse"}} when the map is on)."""
    rows_used = spread_rows(features.fine, int(cfg.max_points), seed)
    sample = features.take(rows_used)
    has_coarse = bool((sample.coarse >= 0).all())
    values = feature_diagnostics(sample.features, sample.fine if "fine" in levels else None,
                                 sample.coarse if "coarse" in levels and has_coarse else None,
                                 fine_to_coarse if has_coarse else None, num_fine)
    common = dict(images=len(sample), dim=int(sample.features.shape[1]), normalized="l2")
    rows = [result_row("diagnostics", "none", "rankme", values["rankme"], split, images=len(sample),
                       dim=common["dim"], normalized="none"),
            result_row("diagnostics", "none", "rank_fraction", values["rank_fraction"], split, images=len(sample),
                       dim=common["dim"], normalized="none"),
            result_row("diagnostics", "none", "uniformity", values["uniformity"], split, t=2, **common)]
    for level in ("fine", "coarse"):
        if f"alignment_{level}" in values:
            rows.append(result_row("diagnostics", level, "alignment", values[f"alignment_{level}"], split,
                                   positives="same label", power=2, **common))
    if "collapse_ratio" in values:
        rows.append(result_row("diagnostics", "fine-within-superclass", "collapse_ratio", values["collapse_ratio"],
                               split, within=values["collapse_within"], across=values["collapse_across"],
                               distance="fine-class centroids", **common))
    artifacts = {}
    if cfg.map:
        chosen = spread_rows(features.fine, int(cfg.map_points), seed)
        picked = features.take(chosen)
        artifacts["map"] = {"xy": embed_2d(picked.features, seed, cfg.perplexity), "fine": picked.fine.numpy(),
                            "coarse": picked.coarse.numpy(), "split": split, "method": "t-SNE"}
    return rows, artifacts
