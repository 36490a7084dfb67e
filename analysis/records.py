"""Compact run records: what the leaderboard keeps of a finished run, shipped as data.

One gzipped JSON-lines file per benchmark (``benchmarks/leaderboard/records/<name>.jsonl.gz``).
Its first line is a header (format, benchmark, the protocol's hash); every further line is one
complete run: method, seed, the protocol overrides that made it, config hash and resolved
config, the task metrics' directions, per-epoch validation and test metrics, the mean
training step time, and the environment that produced it (torch version, threads, commit,
machine).
No checkpoints: a record is what tables, selection and tests need, a few kB per run.

Records are written in a fixed order with a fixed gzip timestamp, so the same records give
the same bytes (a committed file changes only when its content does).
"""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

from engine.core import results as R
from engine.errors import DataError

FORMAT = 1
SPLITS = ("val", "test")
STATUSES = (R.STATUS_COMPLETE, R.STATUS_DIVERGED)


@dataclass(frozen=True)
class RunRecord:
    method: str
    seed: int
    status: str
    """complete or diverged (a diverged run is a result: its settings do not train)."""
    overrides: tuple[str, ...]
    """The protocol's ``--set`` overrides of this run, sorted (``train.lr=0.001``, ...)."""
    config_hash: str
    config: dict
    tasks: dict
    """task -> metric -> {"higher_is_better": bool, "unit": str}."""
    curves: dict
    """split -> list over epochs of {task: {metric: value}}."""
    step_time_s: float | None
    env: dict

    @property
    def key(self) -> tuple[str, tuple[str, ...], int]:
        return self.method, self.overrides, self.seed

    def final(self, split: str) -> dict:
        """The metrics of the last epoch of a split (empty when the run diverged first)."""
        return self.curves[split][-1] if self.curves[split] else {}

    def to_json(self) -> dict:
        return {"method": self.method, "seed": self.seed, "status": self.status,
                "overrides": list(self.overrides),
                "config_hash": self.config_hash, "config": self.config, "tasks": self.tasks,
                "curves": self.curves, "step_time_s": self.step_time_s, "env": self.env}

    @classmethod
    def from_json(cls, obj: dict) -> RunRecord:
        if obj["status"] not in STATUSES:
            raise ValueError(obj["status"])
        return cls(obj["method"], int(obj["seed"]), obj["status"], tuple(obj["overrides"]),
                   obj["config_hash"], obj["config"], obj["tasks"], obj["curves"],
                   obj["step_time_s"], obj["env"])


def record_from_run(run_dir: Path, overrides: tuple[str, ...]) -> RunRecord | None:
    """The record of a finished run folder: complete (its metrics cover every configured
    epoch of both splits) or diverged (the epochs before it diverged). None otherwise."""
    state = R.run_state(run_dir)
    if state.status not in STATUSES:
        return None
    summary, status = state.summary, state.status
    try:
        config = R.read_json(run_dir / R.CONFIG)
        lines = R.read_jsonl(run_dir / R.METRICS)
        env = R.read_json(run_dir / R.ENV)
    except (OSError, ValueError):
        return None
    epochs = config["train"]["epochs"]
    curves: dict[str, list] = {split: [None] * epochs for split in SPLITS}
    times = []
    for line in lines:
        split, epoch = line.get("split"), line.get("epoch")
        if split in curves and isinstance(epoch, int) and 0 <= epoch < epochs:
            curves[split][epoch] = line["metrics"]
        elif split == "train" and isinstance(line.get("step_time_s"), (int, float)):
            times.append(float(line["step_time_s"]))
    if status == R.STATUS_DIVERGED:
        curves = {split: [m for m in curve if m is not None] for split, curve in curves.items()}
    elif any(m is None for curve in curves.values() for m in curve):
        return None
    return RunRecord(config["method"], int(config["seed"]), status, tuple(sorted(overrides)),
                     config["config_hash"], config, summary["tasks"], curves,
                     sum(times) / len(times) if times else None,
                     {"torch": env.get("packages", {}).get("torch"),
                      "torch_threads": env.get("torch_threads"),
                      "git_commit": env.get("git_commit"), "device": env.get("device"),
                      "machine": machine(env)})


def machine(env: dict) -> str | None:
    """The run's device in words: the GPU's name, else the CPU's model and the cores the
    run could use (None for runs made before env.json recorded them)."""
    if env.get("device_name"):
        return env["device_name"]
    if env.get("processor"):
        cores = env.get("cores")
        return env["processor"] + (f", {cores} cores" if cores else "")
    return None


def header(benchmark: str, protocol_hash: str) -> dict:
    return {"format": FORMAT, "benchmark": benchmark, "protocol": protocol_hash}


def read_records(path: Path, benchmark: str, protocol_hash: str) -> list[RunRecord]:
    """The records of ``path``, checked against the benchmark and protocol they must
    describe; a missing file is no records."""
    if not path.exists():
        return []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable gzipped records file ({exc}); restore it "
                        f"from version control") from None
    if not lines:
        raise DataError(f"{path}: empty; expected a header line, then one run per line")
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(f"{path}:{number}: not a JSON line; the records file is damaged "
                            f"(restore it from version control)") from None
    head, body = rows[0], rows[1:]
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise DataError(f"{path}: records of format {head.get('format') if isinstance(head, dict) else '?'}"
                        f"; this harness reads format {FORMAT}")
    if head.get("benchmark") != benchmark:
        raise DataError(f"{path}: records of benchmark {head.get('benchmark')!r}, not {benchmark!r}")
    if head.get("protocol") != protocol_hash:
        raise DataError(f"{path}: records made under protocol {head.get('protocol')}, but the "
                        f"protocol of {benchmark} is now {protocol_hash}; a changed protocol "
                        f"(learning-rate grid, seeds, profile, selection) needs new records")
    records = []
    for number, obj in enumerate(body, 2):
        try:
            records.append(RunRecord.from_json(obj))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{number}: not a run record (expected method, seed, "
                            f"status, overrides, config_hash, config, tasks, curves, step_time_s, "
                            f"env)") from None
    return records


def write_records(path: Path, benchmark: str, protocol_hash: str,
                  records: list[RunRecord]) -> None:
    """Write every record (sorted by method, overrides and seed), atomically."""
    ordered = sorted(records, key=lambda r: (r.method, r.overrides, r.seed))
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        for obj in [header(benchmark, protocol_hash)] + [r.to_json() for r in ordered]:
            text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
            gz.write(text.encode("utf-8") + b"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    R.atomic_write_bytes(path, buffer.getvalue())
