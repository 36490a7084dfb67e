"""Which epoch's test metrics represent a run: the selection rule, chosen at analysis time.

- ``last``: the test metrics of the last recorded epoch.
- ``best_val``: the test metrics of the epoch that is best on the validation split. "Best"
  must combine metrics of different scales and directions, so each validation metric ranks
  the epochs (higher-is-better metrics negated, ties averaged) and the epoch with the lowest
  mean rank wins; among equals the later epoch is taken. Under the LibMTL protocol the
  validation split IS the test split, so this selects on test (tables say so).
- ``last_k``: the mean of the test metrics over the last k recorded epochs.
- ``best_test_dp``: LibMTL's protocol (``LibMTL/_record.py`` without a validation split, the
  protocol of the published NYUv2 and Cityscapes numbers): the epoch whose TEST metrics have
  the highest Δp_task relative to the run's first recorded epoch. (LibMTL's base there is
  the first epoch's training-split metrics, which are not recorded; the base only weights the
  metrics, so the choice can differ only between nearly equal epochs.) This selects on the
  test split, so every table says "TEST-SELECTED".
- ``best_val_dp``: the same Δp_task rule on the validation split (LibMTL's trainer when it is
  given a validation loader, as on Office-31 and Office-Home); its test metrics are reported.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.measures import delta_p_task, rank_matrix
from engine.errors import check_choice, check_range

from analysis.names import RULES, TEST_SELECTED  # re-exported
KEY = ["benchmark", "method", "config_hash", "seed", "run_dir"]


def describe(rule: str, k: int) -> str:
    return {"last": "test metrics at the last epoch",
            "best_val": "test metrics at the best validation epoch (lowest mean rank over "
                        "validation metrics)",
            "last_k": f"test metrics averaged over the last {k} epochs",
            "best_test_dp": "TEST-SELECTED: test metrics at the epoch with the best test Δp_task "
                            "vs the run's first epoch (LibMTL's protocol)",
            "best_val_dp": "test metrics at the epoch with the best validation Δp_task vs the "
                           "run's first epoch (LibMTL's rule with a validation split)"}[rule]


def is_test_selected(rule: str) -> bool:
    return rule in TEST_SELECTED


def _best_dp_epoch(split: pd.DataFrame) -> int:
    """The epoch with the highest Δp_task of ``split``'s metrics against its first epoch
    (LibMTL ``_record.py``: the first result becomes the base, a later epoch replaces the best
    only when strictly better, so among equals the earliest wins)."""
    table = split.pivot_table(index="epoch", columns=["task", "metric"], values="value",
                              dropna=False).sort_index()
    # a metric that is 0 or missing at the first epoch has no relative change: it is left
    # out of the score
    table = table.loc[:, table.iloc[0].notna() & (table.iloc[0] != 0)]
    # an epoch with a missing (NaN) metric is not eligible, as a NaN never compares better
    # in LibMTL's record; dropping the metric instead would change every epoch's score
    table = table[table.notna().all(axis=1)]
    if table.shape[1] == 0 or table.shape[0] == 1:  # nothing to compare by, or one epoch
        return int(table.index[0])
    cols = list(table.columns)
    higher = [bool(split[(split.task == t) & (split.metric == m)].higher_is_better.iloc[0])
              for t, m in cols]
    base = table.iloc[0].to_numpy()
    tasks = [t for t, _ in cols]
    score = [delta_p_task(row, base, higher, tasks) for row in table.to_numpy()]
    return int(table.index[int(np.argmax(score))])


def _best_val_epoch(val: pd.DataFrame) -> int:
    table = val.pivot_table(index="epoch", columns=["task", "metric"], values="value")
    higher = [bool(val[(val.task == t) & (val.metric == m)].higher_is_better.iloc[0])
              for t, m in table.columns]
    score = rank_matrix(table, higher).mean(axis=1)
    best = score[score == score.min()]
    return int(best.index.max())


def select(metrics: pd.DataFrame, rule: str = "last", k: int = 3
           ) -> tuple[pd.DataFrame, dict[str, str]]:
    """The selected test values: one row per run, task and metric (with ``epoch``, the
    selected epoch, or the last of the k averaged). Also ``{run_dir: reason}`` for runs that
    cannot be selected under ``rule`` (no validation records, fewer than k epochs)."""
    check_choice("--select", rule, RULES)
    if rule == "last_k":
        check_range("--k", k, 1)
    rows, problems = [], {}
    for run_dir, run in metrics.groupby("run_dir", sort=False):
        test = run[run.split == "test"]
        epochs = sorted(test.epoch.unique())
        if rule == "last":
            chosen = [epochs[-1]]
        elif rule == "last_k":
            if len(epochs) < k:
                problems[run_dir] = f"{len(epochs)} test epochs recorded, fewer than k={k}"
                continue
            chosen = epochs[-k:]
        elif rule in ("best_test_dp", "best_val_dp"):
            split = test if rule == "best_test_dp" else \
                run[(run.split == "val") & run.epoch.isin(epochs)]
            if split.empty:
                problems[run_dir] = f"no validation metrics recorded for {rule} selection"
                continue
            chosen = [_best_dp_epoch(split)]
        else:
            val = run[(run.split == "val") & run.epoch.isin(epochs)]
            if val.empty:
                problems[run_dir] = "no validation metrics recorded for best_val selection"
                continue
            chosen = [_best_val_epoch(val)]
        part = test[test.epoch.isin(chosen)]
        agg = (part.groupby(KEY + ["task", "metric"], sort=False)
               .agg(value=("value", "mean"), higher_is_better=("higher_is_better", "first"),
                    unit=("unit", "first"), epoch=("epoch", "max")).reset_index())
        rows.append(agg)
    if not rows:
        return pd.DataFrame(columns=KEY + ["task", "metric", "value", "higher_is_better",
                                           "unit", "epoch"]), problems
    return pd.concat(rows, ignore_index=True), problems
