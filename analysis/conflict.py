"""Gradient-conflict statistics recorded during training (conflict.jsonl).

Each record holds, at one step, the pairwise cosine similarity of the per-task gradients
(``"a|b"`` keys) and each task's gradient norm, in parameter space (shared parameters) or
representation space (w.r.t. Z). Derived per step and averaged over seeds:

- mean pairwise cosine;
- fraction of conflicting pairs: pairs with cosine < 0;
- gradient-norm ratio: largest over smallest task-gradient norm (1 = balanced).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import load_optional_jsonl
from analysis.plots import grid, log_ticks, save

STEP_COLUMNS = ["benchmark", "method", "seed", "space", "step", "epoch", "mean_cosine",
                "conflict_fraction", "norm_ratio"]
PAIR_COLUMNS = ["benchmark", "method", "seed", "space", "step", "pair", "cosine"]


def load_conflicts(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(per-step statistics, per-pair cosines, {run_dir: problem}) of the usable runs."""
    steps, pairs, problems = [], [], {}
    for run in runs[runs.usable].itertuples():
        records, problem = load_optional_jsonl(Path(run.run_dir), "conflict.jsonl")
        if problem:
            problems[run.run_dir] = problem
        for rec in records:
            cos = {k: float(v) for k, v in (rec.get("cosine") or {}).items() if v is not None}
            norms = [float(v) for v in (rec.get("norms") or {}).values() if v is not None]
            if not cos:
                continue
            values = np.array(list(cos.values()))
            ratio = (max(norms) / min(norms)) if norms and min(norms) > 0 else np.nan
            base = {"benchmark": run.benchmark, "method": run.method, "seed": run.seed,
                    "space": rec.get("space", ""), "step": rec.get("step")}
            steps.append({**base, "epoch": rec.get("epoch"), "mean_cosine": values.mean(),
                          "conflict_fraction": float((values < 0).mean()), "norm_ratio": ratio})
            pairs.extend({**base, "pair": k, "cosine": v} for k, v in cos.items())
    return (pd.DataFrame(steps, columns=STEP_COLUMNS), pd.DataFrame(pairs, columns=PAIR_COLUMNS),
            problems)


def conflict_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark, method and space: the averages over training (and over seeds)."""
    return (steps.groupby(["benchmark", "method", "space"], sort=True)
            .agg(mean_cosine=("mean_cosine", "mean"), conflict_fraction=("conflict_fraction", "mean"),
                 norm_ratio=("norm_ratio", "mean"), seeds=("seed", "nunique"),
                 records=("step", "size")).reset_index())


def plot_overview(steps: pd.DataFrame, stem: Path, title: str) -> Path:
    """Three panels over training steps, one line per method (mean over seeds)."""
    fig, axes = grid(3, 4.2, 3.2)
    panels = [("mean_cosine", "mean pairwise cosine"),
              ("conflict_fraction", "fraction of pairs with cosine < 0"),
              ("norm_ratio", "gradient-norm ratio max/min")]
    for ax, (col, label) in zip(axes, panels):
        for method, part in steps.groupby("method", sort=True):
            curve = part.groupby("step")[col].mean()
            ax.plot(curve.index, curve.to_numpy(), label=method)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        if col == "mean_cosine":
            ax.axhline(0.0, color="k", lw=0.6)
        if col == "norm_ratio":
            ax.set_yscale("log")
            log_ticks(ax, "y")
    axes[0].legend()
    fig.suptitle(title)
    return save(fig, stem)


def plot_pairs(pairs: pd.DataFrame, stem: Path, title: str) -> Path:
    """One panel per method: the cosine of every task pair over training (mean over seeds),
    on one y scale shared by the panels."""
    methods = sorted(pairs.method.unique())
    fig, axes = grid(len(methods), 4.0, 3.0, sharey=True)  # panels compare at a glance
    for ax, method in zip(axes, methods):
        part = pairs[pairs.method == method]
        for pair, p in part.groupby("pair", sort=True):
            curve = p.groupby("step").cosine.mean()
            ax.plot(curve.index, curve.to_numpy(), label=pair.replace("|", " · "))
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_title(method)
        ax.set_xlabel("training step")
        ax.set_ylabel("cosine of task gradients")
        ax.legend()
    fig.suptitle(title)
    return save(fig, stem)
