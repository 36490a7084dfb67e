"""Significance against EW and between methods, checked against scipy on the same seeds."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.measures import adjust_p_values
from analysis.significance import (against_reference, discrimination, null_ratio_quantile,
                                   pairwise, per_seed_delta_p_task, summary_lines)
from analysis.table import comparisons
from tests.test_analysis_support import write_run

# Δp_task of a seed with accuracy a (task a) and error e (task b, two metrics equal) against
# stl's means (acc 50, err 1): ((a − 50)/50 + (1 − e)/1) / 2 · 100.
STL = [(50.0, 1.0), (50.0, 1.0), (50.0, 1.0)]
EW = [(50.0, 1.0), (51.0, 1.0), (49.0, 1.0)]            # Δp_task 0, +1, −1
GOOD = [(60.0, 0.8), (61.0, 0.8), (59.0, 0.8)]           # about +20
SAME = [(50.5, 1.0), (49.5, 1.0), (50.0, 1.0)]           # about 0


def _write(root, method, seeds):
    for s, (acc, err) in enumerate(seeds):
        write_run(root, "bench", method, s, {("a", "acc"): [acc], ("b", "err"): [err],
                                             ("b", "rmse"): [err]})


def _table(tmp_path):
    for name, seeds in (("stl", STL), ("ew", EW), ("good", GOOD), ("same", SAME)):
        _write(tmp_path, name, seeds)
    (table,) = comparisons(tmp_path)[0]
    return table


def _dp(seeds):
    return np.array([((a - 50) / 50 + (1 - e)) / 2 * 100 for a, e in seeds])


def test_per_seed_delta_p_task_is_recomputed_against_the_stl_mean(tmp_path):
    table = _table(tmp_path)
    np.testing.assert_allclose(per_seed_delta_p_task(table, "good"), _dp(GOOD))
    assert np.isclose(per_seed_delta_p_task(table, "good").mean(),
                      table.deltas.loc["good", "delta_p_task"])


def test_against_ew_is_welch_with_holm_over_the_family(tmp_path):
    tests = against_reference(_table(tmp_path), "ew")
    frame = tests.frame.set_index("a")
    raw = {m: stats.ttest_ind(_dp(s), _dp(EW), equal_var=False).pvalue
           for m, s in (("good", GOOD), ("same", SAME))}
    np.testing.assert_allclose(frame.loc[["good", "same"], "p"], [raw["good"], raw["same"]])
    np.testing.assert_allclose(frame.loc[["good", "same"], "p_adjusted"],
                               adjust_p_values([raw["good"], raw["same"]], "holm"))
    assert frame.loc["good", "significant"] and not frame.loc["same", "significant"]
    assert "Holm-corrected over 2 tests" in tests.caption()
    text = "\n".join(summary_lines(tests))
    assert "good: significantly better" in text and "same: no significant difference" in text


def test_pairwise_family_has_every_pair_of_compared_rows(tmp_path):
    tests = pairwise(_table(tmp_path), correction="bh")
    assert len(tests.frame) == 3 and "Benjamini–Hochberg" in tests.caption()


def test_discrimination_ratio_is_spread_over_pooled_seed_std(tmp_path):
    out = discrimination(_table(tmp_path))
    means = [_dp(s).mean() for s in (EW, GOOD, SAME)]
    pooled = np.sqrt(np.mean([np.var(_dp(s), ddof=1) for s in (EW, GOOD, SAME)]))
    assert np.isclose(out["spread"], np.std(means, ddof=1))
    assert np.isclose(out["ratio"], np.std(means, ddof=1) / pooled)
    assert out["null_95"] == null_ratio_quantile([len(EW)] * 3)


def test_the_null_ratio_is_about_one_over_root_n_not_one():
    """With no true difference the spread of the means is σ/√n: for 29 methods of 5 seeds
    the median ratio is 0.44 (1/√5 = 0.447) and 95% stay below 0.56."""
    assert null_ratio_quantile([5] * 29, 0.5) == pytest.approx(0.447, abs=0.01)
    assert null_ratio_quantile([5] * 29, 0.95) == pytest.approx(0.56, abs=0.02)
    assert null_ratio_quantile([3] * 16) > null_ratio_quantile([5] * 16)  # fewer seeds: wider


def test_one_seed_asks_for_more_seeds_instead_of_testing(tmp_path):
    for name, seeds in (("stl", STL[:1]), ("ew", EW[:1]), ("good", GOOD[:1])):
        _write(tmp_path, name, seeds)
    (table,) = comparisons(tmp_path)[0]
    assert "needs at least 2 seeds" in summary_lines(against_reference(table))[0]


def test_the_detectable_difference_is_found_with_the_stated_power():
    """At the returned difference, the paired test (a one-sample t-test on the differences)
    rejects with probability 0.8, computed exactly from the noncentral t; more seeds or less
    spread detect smaller differences; no spread or a single seed is NaN."""
    from analysis.measures import detectable_difference

    d = np.array([0.3, -0.4, 1.1, 0.2, -0.6])
    delta = detectable_difference(d, np.zeros(5), alpha=0.05, paired=True)
    se = d.std(ddof=1) / np.sqrt(5)
    crit = stats.t.ppf(0.975, 4)
    power = stats.nct.sf(crit, 4, delta / se) + stats.nct.cdf(-crit, 4, delta / se)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert detectable_difference(d, np.zeros(5), alpha=0.05 / 10, paired=True) > delta
    assert detectable_difference(np.tile(d, 2), np.zeros(10), paired=True) < delta
    welch = detectable_difference([0, 1, 2, 3, 4], [0.5, 0.2, 2.5, 2.0, 5.0])
    assert welch > detectable_difference([0, 1, 2, 3, 4], [0.5, 0.2, 2.5, 2.0, 5.0], paired=True)
    assert np.isnan(detectable_difference([1.0], [2.0, 3.0]))
    assert np.isnan(detectable_difference([1.0, 1.0], [2.0, 2.0]))


def test_the_paired_test_uses_the_seeds_both_rows_have(tmp_path):
    """A method that follows ew's seed-to-seed swings 0.5 points higher: Welch's test, taking
    the seeds as independent, sees nothing; the paired test finds it (scipy ttest_rel)."""
    _write(tmp_path, "stl", STL)
    swings = [(50.0, 1.0), (56.0, 1.0), (44.0, 1.0), (53.0, 1.0)]          # Δp 0, +6, −6, +3
    follows = [(a + 0.5 + 0.1 * i, e) for i, (a, e) in enumerate(swings)]
    _write(tmp_path, "ew", swings)
    _write(tmp_path, "follows", follows + [(90.0, 1.0)])  # a fifth seed ew does not have
    (table,) = comparisons(tmp_path)[0]
    welch = against_reference(table, "ew").frame.set_index("a").loc["follows"]
    paired = against_reference(table, "ew", test="paired").frame.set_index("a").loc["follows"]
    assert not welch.significant and paired.significant
    expected = stats.ttest_rel(_dp(follows), _dp(swings)).pvalue
    assert paired.p == pytest.approx(expected) and paired.seeds_a == paired.seeds_b == 4
    assert "paired t-test" in against_reference(table, "ew", test="paired").caption()
    with pytest.raises(ValueError, match="expected one of welch, paired"):
        against_reference(table, "ew", test="wilcoxon")
