#!/usr/bin/env python
"""The leaderboard tables of docs/leaderboard.md, from a results folder.

    python benchmarks/scripts/leaderboard.py results [-b BENCH ...] [--correction holm|bh]

For every benchmark (last-epoch test metrics, the harness's default selection): one row per
method with Δp_task against stl (mean ± std over seeds), mean rank, the difference from ew
with its Welch p-value (raw and corrected over the family of methods against ew). Cost is
not read from the sweep's own runs, whose step times depend on whatever else the machine
ran meanwhile: `python run_bench.py perf` measures it interleaved (docs/performance.md). Then the benchmark's discrimination: the spread of the
methods' mean Δp_task over the pooled seed std, and how many of all method pairs differ
significantly (Welch, corrected over every pair).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.collect import load_runs  # noqa: E402
from analysis.significance import against_reference, discrimination, pairwise  # noqa: E402
from analysis.table import comparisons  # noqa: E402


def _fmt(mean: float, std: float) -> str:
    return f"{mean:+.2f} ± {std:.2f}" if np.isfinite(std) else f"{mean:+.2f}"


def benchmark_section(root: Path, bench: str, correction: str) -> str:
    tables, _ = comparisons(root, benchmark=bench)
    if not tables:
        return f"## {bench}\n\n(no complete runs)\n"
    table = tables[0]
    if table.deltas is None:
        return f"## {bench}\n\n(no stl runs: no Δp_task)\n"
    vs_ew = against_reference(table, "ew", correction)
    tests = vs_ew.frame.set_index("a") if vs_ew is not None else None
    order = table.deltas.loc[table.compared, "delta_p_task"].sort_values(ascending=False).index
    lines = [f"## {bench}", "",
             "| method | Δp_task (%) ↑ | mean rank ↓ | seeds | vs ew: difference | p | adjusted p |",
             "|---|---|---|---|---|---|---|"]
    for row in order:
        d = table.deltas.loc[row]
        cells = [row, _fmt(d.delta_p_task, d.delta_p_task_std), f"{table.ranks[row]:.2f}",
                 str(int(table.seeds[row]))]
        if tests is not None and row in tests.index:
            t = tests.loc[row]
            mark = " *" if t.significant else ""
            cells += [f"{t.difference:+.2f}{mark}", f"{t.p:.3g}", f"{t.p_adjusted:.3g}"]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    disc = discrimination(table)
    pairs = pairwise(table, correction)
    n_sig = int(pairs.frame.significant.sum()) if pairs is not None else 0
    n_pairs = int(pairs.frame.p.notna().sum()) if pairs is not None else 0
    sig_vs_ew = [r for r in order if tests is not None and r in tests.index and tests.loc[r].significant]
    lines += ["", f"* significant against ew: {vs_ew.caption() if vs_ew else 'no ew runs'}",
              "", f"Discrimination: the methods' mean Δp_task spread {disc['spread']:.2f} points "
              f"(std across methods) against a pooled seed std of {disc['seed_std']:.2f} "
              f"(ratio {disc['ratio']:.2f}; without any true difference between the "
              f"methods, 95% of such tables stay below {disc['null_95']:.2f}); "
              f"{n_sig} of {n_pairs} method pairs differ "
              f"significantly ({pairs.caption() if pairs else ''})",
              "", ("Methods that differ significantly from ew: " + ", ".join(sig_vs_ew) + "."
                   if sig_vs_ew else "No method differs significantly from ew on this benchmark."),
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("-b", "--benchmark", nargs="+", default=None)
    p.add_argument("--correction", default="holm", choices=("holm", "bh", "none"))
    args = p.parse_args(argv)
    runs = load_runs(args.results)
    benches = args.benchmark or sorted(set(runs.benchmark))
    print("\n".join(benchmark_section(args.results, b, args.correction) for b in benches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
