#!/usr/bin/env python
"""Training-step cost of every ``model.arch`` against hard parameter sharing, for a few
methods on one benchmark: every (architecture, method) pair built in one process and timed
one step at a time in interleaved, shuffled rounds (median CPU time of the measuring thread,
one torch thread; on a shared machine other processes barely move it, unlike wall time).
Prints a Markdown table of each pair's median step and its ratio to the same method under
hps (and to equal weighting under hps), plus the shared parameter count.

    python benchmarks/scripts/arch_cost.py [-b digits_tasks] [-m ew pcgrad] [--rounds 30]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.core.config import ARCHS  # noqa: E402
from engine.core.gradients.stats import EpochStats  # noqa: E402
from engine.core.trainer import Trainer  # noqa: E402
from engine.errors import UserError  # noqa: E402
from engine.runs.runner import build_requests, make_benchmark  # noqa: E402

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--benchmark", default="digits_tasks")
    parser.add_argument("-m", "--methods", nargs="+", default=["ew", "pcgrad"])
    parser.add_argument("-a", "--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers, shared = {}, {}
    bench = batch = None
    for arch in args.archs:
        for method in args.methods:
            try:
                (request,) = build_requests(args.benchmark, [method], [0], "quick",
                                            [*args.overrides, f"model.arch={arch}"], "cpu", None)
            except UserError as exc:
                print(f"{arch}/{method}: refused ({exc})", file=sys.stderr)
                continue
            if bench is None:
                bench = make_benchmark(request.config, CPU)
                batch = next(bench.batches("train", request.config.train.batch_size,
                                           torch.Generator().manual_seed(0)))
            trainer = Trainer(request.config, bench, request.composition, CPU, None,
                              progress=False)
            trainer.model.train()
            trainers[(arch, method)] = trainer
            shared[arch] = trainer.engine.num_shared
    stats = EpochStats()
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_step(batch, 0, stats)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
    order = list(trainers)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for key in order:
            start = time.thread_time()
            trainers[key].train_step(batch, 0, stats)
            times[key].append(time.thread_time() - start)
    median = {key: statistics.median(v) for key, v in times.items()}
    ref_ew = median.get(("hps", "ew"))
    print(f"{args.benchmark}, batch {trainers[order[0]].train_batch}, {args.rounds} rounds, "
          f"median CPU time per step (one thread)\n")
    head = " | ".join(f"{m} ms | {m} ÷ hps {m}" for m in args.methods)
    print(f"| model.arch | shared parameters | {head} |")
    print("|---|---:|" + "---:|---:|" * len(args.methods))
    for arch in args.archs:
        if arch not in shared:
            continue
        cells = []
        for method in args.methods:
            key = (arch, method)
            if key not in median:
                cells += ["refused", ""]
                continue
            ref = median.get(("hps", method))
            cells += [f"{1e3 * median[key]:.2f}", f"{median[key] / ref:.2f}×" if ref else ""]
        print(f"| {arch} | {shared[arch]:,} | " + " | ".join(cells) + " |")
    if ref_ew:
        print(f"\n(hps ew: {1e3 * ref_ew:.2f} ms per step)")


if __name__ == "__main__":
    main()
