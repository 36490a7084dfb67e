"""Comparison tables, Δ measures, ranks, selection rules, published tables, negative transfer:
every expected value below is computed by hand from the definitions."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.measures import (
    delta_m,
    delta_p_metric,
    delta_p_task,
    mean_rank,
    rank_matrix,
    welch_t_test,
)
from analysis.reference import load_published, recompute_deltas, unit_factor
from analysis.table import cells, comparison_table, comparisons
from analysis.transfer import negative_transfer, summary
from engine.errors import ConfigError
from tests.test_analysis_support import write_run

A, ERR, RMSE = ("a", "acc"), ("b", "err"), ("b", "rmse")


def _three(a, err, rmse):
    return {A: [a] * 2, ERR: [err] * 2, RMSE: [rmse] * 2}


@pytest.fixture()
def bench(tmp_path):
    for seed, (a, e, r) in enumerate([(80, 2.0, 4.0), (82, 2.2, 4.0)]):
        write_run(tmp_path, "bench", "stl", seed, _three(a, e, r), config_hash="s0")
    for seed, (a, e, r) in enumerate([(84, 2.1, 4.4), (86, 2.3, 3.6)]):
        write_run(tmp_path, "bench", "ew", seed, _three(a, e, r), config_hash="e0")
    for seed in (0, 1):
        write_run(tmp_path, "bench", "pcgrad", seed, _three(81, 2.1, 4.0), config_hash="p0")
    write_run(tmp_path, "bench", "mgda", 0, _three(85, 2.0, 5.0), config_hash="m0")
    return tmp_path


def test_measures_by_hand():
    values, base, higher, tasks = [84, 2.1, 4.4], [81, 2.1, 4.0], [True, False, False], ["a", "b", "b"]
    rel = [3 / 81, 0.0, -0.4 / 4]
    assert delta_p_task(values, base, higher, tasks) == pytest.approx(100 * (rel[0] + (rel[1] + rel[2]) / 2) / 2)
    assert delta_p_metric(values, base, higher) == pytest.approx(100 * sum(rel) / 3)
    assert delta_m(values, base, higher) == pytest.approx(-100 * sum(rel) / 3)
    with pytest.raises(ValueError, match="baseline"):
        delta_p_metric([1.0], [0.0], [True])


def test_ranks_negate_higher_and_average_ties():
    table = pd.DataFrame({"acc": [85, 85, 81], "err": [2.2, 2.1, 2.0], "rmse": [4.0, 4.0, 5.0]},
                         index=["x", "y", "z"])
    ranks = rank_matrix(table, [True, False, False])
    assert ranks["acc"].tolist() == [1.5, 1.5, 3.0]
    assert ranks["err"].tolist() == [3.0, 2.0, 1.0]
    assert ranks["rmse"].tolist() == [1.5, 1.5, 3.0]
    assert mean_rank(table, [True, False, False]).tolist() == pytest.approx([2.0, 5 / 3, 7 / 3])


def test_comparison_table_cells(bench):
    (table,), excluded = comparisons(bench)
    assert excluded.empty
    assert list(table.mean.index) == ["stl", "ew", "mgda", "pcgrad"]
    assert table.compared == ["ew", "mgda", "pcgrad"]
    assert table.mean.loc["ew", A] == 85 and table.mean.loc["ew", RMSE] == pytest.approx(4.0)
    assert table.std.loc["ew", A] == pytest.approx(math.sqrt(2))
    assert math.isnan(table.std.loc["mgda", A])
    assert table.seeds.to_dict() == {"stl": 2, "ew": 2, "mgda": 1, "pcgrad": 2}
    # Δ per seed against the stl means (81, 2.1, 4.0), then mean ± std over seeds.
    ew_task = [100 * (3 / 81 + (0 + -0.4 / 4) / 2) / 2, 100 * (5 / 81 + (-0.2 / 2.1 + 0.4 / 4) / 2) / 2]
    ew_metric = [100 * (3 / 81 + 0 - 0.1) / 3, 100 * (5 / 81 - 0.2 / 2.1 + 0.1) / 3]
    d = table.deltas
    assert d.loc["ew", "delta_p_task"] == pytest.approx(np.mean(ew_task))
    assert d.loc["ew", "delta_p_task_std"] == pytest.approx(np.std(ew_task, ddof=1))
    assert d.loc["ew", "delta_p_metric"] == pytest.approx(np.mean(ew_metric))
    assert d.loc["ew", "delta_m"] == pytest.approx(-np.mean(ew_metric))
    assert d.loc["mgda", "delta_p_task"] == pytest.approx(100 * (4 / 81 + (0.1 / 2.1 - 0.25) / 2) / 2)
    assert d.loc["stl", "delta_p_task"] == pytest.approx(0.0)
    # ranks among ew, mgda, pcgrad on the means: acc (85, 85, 81), err (2.2, 2.0, 2.1),
    # rmse (4, 5, 4)
    assert table.ranks.loc["ew"] == pytest.approx((1.5 + 3 + 1.5) / 3)
    assert table.ranks.loc["mgda"] == pytest.approx((1.5 + 1 + 3) / 3)
    assert table.ranks.loc["pcgrad"] == pytest.approx((3 + 2 + 1.5) / 3)
    assert math.isnan(table.ranks.loc["stl"])
    frame = table.frame()
    assert frame.loc["ew", "a_acc"] == 85 and frame.loc["pcgrad", "seeds"] == 2
    assert frame.loc["ew", "mean_rank"] == pytest.approx(2.0)


def test_best_bold_and_ties_marked_in_latex(bench):
    (table,), _ = comparisons(bench)
    header, body = cells(table, "tex")
    rows = {r[0]: r for r in body}
    col = header.index(r"a acc (\%) $\uparrow$")
    assert rows["ew"][col] == r"\textbf{85.00 $\pm$ 1.41}"
    assert rows["mgda"][col] == r"\textbf{85.00}"  # tie for best
    # pcgrad (81, 81) against ew (84, 86): Welch t = -4 on 1 df, p = 0.16: not different
    assert rows["pcgrad"][col] == r"81.00 $\pm$ 0.00$^\dagger$"
    assert not any(r"\underline" in c for r in body for c in r)
    assert rows["stl"][col] == r"81.00 $\pm$ 1.41"  # the baseline is not marked
    assert rows["mgda"][header.index("mean rank $\\downarrow$")] == r"\textbf{1.83}"
    assert rows["ew"][-1] == "2" and header[-1] == "seeds"
    assert any(r"$\Delta$m\%" in h for h in header)


def test_no_baseline_omits_delta_columns(tmp_path):
    write_run(tmp_path, "mybench", "ew", 0, _three(80, 2.0, 4.0))
    (table,), _ = comparisons(tmp_path)
    assert table.deltas is None
    assert "delta_p_task" not in table.frame().columns
    assert "Δ measures omitted" in table.note()
    assert not any("Δ" in h for h in cells(table, "md")[0])


def test_config_hashes_are_grouped_and_said(tmp_path):
    write_run(tmp_path, "bench", "ew", 0, _three(80, 2.0, 4.0), config_hash="aaaa")
    write_run(tmp_path, "bench", "ew", 0, _three(90, 2.0, 4.0), config_hash="bbbb")
    (table,), _ = comparisons(tmp_path)
    assert set(table.mean.index) == {"ew [aaaa]", "ew [bbbb]"}
    assert table.mean.loc["ew [bbbb]", A] == 90
    assert "never averaged together" in table.note()


def test_selection_rules(tmp_path):
    tasks = {A: (True, "%"), ERR: (False, "")}
    write_run(tmp_path, "bench", "ew", 0, {A: [10, 30, 20], ERR: [1.0, 2.0, 3.0]}, tasks=tasks,
              val={A: [1, 3, 2], ERR: [3.0, 1.0, 2.0]})
    value = lambda rule, k=3: comparisons(tmp_path, rule, k)[0][0].mean.loc["ew", A]
    assert value("last") == 20
    assert value("best_val") == 30  # epoch 1 is best on both validation metrics
    assert value("last_k", 2) == 25
    (table,), excluded = comparisons(tmp_path, "best_val")
    assert "best validation epoch" in table.note()
    tables, excluded = comparisons(tmp_path, "last_k", 5)
    assert tables == [] and "fewer than k=5" in excluded.reason.iloc[0]
    with pytest.raises(ConfigError, match="--select"):
        comparisons(tmp_path, "best")


def test_best_val_ties_take_the_later_epoch(tmp_path):
    tasks = {A: (True, "%"), ERR: (False, "")}
    write_run(tmp_path, "bench", "ew", 0, {A: [10, 30, 20], ERR: [1.0, 2.0, 3.0]}, tasks=tasks,
              val={A: [1, 3, 2], ERR: [1.0, 3.0, 2.0]})
    assert comparisons(tmp_path, "best_val")[0][0].mean.loc["ew", A] == 20


def test_libmtl_protocol_is_flagged(tmp_path):
    write_run(tmp_path, "bench", "ew", 0, _three(80, 2.0, 4.0), protocol="libmtl")
    (table,), _ = comparisons(tmp_path)
    assert "LibMTL protocol" in table.note() and "val = test" in table.note()


def test_published_deltas_reproduce_the_paper():
    expected = {("nyuv2", "Rep-MTL (EW)"): 1.70, ("nyuv2", "EW"): -1.78,
                ("cityscapes", "Rep-MTL (EW)"): 0.62, ("officehome", "Rep-MTL (EW)"): 0.41}
    for (bench, method), value in expected.items():
        got = recompute_deltas(load_published(bench)).loc[method, "delta_p_task"]
        assert got == pytest.approx(value, abs=0.006), (bench, method)
    nyu = recompute_deltas(load_published("nyuv2"))
    assert nyu.loc["Rep-MTL (EW)", "delta_p_metric"] == pytest.approx(0.95, abs=0.006)


def test_unit_factor():
    assert unit_factor("", "%") == 100.0
    assert unit_factor("%", "%") == 1.0
    assert unit_factor("%", "") == 0.01
    assert unit_factor("deg", "deg") == 1.0


def test_published_baseline_converts_units(tmp_path):
    tasks = {("seg", "miou"): (True, "%"), ("seg", "pixacc"): (True, "%"),
             ("depth", "abs_err"): (False, ""), ("depth", "rel_err"): (False, "")}
    # STL of the paper: 69.06, 91.54, 0.01282, 43.53 (rel_err printed in %)
    values = {("seg", "miou"): [69.06 * 1.01], ("seg", "pixacc"): [91.54],
              ("depth", "abs_err"): [0.01282], ("depth", "rel_err"): [0.4353 * 0.9]}
    write_run(tmp_path, "cityscapes", "repmtl", 0, values, tasks=tasks)
    (table,), _ = comparisons(tmp_path)
    assert "published STL" in table.baseline
    assert table.deltas.loc["repmtl", "delta_p_task"] == pytest.approx(100 * (0.01 / 2 + 0.1 / 2) / 2)
    assert table.deltas.loc["repmtl", "delta_p_metric"] == pytest.approx(100 * 0.11 / 4)


def test_welch_t_test_by_hand():
    a, b = np.array([1.0, 2.0, 4.0]), np.array([3.0, 5.0, 6.0, 8.0])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 4
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    got_t, got_p = welch_t_test(a, b)
    assert got_t == pytest.approx(t)
    assert got_p == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert all(math.isnan(v) for v in welch_t_test([1.0], [2.0, 3.0]))


def test_negative_transfer(tmp_path):
    tasks = {("a", "acc"): (True, "%"), ("c", "acc"): (True, "%")}
    for seed, (a, c) in enumerate([(80, 50), (82, 51), (81, 49)]):
        write_run(tmp_path, "bench", "stl", seed, {("a", "acc"): [a], ("c", "acc"): [c]}, tasks=tasks)
    for seed, (a, c) in enumerate([(70, 50.5), (71, 49.5), (72, 50.2)]):
        write_run(tmp_path, "bench", "ew", seed, {("a", "acc"): [a], ("c", "acc"): [c]}, tasks=tasks)
    (table,), _ = comparisons(tmp_path)
    report = negative_transfer(table).set_index("task")
    ew_a = [100 * (v - 81) / 81 for v in (70, 71, 72)]
    stl_a = [100 * (v - 81) / 81 for v in (80, 82, 81)]
    assert report.loc["a", "change_pct"] == pytest.approx(np.mean(ew_a))
    assert report.loc["a", "std_pct"] == pytest.approx(np.std(ew_a, ddof=1))
    assert report.loc["a", "p"] == pytest.approx(stats.ttest_ind(ew_a, stl_a, equal_var=False).pvalue)
    assert report.loc["a", "significant_negative"]
    assert report.loc["c", "change_pct"] == pytest.approx(100 * (50.2 / 3 + 100 / 3 - 50) / 50)
    assert not report.loc["c", "significant_negative"]
    s = summary(negative_transfer(table)).iloc[0]
    assert (s.significant_negative, s.worst_task) == (1, "a")


def test_comparison_table_text_for_run(bench):
    text = comparison_table(bench, "bench", ["stl", "ew"])
    assert "ew" in text and "pcgrad" not in text and "Δp_task" in text
    assert "test metrics at the last epoch" in text
    assert "no complete runs" in comparison_table(bench, "other")


def test_each_row_takes_the_stl_runs_trained_the_same_way(tmp_path):
    write_run(tmp_path, "bench", "stl", 0, _three(80, 2.0, 4.0), config_hash="s1", data={"size": 1})
    write_run(tmp_path, "bench", "stl", 1, _three(80, 2.0, 4.0), config_hash="s1", data={"size": 1})
    write_run(tmp_path, "bench", "stl", 0, _three(40, 2.0, 4.0), config_hash="s2", data={"size": 2})
    write_run(tmp_path, "bench", "ew", 0, _three(44, 2.0, 4.0), config_hash="e2", data={"size": 2})
    write_run(tmp_path, "bench", "uw", 0, _three(88, 2.0, 4.0), config_hash="u3", data={"size": 3})
    (table,), _ = comparisons(tmp_path)
    assert table.base_rows["ew"] == "stl data.size=2" and table.base_rows["uw"] == "stl data.size=1"
    assert table.deltas.loc["ew", "delta_p_task"] == pytest.approx(100 * (4 / 40) / 2)
    assert table.deltas.loc["uw", "delta_p_task"] == pytest.approx(100 * (8 / 80) / 2)
    assert "same data and training settings as uw" in table.note()
