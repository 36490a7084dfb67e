"""Summary measures of multi-task performance (pure functions of small arrays).

Definitions (benchmark_facts §7; LibMTL, Rep-MTL, CAGrad, Nash-MTL, FAMO), with M_m the
method's value of metric k, M_b the single-task baseline's, s_k = +1 when higher is better
and −1 otherwise:

- ``delta_p_task`` (%, higher is better): (1/T) Σ_t (1/n_t) Σ_{k∈t} s_k (M_m,k − M_b,k)/M_b,k
- ``delta_p_metric`` (%, higher is better): (1/K) Σ_k s_k (M_m,k − M_b,k)/M_b,k
- ``delta_m`` (Δm%, LOWER is better): −``delta_p_metric``
- ``mean_rank``: the average over metrics of each method's rank among the compared set, after
  negating higher-is-better metrics; ties share the average rank.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.names import CORRECTIONS


def relative_changes(values: Sequence[float], baseline: Sequence[float],
                     higher: Sequence[bool]) -> np.ndarray:
    """Signed relative change s_k (M_m,k − M_b,k)/M_b,k of every metric (a fraction)."""
    values = np.asarray(values, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    sign = np.where(np.asarray(higher, dtype=bool), 1.0, -1.0)
    if np.any(baseline == 0):
        raise ValueError("a baseline metric is 0: relative changes are undefined")
    return sign * (values - baseline) / baseline


def delta_p_task(values, baseline, higher, tasks: Sequence[str]) -> float:
    """Δp_task in %: the mean over tasks of the mean signed relative change of its metrics."""
    rel = pd.Series(relative_changes(values, baseline, higher))
    return float(100.0 * rel.groupby(np.asarray(tasks)).mean().mean())


def delta_p_metric(values, baseline, higher) -> float:
    """Δp_metric in %: the mean signed relative change over all metrics at once."""
    return float(100.0 * relative_changes(values, baseline, higher).mean())


def delta_m(values, baseline, higher) -> float:
    """Δm% (lower is better): the mean relative degradation over all metrics = −Δp_metric."""
    return -delta_p_metric(values, baseline, higher)


def rank_matrix(table: pd.DataFrame, higher: Sequence[bool]) -> pd.DataFrame:
    """Rank of every method (row) on every metric (column): 1 is best; higher-is-better
    columns are negated first; ties get the average rank; a missing value gets no rank."""
    values = table.to_numpy(dtype=float)
    ranks = np.full(values.shape, np.nan)
    for j, hib in enumerate(higher):
        ok = ~np.isnan(values[:, j])
        key = -values[ok, j] if hib else values[ok, j]
        ranks[ok, j] = stats.rankdata(key, method="average")
    ranks = pd.DataFrame(ranks, index=table.index, columns=table.columns)
    return ranks


def mean_rank(table: pd.DataFrame, higher: Sequence[bool]) -> pd.Series:
    """Mean rank over metrics of each method among the rows of ``table`` (the compared set)."""
    return rank_matrix(table, higher).mean(axis=1)


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): ``(t, two-sided p)``; NaN when
    either side has fewer than two values or both have zero variance."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return float("nan"), float("nan")
    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)




def detectable_difference(a: Sequence[float], b: Sequence[float], alpha: float = 0.05,
                          power: float = 0.8, paired: bool = False) -> float:
    """The smallest true difference of means that a two-sided t-test of a vs b at level
    ``alpha`` detects with probability ``power``, taking the observed spread as the true one:
    the δ at which the noncentral t (noncentrality δ/SE) exceeds the critical value with
    probability ``power``, with Welch's SE and degrees of freedom (or, when ``paired``, those
    of the per-pair differences). NaN when a side has fewer than two values or there is no
    spread at all."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if paired:
        d = a - b
        if len(d) < 2 or np.var(d) == 0:
            return float("nan")
        se, df = np.std(d, ddof=1) / np.sqrt(len(d)), len(d) - 1
    else:
        if len(a) < 2 or len(b) < 2:
            return float("nan")
        va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
        if va + vb == 0:
            return float("nan")
        se = np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(ncp: float) -> float:
        # the lower tail vanishes for a positive shift (scipy may return NaN for it there)
        lower = np.nan_to_num(stats.nct.cdf(-crit, df, ncp), nan=0.0)
        return float(np.nan_to_num(stats.nct.sf(crit, df, ncp), nan=1.0) + lower - power)

    upper = 2.0 * (crit + stats.norm.ppf(power)) + 1.0  # the power there is ~1
    return float(optimize.brentq(shortfall, 0.0, upper) * se)


def adjust_p_values(p: Sequence[float], method: str = "holm") -> np.ndarray:
    """p-values adjusted for multiple comparisons over the family ``p`` (NaNs are left out of
    the family and stay NaN): ``holm`` (Holm–Bonferroni, controls the family-wise error rate),
    ``bh`` (Benjamini–Hochberg, controls the false discovery rate) or ``none``."""
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}: expected one of {', '.join(CORRECTIONS)}")
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if method == "none" or not ok.any():
        out[ok] = p[ok]
        return out
    out[ok] = stats.false_discovery_control(p[ok], method="bh") if method == "bh" \
        else _holm(p[ok])
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: p_(i) · (m − i + 1), made monotone, capped at 1."""
    m = len(p)
    order = np.argsort(p)
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out
