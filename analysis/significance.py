"""Which methods differ: t-tests on per-seed Δp_task, corrected for multiplicity.

Two tests (``test=``): ``welch`` (default), Welch's unequal-variance t-test, which treats the
two methods' seeds as independent samples; ``paired``, the paired t-test on the seeds both
rows have. Methods here share their seeds (same initial weights and batches), so their
per-seed results correlate; docs/analysis.md gives the measured correlation and both tests'
size and power under it (benchmarks/scripts/welch_vs_paired.py).

A comparison's claim "method A beats B" rests on the seeds of both. For every row of a
:class:`analysis.table.Comparison` the per-seed Δp_task is recomputed against that row's
baseline (as the table does), and

- :func:`against_reference` tests every row against one reference row (EW by default):
  one family of tests, corrected together (Holm by default);
- :func:`pairwise` tests every pair of rows: one family of n(n−1)/2 tests;
- :func:`discrimination` says how far apart the methods are relative to seed noise: the
  standard deviation of the rows' mean Δp_task divided by the pooled seed standard deviation,
  beside that ratio's 95th percentile when no method truly differs (about 1/√n, simulated
  for the table's shape).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.measures import adjust_p_values, detectable_difference, welch_t_test
from analysis.table import STL, Comparison, seed_deltas

TEST_NAMES = {"welch": "Welch's t-test on per-seed Δp_task",
              "paired": "paired t-test on the per-seed Δp_task of the seeds both rows have"}


def per_seed_delta_p_task(table: Comparison, row: str) -> np.ndarray:
    """Δp_task (%) of every seed of ``row`` against the row's baseline (empty without one),
    exactly as the table computes its mean."""
    if not table.bases:
        return np.array([])
    higher = dict(zip(table.columns, table.higher))
    return np.array(seed_deltas(table.per_seed, table.bases[row], table.base_factors, higher,
                                row)["delta_p_task"])


@dataclass
class Tests:
    """A family of tests: one row per comparison with mean difference, t, raw and adjusted
    p, and whether it is significant at ``alpha`` after ``correction``."""
    frame: pd.DataFrame
    correction: str
    alpha: float
    test: str = "welch"

    def caption(self) -> str:
        n = int(self.frame.p.notna().sum())
        corr = {"holm": "Holm-corrected", "bh": "Benjamini–Hochberg-corrected",
                "none": "uncorrected"}[self.correction]
        return (f"{TEST_NAMES[self.test]}, two-sided, {corr} over {n} test{'s' if n != 1 else ''}; "
                f"significant: adjusted p < {self.alpha}; detectable: the difference the test "
                f"finds with 80% power at level {test_level(self.alpha, n, self.correction):.3g}, "
                f"given the seeds' observed spread.")


def _by_seed(table: Comparison, row: str) -> pd.Series:
    """Per-seed Δp_task of ``row``, indexed by seed."""
    values = per_seed_delta_p_task(table, row)
    seeds = table.per_seed.xs(row, level="row").index if len(values) else []
    return pd.Series(values, index=list(seeds), dtype=float)


def _family(pairs: list[tuple[str, str]], table: Comparison, correction: str,
            alpha: float, test: str = "welch") -> Tests:
    if test not in TEST_NAMES:
        raise ValueError(f"test {test!r}: expected one of {', '.join(TEST_NAMES)}")
    values = {r: _by_seed(table, r) for r in dict.fromkeys(x for p in pairs for x in p)}
    rows = []
    level = test_level(alpha, len(pairs), correction)
    for a, b in pairs:
        va, vb = values[a], values[b]
        if test == "paired":
            common = va.index.intersection(vb.index)
            va, vb = va[common], vb[common]
            t, p = paired_t_test(va.to_numpy(), vb.to_numpy())
        else:
            t, p = welch_t_test(va.to_numpy(), vb.to_numpy())
        rows.append({"a": a, "b": b, "mean_a": _mean(va), "mean_b": _mean(vb),
                     "difference": _mean(va) - _mean(vb),
                     "seeds_a": len(va), "seeds_b": len(vb), "t": t, "p": p,
                     "detectable": detectable_difference(va.to_numpy(), vb.to_numpy(), level,
                                                         paired=test == "paired")})
    frame = pd.DataFrame(rows, columns=["a", "b", "mean_a", "mean_b", "difference", "seeds_a",
                                        "seeds_b", "t", "p", "detectable"])
    frame["p_adjusted"] = adjust_p_values(frame.p.to_numpy(), correction) if len(frame) else []
    frame["significant"] = frame.p_adjusted < alpha
    return Tests(frame, correction, alpha, test)


def test_level(alpha: float, family: int, correction: str) -> float:
    """The level at which the detectable difference is computed: α/m under a correction
    (the threshold that Holm's first step and Bonferroni apply; conservative for the later
    Holm steps and for Benjamini–Hochberg), α without one."""
    return alpha if correction == "none" else alpha / max(family, 1)


def paired_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The paired t-test of a vs b (same seeds): ``(t, two-sided p)``; NaN with fewer than
    two pairs or no spread of the differences."""
    if len(a) < 2 or np.var(a - b) == 0:
        return float("nan"), float("nan")
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue)


def _mean(v) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


def reference_row(table: Comparison, method: str = "ew") -> str | None:
    """The row of ``method`` (the one with most seeds when it has several configs)."""
    rows = [r for r in table.mean.index if table.row_method[r] == method]
    return max(rows, key=lambda r: table.seeds[r]) if rows else None


def against_reference(table: Comparison, reference: str = "ew", correction: str = "holm",
                      alpha: float = 0.05, test: str = "welch") -> Tests | None:
    """Every compared row (not stl, not the reference) against the reference method's row;
    None when the table has no Δ measures or no such row."""
    ref = reference_row(table, reference)
    if ref is None or table.deltas is None:
        return None
    others = [r for r in table.mean.index if r != ref and table.row_method[r] != STL]
    return _family([(r, ref) for r in others], table, correction, alpha, test)


def pairwise(table: Comparison, correction: str = "holm", alpha: float = 0.05,
             test: str = "welch") -> Tests | None:
    """Every pair of compared rows (stl left out); None without Δ measures."""
    if table.deltas is None:
        return None
    return _family(list(combinations(table.compared, 2)), table, correction, alpha, test)


def discrimination(table: Comparison, draws: int = 4000, seed: int = 0) -> dict[str, float]:
    """Spread of the compared rows' mean Δp_task (std across rows), the pooled seed std, their
    ratio, and ``null_95``: the 95th percentile of that ratio when no row truly differs
    (normal seed noise, the table's rows and seed counts, simulated). Without differences the
    ratio is about 1/√n, not 1 (0.44 for 29 rows of 5 seeds), so only a ratio above
    ``null_95`` says the benchmark separates the methods at all."""
    values = [per_seed_delta_p_task(table, r) for r in table.compared]
    values = [v for v in values if len(v) > 1]
    if len(values) < 2:
        return {"spread": float("nan"), "seed_std": float("nan"), "ratio": float("nan"),
                "null_95": float("nan")}
    ratio, spread, pooled = _spread_ratio(values)
    return {"spread": spread, "seed_std": pooled, "ratio": ratio,
            "null_95": null_ratio_quantile([len(v) for v in values], 0.95, draws, seed)}


def _spread_ratio(values) -> tuple[float, float, float]:
    spread = float(np.std([np.mean(v) for v in values], ddof=1))
    dof = sum(len(v) - 1 for v in values)
    pooled = float(np.sqrt(sum((len(v) - 1) * np.var(v, ddof=1) for v in values) / dof))
    return (spread / pooled if pooled > 0 else float("inf")), spread, pooled


def null_ratio_quantile(seeds: list[int], q: float = 0.95, draws: int = 4000,
                        seed: int = 0) -> float:
    """Quantile ``q`` of the spread-to-seed-noise ratio of rows with ``seeds`` per-seed
    values each and no true difference between the rows (standard normal values)."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(seeds)
    present = np.arange(counts.max()) < counts[:, None]  # [rows, max seeds]
    x = np.where(present, rng.standard_normal((draws, *present.shape)), np.nan)
    means = np.nanmean(x, axis=2)                                    # [draws, rows]
    spread = means.std(axis=1, ddof=1)
    squares = np.nansum((x - means[..., None]) ** 2, axis=(1, 2))
    pooled = np.sqrt(squares / (counts - 1).sum())
    return float(np.quantile(spread / pooled, q))


def summary_lines(tests: Tests | None, reference: str = "ew") -> list[str]:
    """Plain-text lines for the ``run`` command: each method vs the reference."""
    if tests is None or tests.frame.empty:
        return []
    if (tests.frame[["seeds_a", "seeds_b"]].min(axis=1) < 2).all():
        return [f"Significance against {reference}: needs at least 2 seeds per method "
                f"(3 or more for a claim); run with -s 0 1 2."]
    lines = [f"Δp_task against {reference} ({tests.caption()})"]
    for r in tests.frame.itertuples():
        if not np.isfinite(r.p):
            verdict = "not tested (fewer than 2 seeds or no variance)"
        else:
            verdict = ("significantly " + ("better" if r.difference > 0 else "worse")
                       if r.significant else "no significant difference")
            verdict += (f" (difference {r.difference:+.2f} points, p = {r.p:.3g}, adjusted "
                        f"{r.p_adjusted:.3g}; detectable with 80% power: ±{r.detectable:.2f})")
        lines.append(f"  {r.a}: {verdict}")
    return lines
