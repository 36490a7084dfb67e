"""Shared helpers of the tests: tiny end-to-end runs through the real runner."""
from __future__ import annotations

import json
from pathlib import Path

from engine.runs.runner import build_requests, run_all

TINY_DIGITS = ["train.epochs=1", "train.max_steps_per_epoch=2", "data.train_size=64",
               "data.val_size=32", "data.test_size=32", "train.batch_size=16"]


def tiny_run(benchmark: str, method: str, out: Path, overrides: list[str] | None = None,
             seeds: tuple[int, ...] = (0,), profile: str = "quick", data_root: str | None = None):
    """Train ``method`` for a few steps; return the outcomes (one per seed)."""
    requests = build_requests(benchmark, [method], list(seeds), profile, list(overrides or []),
                              "cpu", data_root)
    return run_all(requests, out, force=True, progress=False)


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
