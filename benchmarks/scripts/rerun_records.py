#!/usr/bin/env python
"""Rerun shipped leaderboard records with the code as it is now and compare every epoch's
validation and test metrics with the record: the check that a change of the engine left
training unchanged (identical numbers are promised for the same config, seed and thread
count on one machine).

    python benchmarks/scripts/rerun_records.py -b multi_mnist -m ew pcgrad famo nashmtl [--seed 0]

For each method, the records at the seed with the fewest overrides (the tuning runs first)
are rerun one at a time in a temporary folder; the table gives the largest absolute
difference over every epoch, split, task and metric, and whether the config hash still
matches.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis.records import record_from_run  # noqa: E402
from engine.runs import leaderboard as L  # noqa: E402
from engine.runs.runner import build_requests, run_all  # noqa: E402


def largest_gap(shipped, mine) -> float:
    gap = 0.0
    for split in ("val", "test"):
        for old, new in zip(shipped.curves[split], mine.curves[split], strict=True):
            for task, metrics in old.items():
                for metric, value in metrics.items():
                    gap = max(gap, abs(new[task][metric] - value))
    return gap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--benchmark", default="multi_mnist")
    parser.add_argument("-m", "--methods", nargs="+", default=["ew", "pcgrad", "famo", "nashmtl"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", type=Path, default=L.PROTOCOL)
    args = parser.parse_args()
    torch.set_num_threads(1)
    protocol = L.load_protocol(args.protocol)
    records = L.known_records(protocol, args.benchmark)
    print(f"| method | overrides | config hash | largest difference (every epoch, val and test) |")
    print("|---|---|---|---|")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            mine_records = [r for r in records if r.method == method and r.seed == args.seed
                            and r.status == "complete"]
            if not mine_records:
                print(f"| {method} | — | — | no complete record at seed {args.seed} |")
                failures += 1
                continue
            shipped = min(mine_records, key=lambda r: len(r.overrides))
            (request,) = build_requests(args.benchmark, [method], [args.seed], protocol.profile,
                                        list(shipped.overrides), "cpu", None)
            same_hash = request.config.hash() == shipped.config_hash
            (outcome,) = run_all([request], Path(tmp), progress=False)
            mine = record_from_run(outcome.run_dir, shipped.overrides)
            if mine is None:
                print(f"| {method} | {' '.join(shipped.overrides)} | {same_hash} | "
                      f"rerun {outcome.status}: {outcome.reason} |")
                failures += 1
                continue
            gap = largest_gap(shipped, mine)
            failures += gap != 0 or not same_hash
            print(f"| {method} | {' '.join(shipped.overrides)} | "
                  f"{'same' if same_hash else 'CHANGED'} | {gap:.3g} |", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
