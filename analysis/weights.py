"""Task weights over training: the mean weights each method applied per epoch (the
``weights`` of the train records of metrics.jsonl), averaged over seeds."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from analysis.collect import load_train_records
from analysis.plots import grid, save

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


def plot_weights(weights: pd.DataFrame, stem: Path, title: str) -> Path:
    """One panel per method, one line per task: the mean applied weight per epoch (mean over
    seeds; the band is the range over seeds)."""
    methods = sorted(weights.method.unique())
    fig, axes = grid(len(methods), 4.0, 3.0)
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
        ax.legend()
    fig.suptitle(title)
    return save(fig, stem)
