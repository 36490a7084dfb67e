"""Negative-transfer report: every method's change on every task against single-task learning.

For a task t with metrics k (sign s_k = +1 if higher is better, else −1) and a seed of the
method, the relative change is r_t = (1/n_t) Σ_k s_k (M_k − B_k)/B_k in %, with B the mean of
the baseline's seeds. Negative transfer on t means mean(r_t) < 0. Significance: Welch's t-test
between the method's per-seed r_t and the stl runs' per-seed r_t (which average 0); when the
baseline is the published STL row (no seeds), a one-sample t-test of r_t against 0. The test
run is named in the column ``test``. The p-values of one table form one family and are
corrected for multiplicity (``analysis.measures.adjust_p_values``: Holm by default,
Benjamini–Hochberg or none as options) into ``p_adjusted``. A task has significant negative
transfer when mean(r_t) < 0 and p_adjusted < ``alpha`` (0.05).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.measures import adjust_p_values, relative_changes, welch_t_test
from analysis.plots import plt, save, wrap
from analysis.table import Comparison

COLUMNS = ["method", "task", "change_pct", "std_pct", "seeds", "test", "t", "p", "p_adjusted",
           "negative", "significant_negative"]
WELCH = "Welch t-test vs the stl seeds"
ONE_SAMPLE = "one-sample t-test vs 0"
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini–Hochberg", "none": "no"}


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


def negative_transfer(table: Comparison, alpha: float = 0.05, correction: str = "holm"
                      ) -> pd.DataFrame | None:
    """One row per (method, task) of the compared set (see COLUMNS); None without a baseline.
    ``attrs`` of the result hold ``correction``, ``tests`` (the family size) and ``alpha``."""
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
                test = WELCH
                t, p = welch_t_test(r, ref[task])
            elif len(r) > 1 and np.var(r) > 0:
                test = ONE_SAMPLE
                res = stats.ttest_1samp(r, 0.0)
                t, p = float(res.statistic), float(res.pvalue)
            else:
                test = ONE_SAMPLE
                t, p = float("nan"), float("nan")
            if not np.isfinite(p):
                test = "none (fewer than 2 seeds or no spread)"
            mean = float(np.mean(r))
            rows.append({"method": row, "task": task, "change_pct": mean,
                         "std_pct": float(np.std(r, ddof=1)) if len(r) > 1 else float("nan"),
                         "seeds": len(r), "test": test, "t": t, "p": p, "negative": mean < 0})
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted",
                                                                      "significant_negative")])
    out["p_adjusted"] = adjust_p_values(out.p.to_numpy(dtype=float), correction) \
        if len(out) else []
    out["significant_negative"] = [bool(n and q < alpha) for n, q in
                                   zip(out.negative, out.p_adjusted)]
    out = out[COLUMNS]
    out.attrs.update(correction=correction, tests=int(np.isfinite(out.p.to_numpy(float)).sum()),
                     alpha=alpha)
    return out


def tests_description(report: pd.DataFrame) -> str:
    """What was tested and how it was corrected, for captions and figure titles."""
    names = sorted({t for t in report.test if not t.startswith("none")}) or ["no test"]
    corr = CORRECTION_NAMES.get(report.attrs.get("correction", "holm"), "?")
    n = report.attrs.get("tests", 0)
    alpha = report.attrs.get("alpha", 0.05)
    return (f"{' and '.join(names)}; {corr} correction over {n} test{'s' if n != 1 else ''}, "
            f"adjusted p < {alpha:g}")


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
    negative transfer (the title names the test and the correction)."""
    grid_ = report.pivot(index="method", columns="task", values="change_pct")
    grid_ = grid_.loc[list(dict.fromkeys(report.method)), list(dict.fromkeys(report.task))]
    sig = report.set_index(["method", "task"]).significant_negative
    top = float(np.nanmax(np.abs(grid_.to_numpy()))) if np.isfinite(grid_.to_numpy()).any() else 0.0
    lim = top if top > 0 else 1.0  # all zero: a ±1 scale, not a colour bar of ±1e-9
    width = max(1.2 * grid_.shape[1] + 3, 6.0)  # wide enough for the title's test line
    fig, ax = plt.subplots(figsize=(width, 0.45 * grid_.shape[0] + 2.2))
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
    # wrapped to the figure's width: a long test description is never clipped
    fig.suptitle(wrap(title + "\n* significant negative transfer: " + tests_description(report),
                      width * 0.9, 8), fontsize=8)
    return save(fig, stem)
