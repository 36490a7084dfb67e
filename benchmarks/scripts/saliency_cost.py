"""The cost of ``engine.saliency_every`` per training step: one method trained without the
logging and with it every step and every 10 steps, stepped interleaved on the same batches
in one process (the machinery of ``run_bench.py perf``), as median step times and ratios.

    python benchmarks/scripts/saliency_cost.py                       # digits_tasks, multi_mnist, ew
    python benchmarks/scripts/saliency_cost.py -b scenes -m ew pcgrad --steps 20

The numbers in docs/saliency.md come from this script.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.core.gradients.stats import EpochStats  # noqa: E402
from engine.core.trainer import Trainer  # noqa: E402
from engine.runs.perf import _draw_batches, measure_times  # noqa: E402
from engine.runs.runner import build_requests, make_benchmark, resolve_device  # noqa: E402

EVERY = (0, 10, 1)


def measure(benchmark: str, method: str, steps: int, warmup: int, device: str) -> list[dict]:
    torch_device = resolve_device(device)
    trainers = {}
    bench = None
    for every in EVERY:
        (request,) = build_requests(benchmark, [method], [0], "quick",
                                    [f"engine.saliency_every={every}"], device, None)
        bench = bench or make_benchmark(request.config, torch_device)
        trainer = Trainer(request.config, bench, request.composition, torch_device,
                          None, progress=False)
        trainer.model.train()
        trainers[every] = trainer
    batches = _draw_batches(bench, trainers[0].train_batch, min(steps + warmup, 16))
    steppers = {}
    for every, trainer in trainers.items():
        stats = EpochStats()

        def step(batch, tr=trainer, st=stats):
            tr.train_step(batch, 0, st)
            tr.step += 1  # the logging's schedule counts steps, as training does

        steppers[every] = step
    timings = measure_times(steppers, bench, trainers[0].train_batch, batches, steps, warmup,
                            torch_device)
    base = timings[0].median
    return [{"benchmark": benchmark, "method": method, "saliency_every": every,
             "batch": trainers[0].train_batch, "tasks": len(bench.task_names),
             "median_ms": 1000 * timings[every].median, "iqr_ms": 1000 * timings[every].iqr,
             "ratio": timings[every].median / base} for every in EVERY]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--benchmarks", nargs="+", default=["digits_tasks", "multi_mnist"])
    parser.add_argument("-m", "--methods", nargs="+", default=["ew"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| benchmark | method | batch | T | engine.saliency_every | median step (ms) | IQR (ms) "
          "| × off |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for benchmark in args.benchmarks:
        for method in args.methods:
            for row in measure(benchmark, method, args.steps, args.warmup, args.device):
                print(f"| {row['benchmark']} | {row['method']} | {row['batch']} | {row['tasks']} "
                      f"| {row['saliency_every'] or 'off'} | {row['median_ms']:.1f} | "
                      f"{row['iqr_ms']:.1f} | {row['ratio']:.2f} |", flush=True)
    print(f"\n{args.device}, {torch.get_num_threads()} torch thread(s), steps interleaved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
