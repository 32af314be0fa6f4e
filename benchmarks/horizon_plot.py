"""benchmarks/secu_horizon.py's curve as one picture (matplotlib, no display)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional

GAIN_TARGET = 2.0  # points over the lr-0 control that count as learning (benchmarks/RESULTS.md §1)
PANELS = (("Δ kNN-200", "kNN-200 top-1 over the lr-0 control (points)"),
          ("Δ linear", "linear top-1 over the lr-0 control (points)"))


def horizon_plot(rows: list[dict], path: Path, title: str = "") -> Optional[Path]:
    """Gain over the lr-0 control against pretraining epochs, kNN-200 and linear side by side: a line per (row, seed),
    a colour per row, the +2-point target dashed and the control at 0. None when no trained row has been scored."""
    trained = [r for r in rows if "Δ kNN-200" in r and "Δ linear" in r]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
    cmap = plt.get_cmap("tab10")
    names = list(dict.fromkeys(r["row"] for r in trained))
    epochs = sorted({r["epochs"] for r in trained})
    for ax, (key, label) in zip(axes, PANELS):
        for i, name in enumerate(names):
            for seed in dict.fromkeys(r["seed"] for r in trained if r["row"] == name):
                curve = sorted((r["epochs"], r[key]) for r in trained if r["row"] == name and r["seed"] == seed)
                ax.plot(*zip(*curve), marker="o", ms=4, color=cmap(i % 10), alpha=0.8, label=f"{name}, seed {seed}")
        ax.axhline(0.0, color="grey", lw=1)
        ax.axhline(GAIN_TARGET, color="black", lw=1, ls="--", label=f"+{GAIN_TARGET:g} points")
        ax.set_xscale("log", base=2)
        ax.set_xticks(epochs, [str(e) for e in epochs])
        ax.set_xlabel("pretraining epochs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(textwrap.fill(title or "SeCu's horizon: gain over its lr-0 control", 110), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
