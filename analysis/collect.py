"""Read results folders into tidy pandas DataFrames.

``load_runs`` lists every run folder (complete or not, with its status and reason);
``load_metrics`` returns one row per (run, epoch, split, task, metric).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RUN_COLUMNS = ["benchmark", "method", "seed", "config_hash", "status", "reason", "run_dir"]
METRIC_COLUMNS = ["benchmark", "method", "seed", "config_hash", "epoch", "split", "task",
                  "metric", "value", "higher_is_better"]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` that holds a summary.json or a config.json."""
    root = Path(root)
    found = {p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob("config.json")}
    return sorted(found)


def load_runs(root: Path) -> pd.DataFrame:
    rows = []
    for run_dir in find_run_dirs(root):
        summary = _read_json(run_dir / "summary.json")
        config = _read_json(run_dir / "config.json") or {}
        if summary is None:
            rows.append({"benchmark": config.get("benchmark"), "method": config.get("method"),
                         "seed": config.get("seed"), "config_hash": config.get("config_hash"),
                         "status": "corrupt", "reason": "summary.json missing or unreadable",
                         "run_dir": str(run_dir)})
            continue
        rows.append({"benchmark": summary.get("benchmark"), "method": summary.get("method"),
                     "seed": summary.get("seed"), "config_hash": summary.get("config_hash"),
                     "status": summary.get("status"), "reason": summary.get("reason", ""),
                     "run_dir": str(run_dir)})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def load_metrics(root: Path, status: str = "complete") -> pd.DataFrame:
    """Metric rows of the runs whose summary has ``status`` (all runs when None)."""
    runs = load_runs(root)
    if status is not None:
        runs = runs[runs.status == status]
    rows = []
    for run in runs.itertuples():
        run_dir = Path(run.run_dir)
        summary = _read_json(run_dir / "summary.json") or {}
        directions = summary.get("tasks", {})
        try:
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError):
            continue
        for rec in records:
            for task, metrics in rec.get("metrics", {}).items():
                for metric, value in metrics.items():
                    hib = directions.get(task, {}).get(metric, {}).get("higher_is_better")
                    rows.append({"benchmark": run.benchmark, "method": run.method,
                                 "seed": run.seed, "config_hash": run.config_hash,
                                 "epoch": rec["epoch"], "split": rec["split"], "task": task,
                                 "metric": metric, "value": value, "higher_is_better": hib})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)
