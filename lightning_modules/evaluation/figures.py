"""The report's figures (matplotlib, no display): the label-efficiency curve and the 2-D map of the features."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fewshot_plot(rows: list[dict], path: Path, title: str = "") -> Optional[Path]:
    """Top-1 (mean ± std over seeds) against labelled images per class, one line per label level."""
    rows = [r for r in rows if r["protocol"] == "fewshot"]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for level in dict.fromkeys(r["level"] for r in rows):
        points = [r for r in rows if r["level"] == level]
        # "all" sits at its real per-class count
        xs = [r["params"]["shots"] if r["params"]["shots"] != "all"
              else r["params"]["train_images"] / r["params"]["classes"] for r in points]
        ax.errorbar(xs, [100 * r["value"] for r in points], yerr=[100 * r["params"]["std"] for r in points],
                    marker="o", capsize=3, label=level)
    ax.set_xscale("log")
    ax.set_xlabel("labelled train images per class (last point: all)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title or "label efficiency (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _outline(ax, xy: np.ndarray, color, label: str, coverage: float = 0.7) -> None:
    """A density contour that holds about ``coverage`` of a group's points, labelled with the group name."""
    from scipy.stats import gaussian_kde

    if len(xy) < 4 or np.linalg.matrix_rank(xy - xy.mean(0)) < 2:
        return
    kde = gaussian_kde(xy.T)
    level = np.quantile(kde(xy.T), 1 - coverage)
    lo, hi = xy.min(0), xy.max(0)
    pad = 0.1 * (hi - lo)
    gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 120), np.linspace(lo[1] - pad[1], hi[1] + pad[1], 120))
    density = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    ax.contour(gx, gy, density, levels=[level], colors=[color], linewidths=1.5)
    centre = xy[np.argmax(kde(xy.T))]
    ax.annotate(label, centre, color=color, fontsize=8, weight="bold", ha="center")


def feature_map(xy: np.ndarray, fine: np.ndarray, coarse: np.ndarray, class_names: list[str],
                superclass_names: list[str], path: Path, title: str = "") -> Path:
    """Points coloured by fine class; each superclass outlined by a density contour in its own colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    classes = np.unique(fine)
    if len(classes) <= 20:
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        colors = {c: cmap(i) for i, c in enumerate(classes)}
    else:
        colors = {c: plt.get_cmap("hsv")(i / len(classes)) for i, c in enumerate(classes)}
    size = float(np.clip(8000 / max(1, len(xy)), 4, 30))  # dots readable at 100 points, not a blot at 5,000
    for c in classes:
        mask = fine == c
        name = class_names[c] if c < len(class_names) else str(c)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colors[c], alpha=0.7, linewidths=0,
                   label=name if len(classes) <= 20 else None)
    if superclass_names and (coarse >= 0).all():
        outline = plt.get_cmap("Dark2")
        for i, s in enumerate(np.unique(coarse)):
            _outline(ax, xy[coarse == s], outline(i % 8), superclass_names[s])
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", ncols=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "t-SNE of frozen features: colour = fine class, outline = superclass")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
