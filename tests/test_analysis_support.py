"""Synthetic results folders in exactly the formats runs write (engine/core/results.py,
engine/core/trainer.py), for the analysis tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

DIGITS_TASKS = {("a", "acc"): (True, "%"), ("b", "err"): (False, ""), ("b", "rmse"): (False, "")}


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def write_run(root: Path, benchmark: str, method: str, seed: int, test: dict,
              *, tasks: dict = DIGITS_TASKS, config_hash: str = "h0", status: str = "complete",
              reason: str = "", val: dict | None = None, protocol: str | None = None,
              weights: list[dict] | None = None, lrs: list[float] | None = None,
              curve: list[dict] | None = None, conflict: list[dict] | None = None,
              trajectory: list[dict] | None = None, model: dict | None = None,
              data: dict | None = None) -> Path:
    """One run folder. ``test`` (and ``val``) map (task, metric) to a list of per-epoch
    values; ``tasks`` maps (task, metric) to (higher_is_better, unit)."""
    run_dir = root / benchmark / method / f"seed{seed}-{config_hash}"
    run_dir.mkdir(parents=True)
    data = dict(data or {"seed": 0})
    if protocol is not None:
        data["protocol"] = protocol
    config = {"benchmark": benchmark, "method": method, "seed": seed, "profile": "quick",
              "device": "cpu", "data_root": None, "data": data, "config_hash": config_hash,
              "engine": {"curve_every": 10, "conflict_every": 0}, "methods": {method: {}},
              "train": {"epochs": len(next(iter(test.values())))}}
    _dump(run_dir / "config.json", config)
    _dump(run_dir / "env.json", {"python": "3.11", "device": "cpu"})
    task_info = {}
    for (task, metric), (hib, unit) in tasks.items():
        task_info.setdefault(task, {})[metric] = {"higher_is_better": hib, "unit": unit}
    summary = {"benchmark": benchmark, "method": method, "seed": seed, "config_hash": config_hash,
               "status": status, "reason": reason, "wall_time_s": 1.0, "peak_memory_bytes": 1,
               "tasks": task_info, "setting": "synthetic", "methods": {}}
    _dump(run_dir / "summary.json", summary)
    epochs = len(next(iter(test.values())))
    lines = []
    for e in range(epochs):
        train = {"epoch": e, "split": "train", "steps": 5, "step_time_s": 0.01,
                 "lr": lrs[e] if lrs else 1e-3,
                 "losses": {t: 1.0 / (e + 1) for t in {k[0] for k in tasks}}}
        if weights:
            train["weights"] = weights[e]
        lines.append(train)
        for split, values in (("val", val or test), ("test", test)):
            metrics = {}
            for (task, metric), series in values.items():
                metrics.setdefault(task, {})[metric] = series[e]
            lines.append({"epoch": e, "split": split, "losses": {t: 0.5 for t in metrics},
                          "metrics": metrics})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for name, records in (("curve.jsonl", curve), ("conflict.jsonl", conflict),
                          ("trajectory.jsonl", trajectory)):
        if records is not None:
            (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    if model is not None:
        torch.save({"epoch": epochs - 1, "step": 5 * epochs, "config_hash": config_hash,
                    "model": model}, run_dir / "checkpoint.pt")
    return run_dir


def const(value: float, epochs: int = 3) -> list[float]:
    return [value] * epochs


def test_write_run_makes_the_files_runs_write(tmp_path):
    run = write_run(tmp_path, "bench", "ew", 0, {k: const(1.0) for k in DIGITS_TASKS})
    assert {p.name for p in run.iterdir()} == {"config.json", "env.json", "summary.json",
                                               "metrics.jsonl"}
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records[:3]] == ["train", "val", "test"]
