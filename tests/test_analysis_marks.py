"""The marks of the comparison table: bold is the best mean of a column among the compared
set; † marks the compared rows that a Welch t-test on the column's per-seed values, Holm-
corrected over the rows tested, does not separate from the best one (α = 0.05). Every
expected verdict below is recomputed with scipy from the constructed seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.table import (
    TIE_MARK,
    caption,
    cells,
    column_seed_values,
    comparisons,
    marks_note,
    ties_with_best,
    to_text,
)
from tests.test_analysis_support import write_run

A, ERR, RMSE = ("a", "acc"), ("b", "err"), ("b", "rmse")


def _run(root, method, seed, acc, err=2.0, rmse=4.0):
    write_run(root, "bench", method, seed, {A: [acc] * 2, ERR: [err] * 2, RMSE: [rmse] * 2},
              config_hash=method[:2])


def _holm(p):
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    adj = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty(len(p))
    out[order] = np.minimum(adj, 1.0)
    return out


@pytest.fixture()
def seeds(tmp_path):
    """a acc per seed: ew best (mean 91), uw close to it, pcgrad far below, mgda one seed."""
    for s, v in enumerate([80.0, 81.0, 82.0]):
        _run(tmp_path, "stl", s, v)
    for s, v in enumerate([90.0, 91.0, 92.0]):
        _run(tmp_path, "ew", s, v)
    for s, v in enumerate([89.0, 90.5, 92.0]):
        _run(tmp_path, "uw", s, v)
    for s, v in enumerate([70.0, 71.0, 72.5]):
        _run(tmp_path, "pcgrad", s, v)
    _run(tmp_path, "mgda", 0, 90.9)
    (table,), _ = comparisons(tmp_path)
    return table


def test_ties_are_the_rows_the_holm_corrected_welch_test_does_not_separate(seeds):
    ew, uw, pc = [90.0, 91.0, 92.0], [89.0, 90.5, 92.0], [70.0, 71.0, 72.5]
    p = [stats.ttest_ind(x, ew, equal_var=False).pvalue for x in (uw, pc)]
    adjusted = _holm(p)
    assert adjusted[0] >= 0.05 and adjusted[1] < 0.05  # the data say: uw tied, pcgrad worse
    marks = ties_with_best(column_seed_values(seeds, A), seeds.mean[A], True, seeds.compared)
    assert marks.best == {"ew"}
    assert marks.ties == {"uw"}  # pcgrad significantly worse; mgda (one seed) never marked
    tested = marks.frame.set_index("row")
    assert tested.loc["uw", "p_adjusted"] == pytest.approx(adjusted[0])
    assert tested.loc["pcgrad", "p_adjusted"] == pytest.approx(adjusted[1])
    assert np.isnan(tested.loc["mgda", "p"])  # one seed: no test, left out of the family

    header, body = cells(seeds, "md")
    rows = {r[0]: r for r in body}
    col = header.index("a acc (%) ↑")
    assert rows["ew"][col] == "**91.00 ± 1.00**"
    assert rows["uw"][col] == f"90.50 ± 1.50 {TIE_MARK}"
    assert rows["pcgrad"][col].endswith("1.26") and TIE_MARK not in rows["pcgrad"][col]
    assert rows["mgda"][col] == "90.90"  # second best mean, but one seed: no mark
    assert TIE_MARK not in rows["stl"][col]  # the baseline is not compared
    html = {r[0]: r for r in cells(seeds, "html")[1]}
    assert html["ew"][col] == "<b>91.00 ± 1.00</b>" and html["uw"][col].endswith(TIE_MARK)
    text = {r[0]: r for r in cells(seeds, "text")[1]}
    assert text["ew"][col].endswith(" *") and text["uw"][col].endswith(TIE_MARK)
    tex = {r[0]: r for r in cells(seeds, "tex")[1]}
    assert tex["uw"][col] == r"90.50 $\pm$ 1.50$^\dagger$"


def test_delta_columns_are_tested_on_per_seed_deltas(seeds):
    values = column_seed_values(seeds, "delta_p_task")
    # a acc changes by (v − 81)/81 per seed, b by 0: Δp_task = 100·(v − 81)/81 / 2
    assert values["uw"] == pytest.approx([100 * (v - 81) / 81 / 2 for v in (89.0, 90.5, 92.0)])
    marks = ties_with_best(values, seeds.deltas.delta_p_task, True, seeds.compared)
    assert marks.best == {"ew"} and marks.ties == {"uw"}
    assert column_seed_values(seeds, "mean_rank") is None  # ranks of means: no test


def test_holm_correction_decides_a_tie():
    """Three rows each at raw p < 0.05 against the best: Holm multiplies the smallest by 3,
    so none is significant after correction and all three are marked."""
    best = np.array([10.0, 10.5, 11.0, 10.2, 10.8])
    others = {"x": np.array([9.6, 6.45, 9.92, 8.14, 7.5]),
              "y": np.array([8.95, 10.27, 9.67, 9.17, 10.0]),
              "z": np.array([8.3, 9.21, 6.76, 9.62, 9.44])}
    values = {"best": best, **others}
    means = pd.Series({k: v.mean() for k, v in values.items()})
    raw = [stats.ttest_ind(values[k], best, equal_var=False).pvalue for k in "xyz"]
    assert max(raw) < 0.05 and min(_holm(raw)) >= 0.05
    marks = ties_with_best(values, means, True, list(values))
    assert marks.best == {"best"} and marks.ties == {"x", "y", "z"}
    # lower is better: the smallest mean is the best
    low = ties_with_best(values, means, False, list(values))
    assert low.best == {min(means.index, key=means.get)}


def test_fewer_than_two_seeds_no_marks_and_said(tmp_path):
    for s, v in enumerate([80.0, 81.0]):
        _run(tmp_path, "stl", s, v)
    _run(tmp_path, "ew", 0, 95.0)  # the best mean, one seed
    for s, v in enumerate([90.0, 91.0]):
        _run(tmp_path, "uw", s, v)
    (table,), _ = comparisons(tmp_path)
    header, body = cells(table, "md")
    col = header.index("a acc (%) ↑")
    rows = {r[0]: r for r in body}
    assert rows["ew"][col] == "**95.00**" and TIE_MARK not in rows["uw"][col]
    note = marks_note(table)
    assert "fewer than 2 seeds" in note and "the best row (ew) has fewer than 2 seeds" in note
    assert "fewer than 2 seeds: not tested, no mark" in caption(table)
    assert note in to_text(table)


def test_caption_states_seeds_statistic_baseline_and_compared_set(seeds):
    text = caption(seeds)
    assert "seeds 0, 1, 2: 1–3 per row" in text
    assert "mean ± std over seeds" in text
    assert "Δ measures relative to the stl runs (stl, 3 seeds, same protocol)" in text
    assert "compared set (marks and mean rank): ew, mgda, pcgrad, uw" in text
    assert "Welch's t-test" in text and "Holm" in text and "α = 0.05" in text
