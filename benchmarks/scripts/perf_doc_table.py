"""Markdown table of a `perf` result (its JSON) with each method's cost target, as in
docs/performance.md.

    python benchmarks/scripts/perf_doc_table.py results/perf/scenes-quick-*.json

Targets: loss weightings ≤ 1.10× EW (FAMO ≤ 1.40×: an extra forward by design);
methods that need per-task gradients through the heads (representation-level aggregators,
Rep-MTL, GradNorm's last-layer gradients: `floor:rep` or `floor:second_order`) ≤ 2× EW;
methods that need the Jacobian of the shared parameters ≤ 1.15× their floor.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIAL = {"famo": ("ew", 1.40)}


def target(row: dict) -> tuple[str, float] | None:
    name = row["name"]
    if name == "ew" or name.startswith("floor:") or name == "data":
        return None
    if name in SPECIAL:
        return SPECIAL[name]
    floor = row.get("floor")
    if floor == "floor:jacobian":
        return "floor", 1.15
    if floor in ("floor:rep", "floor:second_order"):
        return "ew", 2.00
    return "ew", 1.10


def table(result: dict) -> str:
    lines = [f"{result['benchmark']} ({result['profile']}), batch {result['batch_size']}, "
             f"T={result['tasks']}, median of {result['steps']} steps after {result['warmup']} "
             f"warm-up, torch threads {result['torch_threads']}", "",
             "| method | step ms | IQR ms | × ew | × floor | peak MiB | mem × ew | mem × floor "
             "| target | meets |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in result["rows"]:
        if row["name"] == "data":
            continue
        goal = target(row)
        ratio = None if goal is None else row.get("ratio_to_ew" if goal[0] == "ew" else "ratio_to_floor")
        meets = "" if ratio is None else ("yes" if round(ratio, 2) <= goal[1] else "**no**")
        cells = [row["name"], f"{1e3 * row['median_s']:.1f}", f"{1e3 * row['iqr_s']:.1f}",
                 f"{row['ratio_to_ew']:.2f}", _fmt(row.get("ratio_to_floor")),
                 _fmt(row.get("peak_memory_bytes"), 2**20, 1), _fmt(row.get("memory_ratio_to_ew")),
                 _fmt(row.get("memory_ratio_to_floor")),
                 "" if goal is None else f"≤ {goal[1]:.2f} × {goal[0]}", meets]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"data path: {100 * result['data_fraction_of_ew_step']:.1f}% of an EW step."]
    return "\n".join(lines)


def _fmt(value, divide: float = 1.0, digits: int = 2) -> str:
    return "" if value is None else f"{value / divide:.{digits}f}"


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(json.loads(Path(path).read_text())))
        print()
