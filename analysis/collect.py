"""Read results folders into tidy pandas DataFrames.

Only the files that runs write are read (``summary.json``, ``config.json``,
``metrics.jsonl``, ``curve.jsonl``, ``conflict.jsonl``, ``trajectory.jsonl``,
``checkpoint.pt``), so everything works on results copied from a cluster.

``load_runs`` lists every run folder, complete or not, with its status and the reason it
cannot be used (``usable`` is False for failed, diverged, running, corrupt or incomplete runs);
``load_metrics`` returns one row per (run, epoch, split, task, metric) of the usable runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RUN_COLUMNS = ["benchmark", "method", "seed", "config_hash", "status", "reason", "usable",
               "protocol", "profile", "setting", "setup", "run_dir"]
METRIC_COLUMNS = ["benchmark", "method", "seed", "config_hash", "run_dir", "epoch", "split",
                  "task", "metric", "value", "higher_is_better", "unit"]

# The evaluation protocol of LibMTL on NYUv2/Cityscapes: no validation split, so "val" is the
# test split and any selection on it selects on test.
LIBMTL_PROTOCOL = "libmtl"


def read_json(path: Path) -> dict | None:
    """The parsed JSON object at ``path``; None when missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSON-lines file. Raises OSError/ValueError on a missing file or a bad
    line, so that callers decide how to report it."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{Path(path).name} line {number}: {exc}") from None
        if not isinstance(record, dict):
            # bad data, reported like a JSON syntax error (callers catch ValueError)
            raise ValueError(f"{Path(path).name} line {number}: not a JSON object")  # noqa: TRY004
        records.append(record)
    return records


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` that holds a summary.json or a config.json."""
    root = Path(root)
    found = {p.parent for p in root.rglob("summary.json")} | {p.parent for p in root.rglob("config.json")}
    return sorted(found)


def run_protocol(config: dict, summary: dict) -> str:
    """The protocol a run recorded (a ``protocol`` entry of its summary or of the summary's
    ``extra`` record, else ``data.protocol`` of its config); "libmtl" whenever the extra record
    says ``selection_on_test``; "" when none."""
    extra = summary.get("extra") or {}
    if isinstance(extra, dict) and extra.get("selection_on_test"):
        return LIBMTL_PROTOCOL
    for source in (summary, extra, config.get("data") or {}):
        if isinstance(source, dict) and source.get("protocol"):
            return str(source["protocol"])
    return ""


def run_setup(config: dict) -> str:
    """A key of the data and training settings of a run (its config's ``data`` and ``train``
    sections), so that a method is compared with the stl runs trained the same way."""
    return json.dumps({"data": config.get("data"), "train": config.get("train")}, sort_keys=True)


def _check_metrics(run_dir: Path, summary: dict) -> str:
    """Why the run's metrics.jsonl cannot be used, or "" when it can: it must parse, hold test
    metrics, give every record an integer epoch, and every metric a direction in summary.json."""
    try:
        records = read_jsonl(run_dir / "metrics.jsonl")
    except OSError:
        return "metrics.jsonl missing or unreadable"
    except ValueError as exc:
        return f"metrics.jsonl corrupt ({exc})"
    if not any(r.get("split") == "test" and r.get("metrics") for r in records):
        return "metrics.jsonl has no test metrics"
    directions = summary.get("tasks") or {}
    for rec in records:
        if not isinstance(rec.get("epoch"), int):
            return "metrics.jsonl has a record without an integer epoch"
        for task, metrics in (rec.get("metrics") or {}).items():
            for metric in metrics:
                info = (directions.get(task) or {}).get(metric) or {}
                if not isinstance(info.get("higher_is_better"), bool):
                    return f"summary.json gives no direction for metric {task}.{metric}"
    return ""


def load_runs(root: Path) -> pd.DataFrame:
    """One row per run folder under ``root`` (see RUN_COLUMNS)."""
    rows = []
    for run_dir in find_run_dirs(root):
        summary = read_json(run_dir / "summary.json")
        config = read_json(run_dir / "config.json") or {}
        src = summary if summary is not None else config
        row = {"benchmark": src.get("benchmark", config.get("benchmark")),
               "method": src.get("method", config.get("method")),
               "seed": src.get("seed", config.get("seed")),
               "config_hash": src.get("config_hash", config.get("config_hash")),
               "protocol": run_protocol(config, summary or {}),
               "profile": config.get("profile", ""),
               "setting": (summary or {}).get("setting", ""), "setup": run_setup(config),
               "run_dir": str(run_dir)}
        if summary is None:
            row.update(status="corrupt", reason="summary.json missing or unreadable", usable=False)
        elif summary.get("status") != "complete":
            status = summary.get("status") or "unknown"
            reason = summary.get("reason") or ("still running or interrupted" if status == "running"
                                               else "no reason recorded")
            row.update(status=status, reason=reason, usable=False)
        elif not row["benchmark"] or not row["method"]:
            row.update(status="corrupt", reason="summary.json names no benchmark or method",
                       usable=False)
        else:
            problem = _check_metrics(run_dir, summary)
            row.update(status="corrupt" if problem else "complete", reason=problem,
                       usable=not problem)
        rows.append(row)
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs["usable"] = runs["usable"].astype(bool)
    return runs


def load_metrics(root: Path | None = None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Metric rows (val and test, every epoch) of the usable runs (of ``runs`` when given,
    else of ``load_runs(root)``)."""
    if runs is None:
        runs = load_runs(root)
    rows = []
    for run in runs[runs.usable].itertuples():
        run_dir = Path(run.run_dir)
        summary = read_json(run_dir / "summary.json") or {}
        directions = summary.get("tasks") or {}
        for rec in read_jsonl(run_dir / "metrics.jsonl"):
            for task, metrics in (rec.get("metrics") or {}).items():
                for metric, value in metrics.items():
                    info = (directions.get(task) or {}).get(metric) or {}
                    rows.append({"benchmark": run.benchmark, "method": run.method,
                                 "seed": run.seed, "config_hash": run.config_hash,
                                 "run_dir": run.run_dir, "epoch": rec.get("epoch"),
                                 "split": rec.get("split"), "task": task, "metric": metric,
                                 "value": float("nan") if value is None else float(value),
                                 "higher_is_better": info.get("higher_is_better"),
                                 "unit": info.get("unit", "")})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def load_train_records(run_dir: Path) -> list[dict]:
    """The per-epoch training records (losses, weights, method statistics) of one run."""
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r.get("split") == "train"]


def load_optional_jsonl(run_dir: Path, name: str) -> tuple[list[dict], str]:
    """Records of an optional per-run file (curve.jsonl, conflict.jsonl, trajectory.jsonl):
    ``(records, problem)`` with ``problem`` "" when the file is fine or simply absent."""
    path = Path(run_dir) / name
    if not path.exists():
        return [], ""
    try:
        return read_jsonl(path), ""
    except (OSError, ValueError) as exc:
        return [], f"{name} unreadable ({exc})"


COST_COLUMNS = ["benchmark", "method", "seed", "device", "step_time_s", "wall_time_s",
                "peak_memory_mib"]


def load_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per usable run: the mean training step time (train records of metrics.jsonl), the
    wall time and the peak memory (summary.json) and the device it ran on."""
    rows = []
    for run in runs[runs.usable].itertuples():
        summary = read_json(Path(run.run_dir) / "summary.json") or {}
        times = [r["step_time_s"] for r in load_train_records(Path(run.run_dir))
                 if isinstance(r.get("step_time_s"), (int, float))]
        memory = summary.get("peak_memory_bytes")
        rows.append({"benchmark": run.benchmark, "method": run.method, "seed": run.seed,
                     "device": summary.get("device", ""),
                     "step_time_s": sum(times) / len(times) if times else float("nan"),
                     "wall_time_s": summary.get("wall_time_s", float("nan")),
                     "peak_memory_mib": memory / 2 ** 20 if isinstance(memory, (int, float))
                     else float("nan")})
    return pd.DataFrame(rows, columns=COST_COLUMNS)
