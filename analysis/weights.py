"""Task weights over training: the mean weights each method applied per epoch (the
``weights`` of the train records of metrics.jsonl), averaged over seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.collect import load_train_records
from analysis.plots import grid, log_ticks, save

COLUMNS = ["benchmark", "method", "seed", "epoch", "task", "weight"]


def load_weights(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for run in runs[runs.usable].itertuples():
        for rec in load_train_records(Path(run.run_dir)):
            for task, w in (rec.get("weights") or {}).items():
                if w is not None:
                    rows.append({"benchmark": run.benchmark, "method": run.method,
                                 "seed": run.seed, "epoch": rec.get("epoch"), "task": task,
                                 "weight": float(w)})
    return pd.DataFrame(rows, columns=COLUMNS)


def weight_scale(values) -> tuple[str, dict]:
    """The y scale of the task-weight panels: ``log`` when every weight is positive (weights
    that differ by orders of magnitude stay apart, none shows as 0), ``symlog`` when some
    are 0 (linear below the smallest positive weight), ``linear`` when some are negative."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0 or (values < 0).any():
        return "linear", {}
    if (values == 0).any():
        positive = values[values > 0]
        return "symlog", {"linthresh": float(positive.min()) if positive.size else 1.0}
    return "log", {}


def plot_weights(weights: pd.DataFrame, stem: Path, title: str) -> Path:
    """One panel per method, one line per task: the mean applied weight per epoch (mean over
    seeds; the band is the range over seeds), on one y scale shared by every panel
    (``weight_scale``: logarithmic when every weight is positive), so that a small weight
    never reads as 0 and panels compare at a glance."""
    methods = sorted(weights.method.unique())
    fig, axes = grid(len(methods), 4.0, 3.0, sharey=True)
    scale, options = weight_scale(weights.weight)
    for ax, method in zip(axes, methods):
        part = weights[weights.method == method]
        for task, p in part.groupby("task", sort=False):
            stats = p.groupby("epoch").weight.agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], marker=".", label=task)
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
        ax.set_title(method)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean applied task weight")
        ax.legend(fontsize=7)
    axes[0].set_yscale(scale, **options)  # shared: one call sets every panel
    if scale == "log":
        lo, hi = float(weights.weight.min()), float(weights.weight.max())
        if hi / lo < 4:  # a narrow range: at least a factor of 4, centred, so that small
            mid = np.sqrt(lo * hi)  # wiggles are not drawn as large changes
            axes[0].set_ylim(mid / 2, mid * 2)
        else:
            axes[0].set_ylim(lo / 1.3, hi * 1.3)
        for ax in axes:
            log_ticks(ax, "y")
    what = {"log": "log scale", "symlog": f"symmetric log scale, linear below "
            f"{options.get('linthresh', 0):.3g}", "linear": "linear scale"}[scale]
    fig.suptitle(f"{title} ({what}, shared by the panels; band: range over seeds)")
    return save(fig, stem)
