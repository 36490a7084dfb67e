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
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from engine.core.results import STATUS_ABSENT, STATUS_COMPLETE, STATUS_UNREADABLE, run_state

log = logging.getLogger(__name__)
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


def configured_epochs(config: dict) -> int | None:
    """``train.epochs`` of a run's config.json, None when it records none."""
    epochs = (config.get("train") or {}).get("epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def run_epochs(config: dict, summary: dict) -> int | None:
    """How many epochs the run trains: config.json's ``train.epochs``, else the epochs that
    summary.json records (a complete run's), None when neither is left."""
    epochs = configured_epochs(config)
    if epochs is None:
        recorded = summary.get("epochs")
        epochs = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) else None
    return epochs


def run_identity(run_dir: Path, config: dict, summary: dict):
    """The identity (engine/core/identity.py) that the folder records, config.json's first, else
    summary.json's; None when neither records a config hash and a seed."""
    from engine.core.identity import FINGERPRINT_KEY, Identity

    def recorded(key: str):
        return config.get(key, summary.get(key))

    if recorded("config_hash") is None or recorded("seed") is None:
        return None
    return Identity(recorded("config_hash"), recorded("seed"), recorded(FINGERPRINT_KEY))


def _is_metric_value(value) -> bool:
    """A number, or how results files write the non-finite ones (None for NaN, "inf")."""
    if value is None or value in ("inf", "-inf"):
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_records(records: list, summary: dict, epochs: int) -> str:
    """Why a run's metric records cannot be used, or "" when they can: test metrics for
    every epoch of ``epochs`` (and no other), an integer epoch in every record, a number for
    every metric value and a direction in summary.json for every metric."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return "not a list of records"
    if not any(r.get("split") == "test" and r.get("metrics") for r in records):
        return "no test metrics"
    for rec in records:
        if not isinstance(rec.get("epoch"), int) or isinstance(rec.get("epoch"), bool):
            return "a record without an integer epoch"
    tested = {r["epoch"] for r in records if r.get("split") == "test" and r.get("metrics")}
    missing = sorted(set(range(epochs)) - tested)
    extra = sorted(tested - set(range(epochs)))
    if missing:
        return (f"incomplete: test metrics for {len(tested)} of the {epochs} epochs of "
                f"train.epochs (missing epoch {missing[0]}"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + ")")
    if extra:
        return f"epoch {extra[0]}, beyond train.epochs={epochs}"
    directions = summary.get("tasks") or {}
    for rec in records:
        metrics = rec.get("metrics") or {}
        if not isinstance(metrics, dict):
            return f"epoch {rec['epoch']} ({rec.get('split')}): metrics that are not a table"
        for task, values in metrics.items():
            if not isinstance(values, dict):
                return f"epoch {rec['epoch']} ({rec.get('split')}): task {task} has no metric table"
            for metric, value in values.items():
                if not _is_metric_value(value):
                    return (f"epoch {rec['epoch']} ({rec.get('split')}): {task}.{metric} is "
                            f"{value!r}, not a number")
                info = (directions.get(task) or {}).get(metric) or {}
                if not isinstance(info.get("higher_is_better"), bool):
                    return f"summary.json gives no direction for metric {task}.{metric}"
    return ""


def _check_metrics(run_dir: Path, summary: dict, epochs: int) -> str:
    """Why the run's metrics.jsonl cannot be used (``_check_records``), or "" when it can."""
    try:
        records = read_jsonl(run_dir / "metrics.jsonl")
    except OSError:
        return "metrics.jsonl missing or unreadable"
    except ValueError as exc:
        return f"metrics.jsonl corrupt ({exc})"
    problem = _check_records(records, summary, epochs)
    if problem.startswith(("incomplete", "summary.json")):
        return problem
    return f"metrics.jsonl has {problem}" if problem else ""


def repair_metrics(run_dir: Path, identity, epochs: int, summary: dict) -> str:
    """Rewrite a complete run's damaged or missing metrics.jsonl from its checkpoint, which
    holds every epoch's records. Returns "" when repaired, else why not. The checkpoint must
    pass the checks of a resume (the folder's config hash, seed and data fingerprint,
    ``checkpoint_mismatch``), be of the last epoch, and hold usable records; only then is
    the file written, under the run's lock."""
    from engine.core.checkpoint import checkpoint_mismatch, read_checkpoint
    from engine.runs.locks import RunLock, RunLocked
    from engine.core.results import write_jsonl

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return "no checkpoint to repair it from"
    if identity is None:
        return "the folder records no config hash and seed to check its checkpoint against"
    try:
        state = read_checkpoint(path)
    except Exception as exc:  # unreadable: keep the original problem
        return f"its checkpoint is unreadable ({type(exc).__name__})"
    mismatch = checkpoint_mismatch(path, state, identity)
    if mismatch:
        return mismatch
    if state["epoch"] != epochs - 1:
        return "its checkpoint is not of the last epoch"
    records = state.get("records")
    problem = _check_records(records, summary, epochs)
    if problem:
        return f"its checkpoint's records are unusable ({problem})"
    try:
        with RunLock(run_dir):
            write_jsonl(run_dir / "metrics.jsonl", records)
    except RunLocked:
        return "the run is being trained"
    except Exception as exc:  # a read-only copy of the results
        return f"cannot rewrite metrics.jsonl ({exc})"
    log.warning("%s: metrics.jsonl rewritten from the checkpoint", run_dir)
    return ""


def _usability(run_dir: Path, config: dict, summary: dict, repair: bool) -> str:
    """Why a complete run cannot be used, or "" (its metrics repaired first with
    ``repair`` where that is possible)."""
    epochs = run_epochs(config, summary)
    if epochs is None:
        return ("no record of train.epochs (config.json missing or unreadable, and "
                "summary.json records no epochs): its metrics cannot be checked")
    problem = _check_metrics(run_dir, summary, epochs)
    if problem and repair and problem.startswith(("metrics.jsonl", "incomplete")):
        why_not = repair_metrics(run_dir, run_identity(run_dir, config, summary), epochs,
                                 summary)
        problem = (_check_metrics(run_dir, summary, epochs) if not why_not
                   else f"{problem}; not repaired: {why_not}")
    return problem


def load_runs(root: Path, repair: bool = False) -> pd.DataFrame:
    """One row per run folder under ``root`` (see RUN_COLUMNS). With ``repair``, a complete
    run whose metrics.jsonl is damaged, missing or incomplete is rewritten from its
    checkpoint where that is possible (``repair_metrics``)."""
    rows = []
    for run_dir in find_run_dirs(root):
        state = run_state(run_dir)
        summary = state.summary if state.status not in (STATUS_ABSENT, STATUS_UNREADABLE) else None
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
        elif state.status != STATUS_COMPLETE:
            row.update(status=state.status, reason=state.reason or "no reason recorded",
                       usable=False)
        elif not row["benchmark"] or not row["method"]:
            row.update(status="corrupt", reason="summary.json names no benchmark or method",
                       usable=False)
        else:
            problem = _usability(run_dir, config, summary, repair)
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


def non_finite_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """Per usable run, split, task and metric with a value that is NaN (written as null) or
    infinite: the epochs where it is, so that the report can say so."""
    rows = load_metrics(runs=runs)
    bad = rows[~np.isfinite(rows.value.astype(float))]
    columns = ["run_dir", "split", "task", "metric"]
    return (bad.groupby(columns, sort=True).epoch
            .agg(lambda e: ", ".join(str(int(x)) for x in sorted(e)))
            .reset_index(name="epochs"))


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
                "step_peak_memory_mib", "peak_memory_mib"]


def _mib(value) -> float:
    return value / 2 ** 20 if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else float("nan")


def load_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per usable run: the mean training step time (train records of metrics.jsonl), the
    wall time, the peak tensor memory of one training step and the run's peak memory
    (summary.json) and the device it ran on."""
    rows = []
    for run in runs[runs.usable].itertuples():
        summary = read_json(Path(run.run_dir) / "summary.json") or {}
        times = [r["step_time_s"] for r in load_train_records(Path(run.run_dir))
                 if isinstance(r.get("step_time_s"), (int, float))]
        memory = summary.get("peak_memory_bytes")
        step_memory = summary.get("step_peak_memory_bytes")  # absent in older runs
        wall = summary.get("wall_time_s")  # None: a resumed run whose total is unknown
        rows.append({"benchmark": run.benchmark, "method": run.method, "seed": run.seed,
                     "device": summary.get("device", ""),
                     "step_time_s": sum(times) / len(times) if times else float("nan"),
                     "wall_time_s": float(wall) if isinstance(wall, (int, float))
                     and not isinstance(wall, bool) else float("nan"),
                     "step_peak_memory_mib": _mib(step_memory),
                     "peak_memory_mib": _mib(memory)})
    return pd.DataFrame(rows, columns=COST_COLUMNS)
