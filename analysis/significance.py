"""Which methods differ: Welch's t-tests on per-seed Δp_task, corrected for multiplicity.

A comparison's claim "method A beats B" rests on the seeds of both. For every row of a
:class:`analysis.table.Comparison` the per-seed Δp_task is recomputed against that row's
baseline (as the table does), and

- :func:`against_reference` tests every row against one reference row (EW by default):
  one family of tests, corrected together (Holm by default);
- :func:`pairwise` tests every pair of rows: one family of n(n−1)/2 tests;
- :func:`discrimination` says how far apart the methods are relative to seed noise: the
  standard deviation of the rows' mean Δp_task divided by the pooled seed standard deviation
  (≈ 1 or below: the methods' differences are within seed noise).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.measures import adjust_p_values, detectable_difference, welch_t_test
from analysis.table import STL, Comparison, seed_deltas

TEST_NAME = "Welch's t-test on per-seed Δp_task"


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

    def caption(self) -> str:
        n = int(self.frame.p.notna().sum())
        corr = {"holm": "Holm-corrected", "bh": "Benjamini–Hochberg-corrected",
                "none": "uncorrected"}[self.correction]
        return (f"{TEST_NAME}, two-sided, {corr} over {n} test{'s' if n != 1 else ''}; "
                f"significant: adjusted p < {self.alpha}; detectable: the difference the test "
                f"finds with 80% power at level {test_level(self.alpha, n, self.correction):.3g}, "
                f"given the seeds' observed spread.")


def _family(pairs: list[tuple[str, str]], table: Comparison, correction: str,
            alpha: float) -> Tests:
    values = {r: per_seed_delta_p_task(table, r) for r in dict.fromkeys(x for p in pairs for x in p)}
    rows = []
    level = test_level(alpha, len(pairs), correction)
    for a, b in pairs:
        t, p = welch_t_test(values[a], values[b])
        rows.append({"a": a, "b": b, "mean_a": _mean(values[a]), "mean_b": _mean(values[b]),
                     "difference": _mean(values[a]) - _mean(values[b]),
                     "seeds_a": len(values[a]), "seeds_b": len(values[b]), "t": t, "p": p,
                     "detectable": detectable_difference(values[a], values[b], level)})
    frame = pd.DataFrame(rows, columns=["a", "b", "mean_a", "mean_b", "difference", "seeds_a",
                                        "seeds_b", "t", "p", "detectable"])
    frame["p_adjusted"] = adjust_p_values(frame.p.to_numpy(), correction) if len(frame) else []
    frame["significant"] = frame.p_adjusted < alpha
    return Tests(frame, correction, alpha)


def test_level(alpha: float, family: int, correction: str) -> float:
    """The level at which the detectable difference is computed: α/m under a correction
    (the threshold that Holm's first step and Bonferroni apply; conservative for the later
    Holm steps and for Benjamini–Hochberg), α without one."""
    return alpha if correction == "none" else alpha / max(family, 1)


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if len(v) else float("nan")


def reference_row(table: Comparison, method: str = "ew") -> str | None:
    """The row of ``method`` (the one with most seeds when it has several configs)."""
    rows = [r for r in table.mean.index if table.row_method[r] == method]
    return max(rows, key=lambda r: table.seeds[r]) if rows else None


def against_reference(table: Comparison, reference: str = "ew", correction: str = "holm",
                      alpha: float = 0.05) -> Tests | None:
    """Every compared row (not stl, not the reference) against the reference method's row;
    None when the table has no Δ measures or no such row."""
    ref = reference_row(table, reference)
    if ref is None or table.deltas is None:
        return None
    others = [r for r in table.mean.index if r != ref and table.row_method[r] != STL]
    return _family([(r, ref) for r in others], table, correction, alpha)


def pairwise(table: Comparison, correction: str = "holm", alpha: float = 0.05) -> Tests | None:
    """Every pair of compared rows (stl left out); None without Δ measures."""
    if table.deltas is None:
        return None
    return _family(list(combinations(table.compared, 2)), table, correction, alpha)


def discrimination(table: Comparison) -> dict[str, float]:
    """Spread of the compared rows' mean Δp_task, the pooled seed std, and their ratio."""
    values = [per_seed_delta_p_task(table, r) for r in table.compared]
    values = [v for v in values if len(v) > 1]
    if len(values) < 2:
        return {"spread": float("nan"), "seed_std": float("nan"), "ratio": float("nan")}
    spread = float(np.std([v.mean() for v in values], ddof=1))
    dof = sum(len(v) - 1 for v in values)
    pooled = float(np.sqrt(sum((len(v) - 1) * np.var(v, ddof=1) for v in values) / dof))
    return {"spread": spread, "seed_std": pooled,
            "ratio": spread / pooled if pooled > 0 else float("inf")}


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
