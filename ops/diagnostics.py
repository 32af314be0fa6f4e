"""Cheap diagnostics of a feature matrix: effective rank (RankMe), alignment and uniformity, and the collapse of
fine classes inside their superclass. Pure tensor math (torch only), no labels are needed for the first ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def effective_rank(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of ``features`` (N, D).

    Between 1 (one direction) and min(N, D) (a flat spectrum); the features are used as given (not centred).
    """
    sigma = torch.linalg.svdvals(features.double())
    p = sigma / sigma.sum().clamp_min(1e-30) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def pair_alignment(a: torch.Tensor, b: torch.Tensor, power: float = 2.0) -> float:
    """Alignment (Wang & Isola 2020): mean |f(a_i) - f(b_i)|^power over positive pairs, f = L2-normalisation."""
    return float((F.normalize(a.double(), dim=1) - F.normalize(b.double(), dim=1)).norm(dim=1).pow(power).mean())


def class_alignment(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Alignment (power 2) over every pair of distinct rows that share a label, in closed form.

    For unit rows of one class with sum s and count n, the pairs' mean squared distance is
    2 - 2 (|s|^2 - n) / (n (n - 1)). Classes of one row have no pair; the mean is over all pairs.
    """
    z = F.normalize(features.double(), dim=1)
    _, ids = labels.unique(return_inverse=True)
    counts = torch.bincount(ids).double()
    sums = torch.zeros(len(counts), z.shape[1], dtype=z.dtype).index_add_(0, ids, z)
    pairs = counts * (counts - 1)
    if pairs.sum() == 0:
        return float("nan")
    sq_dist_sums = 2 * pairs - 2 * (sums.pow(2).sum(1) - counts)  # sum over ordered pairs of |z_i - z_j|^2
    return float(sq_dist_sums.sum() / pairs.sum())


def uniformity(features: torch.Tensor, t: float = 2.0, chunk: int = 2048) -> float:
    """Uniformity (Wang & Isola 2020): log mean over pairs i != j of exp(-t |f(x_i) - f(x_j)|^2), f = L2-norm.

    At most -4 for t=2 (the unit-sphere limit), 0 when every feature is the same point.
    """
    z = F.normalize(features.double(), dim=1)
    n = z.shape[0]
    total = torch.zeros((), dtype=z.dtype)
    for start in range(0, n, chunk):
        sq = (2 - 2 * z[start : start + chunk] @ z.T).clamp_min(0)
        rows = torch.arange(start, min(start + chunk, n))
        sq[rows - start, rows] = float("inf")  # leave out i == j
        total += torch.exp(-t * sq).sum()
    return float(torch.log(total / (n * (n - 1))))


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids (C, D) of the L2-normalised rows of each class, which classes have rows (C,) bool)."""
    z = F.normalize(features.double(), dim=1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, labels, z)
    return sums / counts.clamp_min(1)[:, None], counts > 0


def superclass_collapse(centroids: torch.Tensor, fine_to_coarse: torch.Tensor) -> dict[str, float]:
    """How far apart fine classes of one superclass are, against fine classes of different superclasses.

    ``within``: mean distance between the centroids of two fine classes of the same superclass; ``across``: the
    same for two fine classes of different superclasses; ``ratio`` = within / across. Near 1 the features ignore
    the hierarchy; near 0 the fine classes of a superclass have collapsed onto one point.
    """
    dist = torch.cdist(centroids.double(), centroids.double())
    same = fine_to_coarse[:, None] == fine_to_coarse[None, :]
    off_diagonal = ~torch.eye(len(fine_to_coarse), dtype=torch.bool)
    within, across = dist[same & off_diagonal], dist[~same]
    if within.numel() == 0 or across.numel() == 0:
        return {"within": float("nan"), "across": float("nan"), "ratio": float("nan")}
    w, a = float(within.mean()), float(across.mean())
    return {"within": w, "across": a, "ratio": w / a if a > 0 else float("nan")}
