#!/usr/bin/env python
"""Size and power of Welch's t-test and the paired t-test when two methods share their
seeds (same initial weights and batches), so that their per-seed results are correlated.

    python benchmarks/scripts/welch_vs_paired.py [--draws 20000]

Per-seed values of two methods are bivariate normal (σ = 1, correlation ρ over seeds); the
size is the rejection rate at α = 0.05 with equal means, the power the rate at a difference
of one σ. Welch's test assumes independent samples, which shared seeds break: negative ρ
inflates its size, positive ρ makes it conservative; the paired test is exact for any ρ.
docs/analysis.md quotes the table.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import stats


def rates(n: int, rho: float, shift: float, draws: int, rng) -> tuple[float, float]:
    cov = [[1.0, rho], [rho, 1.0]]
    x = rng.multivariate_normal([0.0, shift], cov, size=(draws, n))  # [draws, n, 2]
    a, b = x[..., 0], x[..., 1]
    welch = stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05
    paired = stats.ttest_rel(a, b, axis=1).pvalue < 0.05
    return float(welch.mean()), float(paired.mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=20000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| seeds | ρ | size, Welch | size, paired | power at 1σ, Welch | power at 1σ, paired |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (3, 5):
        for rho in (-0.5, 0.0, 0.3, 0.6):
            size = rates(n, rho, 0.0, args.draws, rng)
            power = rates(n, rho, 1.0, args.draws, rng)
            print(f"| {n} | {rho:+.1f} | {size[0]:.3f} | {size[1]:.3f} | {power[0]:.3f} | "
                  f"{power[1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
