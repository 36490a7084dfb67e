#!/usr/bin/env python
"""Calibration figures of a benchmark's profile, from runs trained for FACTOR × its epochs.

Run stl and ew for 5 seeds with ``--set train.epochs=<FACTOR × E>`` (constant learning rate,
so epoch E of the long run is the E-epoch run), then:

    python benchmarks/scripts/calibrate.py RESULTS -b digits_tasks --epochs 8

prints, for the profile's E epochs:
- plateau: every stl validation metric at epoch E against its value at the last epoch
  (FACTOR × E), as a signed relative change (negative: still improving at E);
- ew against chance: each task's test metric at E beside the trivial predictor's
  (``--chance task.metric=value``, repeatable);
- seed noise: Δp_task of ew against stl at epoch E, mean ± std over seeds.
Every figure is a mean over seeds. The docs' calibration tables come from this script.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.collect import load_metrics  # noqa: E402
from analysis.measures import delta_p_task  # noqa: E402


def at_epoch(metrics, method: str, split: str, epoch: int):
    part = metrics[(metrics.method == method) & (metrics.split == split) & (metrics.epoch == epoch)]
    return part.pivot_table(index="seed", columns=["task", "metric"], values="value")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("-b", "--benchmark", required=True)
    p.add_argument("--epochs", type=int, required=True, help="the profile's epochs E")
    p.add_argument("--chance", action="append", default=[], metavar="TASK.METRIC=VALUE")
    args = p.parse_args(argv)
    m = load_metrics(args.results)
    m = m[m.benchmark == args.benchmark]
    last = int(m[m.method == "stl"].epoch.max())
    e = args.epochs - 1  # epochs are counted from 0
    higher = m.drop_duplicates(["task", "metric"]).set_index(["task", "metric"]).higher_is_better
    print(f"## {args.benchmark}: profile epochs {args.epochs}, long runs {last + 1} epochs, "
          f"seeds {sorted(int(s) for s in m.seed.unique())}")
    print("\nstl plateau (validation, mean over seeds; change = signed relative change from "
          f"epoch {args.epochs} to epoch {last + 1}, positive = still improving):")
    short, long_ = at_epoch(m, "stl", "val", e).mean(), at_epoch(m, "stl", "val", last).mean()
    for col in short.index:
        sign = 1 if higher[col] else -1
        change = 100 * sign * (long_[col] - short[col]) / abs(short[col])
        print(f"  {col[0]} {col[1]}: {short[col]:.4g} -> {long_[col]:.4g}  ({change:+.2f}%)")
    chance = {}
    for item in args.chance:
        key, value = item.split("=")
        task, metric = key.split(".")
        chance[(task, metric)] = float(value)
    ew = at_epoch(m, "ew", "test", e)
    print(f"\new at epoch {args.epochs} (test, mean ± std over seeds) vs the trivial predictor:")
    for col in ew.columns:
        extra = f"  (chance {chance[col]:.4g})" if col in chance else ""
        print(f"  {col[0]} {col[1]}: {ew[col].mean():.4g} ± {ew[col].std(ddof=1):.2g}{extra}")
    stl_test = at_epoch(m, "stl", "test", e)
    base = stl_test.mean()
    cols = list(base.index)
    dp = [delta_p_task(row[cols].to_numpy(), base.to_numpy(), [bool(higher[c]) for c in cols],
                       [c[0] for c in cols]) for _, row in ew.iterrows()]
    print(f"\new Δp_task vs stl at epoch {args.epochs}: {np.mean(dp):+.2f} ± "
          f"{np.std(dp, ddof=1):.2f} % over {len(dp)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
