"""benchmarks/budget.py's table as one picture (matplotlib, no display)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional

import numpy as np


def budget_plot(rows: list[dict], path: Path, title: str = "") -> Optional[Path]:
    """benchmarks/budget.py's table as one picture: linear against kNN-200 (fine), a colour per row, its seeds as
    small dots and their mean as a large one, the legend giving each row's throughput; random init as a grey cross."""
    scored = [r for r in rows if np.isfinite(r["kNN-200 fine"]) and np.isfinite(r["linear fine"])]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(dict.fromkeys(r["row"] for r in scored)):
        group = [r for r in scored if r["row"] == name]
        knn, linear = [r["kNN-200 fine"] for r in group], [r["linear fine"] for r in group]
        if name == "random init":
            ax.scatter(knn, linear, marker="x", s=60, color="grey", label=name)
            continue
        color = cmap(i % 10)
        ax.scatter(knn, linear, s=12, color=color, alpha=0.5)
        seeds = f"{len(group)} seed{'s' * (len(group) > 1)}"
        ax.scatter([np.mean(knn)], [np.mean(linear)], s=70, color=color, edgecolors="black", linewidths=0.5,
                   label=f"{name}: {np.mean([r['images/s'] for r in group]):.0f} img/s, mean of {seeds}")
    ax.set_xlabel("kNN-200 top-1, fine (%)")
    ax.set_ylabel("linear probe top-1, fine (%)")
    ax.set_title(textwrap.fill(title or "equal training time: frozen features", 80), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
