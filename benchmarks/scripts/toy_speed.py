#!/usr/bin/env python
"""Speed of the batched toy runner (`run_bench.py toy`) against per-start engine runs.

For each protocol (CAGrad: 3 starts × 100k steps; FAMO: 5 starts × 50k steps) and each
method the batched runner supports, measures in one process, interleaved over rounds:

- the engine: one start trained by ``run`` (the trainer's own ``step_time_s``), ms per step;
- the batched runner with every start of that method in one batch, ms per start-step;
- the batched runner with every method and start of the protocol in one batch;
- with ``--baseline FILE``, the same batches through another version of
  engine/runs/toy_batch.py (e.g. ``git show HEAD:engine/runs/toy_batch.py > before.py``;
  it must run with this tree), so that before and after are measured in the same run.

Both runners' step timers read this thread's CPU time (``--clock cpu``, the default): on a
shared machine, wall time also counts the other processes' turns. Short runs, extrapolated
to the full protocol (steps × starts, per method, and for every method of the protocol
together), beside the authors' scripts at 0.7 ms (LS) to 2.3 ms (CAGrad) per step, one
start at a time; the last column is how many times faster than those the batched runs are
(every method of the protocol: its time against 0.7–2.3 ms per start-step). Medians over
rounds; compare ratios measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/scripts/toy_speed.py --out results/toy_speed.json
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.runs import toy_batch  # noqa: E402
from engine.runs.runner import build_requests, run_all  # noqa: E402

PROTOCOLS = {"cagrad": (3, 100_000, ("ew", "mgda", "pcgrad", "cagrad")),
             "famo": (5, 50_000, ("ew", "mgda", "pcgrad", "cagrad", "famo"))}
AUTHORS_MS = {"ew": 0.7, "cagrad": 2.3}
"""The authors' toy scripts, ms per step with one start (LS and CAGrad; the others between)."""
AUTHORS_RANGE = (min(AUTHORS_MS.values()), max(AUTHORS_MS.values()))


def requests(protocol: str, methods, starts: int, steps: int):
    overrides = ["train.epochs=1", f"data.steps_per_epoch={steps}", "data.trajectory_every=100"]
    return [r for i in range(starts)
            for r in build_requests("toy2d", list(methods), [0], protocol,
                                    [*overrides, f"data.start={i}"], "cpu", None,
                                    check_data=False)]


def step_clock(clock: str):
    """The runners time their steps with time.perf_counter; ``cpu`` makes it this thread's
    CPU time for the measurement."""
    if clock == "wall":
        return contextlib.nullcontext()
    return mock.patch("time.perf_counter", time.thread_time)


def engine_ms(protocol: str, method: str, steps: int, clock: str) -> float:
    """ms per step of one start through the trainer (its own step timer)."""
    with tempfile.TemporaryDirectory() as tmp:
        (request,) = requests(protocol, [method], 1, steps)
        with step_clock(clock):
            (outcome,) = run_all([request], Path(tmp), progress=False)
        records = [json.loads(line) for line in
                   (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
        return 1e3 * next(r for r in records if r["split"] == "train")["step_time_s"]


def batch_ms(runner, protocol: str, methods, starts: int, steps: int, clock: str,
             exact: bool = False) -> float:
    """ms per start-step of one batch of every method × start."""
    batch = runner.ToyBatch(requests(protocol, methods, starts, steps), exact_cagrad=exact)
    with step_clock(clock):
        batch.fit()
    return 1e3 * batch.step_time_s / steps / batch.R


def load_runner(path: Path):
    spec = importlib.util.spec_from_file_location("toy_batch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine-steps", type=int, default=300)
    p.add_argument("--batch-steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="what the step timers measure: this thread's CPU time (default) or "
                        "wall time")
    p.add_argument("--baseline", type=Path, default=None, metavar="FILE",
                   help="another version of engine/runs/toy_batch.py to time beside this one")
    p.add_argument("--out", type=Path, default=None, help="also save the figures as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    runners = {"batch": toy_batch}
    if args.baseline is not None:
        runners["before"] = load_runner(args.baseline)
    result = {}
    for protocol, (starts, full_steps, methods) in PROTOCOLS.items():
        samples: dict[str, list[float]] = {}

        def sample(key, value):
            samples.setdefault(key, []).append(value)

        for _ in range(args.rounds):
            for m in methods:
                sample(f"engine:{m}", engine_ms(protocol, m, args.engine_steps, args.clock))
                for name, runner in runners.items():
                    sample(f"{name}:{m}", batch_ms(runner, protocol, [m], starts,
                                                   args.batch_steps, args.clock))
            for name, runner in runners.items():
                sample(f"{name}:exact_cagrad", batch_ms(runner, protocol, ["cagrad"], starts,
                                                        args.batch_steps // 4, args.clock,
                                                        exact=True))
                sample(f"{name}:all", batch_ms(runner, protocol, methods, starts,
                                               args.batch_steps, args.clock))
        med = {k: statistics.median(v) for k, v in samples.items()}
        result[protocol] = {"starts": starts, "steps": full_steps, "clock": args.clock,
                            "median_ms": med, "samples_ms": samples}
        before = "before" in runners
        print(f"\n{protocol}: {starts} starts × {full_steps:,} steps (medians of "
              f"{args.rounds} rounds; ms per start-step, {args.clock} time)")
        print("| method | engine, one start | batched, all starts | "
              + ("before | " if before else "")
              + "speed-up | full protocol: engine | batched | authors' scripts | "
                "faster than the authors |")
        print("|---|---:|---:|" + ("---:|" if before else "") + "---:|---:|---:|---:|---:|")
        n = starts * full_steps
        engine_total = 0.0

        def row(label, e, key, authors_text, versus):
            b = med[f"batch:{key}"]
            earlier = f" {med[f'before:{key}']:.4f} |" if before else ""
            engine_text = f"{e * n / 1e3 / 60:.1f} min" if e is not None else ""
            speedup = f"{e / b:.0f}×" if e is not None else ""
            print(f"| {label} | {'' if e is None else f'{e:.3f}'} | {b:.4f} |{earlier} "
                  f"{speedup} | {engine_text} | {b * n / 1e3:.0f} s | {authors_text} | "
                  f"{versus(b)} |")

        for m in methods:
            e = med[f"engine:{m}"]
            engine_total += e * n / 1e3
            authors = AUTHORS_MS.get(m)
            row(m, e, m, f"{authors * n / 1e3 / 60:.1f} min" if authors else "—",
                lambda b, a=authors: f"{a / b:.0f}×" if a else "")
        row("cagrad, `--exact-cagrad`", med["engine:cagrad"], "exact_cagrad", "",
            lambda b: f"{AUTHORS_MS['cagrad'] / b:.0f}×")
        b = med["batch:all"]
        k = len(methods)
        lo, hi = AUTHORS_RANGE
        total = b * n * k / 1e3
        earlier = f" {med['before:all']:.4f} |" if before else ""
        print(f"| all {k} in one batch | | {b:.4f} |{earlier} "
              f"{engine_total / total:.0f}× | {engine_total / 60:.1f} min | {total:.0f} s | "
              f"{lo * n * k / 6e4:.0f}–{hi * n * k / 6e4:.0f} min | "
              f"{lo / b:.1f}–{hi / b:.0f}× |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nsaved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
