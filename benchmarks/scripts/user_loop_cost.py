#!/usr/bin/env python
"""The cost of ``mtl_harness.MethodStep`` in a plain PyTorch loop, against the same loop with
``sum(losses).backward()``: full steps (forward, the method's backward, Adam), one process,
interleaved and shuffled rounds, medians and interquartile ranges.

    python benchmarks/scripts/user_loop_cost.py [--rounds 15] [--steps 20] [--write-docs]

Two models: the MLP of docs/library.md (8→32→16, two heads, batch 32) and a small conv net
(3×32×32 inputs, 16-32-64 channels, three linear heads, batch 32). ``--write-docs`` puts
the table into docs/library.md between its ``user-loop-cost`` markers.
"""
from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.core.user_loop import MethodStep  # noqa: E402

METHODS = ("ew", "pcgrad", "mgda", "famo", "repmtl", "pcgrad+repmtl")


def mlp():
    encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
    heads = nn.ModuleDict({"sum": nn.Linear(16, 1), "sign": nn.Linear(16, 2)})

    def batch(gen):
        x = torch.randn(32, 8, generator=gen)
        return x, {"sum": x.sum(1, keepdim=True), "sign": (x[:, 0] > 0).long()}
    return encoder, heads, batch


def convnet():
    encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    heads = nn.ModuleDict({t: nn.Linear(64, 10) for t in ("a", "b", "c")})

    def batch(gen):
        x = torch.randn(32, 3, 32, 32, generator=gen)
        return x, {t: torch.randint(0, 10, (32,), generator=gen) for t in ("a", "b", "c")}
    return encoder, heads, batch


def loss_of(name: str, prediction, target):
    if target.dtype == torch.long:
        return nn.functional.cross_entropy(prediction, target)
    return nn.functional.mse_loss(prediction, target)


class Loop:
    """One training loop: ``method`` None is the plain ``sum(losses).backward()``."""

    def __init__(self, make, method: str | None):
        torch.manual_seed(0)
        self.encoder, self.heads, self.batch = make()
        self.gen = torch.Generator().manual_seed(0)
        self.step = None
        if method is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.step = MethodStep(method, self.encoder.parameters(),
                                       {t: h.parameters() for t, h in self.heads.items()})
        params = [*self.encoder.parameters(), *self.heads.parameters()]
        self.optimizer = torch.optim.Adam(params + (self.step.parameters() if self.step else []),
                                          lr=1e-3)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            x, targets = self.batch(self.gen)

            def losses():
                z = self.encoder(x)
                return z, [loss_of(t, self.heads[t](z), targets[t]) for t in self.heads]

            z, task_losses = losses()
            if self.step is None:
                self.optimizer.zero_grad()
                sum(task_losses).backward()
                self.optimizer.step()
            else:
                self.step.backward(task_losses, features=z, recompute=lambda: losses()[1])
                self.optimizer.step()
                self.step.after_optimizer_step()
        return (time.perf_counter() - start) / steps


def measure(rounds: int, steps: int) -> list[tuple[str, str, float, float, float]]:
    rows = []
    for model_name, make in (("MLP (docs)", mlp), ("conv net", convnet)):
        loops = {"plain backward": Loop(make, None)}
        loops |= {m: Loop(make, m) for m in METHODS}
        for loop in loops.values():
            loop.run(3)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in loops}
        order = list(loops)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                times[name].append(loops[name].run(steps))
        base = statistics.median(times["plain backward"])
        for name, values in times.items():
            q = statistics.quantiles(values, n=4)
            rows.append((model_name, name, statistics.median(values) * 1e3,
                         (q[2] - q[0]) * 1e3, statistics.median(values) / base))
    return rows


def table(rows) -> str:
    lines = ["| model | loop | ms per step (median) | IQR (ms) | × plain backward |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {m} | {n} | {t:.2f} | {iqr:.2f} | {r:.2f} |" for m, n, t, iqr, r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    text = table(measure(args.rounds, args.steps))
    text += (f"\n\n{args.rounds} rounds of {args.steps} steps, {args.threads} thread(s), "
             f"torch {torch.__version__}.")
    print(text)
    if args.write_docs:
        page = ROOT / "docs" / "library.md"
        marked = re.sub(r"(<!-- user-loop-cost:begin -->\n).*?(\n<!-- user-loop-cost:end -->)",
                        lambda m: m.group(1) + text + m.group(2), page.read_text(),
                        flags=re.DOTALL)
        page.write_text(marked)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
