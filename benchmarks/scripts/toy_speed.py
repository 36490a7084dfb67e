#!/usr/bin/env python
"""Speed of the batched toy runner (`run_bench.py toy`) against per-start engine runs.

For each protocol (CAGrad: 3 starts × 100k steps; FAMO: 5 starts × 50k steps) and each
method the batched runner supports, measures in one process, interleaved over rounds:

- the engine: one start trained by ``run`` (the trainer's own ``step_time_s``), ms per step;
- the batched runner with every start of that method in one batch, ms per start-step;
- the batched runner with every method and start of the protocol in one batch.

Short runs, extrapolated to the full protocol (steps × starts, per method, and for every
method of the protocol together), beside the authors' scripts at 0.7 ms (LS) to 2.3 ms
(CAGrad) per step, one start at a time. Medians over rounds; the machine is shared, so
compare ratios measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/scripts/toy_speed.py --out results/toy_speed.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.runs.runner import build_requests, run_all  # noqa: E402
from engine.runs.toy_batch import ToyBatch  # noqa: E402

PROTOCOLS = {"cagrad": (3, 100_000, ("ew", "mgda", "pcgrad", "cagrad")),
             "famo": (5, 50_000, ("ew", "mgda", "pcgrad", "cagrad", "famo"))}
AUTHORS_MS = {"ew": 0.7, "cagrad": 2.3}
"""The authors' toy scripts, ms per step with one start (LS and CAGrad; the others between)."""


def requests(protocol: str, methods, starts: int, steps: int):
    overrides = ["train.epochs=1", f"data.steps_per_epoch={steps}", "data.trajectory_every=100"]
    return [r for i in range(starts)
            for r in build_requests("toy2d", list(methods), [0], protocol,
                                    [*overrides, f"data.start={i}"], "cpu", None,
                                    check_data=False)]


def engine_ms(protocol: str, method: str, steps: int) -> float:
    """ms per step of one start through the trainer (its own step timer)."""
    with tempfile.TemporaryDirectory() as tmp:
        (request,) = requests(protocol, [method], 1, steps)
        (outcome,) = run_all([request], Path(tmp), progress=False)
        records = [json.loads(line) for line in
                   (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
        return 1e3 * next(r for r in records if r["split"] == "train")["step_time_s"]


def batch_ms(protocol: str, methods, starts: int, steps: int, exact: bool = False) -> float:
    """ms per start-step of one batch of every method × start."""
    batch = ToyBatch(requests(protocol, methods, starts, steps), exact_cagrad=exact)
    batch.fit()
    return 1e3 * batch.step_time_s / steps / batch.R


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-steps", type=int, default=300)
    p.add_argument("--batch-steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="also save the figures as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    result = {}
    for protocol, (starts, full_steps, methods) in PROTOCOLS.items():
        samples: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for m in methods:
                samples.setdefault(f"engine:{m}", []).append(
                    engine_ms(protocol, m, args.engine_steps))
                samples.setdefault(f"batch:{m}", []).append(
                    batch_ms(protocol, [m], starts, args.batch_steps))
            samples.setdefault("batch:exact_cagrad", []).append(
                batch_ms(protocol, ["cagrad"], starts, args.batch_steps // 4, exact=True))
            samples.setdefault("batch:all", []).append(
                batch_ms(protocol, methods, starts, args.batch_steps))
        med = {k: statistics.median(v) for k, v in samples.items()}
        result[protocol] = {"starts": starts, "steps": full_steps, "median_ms": med,
                            "samples_ms": samples}
        print(f"\n{protocol}: {starts} starts × {full_steps:,} steps "
              f"(medians of {args.rounds} rounds; ms per start-step)")
        print("| method | engine, one start | batched, all starts | speed-up | full protocol: "
              "engine | batched | authors' scripts |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        n = starts * full_steps
        engine_total = 0.0
        for m in methods:
            e, b = med[f"engine:{m}"], med[f"batch:{m}"]
            engine_total += e * n / 1e3
            authors = AUTHORS_MS.get(m)
            authors_text = f"{authors * n / 1e3 / 60:.1f} min" if authors else "—"
            print(f"| {m} | {e:.3f} | {b:.4f} | {e / b:.0f}× | {e * n / 1e3 / 60:.1f} min | "
                  f"{b * n / 1e3:.0f} s | {authors_text} |")
        b = med["batch:exact_cagrad"]
        e = med["engine:cagrad"]
        print(f"| cagrad, --exact-cagrad | {e:.3f} | {b:.4f} | {e / b:.0f}× | | "
              f"{b * n / 1e3:.0f} s | |")
        b = med["batch:all"]
        total = b * n * len(methods) / 1e3
        print(f"| all {len(methods)} in one batch | | {b:.4f} | "
              f"{engine_total / total:.0f}× | {engine_total / 60:.1f} min | {total:.0f} s | |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
