"""Shared plotting helpers: matplotlib with the Agg backend (no display needed); every figure
is saved as PNG (embedded in the HTML report) and PDF (for papers)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, NullFormatter

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


def grid(n: int, width: float = 4.0, height: float = 3.0, cols: int = 3, sharey: bool = False):
    """A figure with ``n`` panels in rows of ``cols``; returns (fig, flat list of axes) with
    the unused panels hidden. ``sharey``: one y scale for every panel (tick labels on each),
    so that panels compare at a glance."""
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    if sharey:
        for ax in flat[:n]:
            ax.yaxis.set_tick_params(labelleft=True)
    return fig, flat[:n]


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (an
    average glyph is about 0.55 em wide), so that a title is never clipped at the figure's
    edges."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.splitlines())


def log_ticks(ax, axis: str = "y") -> None:
    """Readable labels on a log axis (call after plotting): plain numbers at 1, 2, 5 × 10^k
    when the axis spans less than two decades (more within one decade) (the default labels there are overlapping
    minor labels such as 2×10⁻¹ 3×10⁻¹ ...), powers of ten otherwise; minor ticks are never
    labelled."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo < 100:
        subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if hi / lo < 10 else (1.0, 2.0, 5.0)
        target.set_major_locator(LogLocator(base=10, subs=subs, numticks=15))
        target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    else:
        target.set_major_locator(LogLocator(base=10))
        target.set_major_formatter(LogFormatterSciNotation())
    target.set_minor_formatter(NullFormatter())
