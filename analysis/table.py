"""The comparison table printed at the end of ``run``: test metrics at the last epoch,
mean ± std over seeds, and Δp_task (%) against the ``stl`` runs when present."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.collect import load_metrics


def delta_p_task(values: pd.Series, baseline: pd.Series, higher: pd.Series, tasks: pd.Series) -> float:
    """Δp_task (%): the mean over tasks of the mean signed relative change of its metrics."""
    sign = higher.map(lambda h: 1.0 if h else -1.0)
    rel = sign * (values - baseline) / baseline
    return float(100.0 * rel.groupby(tasks).mean().mean())


def comparison_table(root: Path, benchmark: str, methods: list[str] | None = None) -> str:
    df = load_metrics(root)
    df = df[(df.benchmark == benchmark) & (df.split == "test")]
    if methods is not None:
        df = df[df.method.isin(methods)]
    if df.empty:
        return f"(no complete runs of {benchmark} under {root})"
    last = df.groupby(["method", "seed", "config_hash"]).epoch.transform("max")
    df = df[df.epoch == last]
    df = df.assign(column=df.task + "." + df.metric
                   + df.higher_is_better.map({True: " ↑", False: " ↓"}).fillna(""))
    per_seed = df.pivot_table(index=["method", "seed"], columns="column", values="value")
    mean = per_seed.groupby("method").mean()
    std = per_seed.groupby("method").std().fillna(0.0)
    seeds = per_seed.groupby("method").size()
    table = mean.map(lambda v: f"{v:.3f}")
    for col in mean.columns:
        table[col] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[col], std[col])]
    meta = df.drop_duplicates("column").set_index("column")
    if "stl" in mean.index:
        base = mean.loc["stl"]
        higher = meta.loc[mean.columns, "higher_is_better"].astype(bool)
        tasks = meta.loc[mean.columns, "task"]
        table["Δp_task % ↑"] = [f"{delta_p_task(mean.loc[m], base, higher, tasks):+.2f}"
                                for m in mean.index]
    table["seeds"] = seeds
    order = (["stl"] if "stl" in table.index else []) + [m for m in table.index if m != "stl"]
    table = table.loc[order]
    note = "test split, last epoch; mean ± std over seeds"
    return f"{benchmark} ({note})\n{table.to_string()}"
