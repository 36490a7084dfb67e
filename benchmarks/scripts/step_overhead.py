#!/usr/bin/env python
"""The harness's per-step overhead on the smallest benchmarks: a training epoch of equal
weighting through the Trainer against the same epoch as a plain PyTorch loop (the same
model, forward, task losses, ``sum(losses).backward()``, Adam, and the same data path), in
one process with interleaved, shuffled rounds; medians and interquartile ranges per step, in
CPU time of the measuring thread (with one torch thread, what the step computes; other
processes on a shared machine barely move it, unlike wall time).
Then what the difference consists of: the Trainer's epoch under cProfile, its own Python
functions (engine/, methods/, benchmarks/) ranked by their time outside torch.

    python benchmarks/scripts/step_overhead.py [-b digits_tasks synthetic] [--rounds 15]
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.core.trainer import Trainer, build_optimizer  # noqa: E402
from engine.runs.runner import build_requests, make_benchmark  # noqa: E402

OWN = ("engine/", "methods/", "benchmarks/")


def plain_epoch(model, optimizer, benchmark, batch_size: int, generator) -> int:
    """The loop a user would write: forward, the task losses' sum, backward, Adam."""
    steps = 0
    for batch in benchmark.batches("train", batch_size, generator):
        optimizer.zero_grad(set_to_none=True)
        _, preds = model(batch)
        loss = sum(task.loss(preds[task.name], batch.targets[task.name])
                   for task in benchmark.tasks)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def measure(bench: str, rounds: int) -> dict:
    (request,) = build_requests(bench, ["ew"], [0], "quick", [], "cpu", None)
    device = torch.device("cpu")
    benchmark = make_benchmark(request.config, device)
    trainer = Trainer(request.config, benchmark, request.composition, device, None,
                      progress=False)
    model = copy.deepcopy(trainer.model)
    optimizer = build_optimizer(list(model.parameters()), request.config.train)
    batch_size = trainer.train_batch

    def harness() -> int:
        return trainer.train_epoch(0, None)["steps"]

    def plain() -> int:
        return plain_epoch(model, optimizer, benchmark, batch_size,
                           torch.Generator().manual_seed(0))

    times = {"harness": [], "plain": []}
    harness(), plain()  # warm-up
    order = list(times)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            start = time.thread_time()
            steps = harness() if name == "harness" else plain()
            times[name].append((time.thread_time() - start) / steps)
    profile = cProfile.Profile()
    profile.enable()
    harness()
    profile.disable()
    return {"bench": bench, "steps": steps, "times": times, "profile": own_functions(profile)}


def own_functions(profile: cProfile.Profile, top: int = 8) -> list[tuple[str, float, int]]:
    """The harness's own functions by their time outside what they call (tottime)."""
    stats = pstats.Stats(profile)
    rows = []
    for (path, line, name), (_, calls, tottime, _, _) in stats.stats.items():
        rel = str(Path(path).resolve().relative_to(ROOT)) if path.startswith(str(ROOT)) else ""
        if rel.startswith(OWN):
            rows.append((f"{rel}:{line} {name}", tottime, calls))
    rows.sort(key=lambda r: -r[1])
    return rows[:top]


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-b", "--benchmarks", nargs="+", default=["digits_tasks", "synthetic"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)  # thread CPU time measures all the step's work only with one
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds of one epoch each "
          f"(quick profile, ew, seed 0), thread CPU time per step\n")
    print("| benchmark | steps/epoch | plain loop (ms/step) | harness (ms/step) | overhead (µs/step) | ratio |")
    print("|---|---|---|---|---|---|")
    results = [measure(b, args.rounds) for b in args.benchmarks]
    for r in results:
        plain, harness = r["times"]["plain"], r["times"]["harness"]
        mp, mh = statistics.median(plain), statistics.median(harness)
        (pl, ph), (hl, hh) = quartiles(plain), quartiles(harness)
        print(f"| {r['bench']} | {r['steps']} | {1e3 * mp:.2f} [{1e3 * pl:.2f}, {1e3 * ph:.2f}] "
              f"| {1e3 * mh:.2f} [{1e3 * hl:.2f}, {1e3 * hh:.2f}] | {1e6 * (mh - mp):.0f} "
              f"| {mh / mp:.3f} |")
    for r in results:
        print(f"\n{r['bench']}: the harness's own functions in one epoch ({r['steps']} steps), "
              f"by time outside torch")
        for where, tottime, calls in r["profile"]:
            print(f"  {1e6 * tottime / r['steps']:7.1f} µs/step  {calls:6d} calls  {where}")


if __name__ == "__main__":
    main()
