"""Shared plotting helpers: matplotlib with the Agg backend (no display needed); every figure
is saved as PNG (embedded in the HTML report) and PDF (for papers)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False,
                     "legend.fontsize": 8, "axes.titlesize": 10, "axes.labelsize": 9})


def save(fig, stem: Path) -> Path:
    """Write ``stem``.png and ``stem``.pdf, close the figure, return the PNG path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"))
    fig.savefig(stem.with_suffix(".pdf"))
    plt.close(fig)
    return stem.with_suffix(".png")


def grid(n: int, width: float = 4.0, height: float = 3.0, cols: int = 3):
    """A figure with ``n`` panels in rows of ``cols``; returns (fig, flat list of axes) with
    the unused panels hidden."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]
