"""Negative-transfer report: every method's change on every task against single-task learning.

For a task t with metrics k (sign s_k = +1 if higher is better, else −1) and a seed of the
method, the relative change is r_t = (1/n_t) Σ_k s_k (M_k − B_k)/B_k in %, with B the mean of
the baseline's seeds. Negative transfer on t means mean(r_t) < 0. Significance: Welch's t-test
between the method's per-seed r_t and the stl runs' per-seed r_t (which average 0); when the
baseline is the published STL row (no seeds), a one-sample t-test of r_t against 0. A task has
significant negative transfer when mean(r_t) < 0 and p < ``alpha`` (0.05).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.measures import relative_changes, welch_t_test
from analysis.plots import plt, save
from analysis.table import Comparison

COLUMNS = ["method", "task", "change_pct", "std_pct", "seeds", "t", "p", "negative",
           "significant_negative"]


def _task_changes(values: np.ndarray, table: Comparison, base: pd.Series) -> dict[str, np.ndarray]:
    """Per-seed relative change (%) of every task; ``values`` is seeds × the base's columns."""
    cols = list(base.index)
    scale = np.array([table.base_factors[c] if table.base_factors else 1.0 for c in cols])
    rel = np.stack([relative_changes(v * scale, base.to_numpy(),
                                     [table.higher[table.columns.index(c)] for c in cols])
                    for v in values]) * 100.0
    out = {}
    for task in dict.fromkeys(c[0] for c in cols):
        idx = [i for i, c in enumerate(cols) if c[0] == task]
        out[task] = rel[:, idx].mean(axis=1)
    return out


def _seeds(table: Comparison, row: str, cols) -> np.ndarray:
    return table.per_seed.xs(row, level="row")[cols].dropna().to_numpy()


def negative_transfer(table: Comparison, alpha: float = 0.05) -> pd.DataFrame | None:
    """One row per (method, task) of the compared set (see COLUMNS); None without a baseline."""
    if not table.bases:
        return None
    rows = []
    for row in table.compared:
        base = table.bases[row]
        cols = list(base.index)
        vals = _seeds(table, row, cols)
        if row == table.base_rows.get(row) or len(vals) == 0:
            continue
        ref = None
        if row in table.base_rows:
            ref = _task_changes(_seeds(table, table.base_rows[row], cols), table, base)
        for task, r in _task_changes(vals, table, base).items():
            if ref is not None:
                t, p = welch_t_test(r, ref[task])
            elif len(r) > 1 and np.var(r) > 0:
                res = stats.ttest_1samp(r, 0.0)
                t, p = float(res.statistic), float(res.pvalue)
            else:
                t, p = float("nan"), float("nan")
            mean = float(np.mean(r))
            rows.append({"method": row, "task": task, "change_pct": mean,
                         "std_pct": float(np.std(r, ddof=1)) if len(r) > 1 else float("nan"),
                         "seeds": len(r), "t": t, "p": p, "negative": mean < 0,
                         "significant_negative": bool(mean < 0 and p < alpha)})
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(report: pd.DataFrame) -> pd.DataFrame:
    """Per method: tasks with negative transfer, how many significantly, and the worst task."""
    rows = []
    for method, part in report.groupby("method", sort=False):
        worst = part.loc[part.change_pct.idxmin()]
        rows.append({"method": method, "tasks": len(part), "negative": int(part.negative.sum()),
                     "significant_negative": int(part.significant_negative.sum()),
                     "worst_task": worst.task, "worst_change_pct": worst.change_pct})
    return pd.DataFrame(rows, columns=["method", "tasks", "negative", "significant_negative",
                                       "worst_task", "worst_change_pct"])


def heatmap(report: pd.DataFrame, stem: Path, title: str) -> Path:
    """Methods × tasks, colour = relative change (%) against STL; * marks significant
    negative transfer."""
    grid_ = report.pivot(index="method", columns="task", values="change_pct")
    grid_ = grid_.loc[list(dict.fromkeys(report.method)), list(dict.fromkeys(report.task))]
    sig = report.set_index(["method", "task"]).significant_negative
    lim = max(float(np.nanmax(np.abs(grid_.to_numpy()))), 1e-9)
    fig, ax = plt.subplots(figsize=(1.2 * grid_.shape[1] + 3, 0.45 * grid_.shape[0] + 1.8))
    im = ax.imshow(grid_.to_numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(grid_.shape[1]), grid_.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid_.shape[0]), grid_.index)
    ax.grid(False)
    for i, m in enumerate(grid_.index):
        for j, t in enumerate(grid_.columns):
            v = grid_.iloc[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.2f}" + ("*" if sig.get((m, t), False) else ""),
                        ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="change vs STL (%)")
    ax.set_title(title + "\n(* significant negative transfer, Welch t-test p < 0.05)")
    return save(fig, stem)
